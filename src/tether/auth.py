"""Connection and subscription tokens: HMAC-signed JWTs (PyJWT), Centrifugo claim names.

Connection token claims: ``sub`` (user ID; absent or "" is the anonymous user, as in
Centrifugo v6), ``exp`` (optional; when set
the connection expires unless refreshed), ``info`` (any JSON, shown in presence and
publications), ``channels`` (server-side subscriptions made at connect).

Subscription token claims: ``sub`` (must equal the connection's user; absent is ""),
``channel`` (must
equal the channel subscribed), ``exp``, ``info`` (channel info).

Only HS256/HS384/HS512 are accepted: ``alg: none`` and every other algorithm are rejected.

Verification has a fast path for the common token (a header of only ``alg`` and ``typ``,
an HS* ``alg``, integer time claims): the HMAC of the signing input is computed from a
keyed :mod:`hmac` state prepared once per secret (with PyJWT's own key preparation) and
compared in constant time with the token's signature, and the claims get PyJWT's checks
(``exp``, ``nbf``, ``iat``, ``sub`` and ``jti`` types). The fast path only ever
*accepts*: a token it is not certain of (any other header, a bad signature, an expired or
odd claim) goes through :func:`jwt.decode`, which gives the verdict and the error. A
first-connect storm presents distinct tokens, and PyJWT's general path costs about ten
times the HMAC itself (``tether-bench run connect-cost``).

Every token is verified in full at every connect: with the fast path a verification costs
a few microseconds, less than a cache of verified tokens saved on a reconnect, and such a
cache cost about 0.37 KiB per connection (``tether-bench run idle``, 12,000 connections).
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import time
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


_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
"""The allowed algorithms (:data:`ALGORITHMS`) and their hashes, for the fast path."""
_HEADER_KEYS = frozenset({"alg", "typ"})
"""A header with other members (``kid``, ``crit``, ``b64``...) goes to PyJWT."""
_TIME_CLAIMS = ("iat", "nbf", "exp")
_CACHE_LIMIT = 64

_headers: dict[str, str | None] = {}
"""Header segment -> its algorithm if the fast path may verify it (None: never)."""
_keys: dict[tuple[str, str], hmac.HMAC | None] = {}
"""(secret, algorithm) -> an HMAC keyed with PyJWT's prepared key, to copy per token
(None: PyJWT refuses the key, or warns about it)."""


def _header_alg(segment: str) -> str | None:
    alg = _headers.get(segment, "")
    if alg != "":
        return alg
    alg = None
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        header = None
    if isinstance(header, dict) and header.keys() <= _HEADER_KEYS:
        found = header.get("alg")
        alg = found if isinstance(found, str) and found in _DIGESTS else None
    if len(_headers) < _CACHE_LIMIT:
        _headers[segment] = alg
    return alg


def _hmac_key(secret: str, alg: str) -> hmac.HMAC | None:
    try:
        return _keys[secret, alg]
    except KeyError:
        pass
    algorithm = jwt.get_algorithm_by_name(alg)
    key: hmac.HMAC | None
    try:
        prepared = algorithm.prepare_key(secret)
    except jwt.PyJWTError:
        key = None  # e.g. a PEM key as the secret: PyJWT's error, every time
    else:
        # A short key makes PyJWT warn (InsecureKeyLengthWarning): keep its warning.
        short = algorithm.check_key_length(prepared)
        key = None if short else hmac.new(bytes(prepared), digestmod=_DIGESTS[alg])
    if len(_keys) < _CACHE_LIMIT:
        _keys[secret, alg] = key
    return key


def _fast_decode(token: str, secret: str) -> dict[str, Any] | None:
    """The claims of ``token`` if it certainly passes :func:`jwt.decode` with our options
    (see the module docstring), else None: the caller then asks PyJWT."""
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        return None
    parts = raw.split(b".")
    if len(parts) != 3:
        return None
    head, body, signature = parts
    alg = _header_alg(head.decode())
    if alg is None:
        return None
    keyed = _hmac_key(secret, alg)
    if keyed is None:
        return None
    mac = keyed.copy()
    mac.update(raw[: len(head) + 1 + len(body)])
    if not hmac.compare_digest(base64.urlsafe_b64encode(mac.digest()).rstrip(b"="), signature):
        return None  # PyJWT decides (a non-canonical encoding, or a bad signature)
    try:
        # msgspec rejects what json.loads (PyJWT's parser) accepts and JSON does not
        # (NaN, a lone surrogate, a BOM), and agrees with it on the rest.
        claims = msgspec.json.decode(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    except (msgspec.MsgspecError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    now = time.time()
    for name in _TIME_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if type(value) is float:
            if not math.isfinite(value):
                return None
            value = int(value)
        elif type(value) is not int:
            return None  # PyJWT converts it or says why not
        if value <= now if name == "exp" else value > now:
            return None  # expired, or not yet valid: PyJWT raises which
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            return None
    return claims


def _decode(token: str, secret: str) -> dict[str, Any]:
    if not token:
        raise TokenError("token required")
    fast = _fast_decode(token, secret)
    if fast is not None:
        fast.setdefault("sub", "")
        return fast
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


def verify_connection_token(token: str, secret: str) -> ConnectionClaims:
    """Verify signature, algorithm and expiry. Raises :class:`TokenError`."""
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
