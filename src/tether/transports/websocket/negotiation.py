"""Which encoding a WebSocket connection speaks: decided once, at the upgrade.

This is the one place an encoding plugs into the WebSocket transport: add its codec to
:data:`CODECS` and a rule to :func:`negotiate` (the Centrifugo SDKs ask with the
``Sec-WebSocket-Protocol`` header or a query parameter). Nothing in ``core/`` changes: the
node encodes and frames per :class:`~tether.core.transport.WireFormat`, whatever the codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from tether.core.transport import WireFormat
from tether.protocol.codec import JSON, Codec
from tether.protocol.protobuf import PROTOBUF
from tether.transports.websocket import wire

PROTOBUF_SUBPROTOCOL = "centrifuge-protobuf"
"""What centrifuge-swift, -java, -dart, -python (``use_protobuf``) and the JS SDK's
Protobuf build offer in ``Sec-WebSocket-Protocol``."""

FORMAT_PARAMETERS = ("format", "cf_protocol")
"""Query parameters naming the encoding (``?format=protobuf``; Centrifugo also reads
``cf_protocol``). Values: ``json`` or ``protobuf``."""

CODECS: tuple[Codec, ...] = (JSON, PROTOBUF)
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
    """The encoding of the connection ``request`` opens.

    Protobuf when the client offers the ``centrifuge-protobuf`` subprotocol (the 101
    answer then selects it, as RFC 6455 asks) or names ``protobuf`` in a format query
    parameter; JSON otherwise, the protocol's default (other offered subprotocols are not
    selected). Raises :class:`~tether.transports.websocket.wire.HandshakeError` (400)
    for a format parameter that names neither encoding."""
    offered = request.headers.get("sec-websocket-protocol")
    if offered and PROTOBUF_SUBPROTOCOL in (p.strip() for p in offered.split(",")):
        return _PROTOBUF_SUBPROTOCOL
    if not request.query:
        return _JSON  # the usual upgrade: nothing to parse
    query = parse_qs(request.query, keep_blank_values=True)
    asked = {value for name in FORMAT_PARAMETERS for value in query.get(name, ())}
    if asked - {JSON.name, PROTOBUF.name}:
        raise wire.HandshakeError(400, "Unknown Format")
    if PROTOBUF.name in asked:
        return _PROTOBUF
    return _JSON


_JSON = Negotiated(WIRE_FORMATS[JSON.name])
_PROTOBUF = Negotiated(WIRE_FORMATS[PROTOBUF.name])
_PROTOBUF_SUBPROTOCOL = Negotiated(WIRE_FORMATS[PROTOBUF.name], PROTOBUF_SUBPROTOCOL)
