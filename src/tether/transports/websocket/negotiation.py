"""Which encoding a WebSocket connection speaks: decided once, at the upgrade.

This is the one place an encoding plugs into the WebSocket transport: add its codec to
:data:`CODECS` and a rule to :func:`negotiate` (the Centrifugo SDKs ask with the
``Sec-WebSocket-Protocol`` header or a query parameter). Nothing in ``core/`` changes: the
node encodes and frames per :class:`~tether.core.transport.WireFormat`, whatever the codec.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.core.transport import WireFormat
from tether.protocol.codec import JSON, Codec
from tether.transports.websocket import wire

CODECS: tuple[Codec, ...] = (JSON,)
"""Every encoding this transport speaks."""


def websocket_format(codec: Codec) -> WireFormat:
    """``codec`` on WebSocket: binary frames for a binary codec, text frames otherwise."""
    return WireFormat(codec, wire.binary_frame if codec.binary else wire.text_frame)


WIRE_FORMATS: dict[str, WireFormat] = {codec.name: websocket_format(codec) for codec in CODECS}
"""Codec name -> its wire format on WebSocket. One instance each, made at import and
shared by every connection: the hub frames once per instance."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of the negotiation for one connection."""

    wire_format: WireFormat
    subprotocol: str | None = None
    """The ``Sec-WebSocket-Protocol`` to answer with (None: no such header)."""


def negotiate(request: wire.UpgradeRequest) -> Negotiated:
    """The encoding of the connection ``request`` opens: JSON, the protocol's default.
    Raises :class:`~tether.transports.websocket.wire.HandshakeError` to refuse it."""
    return Negotiated(WIRE_FORMATS[JSON.name])
