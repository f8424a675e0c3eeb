"""Connection and subscription tokens: HMAC-signed JWTs (PyJWT), Centrifugo claim names.

Connection token claims: ``sub`` (user ID; absent or "" is the anonymous user, as in
Centrifugo v6), ``exp`` (optional; when set
the connection expires unless refreshed), ``info`` (any JSON, shown in presence and
publications), ``channels`` (server-side subscriptions made at connect).

Subscription token claims: ``sub`` (must equal the connection's user; absent is ""),
``channel`` (must
equal the channel subscribed), ``exp``, ``info`` (channel info).

Only HS256/HS384/HS512 are accepted: ``alg: none`` and every other algorithm are rejected.

Connection tokens already verified are remembered (:class:`VerifiedTokens`), by the exact
token string and secret, until their ``exp`` (at most ``ttl`` seconds): a reconnection
storm presents the tokens the clients connected with a moment ago, and each is then
verified once, not once per reconnect. A token that was not verified, or whose ``exp`` has
passed, is always verified in full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgspec

from tether.errors import TokenError

ALGORITHMS = ["HS256", "HS384", "HS512"]


@dataclass(frozen=True, slots=True)
class ConnectionClaims:
    user: str
    expire_at: int | None = None
    info: bytes | None = None
    """Raw JSON of the ``info`` claim."""
    channels: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    user: str
    channel: str
    expire_at: int | None = None
    info: bytes | None = None


def _decode(token: str, secret: str) -> dict[str, Any]:
    if not token:
        raise TokenError("token required")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            options={"verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired", expired=True) from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    sub = claims.setdefault("sub", "")
    if not isinstance(sub, str):
        raise TokenError("invalid token: sub must be a string")
    return claims


def _raw_info(claims: dict[str, Any]) -> bytes | None:
    info = claims.get("info")
    return None if info is None else msgspec.json.encode(info)


def _expire_at(claims: dict[str, Any]) -> int | None:
    exp = claims.get("exp")
    return int(exp) if exp is not None else None


class VerifiedTokens:
    """Connection tokens that passed :func:`verify_connection_token`, with their claims,
    until their ``exp`` or ``ttl`` seconds after the verification, whichever is first; at
    most ``max_entries`` (the oldest verification is forgotten first). Keyed by the whole
    token string (its signature included) and the secret: only the very bytes verified
    with the very secret hit."""

    __slots__ = ("_clock", "_entries", "hits", "max_entries", "ttl")

    def __init__(
        self,
        max_entries: int = 50_000,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[ConnectionClaims, float]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, secret: str) -> ConnectionClaims | None:
        entry = self._entries.get((secret, token))
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[secret, token]  # expired: verify again (and fail on exp)
            return None
        self.hits += 1
        return entry[0]

    def put(self, token: str, secret: str, claims: ConnectionClaims) -> None:
        if self.max_entries <= 0:
            return
        until = self._clock() + self.ttl
        if claims.expire_at is not None:
            until = min(until, float(claims.expire_at))
        entries = self._entries
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[secret, token] = (claims, until)


CONNECTION_TOKENS = VerifiedTokens()
"""The process's verified connection tokens (what :func:`verify_connection_token` uses)."""


def verify_connection_token(
    token: str, secret: str, verified: VerifiedTokens | None = None
) -> ConnectionClaims:
    """Verify signature, algorithm and expiry, unless this very token was verified with
    this secret before and has not expired (``verified``, by default
    :data:`CONNECTION_TOKENS`). Raises :class:`TokenError`."""
    cache = CONNECTION_TOKENS if verified is None else verified
    known = cache.get(token, secret)
    if known is not None:
        return known
    claims = _decode(token, secret)
    channels = claims.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise TokenError("invalid token: channels must be a list of strings")
    result = ConnectionClaims(
        user=claims["sub"],
        expire_at=_expire_at(claims),
        info=_raw_info(claims),
        channels=tuple(channels),
    )
    cache.put(token, secret, result)
    return result


def verify_subscription_token(token: str, secret: str) -> SubscriptionClaims:
    """Verify a subscription token. Raises :class:`TokenError`."""
    claims = _decode(token, secret)
    channel = claims.get("channel")
    if not isinstance(channel, str) or not channel:
        raise TokenError("invalid token: channel claim required")
    return SubscriptionClaims(
        user=claims["sub"],
        channel=channel,
        expire_at=_expire_at(claims),
        info=_raw_info(claims),
    )


def mint_connection_token(
    secret: str,
    user: str,
    *,
    ttl: float | None = None,
    channels: list[str] | None = None,
    info: Any = None,
) -> str:
    """A connection token for ``user``; ``ttl`` seconds of validity (None: no expiry)."""
    claims: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    if channels:
        claims["channels"] = channels
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_subscription_token(
    secret: str, user: str, channel: str, *, ttl: float | None = None, info: Any = None
) -> str:
    """A subscription token letting ``user`` subscribe to ``channel``."""
    claims: dict[str, Any] = {"sub": user, "channel": channel, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
