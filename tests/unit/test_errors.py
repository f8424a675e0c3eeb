"""One exception tree, and who gets blamed.

A rule the peer broke is answered to the peer (3501 tells the SDK not to reconnect); a
rule Tether's own code broke is an internal error: logged with its traceback and closed
with 3004, which the SDK answers by reconnecting. h11 makes the same split
(``LocalProtocolError`` / ``RemoteProtocolError``).
"""

from __future__ import annotations

import inspect

import structlog

import tether.errors
from tether.errors import LocalProtocolError, TetherError
from tether.testing.brokers import FaultyBroker
from tether.testing.servers import make_config
from tether.testing.transports import LocalSession, local_node


def test_every_exception_tether_defines_is_under_tether_error() -> None:
    defined = [
        value
        for value in vars(tether.errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]

    assert defined
    assert all(issubclass(cls, TetherError) for cls in defined)
    assert set(tether.errors.__all__) == {cls.__name__ for cls in defined}


async def test_our_own_protocol_error_is_logged_and_closes_with_3004_not_3501() -> None:
    # No path reaches an illegal transition today (a close cancels the command's task),
    # so the error is injected where one would surface: under a command, in our code.
    broker = FaultyBroker()
    async with local_node(make_config(allow_anonymous=True), broker=broker) as node:
        session = LocalSession(node)
        await session.call("connect", {})
        broker.fail("subscribe", exc=lambda: LocalProtocolError("illegal transition"))

        with structlog.testing.capture_logs() as logs:
            session.send_command("subscribe", {"channel": "chat:room"})
            code = await session.wait_closed()

    assert code == 3004
    assert session.transport.closed == (3004, "internal server error")
    [failure] = [entry for entry in logs if entry["log_level"] == "error"]
    assert failure["event"] == "command failed"
    assert failure["exc_info"]
