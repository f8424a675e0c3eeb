"""An app's backend in Tether's loop, the way an app would write it (aiohttp + SQLite).

    python examples/backend/app.py [--port 5000] [--db examples/backend/app.db]

Endpoints (see README.md next to this file):

    POST /login                  form or JSON {"user": NAME}: sets the `session` cookie
    POST /tether/connect         connect hook: the session cookie names the user
    POST /tether/subscribe       subscribe hook: rooms; "room:staff-*" for staff only
    POST /tether/publish         publish hook: a chat message is validated and stored in
                                 SQLite before Tether broadcasts it (the stored version)
    POST /tether/rpc             rpc hook: "rooms" (rooms with messages) and "whoami"
    POST /tether/send            send hook: client async messages (stored)
    POST /webhook                Tether's webhook events, deduplicated by id
    POST /push                   offline push: where APNs/FCM would be called
    GET  /messages?channel=...   what was stored (for you, and for the test)
    GET  /events, GET /pushes    the webhook events and pushes received

Only Tether should reach /tether/*: whoever can call them can claim to be any user.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_TEXT = 500
BANNED_WORDS = ("spam",)
STAFF = {"admin"}

SCHEMA = """
create table if not exists sessions (id text primary key, user text not null);
create table if not exists messages (
    id integer primary key autoincrement,
    channel text not null, user text not null, text text not null, at real not null);
create table if not exists client_messages (user text not null, data text not null);
create table if not exists events (id text primary key, type text not null, body text not null);
create table if not exists pushes (id text primary key, user text not null, body text not null);
"""

DB = web.AppKey("db", sqlite3.Connection)


def payload(body: dict[str, Any]) -> Any:
    """The client's payload: ``data`` from JSON connections; ``b64data`` from Protobuf ones
    (whose apps here send JSON documents as bytes)."""
    if "b64data" in body:
        return json.loads(base64.b64decode(body["b64data"]))
    return body.get("data")


def result(value: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"result": value or {}})


def error(code: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}})


# -- the app's own endpoint ------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    if request.content_type == "application/json":
        user = str((await request.json()).get("user", ""))
    else:
        user = str((await request.post()).get("user", ""))
    if not user.isalnum() or len(user) > 32:
        return web.json_response({"error": "user: 1-32 letters or digits"}, status=400)
    session = secrets.token_urlsafe(24)
    with request.app[DB] as db:
        db.execute("insert into sessions values (?, ?)", (session, user))
    response = web.json_response({"user": user})
    response.set_cookie("session", session, httponly=True, samesite="Lax")
    return response


async def messages(request: web.Request) -> web.Response:
    channel = request.query.get("channel", "")
    rows = request.app[DB].execute(
        "select id, user, text from messages where channel = ? order by id", (channel,)
    )
    return web.json_response([{"id": i, "user": u, "text": t} for i, u, t in rows])


async def events(request: web.Request) -> web.Response:
    rows = request.app[DB].execute("select body from events order by rowid")
    return web.json_response([json.loads(body) for (body,) in rows])


async def pushes(request: web.Request) -> web.Response:
    rows = request.app[DB].execute("select body from pushes order by rowid")
    return web.json_response([json.loads(body) for (body,) in rows])


# -- Tether's hooks (Centrifugo's proxy shapes) -----------------------------------------------


async def connect(request: web.Request) -> web.Response:
    session = request.cookies.get("session", "")
    row = request.app[DB].execute("select user from sessions where id = ?", (session,)).fetchone()
    if row is None:
        return error(401, "log in first")
    user = row[0]
    return result({"user": user, "info": {"name": user}, "channels": [f"#{user}"]})


async def subscribe(request: web.Request) -> web.Response:
    body = await request.json()
    channel, user = body["channel"], body["user"]
    if channel.startswith("room:staff-") and user not in STAFF:
        return error(403, "staff only")
    return result({"info": {"role": "staff" if user in STAFF else "member"}})


async def publish(request: web.Request) -> web.Response:
    body = await request.json()
    data = payload(body)
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return error(400, 'a message is {"text": "..."}')
    text = text.strip()
    if len(text) > MAX_TEXT:
        return error(400, f"at most {MAX_TEXT} characters")
    if any(word in text.lower() for word in BANNED_WORDS):
        return error(1000, "message refused")
    # Stored first: what Tether broadcasts is what the app has.
    with request.app[DB] as db:
        cursor = db.execute(
            "insert into messages (channel, user, text, at) values (?, ?, ?, ?)",
            (body["channel"], body["user"], text, time.time()),
        )
    return result({"data": {"id": cursor.lastrowid, "user": body["user"], "text": text}})


async def rpc(request: web.Request) -> web.Response:
    body = await request.json()
    match body["method"]:
        case "whoami":
            return result({"data": {"user": body["user"]}})
        case "rooms":
            rows = request.app[DB].execute(
                "select channel, count(*) from messages group by channel order by channel"
            )
            return result({"data": {"rooms": {channel: n for channel, n in rows}}})
    return error(404, f"no method {body['method']!r}")


async def send(request: web.Request) -> web.Response:
    body = await request.json()
    with request.app[DB] as db:
        db.execute("insert into client_messages values (?, ?)", (body["user"], json.dumps(body)))
    return result()


# -- Tether's outbound events -----------------------------------------------------------------


async def webhook(request: web.Request) -> web.Response:
    """At least once: the same event may come twice, with the same id."""
    body = await request.json()
    with request.app[DB] as db:
        for event in body["events"]:
            db.execute(
                "insert or ignore into events values (?, ?, ?)",
                (event["id"], event["type"], json.dumps(event)),
            )
    return web.Response(status=204)


async def push(request: web.Request) -> web.Response:
    """One event per offline user: here the app would look up the user's devices and call
    APNs or FCM. This example stores the notification (deduplicated by id)."""
    body = await request.json()
    with request.app[DB] as db:
        for event in body["events"]:
            db.execute(
                "insert or ignore into pushes values (?, ?, ?)",
                (event["id"], event["user"], json.dumps(event)),
            )
            print(f"push to {event['user']}: {event['channel']} {json.dumps(event['data'])}")
    return web.Response(status=204)


def make_app(db_path: str) -> web.Application:
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    app = web.Application()
    app[DB] = db
    app.router.add_post("/login", login)
    app.router.add_get("/messages", messages)
    app.router.add_get("/events", events)
    app.router.add_get("/pushes", pushes)
    app.router.add_post("/tether/connect", connect)
    app.router.add_post("/tether/subscribe", subscribe)
    app.router.add_post("/tether/publish", publish)
    app.router.add_post("/tether/rpc", rpc)
    app.router.add_post("/tether/send", send)
    app.router.add_post("/webhook", webhook)
    app.router.add_post("/push", push)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--db", default=str(Path(__file__).with_name("app.db")))
    args = parser.parse_args()
    web.run_app(make_app(args.db), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
