"""The connection registry: counting connections per user, pings spread over buckets,
pong deadlines, stale connects and token expiry, driven tick by tick."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from tether.core.registry import Registry
from tether.errors import ClientError
from tether.protocol.codes import DisconnectCode, DisconnectInfo
from tether.testing.clock import FakeClock


@dataclass(eq=False)
class Conn:
    id: str
    user: str = ""
    connected_at: float = 0.0
    expire_at: float | None = None
    awaiting_pong: bool = False
    pings: int = 0
    closed_with: DisconnectInfo | None = None
    sub_expiry: dict[str, float] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    def subscription_expires_at(self, channel: str) -> float | None:
        return self.sub_expiry.get(channel)

    def ping(self) -> None:
        self.awaiting_pong = True
        self.pings += 1

    def close(self, disconnect: DisconnectInfo, reason: str | None = None) -> None:
        self.closed_with = disconnect


def registry(
    clock: FakeClock,
    *,
    ping_interval: int = 3,
    pong_timeout: int = 2,
    connect_timeout: float = 10.0,
    max_per_user: int = 0,
) -> Registry[Conn]:
    return Registry(
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        connect_timeout=connect_timeout,
        expired_close_delay=0.0,
        max_per_user=max_per_user,
        clock=clock,
    )


def test_each_tick_pings_one_bucket_so_pings_are_spread_over_the_interval() -> None:
    reg = registry(FakeClock())
    conns = [Conn(f"c{n}") for n in range(6)]
    for conn in conns:
        reg.register(conn)
    reg.tick()
    assert sum(c.pings for c in conns) == 2  # 6 clients over 3 buckets
    reg.tick()
    reg.tick()
    assert [c.pings for c in conns] == [1] * 6


def test_a_client_that_does_not_answer_its_ping_is_closed_after_the_pong_timeout() -> None:
    reg = registry(FakeClock(), ping_interval=3, pong_timeout=2)
    quiet, lively = Conn("quiet"), Conn("lively")
    reg.register(quiet)
    reg.register(lively)
    for _ in range(3):  # both pinged once
        reg.tick()
        lively.awaiting_pong = False  # any message answers
    for _ in range(2):
        reg.tick()
        lively.awaiting_pong = False

    assert quiet.closed_with is DisconnectCode.NO_PONG
    assert lively.closed_with is None


def test_a_connection_without_connect_is_closed_as_stale_after_the_timeout() -> None:
    clock = FakeClock()
    reg = registry(clock, connect_timeout=10.0)
    slow = Conn("slow", connected_at=clock())
    reg.add_connecting(slow)
    clock.advance(10.0)
    reg.tick()
    assert slow.closed_with is None
    clock.advance(0.5)
    reg.tick()
    assert slow.closed_with is DisconnectCode.STALE


def test_an_expired_connection_is_closed_unless_a_refresh_moved_its_expiry() -> None:
    reg = registry(FakeClock())
    now = time.time()
    expired, refreshed = Conn("a", expire_at=now - 1), Conn("b", expire_at=now - 1)
    reg.register(expired)
    reg.register(refreshed)
    refreshed.expire_at = now + 60  # refreshed: a new entry, the old one is stale
    reg.track_expiry(refreshed)
    reg.tick()

    assert expired.closed_with is DisconnectCode.EXPIRED
    assert refreshed.closed_with is None


def test_an_expired_subscription_closes_its_connection_with_3006() -> None:
    reg = registry(FakeClock())
    conn = Conn("a", sub_expiry={"chat:room": time.time() - 1})
    reg.register(conn)
    reg.track_sub_expiry(conn, "chat:room", conn.sub_expiry["chat:room"])
    reg.tick()
    assert conn.closed_with is DisconnectCode.SUB_EXPIRED


def test_a_user_cannot_claim_more_connections_than_allowed_until_one_is_released() -> None:
    reg = registry(FakeClock(), max_per_user=2)
    first, second, third = Conn("1", user="ann"), Conn("2", user="ann"), Conn("3", user="ann")
    reg.claim_user(first, "ann")
    reg.claim_user(second, "ann")
    with pytest.raises(ClientError) as refused:
        reg.claim_user(third, "ann")
    assert refused.value.code == 111
    assert refused.value.temporary
    reg.release_user(first)
    reg.claim_user(third, "ann")
    assert set(reg.users["ann"]) == {second, third}


def test_targets_are_the_users_connections_or_the_one_client_named() -> None:
    reg = registry(FakeClock())
    ann1, ann2, bob = Conn("a1", user="ann"), Conn("a2", user="ann"), Conn("b", user="bob")
    for conn in (ann1, ann2, bob):
        reg.claim_user(conn, conn.user)
        reg.register(conn)

    assert reg.targets("ann") == [ann1, ann2]
    assert reg.targets("ann", "a2") == [ann2]
    assert reg.targets("ann", "b") == []  # that client is another user's
    assert reg.targets("", "b") == [bob]
    reg.forget(ann1)
    assert reg.targets("ann") == [ann2]
    assert "a1" not in reg.clients
