"""The Protobuf encoding over real sockets: negotiation, binary frames, bad input.

Commands are built with centrifuge-python's generated code (upstream schema) and framed
by hand, so each test controls every byte. After each bad input, a bystander (a JSON
client on the same node) still receives publications: nobody else notices.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from centrifuge.protocol import client_pb2 as sdk
from google.protobuf.json_format import MessageToDict, ParseDict

from tether.auth import mint_connection_token
from tether.protocol.protobuf import delimit, split_messages, varint
from tether.server import Server
from tether.testing.servers import TEST_SECRET
from tether.testing.wsclient import (
    OP_BINARY,
    OP_TEXT,
    HandshakeRejected,
    WSClient,
    client_frame,
    http_exchange,
    upgrade_request,
)

pytestmark = pytest.mark.integration

PROTOBUF = {"Sec-WebSocket-Protocol": "centrifuge-protobuf"}
WATCHED = "chat:watched"


def command(fields: dict[str, Any]) -> bytes:
    return delimit(ParseDict(fields, sdk.Command()).SerializeToString())


def connect(user: str = "alice", cid: int = 1) -> bytes:
    return command({"id": cid, "connect": {"token": mint_connection_token(TEST_SECRET, user)}})


async def replies(ws: WSClient) -> list[dict[str, Any]]:
    """The Replies of the next binary frame (answering pings), as the SDK reads them."""
    while True:
        frame = await ws.recv_frame()
        assert frame.opcode == OP_BINARY, frame
        out = []
        for message in split_messages(frame.payload, max_messages=1000):
            reply = sdk.Reply()
            reply.ParseFromString(message)
            out.append(MessageToDict(reply, preserving_proto_field_name=True))
        if out == [{}]:  # the server's ping
            await ws.send_frame(OP_BINARY, b"\x00")
            continue
        return out


async def closed_with(ws: WSClient, opcode: int, payload: bytes) -> int | None:
    with contextlib.suppress(ConnectionError):
        await ws.send_frame(opcode, payload)
    return await ws.wait_closed()


@pytest.fixture
async def session(server: Server) -> AsyncIterator[WSClient]:
    """A connected Protobuf session of alice."""
    ws = await WSClient.open(server.port, headers=PROTOBUF)
    await ws.send_frame(OP_BINARY, connect())
    [reply] = await replies(ws)
    assert "connect" in reply, reply
    try:
        yield ws
    finally:
        await ws.close()


@pytest.fixture
async def bystander(server: Server) -> AsyncIterator[WSClient]:
    ws = await WSClient.open(server.port)
    token = mint_connection_token(TEST_SECRET, "bystander")
    assert "connect" in await ws.call("connect", {"token": token})
    assert "subscribe" in await ws.call("subscribe", {"channel": WATCHED})
    try:
        yield ws
    finally:
        await ws.close()


async def still_receives(server: Server, bystander: WSClient) -> None:
    await server.node.publish(WATCHED, b'{"still":true}')
    while "pub" not in (push := await bystander.next_push()):
        pass
    assert push["pub"]["data"] == {"still": True}


# -- negotiation --------------------------------------------------------------------------


async def test_protobuf_subprotocol_is_selected_in_the_101_answer(server: Server) -> None:
    status, head = await http_exchange(server.port, upgrade_request(headers=PROTOBUF))
    assert status == 101
    assert b"\r\nSec-WebSocket-Protocol: centrifuge-protobuf\r\n" in head


async def test_json_upgrade_names_no_subprotocol(server: Server) -> None:
    status, head = await http_exchange(server.port, upgrade_request())
    assert status == 101
    assert b"Sec-WebSocket-Protocol" not in head


@pytest.mark.parametrize("query", ["format=protobuf", "cf_protocol=protobuf"])
async def test_format_query_speaks_protobuf(server: Server, query: str) -> None:
    async with await WSClient.open(server.port, path=f"/connection/websocket?{query}") as ws:
        await ws.send_frame(OP_BINARY, connect())
        [reply] = await replies(ws)
    assert reply["id"] == 1
    assert reply["connect"]["client"] in server.node.clients


async def test_unknown_format_is_refused_with_400(server: Server) -> None:
    with pytest.raises(HandshakeRejected) as refused:
        await WSClient.open(server.port, path="/connection/websocket?format=xml")
    assert refused.value.status == 400


# -- the session --------------------------------------------------------------------------


async def test_batch_of_commands_gets_its_replies_in_binary_frames(
    session: WSClient, server: Server
) -> None:
    await session.send_frame(
        OP_BINARY,
        command({"id": 2, "subscribe": {"channel": "chat:a"}})
        + command({"id": 3, "presence_stats": {"channel": "chat:a"}})
        + b"\x00",  # a pong in the batch is skipped
    )
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        got += await replies(session)
    await server.node.publish("chat:a", b'{"n":1}')
    while "pub" not in (push := (await replies(session))[0])["push"]:
        pass  # alice's own join push comes first (join/leave is on in chat)

    assert [r["id"] for r in got] == [2, 3]
    assert got[1]["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert push["push"]["channel"] == "chat:a"
    assert push["push"]["pub"]["offset"] == "1"


async def test_error_reply_keeps_the_connection(session: WSClient) -> None:
    await session.send_frame(OP_BINARY, command({"id": 2, "subscribe": {"channel": "nope:a"}}))
    [reply] = await replies(session)
    await session.send_frame(OP_BINARY, command({"id": 3, "ping": {}}))
    [pong] = await replies(session)
    assert reply["error"]["code"] == 102
    assert pong == {"id": 3, "ping": {}}


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80",  # truncated varint
        b"\xff" * 11,  # varint longer than 10 bytes
        varint(50) + b"\x08\x01",  # length past the end of the frame
        varint(2**40) + b"\x08\x01",  # length past max_message_size
        delimit(b"\x0a\x01x"),  # id sent with the wire type of bytes
        delimit(b"\x08\x01\x2a\x03\x0a\x01\xff"),  # invalid UTF-8 in a string
        delimit(b"\x08\x01"),  # an id and no request
        command({"subscribe": {"channel": "chat:a"}}),  # no id
    ],
    ids=[
        "truncated-varint",
        "long-varint",
        "length-past-frame",
        "length-past-max",
        "wrong-wire-type",
        "bad-utf8",
        "no-request",
        "no-id",
    ],
)
async def test_bad_protobuf_closes_with_3501(
    session: WSClient, server: Server, bystander: WSClient, payload: bytes
) -> None:
    assert await closed_with(session, OP_BINARY, payload) == 3501
    await still_receives(server, bystander)


async def test_unknown_fields_are_ignored(session: WSClient) -> None:
    body = ParseDict({"id": 2, "ping": {}}, sdk.Command()).SerializeToString() + b"\xf8\x06\x01"
    await session.send_frame(OP_BINARY, delimit(body))
    assert await replies(session) == [{"id": 2, "ping": {}}]


async def test_text_frame_on_a_protobuf_connection_closes_with_3501(
    session: WSClient, server: Server, bystander: WSClient
) -> None:
    assert await closed_with(session, OP_TEXT, b'{"id":2,"ping":{}}') == 3501
    assert session.close_frame is not None
    assert session.close_frame.close_reason == "text frame on a Protobuf connection"
    await still_receives(server, bystander)


async def test_protobuf_on_a_json_connection_closes_with_3501(
    server: Server, bystander: WSClient
) -> None:
    async with await WSClient.open(server.port) as ws:
        assert await closed_with(ws, OP_BINARY, connect()) == 3501
    await still_receives(server, bystander)


async def test_message_over_max_message_size_closes_with_1009(
    session: WSClient, server: Server, bystander: WSClient
) -> None:
    big = command({"id": 2, "publish": {"channel": "chat:a", "data": "A" * 90_000}})
    with contextlib.suppress(ConnectionError):
        await session.send_raw(client_frame(OP_BINARY, big))
    assert await session.wait_closed() == 1009
    await still_receives(server, bystander)
