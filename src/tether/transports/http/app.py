"""The HTTP port: server API, health and readiness, metrics, the OpenAPI document, the
demo page and the live admin page."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from tether.core.node import Node
from tether.proxy.backend import HttpBackend
from tether.proxy.events import Notifier
from tether.transports.http import api, metrics

NOTIFIER_KEY = web.AppKey("notifier", Notifier)

STATIC = resources.files("tether.transports.http") / "static"


async def _health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    """Readiness: 200 while the node accepts clients and its broker delivers; 503 while it
    starts, drains, or its broker is unreachable."""
    node = request.app[api.NODE_KEY]
    if not node.ready:
        return web.json_response(
            {"status": "not ready", "broker_healthy": node.broker.healthy, "closing": node.closing},
            status=503,
        )
    notifier = request.app.get(NOTIFIER_KEY)
    if notifier is None or not notifier.enabled:
        return web.json_response({"status": "ready"})
    # A full outbox does not take the node out of rotation (clients are unaffected), but
    # says so here, with what it drops (docs/howto/backend-hooks.md).
    outboxes = {
        o.name: {
            "buffered": o.store.buffered(),
            "max_buffered": o.store.max_buffered,
            "full": o.stats.full,
            "dropped": o.dropped,
        }
        for o in notifier.outboxes()
    }
    return web.json_response({"status": "ready", "outboxes": outboxes})


def _static(name: str, content_type: str) -> web.Response:
    return web.Response(body=(STATIC / name).read_bytes(), content_type=content_type)


async def _openapi(request: web.Request) -> web.Response:
    return _static("openapi.json", "application/json")


async def _page(request: web.Request) -> web.Response:
    return _static("index.html", "text/html")


async def _admin(request: web.Request) -> web.Response:
    """The live admin page: it reads ``/metrics`` (public) and, with the API key the
    operator types in, ``/api/info`` and ``/api/channels``; it holds no secret itself."""
    return _static("admin.html", "text/html")


def build_app(
    node: Node, *, backend: HttpBackend | None = None, notifier: Notifier | None = None
) -> web.Application:
    # The API body limit follows the client message limit, with room for batch calls.
    app = web.Application(client_max_size=max(node.config.max_message_size * 16, 1 << 20))
    api.add_routes(app, node)
    metrics.add_routes(
        app, node, endpoints=backend.endpoints if backend else None, notifier=notifier
    )
    if notifier is not None:
        app[NOTIFIER_KEY] = notifier
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/", _page)
    app.router.add_get("/admin", _admin)
    return app
