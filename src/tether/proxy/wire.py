"""The JSON bodies of the backend hooks: Centrifugo's HTTP proxy shapes (pure, no I/O).

A backend written for Centrifugo's proxy works unchanged: every request carries
``client``, ``transport``, ``protocol``, ``encoding`` (and ``user`` after connect); the
payload goes in ``data`` (raw JSON) for JSON connections and in ``b64data`` (base64) for
binary ones. Every answer holds exactly one of ``result``, ``error`` (``code``,
``message``, ``temporary``: the client's error) or ``disconnect`` (``code``, ``reason``).

:func:`decode` is strict: invalid JSON, a wrong type, an answer with none or several of
the three, a code out of its range, or base64 that does not decode, is :class:`BadAnswer`.
Unknown fields are ignored (Centrifugo adds fields over time; a backend may send them).
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

import msgspec
from msgspec import Raw

from tether.protocol.codes import is_disconnect_code

ERROR_CODES = range(100, 2000)
"""Error codes a backend may send to a client: the protocol's 100-399 and the
applications' 400-1999."""


class BadAnswer(ValueError):
    """The backend's answer is not a valid answer of its hook."""


# -- requests ------------------------------------------------------------------------------


class _Request(msgspec.Struct, omit_defaults=True, kw_only=True):
    client: str
    transport: str
    protocol: str
    encoding: str


class ConnectRequest(_Request, omit_defaults=True, kw_only=True):
    name: str = ""
    version: str = ""
    data: Raw | None = None
    b64data: str = ""
    channels: list[str] = []


class RefreshRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    meta: Raw | None = None


class SubscribeRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    channel: str
    token: str = ""
    data: Raw | None = None
    b64data: str = ""
    meta: Raw | None = None


class SubRefreshRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    channel: str
    meta: Raw | None = None


class PublishRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    channel: str
    data: Raw | None = None
    b64data: str = ""
    meta: Raw | None = None


class RPCRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    method: str
    data: Raw | None = None
    b64data: str = ""
    meta: Raw | None = None


class SendRequest(_Request, omit_defaults=True, kw_only=True):
    user: str
    data: Raw | None = None
    b64data: str = ""
    meta: Raw | None = None


# -- answers -------------------------------------------------------------------------------


class Error(msgspec.Struct):
    code: int
    message: str = ""
    temporary: bool = False


class Disconnect(msgspec.Struct):
    code: int
    reason: str = ""


class SubscribeOptions(msgspec.Struct):
    """One entry of a connect result's ``subs``: a server-side subscription with its
    channel info and the data of its subscribe push (``override`` is not applied)."""

    info: Raw = Raw()
    b64info: str = ""
    data: Raw = Raw()
    b64data: str = ""


class ConnectResult(msgspec.Struct):
    user: str = ""
    expire_at: int = 0
    info: Raw = Raw()
    b64info: str = ""
    data: Raw = Raw()
    b64data: str = ""
    channels: list[str] = []
    subs: dict[str, SubscribeOptions] = {}
    meta: Raw = Raw()


class RefreshResult(msgspec.Struct):
    expired: bool = False
    expire_at: int = 0
    info: Raw = Raw()
    b64info: str = ""


class SubscribeResult(msgspec.Struct):
    expire_at: int = 0
    info: Raw = Raw()
    b64info: str = ""
    data: Raw = Raw()
    b64data: str = ""


class PublishResult(msgspec.Struct):
    data: Raw = Raw()
    b64data: str = ""
    skip_history: bool = False


class RPCResult(msgspec.Struct):
    data: Raw = Raw()
    b64data: str = ""


class EmptyResult(msgspec.Struct):
    pass


R = TypeVar(
    "R", ConnectResult, RefreshResult, SubscribeResult, PublishResult, RPCResult, EmptyResult
)


class Answer(msgspec.Struct):
    result: msgspec.Raw = Raw()
    error: Error | None = None
    disconnect: Disconnect | None = None


def decode(body: bytes, result_type: type[R]) -> R | Error | Disconnect:
    """The backend's answer: its result, or its error, or its disconnect.
    Raises :class:`BadAnswer` (message says what is wrong)."""
    try:
        answer = msgspec.json.decode(body, type=Answer)
    except msgspec.ValidationError as exc:
        raise BadAnswer(f"wrong type: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadAnswer(f"not JSON: {exc}") from None
    has_result = bytes(answer.result) not in (b"", b"null")
    present = [f for f in ("error", "disconnect") if getattr(answer, f) is not None]
    if has_result:
        present.insert(0, "result")
    if len(present) != 1:
        found = ", ".join(present) or "none"
        raise BadAnswer(f"needs exactly one of result, error, disconnect (found: {found})")
    if answer.error is not None:
        if answer.error.code not in ERROR_CODES:
            raise BadAnswer(f"error code {answer.error.code} is not in 100-1999")
        return answer.error
    if answer.disconnect is not None:
        if not is_disconnect_code(answer.disconnect.code):
            raise BadAnswer(f"disconnect code {answer.disconnect.code} is not in 3000-4999")
        return answer.disconnect
    try:
        return msgspec.json.decode(answer.result, type=result_type)
    except msgspec.ValidationError as exc:
        raise BadAnswer(f"wrong type in result: {exc}") from None


def payload(raw: Raw, b64: str, what: str) -> bytes | None:
    """The bytes of a ``data``/``b64data`` (or ``info``/``b64info``) pair, or None.
    Raises :class:`BadAnswer` for base64 that does not decode."""
    if b64:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadAnswer(f"b64{what} is not base64") from None
    if bytes(raw) not in (b"", b"null"):
        return bytes(raw)
    return None


def json_or_b64(data: bytes | None, encoding: str) -> tuple[Raw | None, str]:
    """``(data, b64data)`` of a request: raw JSON on JSON connections, else base64."""
    if data is None:
        return None, ""
    if encoding == "json":
        return Raw(data), ""
    return None, base64.b64encode(data).decode()


encode = msgspec.json.Encoder().encode
