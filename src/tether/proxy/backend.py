"""The backend hooks over HTTP: :class:`HttpBackend` implements
:class:`tether.core.hooks.Backend` with Centrifugo's proxy shapes (:mod:`.wire`).

Which hooks are retried (their :class:`~tether.proxy.http.Endpoint` is idempotent):
``connect``, ``refresh``, ``subscribe``, ``sub_refresh`` (checks: asking twice is
harmless). Never ``publish``, ``rpc``, ``send``: the backend may have stored the message
or acted on the call before its answer was lost.

What a failure means, per hook (docs/howto/backend-hooks.md): the session turns
:class:`~tether.errors.BackendUnavailable` into a refusal with a temporary error for
``connect``, ``subscribe``, ``publish``, ``rpc``, ``refresh`` and ``sub_refresh``; a
``send`` that fails is dropped and counted. Nothing that could not be checked is accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import TypeVar

import msgspec
import structlog

from tether.config import HOOKS, Config, ProxyConfig
from tether.core.hooks import (
    Connection,
    ConnectOutcome,
    PublishOutcome,
    RefreshOutcome,
    ServerSubscription,
    SubscribeOutcome,
)
from tether.errors import BackendUnavailable, ClientError, DisconnectRequested
from tether.protocol.codes import DisconnectInfo, ErrorInfo
from tether.proxy import wire
from tether.proxy.http import Endpoint, Limits

log = structlog.get_logger("tether.proxy")

IDEMPOTENT_HOOKS = frozenset({"connect", "refresh", "subscribe", "sub_refresh"})
NAMESPACE_HOOKS = ("subscribe", "publish", "sub_refresh")
R = TypeVar(
    "R",
    wire.ConnectResult,
    wire.RefreshResult,
    wire.SubscribeResult,
    wire.PublishResult,
    wire.RPCResult,
    wire.EmptyResult,
)


def _limits(proxy: ProxyConfig) -> Limits:
    return Limits(
        timeout=proxy.timeout,
        max_in_flight=proxy.max_in_flight,
        max_response_bytes=proxy.max_response_bytes,
        breaker_failures=proxy.breaker_failures,
        breaker_reset=proxy.breaker_reset,
        retry_budget_ratio=proxy.retry_budget_ratio,
    )


def forwarded_headers(proxy: ProxyConfig, upgrade: Mapping[str, str]) -> dict[str, str]:
    """The upgrade's headers and cookies this proxy forwards (``upgrade``: lower-case)."""
    out: dict[str, str] = {}
    for name in proxy.headers:
        value = upgrade.get(name.lower())
        if value is not None:
            out[name] = value
    raw = upgrade.get("cookie")
    if proxy.cookies and raw:
        if "*" in proxy.cookies:
            out["Cookie"] = raw
        else:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(raw)
            except CookieError:
                log.info("unparsable Cookie header not forwarded")
                return out
            kept = [f"{k}={jar[k].coded_value}" for k in proxy.cookies if k in jar]
            if kept:
                out["Cookie"] = "; ".join(kept)
    return out


class HttpBackend:
    """Every configured hook, each on its own :class:`Endpoint`."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        """(proxy name, hook) -> its endpoint; only the pairs some hook uses."""
        self._top: dict[str, str] = {}
        self._by_namespace: dict[tuple[str, str], str] = {}
        for hook in ("connect", "refresh", "rpc", "send"):
            name = getattr(config, f"{hook}_proxy")
            if name:
                self._top[hook] = name
                self._endpoint(name, hook, clock)
        for ns_name, ns in config.namespaces.items():
            for hook in NAMESPACE_HOOKS:
                name = getattr(ns, f"{hook}_proxy")
                if name:
                    self._by_namespace[(hook, ns_name)] = name
                    self._endpoint(name, hook, clock)

    def _endpoint(self, proxy: str, hook: str, clock: Callable[[], float]) -> None:
        assert hook in HOOKS
        if (proxy, hook) in self.endpoints:
            return
        options = self.config.proxies[proxy]
        self.endpoints[(proxy, hook)] = Endpoint(
            f"proxy {proxy} {hook}",
            options.url.rstrip("/") + "/" + hook,
            _limits(options),
            idempotent=hook in IDEMPOTENT_HOOKS,
            clock=clock,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    async def start(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.start()

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.close()

    def _proxy(self, hook: str, namespace: str) -> str:
        if hook in NAMESPACE_HOOKS:
            return self._by_namespace.get((hook, namespace), "")
        return self._top.get(hook, "")

    def hooked(self, hook: str, namespace: str = "") -> bool:
        return bool(self._proxy(hook, namespace))

    async def _call(
        self,
        hook: str,
        namespace: str,
        conn: Connection,
        request: wire._Request,
        result_type: type[R],
    ) -> R:
        proxy = self._proxy(hook, namespace)
        if not proxy:
            raise RuntimeError(f"no {hook} hook for namespace {namespace!r}")
        endpoint = self.endpoints[(proxy, hook)]
        headers = forwarded_headers(self.config.proxies[proxy], conn.headers)

        def parse(body: bytes) -> R | wire.Error | wire.Disconnect:
            try:
                return wire.decode(body, result_type)
            except wire.BadAnswer as exc:
                raise ValueError(str(exc)) from None

        answer = await endpoint.call(wire.encode(request), parse, headers)
        if isinstance(answer, wire.Error):
            error = ErrorInfo(answer.code, answer.message, temporary=answer.temporary)
            raise ClientError(error)
        if isinstance(answer, wire.Disconnect):
            raise DisconnectRequested(DisconnectInfo(answer.code, answer.reason))
        return answer

    def _bad(self, hook: str, namespace: str, why: str) -> BackendUnavailable:
        """A result whose fields are well-typed but unusable (bad base64)."""
        proxy = self._proxy(hook, namespace)
        endpoint = self.endpoints[(proxy, hook)]
        endpoint.stats.failures["malformed"] += 1
        log.warning("backend call failed", endpoint=endpoint.name, reason="malformed", error=why)
        return BackendUnavailable(f"{endpoint.name}: {why}", "malformed")

    # -- the hooks (tether.core.hooks.Backend) -------------------------------------------

    async def connect(
        self,
        conn: Connection,
        *,
        data: bytes | None,
        name: str,
        version: str,
        channels: Sequence[str],
    ) -> ConnectOutcome:
        raw, b64 = wire.json_or_b64(data, conn.encoding)
        request = wire.ConnectRequest(
            **_base(conn),
            name=name,
            version=version,
            data=raw,
            b64data=b64,
            channels=list(channels),
        )
        result = await self._call("connect", "", conn, request, wire.ConnectResult)
        try:
            info = wire.payload(result.info, result.b64info, "info")
            reply_data = wire.payload(result.data, result.b64data, "data")
            subs = {
                channel: ServerSubscription(
                    info=wire.payload(options.info, options.b64info, f"subs.{channel}.info"),
                    data=wire.payload(options.data, options.b64data, f"subs.{channel}.data"),
                )
                for channel, options in result.subs.items()
            }
        except wire.BadAnswer as exc:
            raise self._bad("connect", "", str(exc)) from None
        return ConnectOutcome(
            user=result.user,
            expire_at=float(result.expire_at) if result.expire_at else None,
            info=info,
            data=reply_data,
            channels=tuple(result.channels),
            subs=subs,
            meta=wire.payload(result.meta, "", "meta"),
        )

    async def refresh(self, conn: Connection) -> RefreshOutcome:
        request = wire.RefreshRequest(**_base(conn), user=conn.user, meta=_meta(conn))
        result = await self._call("refresh", "", conn, request, wire.RefreshResult)
        return self._refresh_outcome("refresh", "", result)

    def _refresh_outcome(
        self, hook: str, namespace: str, result: wire.RefreshResult
    ) -> RefreshOutcome:
        try:
            info = wire.payload(result.info, result.b64info, "info")
        except wire.BadAnswer as exc:
            raise self._bad(hook, namespace, str(exc)) from None
        return RefreshOutcome(
            expired=result.expired,
            expire_at=float(result.expire_at) if result.expire_at else None,
            info=info,
        )

    async def subscribe(
        self, conn: Connection, channel: str, namespace: str, *, token: str, data: bytes | None
    ) -> SubscribeOutcome:
        raw, b64 = wire.json_or_b64(data, conn.encoding)
        request = wire.SubscribeRequest(
            **_base(conn),
            user=conn.user,
            channel=channel,
            token=token,
            data=raw,
            b64data=b64,
            meta=_meta(conn),
        )
        result = await self._call("subscribe", namespace, conn, request, wire.SubscribeResult)
        try:
            info = wire.payload(result.info, result.b64info, "info")
            reply_data = wire.payload(result.data, result.b64data, "data")
        except wire.BadAnswer as exc:
            raise self._bad("subscribe", namespace, str(exc)) from None
        return SubscribeOutcome(
            expire_at=float(result.expire_at) if result.expire_at else None,
            info=info,
            data=reply_data,
        )

    async def sub_refresh(self, conn: Connection, channel: str, namespace: str) -> RefreshOutcome:
        request = wire.SubRefreshRequest(
            **_base(conn), user=conn.user, channel=channel, meta=_meta(conn)
        )
        result = await self._call("sub_refresh", namespace, conn, request, wire.RefreshResult)
        return self._refresh_outcome("sub_refresh", namespace, result)

    async def publish(
        self, conn: Connection, channel: str, namespace: str, data: bytes
    ) -> PublishOutcome:
        raw, b64 = wire.json_or_b64(data, conn.encoding)
        request = wire.PublishRequest(
            **_base(conn), user=conn.user, channel=channel, data=raw, b64data=b64, meta=_meta(conn)
        )
        result = await self._call("publish", namespace, conn, request, wire.PublishResult)
        try:
            replaced = wire.payload(result.data, result.b64data, "data")
        except wire.BadAnswer as exc:
            raise self._bad("publish", namespace, str(exc)) from None
        return PublishOutcome(data=replaced, skip_history=result.skip_history)

    async def rpc(self, conn: Connection, method: str, data: bytes | None) -> bytes | None:
        raw, b64 = wire.json_or_b64(data, conn.encoding)
        request = wire.RPCRequest(
            **_base(conn), user=conn.user, method=method, data=raw, b64data=b64, meta=_meta(conn)
        )
        result = await self._call("rpc", "", conn, request, wire.RPCResult)
        try:
            return wire.payload(result.data, result.b64data, "data")
        except wire.BadAnswer as exc:
            raise self._bad("rpc", "", str(exc)) from None

    async def send(self, conn: Connection, data: bytes) -> None:
        raw, b64 = wire.json_or_b64(data, conn.encoding)
        request = wire.SendRequest(
            **_base(conn), user=conn.user, data=raw, b64data=b64, meta=_meta(conn)
        )
        await self._call("send", "", conn, request, wire.EmptyResult)


def _base(conn: Connection) -> dict[str, str]:
    return {
        "client": conn.client,
        "transport": conn.transport,
        "protocol": conn.protocol,
        "encoding": conn.encoding,
    }


def _meta(conn: Connection) -> msgspec.Raw | None:
    return msgspec.Raw(conn.meta) if conn.meta is not None else None
