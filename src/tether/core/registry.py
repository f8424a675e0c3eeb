"""The connection registry: every connection of this node, and its timers.

It knows each connection from the transport's handshake until it is closed:

* *connecting*: accepted, its ``connect`` not done yet (closed 3011 "stale" after
  ``connect_timeout`` seconds);
* *connected*: by client ID (:attr:`Registry.clients`) and by user
  (:attr:`Registry.users`); a user's connections are counted from the moment its
  connect claims the user (:meth:`Registry.claim_user`), so simultaneous connects cannot
  all pass ``max_connections_per_user``.

Its clock duties run in :meth:`Registry.tick`, once a second:

* *pings*: the connected clients are spread over ``ping_interval`` buckets, one bucket
  pinged per tick, so a node's pings are spread over the interval instead of bursting;
  a client that has not answered (any message counts) ``pong_timeout`` ticks after its
  ping is closed 3012 "no pong";
* *expiry*: one heap of (time, connection, channel or None) entries, pushed whenever a
  token sets or moves an expiry; an entry closes the connection (3005, or 3006 for a
  subscription) once ``expired_close_delay`` has passed and no refresh moved the
  expiry meanwhile (stale entries are skipped, never removed early).

It never touches channels: leaving them is the connection's business.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from tether.errors import ClientError
from tether.protocol.codes import DisconnectCode, DisconnectInfo, ErrorCode


class Connection(Protocol):
    """What the registry needs of a connection (the client session)."""

    @property
    def id(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def connected_at(self) -> float:
        """When the transport handed it over (the registry's clock)."""
        ...

    @property
    def expire_at(self) -> float | None:
        """Unix seconds its connection token expires at (None: never)."""
        ...

    @property
    def awaiting_pong(self) -> bool:
        """Pinged, and nothing received since."""
        ...

    @property
    def closed(self) -> bool: ...

    def subscription_expires_at(self, channel: str) -> float | None:
        """Unix seconds its subscription to ``channel`` expires at (None: never, or no
        such subscription)."""
        ...

    def ping(self) -> None:
        """Queue the heartbeat; ``awaiting_pong`` is true until the client answers."""
        ...

    def close(self, disconnect: DisconnectInfo, reason: str | None = None) -> None: ...


C = TypeVar("C", bound=Connection)

ENDED_BY_CLIENT = "client"
"""How :attr:`Registry.ended` counts a connection that ended from the client's side (its
close frame, or a lost socket); the others are counted by the code the node sent."""


class Registry(Generic[C]):
    """Every connection of this node, by ID and by user, with its timers (see module)."""

    __slots__ = (
        "_bucket_of",
        "_bucket_seq",
        "_buckets",
        "_clock",
        "_expiries",
        "_expiry_seq",
        "_tick",
        "clients",
        "connect_timeout",
        "connecting",
        "ended",
        "expired_close_delay",
        "max_per_user",
        "pong_timeout",
        "users",
    )

    def __init__(
        self,
        *,
        ping_interval: int,
        pong_timeout: int,
        connect_timeout: float,
        expired_close_delay: float,
        max_per_user: int,
        clock: Callable[[], float],
    ) -> None:
        self.pong_timeout = pong_timeout
        self.connect_timeout = connect_timeout
        self.expired_close_delay = expired_close_delay
        self.max_per_user = max_per_user
        self._clock = clock
        self.clients: dict[str, C] = {}
        """Connected clients by client ID."""
        self.users: dict[str, dict[C, None]] = {}
        """User -> its connections (claimed at connect, see :meth:`claim_user`)."""
        self.connecting: dict[C, None] = {}
        """Accepted connections whose connect has not completed."""
        self.ended: dict[str, int] = {}
        """Connections ended, by the disconnect code the node sent (as a string), or
        :data:`ENDED_BY_CLIENT`: one count per connection (:meth:`count_end`)."""
        self._buckets: list[dict[C, None]] = [{} for _ in range(ping_interval)]
        self._bucket_of: dict[C, int] = {}
        self._bucket_seq = itertools.count()
        self._expiries: list[tuple[float, int, C, str | None]] = []
        self._expiry_seq = itertools.count()
        self._tick = 0

    def count_end(self, ended_by: str) -> None:
        """One connection ended (see :attr:`ended`)."""
        self.ended[ended_by] = self.ended.get(ended_by, 0) + 1

    def everyone(self) -> list[C]:
        """Every connection, connecting ones first (the order drain closes them in)."""
        return [*self.connecting, *self.clients.values()]

    def add_connecting(self, connection: C) -> None:
        """A transport finished its handshake; ``connection`` awaits its connect."""
        self.connecting[connection] = None

    def claim_user(self, connection: C, user: str) -> None:
        """Count ``connection`` as one of ``user``'s from now on, before its connect has
        finished. Raises ClientError(111, temporary) if ``user`` has all the connections
        ``max_connections_per_user`` allows."""
        connections = self.users.setdefault(user, {})
        limit = self.max_per_user
        if limit and len(connections) >= limit and connection not in connections:
            if not connections:
                del self.users[user]
            raise ClientError(ErrorCode.TOO_MANY_REQUESTS, "too many connections of this user")
        connections[connection] = None

    def release_user(self, connection: C) -> None:
        """Undo :meth:`claim_user` (a connect that failed, or a closed connection)."""
        connections = self.users.get(connection.user)
        if connections is not None:
            connections.pop(connection, None)
            if not connections:
                del self.users[connection.user]

    def register(self, connection: C) -> None:
        """``connection`` completed connect: pinged from now on, its expiry watched."""
        self.connecting.pop(connection, None)
        self.clients[connection.id] = connection
        bucket = next(self._bucket_seq) % len(self._buckets)
        self._buckets[bucket][connection] = None
        self._bucket_of[connection] = bucket
        self.track_expiry(connection)

    def forget(self, connection: C) -> None:
        """``connection`` is closed: it is no longer counted, pinged or watched."""
        self.connecting.pop(connection, None)
        self.release_user(connection)
        if self.clients.pop(connection.id, None) is not None:
            bucket = self._bucket_of.pop(connection, None)
            if bucket is not None:
                self._buckets[bucket].pop(connection, None)

    def track_expiry(self, connection: C) -> None:
        """Watch the connection's ``expire_at`` (call again after a refresh moved it)."""
        if connection.expire_at is not None:
            entry = (connection.expire_at, next(self._expiry_seq), connection, None)
            heapq.heappush(self._expiries, entry)

    def track_sub_expiry(self, connection: C, channel: str, expire_at: float | None) -> None:
        """Watch the expiry of its subscription to ``channel``."""
        if expire_at is not None:
            entry = (expire_at, next(self._expiry_seq), connection, channel)
            heapq.heappush(self._expiries, entry)

    def targets(self, user: str, client_id: str = "") -> list[C]:
        """The connections of ``user``, or the one ``client_id`` (of ``user``, if given)."""
        if client_id:
            connection = self.clients.get(client_id)
            if connection is None or (user and connection.user != user):
                return []
            return [connection]
        return list(self.users.get(user, ()))

    def tick(self) -> None:
        """Once a second: pong deadlines, one bucket's pings, stale connects, expiries."""
        self._tick += 1
        buckets = self._buckets
        checked = buckets[(self._tick - self.pong_timeout) % len(buckets)]
        for connection in [c for c in checked if c.awaiting_pong]:
            connection.close(DisconnectCode.NO_PONG)
        for connection in buckets[self._tick % len(buckets)]:
            connection.ping()  # urgent: never shed with the standard lane
        now = self._clock()
        for connection in [
            c for c in self.connecting if now - c.connected_at > self.connect_timeout
        ]:
            connection.close(DisconnectCode.STALE)
        # The SDK refreshes when the reply's ttl (whole seconds, rounded down) runs out,
        # with a token its backend has yet to mint: that refresh may land after `exp`.
        # As Centrifugo does (client_expired_close_delay), close only once the grace
        # has passed and no refresh moved the expiry.
        deadline = time.time() - self.expired_close_delay
        expiries = self._expiries
        while expiries and expiries[0][0] <= deadline:
            expire_at, _, connection, channel = heapq.heappop(expiries)
            if connection.closed:
                continue
            if channel is None:
                if connection.expire_at == expire_at:
                    connection.close(DisconnectCode.EXPIRED)
            elif connection.subscription_expires_at(channel) == expire_at:
                connection.close(DisconnectCode.SUB_EXPIRED)
