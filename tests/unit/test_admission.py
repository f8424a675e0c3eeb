"""Admission control: overload is refused early, politely (temporary, with a retry hint),
and accepted again once the window has passed.

The token buckets run on a :class:`~tether.testing.clock.FakeClock`, so "after the window"
is a clock step, not a sleep. Connection limits per user and publish limits per connection
are driven through a node over in-memory transports (:mod:`tether.testing.transports`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tether.auth import mint_connection_token
from tether.config import Config
from tether.core.admission import Admission, TokenBucket
from tether.core.lanes import Lane
from tether.core.node import Node
from tether.protocol.codes import DisconnectCode
from tether.testing.brokers import FaultyBroker
from tether.testing.clock import FakeClock
from tether.testing.servers import OPEN, TEST_SECRET, make_config
from tether.testing.transports import LocalSession, local_node

# -- TokenBucket ---------------------------------------------------------------------------


def test_token_bucket_grants_its_burst_at_once() -> None:
    bucket = TokenBucket(rate=1, burst=3, clock=FakeClock())

    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() > 0


def test_token_bucket_says_how_long_until_the_next_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    bucket.take()

    assert bucket.take() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.take() == pytest.approx(0.15)


def test_token_bucket_grants_again_after_the_wait_it_announced() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=1, clock=clock)
    bucket.take()
    wait = bucket.take()

    clock.advance(wait)
    assert bucket.take() == 0.0


def test_token_bucket_never_stores_more_than_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=2, clock=clock)
    clock.advance(3600)

    assert [bucket.take() for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take() > 0


# -- Admission of new connections -----------------------------------------------------------


def _admission(clock: FakeClock, **overrides: Any) -> Admission:
    options: dict[str, Any] = {
        "max_connections": 1000,
        "connects_per_second": 10,
        "connects_burst": 5,
        "max_per_ip": 0,
        "clock": clock,
    }
    options.update(overrides)
    return Admission(**options)


def test_connects_above_the_rate_are_refused_with_a_retry_hint() -> None:
    admission = _admission(FakeClock(), connects_per_second=0.5, connects_burst=2)

    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.2") is None
    retry_after = admission.admit("10.0.0.3")

    assert retry_after == 2  # whole seconds until a token: 1 / 0.5
    assert admission.refused == 1
    assert admission.admitted == 2
    assert admission.connections == 2


def test_connects_are_accepted_again_after_the_retry_hint() -> None:
    clock = FakeClock()
    admission = _admission(clock, connects_per_second=1, connects_burst=1)
    admission.admit("10.0.0.1")
    retry_after = admission.admit("10.0.0.2")
    assert retry_after is not None

    clock.advance(retry_after)
    assert admission.admit("10.0.0.2") is None


def test_retry_hint_is_at_least_one_second() -> None:
    admission = _admission(FakeClock(), connects_per_second=1000, connects_burst=1)
    admission.admit("10.0.0.1")

    assert admission.admit("10.0.0.2") == 1  # Retry-After counts whole seconds


def test_connects_beyond_max_connections_are_refused_until_one_leaves() -> None:
    admission = _admission(FakeClock(), max_connections=2)
    admission.admit("10.0.0.1")
    admission.admit("10.0.0.2")

    assert admission.admit("10.0.0.3") == 1
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.3") is None


def test_connects_beyond_max_connections_per_ip_are_refused_for_that_ip_only() -> None:
    admission = _admission(FakeClock(), max_per_ip=2)
    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.1") is None

    assert admission.admit("10.0.0.1") == 1
    assert admission.admit("10.0.0.2") is None
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.1") is None


def test_refused_connects_spend_no_capacity() -> None:
    admission = _admission(FakeClock(), max_connections=1, connects_burst=100)
    admission.admit("10.0.0.1")
    for _ in range(10):
        admission.admit("10.0.0.2")
    admission.release("10.0.0.1")

    assert admission.connections == 0
    assert admission.admit("10.0.0.2") is None


# -- per user, per connection (through a node) ---------------------------------------------


def _open_config(**overrides: Any) -> Config:
    return make_config(allow_anonymous=True, **overrides)


async def _connect(node: Node, user: str) -> tuple[LocalSession, dict[str, Any]]:
    session = LocalSession(node)
    reply = await session.call("connect", {"token": mint_connection_token(TEST_SECRET, user)})
    return session, reply


async def test_connect_beyond_max_connections_per_user_gets_temporary_error_111() -> None:
    async with local_node(_open_config(max_connections_per_user=2)) as node:
        await _connect(node, "alice")
        await _connect(node, "alice")
        _, refused = await _connect(node, "alice")
        _, other_user = await _connect(node, "bob")

    assert refused["error"]["code"] == 111
    assert refused["error"]["temporary"] is True
    assert "connect" in other_user


async def test_simultaneous_connects_of_one_user_cannot_all_pass_the_limit() -> None:
    # The token's server-side channel makes connect wait on the broker: while the first
    # connect is held there, the second must already count it.
    broker = FaultyBroker()
    broker.hold("subscribe")
    token = mint_connection_token(TEST_SECRET, "alice", channels=["chat:feed"])
    async with local_node(_open_config(max_connections_per_user=1), broker=broker) as node:
        first, second = LocalSession(node), LocalSession(node)
        first_id = first.send_command("connect", {"token": token})
        await broker.wait_held("subscribe")
        refused = await second.call("connect", {"token": token})
        broker.release("subscribe")
        accepted = await first.reply(first_id)

    assert refused["error"]["code"] == 111
    assert "connect" in accepted


async def test_user_can_connect_again_once_one_of_its_connections_closed() -> None:
    async with local_node(_open_config(max_connections_per_user=1)) as node:
        first, _ = await _connect(node, "alice")
        _, refused = await _connect(node, "alice")
        first.client.close(DisconnectCode.CONNECTION_CLOSED)
        _, again = await _connect(node, "alice")

    assert refused["error"]["code"] == 111
    assert "connect" in again


async def test_client_publishes_beyond_the_rate_get_temporary_error_111() -> None:
    clock = FakeClock()
    config = _open_config(client_publish_rate=2, client_publish_burst=3)
    async with local_node(config, clock=clock) as node:
        session, _ = await _connect(node, "alice")
        await session.call("subscribe", {"channel": "chat:room"})
        replies = [
            await session.call("publish", {"channel": "chat:room", "data": {"n": n}})
            for n in range(4)
        ]
        clock.advance(0.5)  # one token at 2 per second
        after_wait = await session.call("publish", {"channel": "chat:room", "data": {"n": 4}})
        history = await node.history("chat:room", limit=-1)

    assert ["publish" in r for r in replies] == [True, True, True, False]
    assert replies[3]["error"]["code"] == 111
    assert replies[3]["error"]["temporary"] is True
    assert "publish" in after_wait
    # The refused publish was never stored.
    assert [msgspec.json.decode(bytes(p.data))["n"] for p in history.publications] == [0, 1, 2, 4]


async def test_client_publish_to_a_saturated_lane_gets_temporary_error_111() -> None:
    broker = FaultyBroker()
    config = _open_config(lane_publish_limits={"critical": 10, "standard": 1, "ephemeral": 10})
    async with local_node(config, broker=broker) as node:
        session, _ = await _connect(node, "alice")
        await session.call("subscribe", {"channel": "chat:room"})
        broker.hold("publish")
        hanging = asyncio.create_task(node.publish("chat:room", b'{"n":"slow"}'))
        await broker.wait_held("publish")
        refused = await session.call("publish", {"channel": "chat:room", "data": {"n": 1}})
        broker.release("publish")
        await hanging
        accepted = await session.call("publish", {"channel": "chat:room", "data": {"n": 2}})

        assert refused["error"]["code"] == 111
        assert refused["error"]["temporary"] is True
        assert "publish" in accepted
        assert node.lanes.shed[Lane.STANDARD] == 1


async def test_saturated_lane_does_not_refuse_publishes_of_other_lanes() -> None:
    broker = FaultyBroker()
    chat = msgspec.structs.replace(OPEN, lane="critical")
    feed = msgspec.structs.replace(OPEN, lane="standard")
    config = _open_config(
        namespaces={"chat": chat, "feed": feed},
        lane_publish_limits={"critical": 10, "standard": 1, "ephemeral": 10},
    )
    async with local_node(config, broker=broker) as node:
        broker.hold("publish")
        hanging = asyncio.create_task(node.publish("feed:news", b"{}"))
        await broker.wait_held("publish")
        chat_publish = asyncio.create_task(node.publish("chat:room", b"{}"))
        await broker.wait_held("publish", 2)  # admitted: it reached the broker
        broker.release("publish")
        await asyncio.gather(hanging, chat_publish)

        assert node.lanes.shed == dict.fromkeys(Lane, 0)
