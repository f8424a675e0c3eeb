"""One typed configuration: a TOML file, then ``TETHER_*`` environment overrides.

Validation happens once, at start; every message names the bad key and what is expected.
``tether genconfig`` prints :data:`DEFAULT_CONFIG_TOML`, the commented reference of every
option (also in ``docs/reference/config.md``).
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tether.brokers.addresses import shard_address
from tether.core.lanes import LANE_NAMES, Lane, default_publish_limits
from tether.errors import ConfigError
from tether.protocol.channels import DEFAULT_NAMESPACE

_NAMESPACE_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


DELTA_TYPES = ("fossil",)
"""Delta compressions Tether can send (``allowed_delta_types``)."""


class NamespaceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Options of every channel in one namespace (``[namespaces.NAME]``)."""

    history_size: int = 0
    """Publications kept per channel (0: no history, no recovery)."""
    history_ttl: float = 0
    """Seconds a channel's stream is kept after its last publication."""
    recover: bool = False
    """Recovery on for every subscriber (``recoverable`` forced in subscribe replies)."""
    presence: bool = False
    """Track who is subscribed; enables presence and presence_stats."""
    join_leave: bool = False
    """Send join/leave pushes to subscribers."""
    allow_publish: bool = False
    """Subscribers may publish from the client."""
    allow_subscribe: bool = False
    """Any connected client may subscribe without a subscription token."""
    allow_user_limited_channels: bool = False
    """A channel naming users after ``#`` (``dm:1#alice,bob``) may be subscribed by
    those users without a token, and by nobody else without one."""
    allow_history: bool = False
    """Subscribers may call history, presence and presence_stats from the client."""
    lane: str = Lane.STANDARD.value
    """Event class: ``critical`` (never dropped, sent first), ``standard``, or ``ephemeral``
    (typing, cursors: coalesced or dropped under pressure, never stored in history); what
    each means is :mod:`tether.core.lanes`."""
    subscribe_proxy: str = ""
    """Name of the ``[proxies.NAME]`` whose ``/subscribe`` authorizes subscriptions here."""
    publish_proxy: str = ""
    """Name of the proxy whose ``/publish`` checks (and may replace) client publications."""
    sub_refresh_proxy: str = ""
    """Name of the proxy whose ``/sub_refresh`` extends expiring subscriptions."""
    allowed_delta_types: tuple[str, ...] = ()
    """Delta compressions a subscriber may ask for (``["fossil"]``); empty: none."""
    delta_publish: bool = False
    """Publications of this namespace go as fossil deltas to subscribers that negotiated
    it (each still gets a full publication first, and after any gap)."""
    wait_replicas: int = 0
    """Redis only: a publish is answered only once this many replicas have it (Redis
    ``WAIT``), so that a failover cannot lose it; fewer within ``wait_timeout``: the
    publish fails as temporary (HTTP 503; retry with the same idempotency key)."""
    wait_timeout: float = 0.5
    """Seconds a publish waits for ``wait_replicas`` (less than 2, the Redis command
    timeout)."""
    push: bool = False
    """Publications to channels naming users (``#alice``, ``dm:1#alice,bob``) are sent to
    ``[push].url`` for every named user without a live subscription (needs presence)."""


HOOKS = ("connect", "refresh", "subscribe", "sub_refresh", "publish", "rpc", "send")
"""The backend hooks; each posts to the proxy's ``url`` + ``/`` + hook."""


class ProxyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One backend reached over HTTP (``[proxies.NAME]``). Every hook that uses it gets its
    own connection pool, concurrency limit, circuit breaker and retry budget."""

    url: str = ""
    """Base URL: each hook posts to ``url + "/connect"``, ``"/subscribe"``, ..."""
    timeout: float = 1.0
    """Seconds for one whole call (connect, send, read the answer); then it failed."""
    headers: list[str] = []
    """Headers of the client's WebSocket upgrade forwarded to every hook (names)."""
    cookies: list[str] = []
    """Cookies of the upgrade forwarded to every hook, by name (``["*"]``: all)."""
    max_in_flight: int = 100
    """Calls in flight per hook (and pooled connections); beyond it: refused at once."""
    max_response_bytes: int = 1 << 20
    """Largest answer accepted; a larger one is a failed call."""
    breaker_failures: int = 5
    """Consecutive failed calls of one hook that open its circuit breaker."""
    breaker_reset: float = 5.0
    """Seconds a hook's breaker stays open before one probe call."""
    retry_budget_ratio: float = 0.1
    """Retries (idempotent hooks only) add at most this share to a hook's calls."""


class OutboxConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Outbound events POSTed in batches, at least once (``[webhook]`` and ``[push]``)."""

    url: str = ""
    """Where batches are POSTed; empty: off."""
    timeout: float = 5.0
    """Seconds for one batch POST."""
    batch_size: int = 100
    """Most events in one POST."""
    max_buffered: int = 100000
    """Events held while the receiver is down; beyond it new events are dropped (loudly)."""
    headers: dict[str, str] = {}
    """Extra headers of every POST (e.g. ``Authorization`` for the receiver)."""
    breaker_failures: int = 5
    breaker_reset: float = 5.0
    retry_budget_ratio: float = 0.1


WEBHOOK_EVENTS = ("connect", "disconnect", "subscribe", "unsubscribe", "publication")


class WebhookConfig(OutboxConfig, forbid_unknown_fields=True, frozen=True):
    events: list[str] = msgspec.field(default_factory=lambda: list(WEBHOOK_EVENTS))
    """Which events are sent (``publication``: only of ``namespaces``)."""
    namespaces: list[str] = []
    """Namespaces whose publications are sent (with ``publication`` in ``events``)."""


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole configuration. Every field has a default; see docs/reference/config.md."""

    host: str = "0.0.0.0"
    port: int = 8000
    http_port: int = 9000
    token_secret: str = ""
    api_key: str = ""
    allow_anonymous: bool = False
    user_personal_channel: bool = False
    """Every connection of a user (not the anonymous one) joins its personal channel
    ``#<user>`` at connect, server-side (Centrifugo's
    ``subscribe_to_user_personal_channel``)."""
    user_personal_channel_namespace: str = ""
    """Namespace of the personal channels (``personal`` -> ``personal:#alice``; empty:
    ``default``); it must be configured."""
    allowed_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    node_name: str = ""
    ping_interval: int = 25
    pong_timeout: int = 8
    connect_timeout: float = 10
    expired_close_delay: float = 25
    max_message_size: int = 65536
    max_commands_per_frame: int = 100
    max_subscriptions: int = 128
    max_channel_length: int = 255
    max_presence_entries: int = 1000
    outbound_queue_bytes: int = 1 << 20
    flush_max_delay: float = 0.002
    ephemeral_queue_bytes: int = 64 << 10
    ephemeral_window: float = 0.02
    lane_publish_limits: dict[str, int] = msgspec.field(default_factory=default_publish_limits)
    client_publish_rate: float = 50
    client_publish_burst: int = 100
    max_connections: int = 100000
    max_connects_per_second: float = 2000
    max_connects_burst: int = 4000
    max_connections_per_ip: int = 0
    max_connections_per_user: int = 0
    drain_window: float = 5
    drain_timeout: float = 30
    recovery_max_publications: int = 300
    history_max_limit: int = 1000
    idempotency_ttl: float = 300
    history_meta_ttl: float = 86400
    log_level: str = "info"
    log_format: str = "console"
    use_uvloop: bool = True
    broker: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_urls: list[str] = msgspec.field(default_factory=list)
    redis_cluster: bool = False
    redis_sentinels: list[str] = msgspec.field(default_factory=list)
    redis_sentinel_master: str = ""
    redis_prefix: str = "tether"
    presence_ttl: float = 60
    breaker_failures: int = 5
    breaker_reset: float = 2.0
    retry_budget_ratio: float = 0.1
    connect_proxy: str = ""
    refresh_proxy: str = ""
    rpc_proxy: str = ""
    send_proxy: str = ""
    proxies: dict[str, ProxyConfig] = {}
    webhook: WebhookConfig = msgspec.field(default_factory=WebhookConfig)
    push: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    namespaces: dict[str, NamespaceConfig] = {}

    def namespace(self, name: str) -> NamespaceConfig | None:
        """Options of namespace ``name``, or None if it is not configured."""
        return self.namespaces.get(name)


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: str
    """Where the config came from: a path, or "defaults"."""
    generated_token_secret: bool
    """True when token_secret was generated for this run (development setup)."""
    generated_api_key: bool

    @property
    def generated_secrets(self) -> bool:
        return self.generated_token_secret or self.generated_api_key


ENV_PREFIX = "TETHER_"
_SCALAR_ENV = {
    name: f"{ENV_PREFIX}{name.upper()}"
    for name in Config.__struct_fields__
    if name
    not in (
        "namespaces",
        "allowed_origins",
        "lane_publish_limits",
        "redis_urls",
        "redis_sentinels",
        "proxies",
        "webhook",
        "push",
    )
}


def _validate(config: Config) -> None:
    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"invalid config: `{key}` {expected}")

    if len(config.token_secret.encode()) < 32:
        raise bad("token_secret", "must be at least 32 bytes (HS256 needs a 256-bit key)")
    for key in ("port", "http_port"):
        if not 0 <= getattr(config, key) <= 65535:
            raise bad(key, "must be a TCP port between 0 and 65535")
    positive = (
        "ping_interval",
        "pong_timeout",
        "connect_timeout",
        "max_message_size",
        "max_commands_per_frame",
        "max_subscriptions",
        "max_channel_length",
        "max_presence_entries",
        "outbound_queue_bytes",
        "recovery_max_publications",
        "history_max_limit",
        "idempotency_ttl",
        "history_meta_ttl",
        "presence_ttl",
        "breaker_failures",
        "breaker_reset",
        "retry_budget_ratio",
        "ephemeral_queue_bytes",
        "client_publish_rate",
        "client_publish_burst",
        "max_connections",
        "max_connects_per_second",
        "max_connects_burst",
        "drain_timeout",
    )
    for key in positive:
        if getattr(config, key) <= 0:
            raise bad(key, "must be greater than 0")
    if config.pong_timeout >= config.ping_interval:
        raise bad("pong_timeout", "must be smaller than ping_interval")
    if config.expired_close_delay < 0:
        raise bad("expired_close_delay", "must be 0 or more")
    if config.ephemeral_window > 1:
        raise bad("ephemeral_window", "must be at most 1 second (typing and cursors go stale)")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise bad("log_level", "must be one of debug, info, warning, error")
    for key in (
        "max_connections_per_ip",
        "max_connections_per_user",
        "drain_window",
        "flush_max_delay",
        "ephemeral_window",
    ):
        if getattr(config, key) < 0:
            raise bad(key, "must be 0 (unlimited / immediate) or more")
    for lane in LANE_NAMES:
        if config.lane_publish_limits.get(lane, 0) <= 0:
            raise bad(f"lane_publish_limits.{lane}", "must be greater than 0")
    for lane in config.lane_publish_limits:
        if lane not in LANE_NAMES:
            raise bad(
                f"lane_publish_limits.{lane}", f"is not a lane (one of {', '.join(LANE_NAMES)})"
            )
    if config.broker not in ("memory", "redis"):
        raise bad("broker", "must be memory or redis")
    if config.broker == "redis" and not config.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise bad("redis_url", "must be a redis://, rediss:// or unix:// URL")
    _validate_redis_urls(config, bad)
    _validate_redis_cluster(config, bad)
    _validate_redis_sentinels(config, bad)
    if config.log_format not in ("console", "json"):
        raise bad("log_format", "must be console or json")
    for name, ns in config.namespaces.items():
        where = f"namespaces.{name}"
        if not _NAMESPACE_NAME.match(name):
            raise bad(where, "has an invalid name (letters, digits, _ - . only, 1-64 chars)")
        if ns.history_size < 0:
            raise bad(f"{where}.history_size", "must be 0 or more")
        if ns.history_ttl < 0:
            raise bad(f"{where}.history_ttl", "must be 0 or more")
        if (ns.history_size > 0) != (ns.history_ttl > 0):
            raise bad(where, "needs both history_size and history_ttl above 0, or neither")
        if ns.recover and ns.history_size == 0:
            raise bad(f"{where}.recover", "needs history (history_size and history_ttl)")
        if ns.wait_replicas < 0:
            raise bad(f"{where}.wait_replicas", "must be 0 (do not wait) or more")
        if ns.wait_replicas and (config.broker != "redis" or config.redis_cluster):
            raise bad(
                f"{where}.wait_replicas",
                'needs broker = "redis" without redis_cluster (one Redis, shards or Sentinel)',
            )
        if not 0 < ns.wait_timeout < 2:
            raise bad(f"{where}.wait_timeout", "must be above 0 and below 2 seconds")
        if ns.lane not in LANE_NAMES:
            raise bad(f"{where}.lane", f"must be one of {', '.join(LANE_NAMES)}")
        if not Lane.named(ns.lane).stored and ns.history_size > 0:
            raise bad(f"{where}.lane", "ephemeral events are never stored: set history_size 0")
        for delta_type in ns.allowed_delta_types:
            if delta_type not in DELTA_TYPES:
                raise bad(f"{where}.allowed_delta_types", f"{delta_type!r} is not one of fossil")
        if ns.allowed_delta_types and Lane.named(ns.lane).coalesced:
            raise bad(
                f"{where}.allowed_delta_types",
                "the ephemeral lane coalesces frames, so a delta could miss its base",
            )
    if config.user_personal_channel:
        ns_name = config.user_personal_channel_namespace or "default"
        if ns_name not in config.namespaces:
            raise bad("user_personal_channel_namespace", f"names {ns_name!r}, not in [namespaces]")
    _validate_proxies(config, bad)
    _validate_outboxes(config, bad)


def _validate_http_url(url: str, key: str, bad: Callable[[str, str], ConfigError]) -> None:
    if not re.match(r"^https?://[^/\s]+", url):
        raise bad(key, f"must be an http:// or https:// URL (got {_without_password(url)!r})")


def _validate_proxies(config: Config, bad: Callable[[str, str], ConfigError]) -> None:
    for name, proxy in config.proxies.items():
        where = f"proxies.{name}"
        if not _NAMESPACE_NAME.match(name):
            raise bad(where, "has an invalid name (letters, digits, _ - . only, 1-64 chars)")
        _validate_http_url(proxy.url, f"{where}.url", bad)
        for key in (
            "timeout",
            "max_in_flight",
            "max_response_bytes",
            "breaker_failures",
            "breaker_reset",
            "retry_budget_ratio",
        ):
            if getattr(proxy, key) <= 0:
                raise bad(f"{where}.{key}", "must be greater than 0")
        for header in proxy.headers:
            if header.lower() == "cookie":
                raise bad(f"{where}.headers", "cannot list Cookie: name the cookies in `cookies`")
        if proxy.cookies and "*" in config.allowed_origins:
            raise bad(
                f"{where}.cookies",
                'forwards cookies while allowed_origins = ["*"]: any web page a user visits '
                "could open a WebSocket that carries the user's cookies (cross-site "
                "WebSocket hijacking); list the origins of your app in allowed_origins",
            )

    def check_name(key: str, name: str) -> None:
        if name and name not in config.proxies:
            known = ", ".join(sorted(config.proxies)) or "none"
            raise bad(key, f"names the proxy {name!r}, which is not in [proxies] (known: {known})")

    for key in ("connect_proxy", "refresh_proxy", "rpc_proxy", "send_proxy"):
        check_name(key, getattr(config, key))
    for ns_name, ns in config.namespaces.items():
        for key in ("subscribe_proxy", "publish_proxy", "sub_refresh_proxy"):
            check_name(f"namespaces.{ns_name}.{key}", getattr(ns, key))


def _validate_outboxes(config: Config, bad: Callable[[str, str], ConfigError]) -> None:
    for where, outbox in (("webhook", config.webhook), ("push", config.push)):
        if outbox.url:
            _validate_http_url(outbox.url, f"{where}.url", bad)
        for key in (
            "timeout",
            "batch_size",
            "max_buffered",
            "breaker_failures",
            "breaker_reset",
            "retry_budget_ratio",
        ):
            if getattr(outbox, key) <= 0:
                raise bad(f"{where}.{key}", "must be greater than 0")
    for event in config.webhook.events:
        if event not in WEBHOOK_EVENTS:
            raise bad("webhook.events", f"has {event!r}, not one of {', '.join(WEBHOOK_EVENTS)}")
    for ns_name in config.webhook.namespaces:
        if ns_name not in config.namespaces:
            raise bad("webhook.namespaces", f"names {ns_name!r}, which is not in [namespaces]")
    for ns_name, ns in config.namespaces.items():
        if not ns.push:
            continue
        if not config.push.url:
            raise bad(f"namespaces.{ns_name}.push", "needs [push] url (where pushes go)")
        if not ns.presence:
            raise bad(
                f"namespaces.{ns_name}.push",
                "needs presence = true (who is online decides who gets a push)",
            )


def _validate_redis_urls(config: Config, bad: Callable[[str, str], ConfigError]) -> None:
    if not config.redis_urls:
        return
    if config.broker != "redis":
        raise bad("redis_urls", 'needs broker = "redis"')
    seen: dict[str, str] = {}
    for i, url in enumerate(config.redis_urls):
        try:
            address = shard_address(url)
        except ValueError as exc:
            raise bad(f"redis_urls[{i}]", f"{exc} (got {_without_password(url)!r})") from None
        if address in seen:
            raise bad(
                f"redis_urls[{i}]",
                f"names the shard {address} again (already {seen[address]!r}): "
                "every shard must be a different server or database",
            )
        seen[address] = _without_password(url)


def _validate_redis_cluster(config: Config, bad: Callable[[str, str], ConfigError]) -> None:
    if not config.redis_cluster:
        return
    if config.broker != "redis":
        raise bad("redis_cluster", 'needs broker = "redis"')
    if config.redis_urls:
        raise bad(
            "redis_cluster",
            "cannot be combined with redis_urls (sharding over independent servers): "
            "a Redis Cluster spreads the channels itself; set redis_url to one of its nodes",
        )
    if not config.redis_url.startswith(("redis://", "rediss://")):
        raise bad(
            "redis_url",
            "must be a redis:// or rediss:// URL of a cluster node with redis_cluster = true "
            f"(got {_without_password(config.redis_url)!r})",
        )
    try:
        address = shard_address(config.redis_url)
    except ValueError as exc:
        raise bad("redis_url", f"{exc} (got {_without_password(config.redis_url)!r})") from None
    if not address.endswith("/0"):
        raise bad(
            "redis_url", "must use database 0 with redis_cluster = true (a cluster has no others)"
        )


def _validate_redis_sentinels(config: Config, bad: Callable[[str, str], ConfigError]) -> None:
    if not config.redis_sentinels and not config.redis_sentinel_master:
        return
    key = "redis_sentinels" if config.redis_sentinels else "redis_sentinel_master"
    if config.broker != "redis":
        raise bad(key, 'needs broker = "redis"')
    if not config.redis_sentinels:
        raise bad("redis_sentinels", "must list the Sentinels (host:port) to ask for the master")
    if not config.redis_sentinel_master:
        raise bad(
            "redis_sentinel_master",
            "must name the master the Sentinels watch (`sentinel monitor <name> ...`)",
        )
    if config.redis_urls or config.redis_cluster:
        raise bad(
            "redis_sentinels",
            "cannot be combined with redis_urls or redis_cluster (Sentinel watches one "
            "primary and its replicas)",
        )
    if not config.redis_url.startswith(("redis://", "rediss://")):
        raise bad(
            "redis_url",
            "must be a redis:// or rediss:// URL with redis_sentinels (its credentials, "
            f"database and TLS apply to the master; got {_without_password(config.redis_url)!r})",
        )
    for i, address in enumerate(config.redis_sentinels):
        try:
            sentinel_address(address)
        except ValueError as exc:
            raise bad(f"redis_sentinels[{i}]", f"{exc} (got {address!r})") from None


def sentinel_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a ``host:port`` entry of ``redis_sentinels`` (``[v6]:port`` for
    an IPv6 address). Raises ValueError saying what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError("must be host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("has a port that is not a number from 1 to 65535")
    return host, int(port)


def _without_password(url: str) -> str:
    """``url`` fit for an error message: the password replaced by ``***``."""
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, var in _SCALAR_ENV.items():
        if var in env:
            out[key] = env[var]
    if f"{ENV_PREFIX}ALLOWED_ORIGINS" in env:
        raw = env[f"{ENV_PREFIX}ALLOWED_ORIGINS"]
        out["allowed_origins"] = [o.strip() for o in raw.split(",") if o.strip()]
    for key in ("redis_urls", "redis_sentinels"):
        if f"{ENV_PREFIX}{key.upper()}" in env:
            raw = env[f"{ENV_PREFIX}{key.upper()}"]
            out[key] = [u.strip() for u in raw.split(",") if u.strip()]
    return out


def _convert(raw: dict[str, Any], *, from_env: bool) -> Config:
    try:
        return msgspec.convert(raw, Config, strict=not from_env)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.port`"
        text = str(exc).replace("$.", "")
        # ...but hides dict keys ("at `namespaces[...].history_size`"): name the table.
        tables: tuple[tuple[str, type[msgspec.Struct]], ...] = (
            ("namespaces", NamespaceConfig),
            ("proxies", ProxyConfig),
        )
        for key, struct in tables:
            entries = raw.get(key)
            if f"{key}[...]" in text and isinstance(entries, dict):
                for name, options in entries.items():
                    try:
                        msgspec.convert(options, struct, strict=not from_env)
                    except msgspec.ValidationError:
                        text = text.replace(f"{key}[...]", f"{key}.{name}")
                        break
        raise ConfigError(f"invalid config: {text}") from None


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read the TOML file (``path``, else ``$TETHER_CONFIG``, else none), apply environment
    overrides, validate. Without a token secret or API key, generates development ones.

    Raises :class:`ConfigError` naming the key for any invalid value or unknown key.
    """
    env = os.environ if env is None else env
    path = path or env.get(f"{ENV_PREFIX}CONFIG") or None
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        source = str(path)
    file_config = _convert(raw, from_env=False)
    overrides = _env_overrides(env)
    if overrides:
        merged = msgspec.to_builtins(file_config)
        merged.update(overrides)
        config = _convert(merged, from_env=True)
    else:
        config = file_config
    if DEFAULT_NAMESPACE not in config.namespaces:
        namespaces = {DEFAULT_NAMESPACE: NamespaceConfig(), **config.namespaces}
        config = msgspec.structs.replace(config, namespaces=namespaces)
    generated_secret, generated_key = not config.token_secret, not config.api_key
    if generated_secret or generated_key:
        config = msgspec.structs.replace(
            config,
            token_secret=config.token_secret or secrets.token_urlsafe(32),
            api_key=config.api_key or secrets.token_urlsafe(24),
        )
    _validate(config)
    return LoadedConfig(
        config=config,
        source=source,
        generated_token_secret=generated_secret,
        generated_api_key=generated_key,
    )


DEFAULT_CONFIG_TOML = """\
# Tether configuration. Every key is optional; shown here with its default.
# Environment variables override the file: TETHER_<KEY> for every top-level key
# (TETHER_PORT, TETHER_HTTP_PORT, TETHER_TOKEN_SECRET, TETHER_API_KEY, ...), and
# TETHER_CONFIG names this file.

host = "0.0.0.0"            # address both listeners bind to
port = 8000                 # client WebSocket: ws://HOST:PORT/connection/websocket
http_port = 9000            # server API (/api/<method>), /health, /ready, /metrics, page
token_secret = ""           # HMAC secret (HS256) of JWTs, >= 32 bytes; empty: generated
api_key = ""                # server API key (X-API-Key); empty: generated (development only)
allow_anonymous = false     # connect without a token (user "")
user_personal_channel = false  # every connection of a user joins "#<user>" at connect
user_personal_channel_namespace = ""  # namespace of those channels (personal:#alice)
allowed_origins = ["*"]     # browser Origin values accepted on the WebSocket ("*": any)
node_name = ""              # shown in info and connect replies; empty: hostname-port

ping_interval = 25          # seconds between server pings ({}); announced to the client
pong_timeout = 8            # seconds a client has to answer a ping (disconnect 3012)
connect_timeout = 10        # seconds to send connect after the upgrade (disconnect 3502)
expired_close_delay = 25    # seconds past a token's exp to refresh it before 3005/3006

max_message_size = 65536    # bytes in one client frame (larger: close 1009)
max_commands_per_frame = 100
max_subscriptions = 128     # per connection (error 106)
max_channel_length = 255    # characters (error 107)
max_presence_entries = 1000 # presence replies larger than this: error 106
outbound_queue_bytes = 1048576  # per connection, all lanes, held while its socket is full;
                                # over it: standard lane shed or the client is slow (3008)
flush_max_delay = 0.002     # seconds: after an expensive flush (many sockets), wait up to
                            # this long so that more publications share the next write
ephemeral_queue_bytes = 65536   # per connection, ephemeral lane; over it oldest are dropped
ephemeral_window = 0.02     # seconds: ephemeral frames of a channel are coalesced by key and
                            # sent together at most this often (the first at once)
client_publish_rate = 50    # publishes per second per connection (error 111 beyond)
client_publish_burst = 100

# Admission control (reconnection storms): beyond these a WebSocket upgrade gets
# HTTP 503 with Retry-After, and SDKs back off with jitter. 0: unlimited.
max_connections = 100000
max_connects_per_second = 2000
max_connects_burst = 4000
max_connections_per_ip = 0
max_connections_per_user = 0  # beyond it, connect gets error 111 (temporary)

drain_window = 5            # seconds over which shutdown spreads its disconnects (3001)
drain_timeout = 30          # seconds after which shutdown stops waiting

recovery_max_publications = 300  # most publications returned by one recovery
history_max_limit = 1000         # most publications returned by one history call
idempotency_ttl = 300            # seconds a publish idempotency key is remembered
history_meta_ttl = 86400         # seconds a stream's offset/epoch outlive its last publish

log_level = "info"          # debug, info, warning, error
log_format = "console"      # console, json
use_uvloop = true           # use uvloop when installed

broker = "memory"           # memory (one node, embedded) or redis (many nodes)
redis_url = "redis://127.0.0.1:6379/0"
redis_prefix = "tether"     # prefix of every Redis key and pub/sub channel
# Sharding: spread channels over several independent Redis servers (consistent hashing
# on host:port/db; list the same servers on every node, in any order). When non-empty it
# replaces redis_url. Adding a shard moves ~1/N of the channels, whose streams restart.
# Environment: TETHER_REDIS_URLS, comma-separated. See docs/howto/scale-out.md.
redis_urls = []             # e.g. ["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"]
# Redis Cluster (>= 7) with sharded pub/sub: redis_url names one node (the seed), the
# other masters are discovered from it. Not with redis_urls. See docs/howto/scale-out.md.
redis_cluster = false       # environment: TETHER_REDIS_CLUSTER=true
# Redis Sentinel: ask these Sentinels where the master is, and follow it over a failover
# (commands and the subscriber connection); redis_url then gives only the credentials,
# database and TLS. Environment: TETHER_REDIS_SENTINELS, comma-separated.
redis_sentinels = []        # e.g. ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
redis_sentinel_master = ""  # the name in `sentinel monitor <name> ...`
presence_ttl = 60           # seconds a presence entry outlives its node (redis broker)
breaker_failures = 5        # consecutive broker failures that open the circuit breaker
breaker_reset = 2.0         # seconds the breaker stays open before one probe call
retry_budget_ratio = 0.1    # retries (reads, idempotent publishes) add at most this load

# Backend hooks (docs/howto/backend-hooks.md): the name of a [proxies.NAME] table, or "".
# Per namespace: subscribe_proxy, publish_proxy, sub_refresh_proxy.
connect_proxy = ""          # authenticate connections by asking the backend (/connect)
refresh_proxy = ""          # extend expiring connections (/refresh), server-side
rpc_proxy = ""              # client RPCs answered by the backend (/rpc)
send_proxy = ""             # client async messages to the backend (/send)

# Publishes accepted but not yet done, per lane; beyond it the API answers 429 with
# Retry-After and clients get error 111, before any work is done.
[lane_publish_limits]
critical = 10000
standard = 5000
ephemeral = 1000

# [proxies.NAME]: a backend over HTTP. Each hook posts to url + "/connect", "/refresh",
# "/subscribe", "/sub_refresh", "/publish", "/rpc", "/send", with its own pool,
# concurrency limit, circuit breaker and retry budget.
[proxies]
# [proxies.app]
# url = "http://127.0.0.1:5000/centrifugo"
# timeout = 1.0              # seconds per call (connect, send, read the whole answer)
# headers = ["Authorization", "User-Agent", "X-Request-Id"]  # from the upgrade request
# cookies = ["session"]      # cookies of the upgrade; needs allowed_origins without "*"
# max_in_flight = 100        # calls in flight per hook; beyond it refused at once
# max_response_bytes = 1048576
# breaker_failures = 5       # consecutive failures of a hook that open its breaker
# breaker_reset = 5.0        # seconds open before one probe call
# retry_budget_ratio = 0.1   # retries (idempotent hooks only) add at most this share

# Webhooks: events POSTed in batches to url, at least once, each with a unique id.
[webhook]
url = ""                    # empty: off
timeout = 5.0
batch_size = 100
max_buffered = 100000       # events held while the receiver is down; beyond: dropped, loudly
headers = {}
breaker_failures = 5
breaker_reset = 5.0
retry_budget_ratio = 0.1
events = ["connect", "disconnect", "subscribe", "unsubscribe", "publication"]
namespaces = []             # namespaces whose publications are sent

# Offline push: publications of namespaces with push = true, for users named by the
# channel (#alice, dm:1#alice,bob) who have no live subscription to it.
[push]
url = ""                    # empty: off
timeout = 5.0
batch_size = 100
max_buffered = 100000
headers = {}
breaker_failures = 5
breaker_reset = 5.0
retry_budget_ratio = 0.1

# Channels "ns:name" take the options of [namespaces.ns]; channels without ":" use
# [namespaces.default]. A channel whose namespace is not listed is unknown (error 102).
[namespaces.default]
history_size = 0            # publications kept per channel (0: none)
history_ttl = 0             # seconds a stream is kept after its last publication
recover = false             # recovery on for every subscriber (needs history)
presence = false            # track subscribers (presence, presence_stats)
join_leave = false          # join/leave pushes
allow_publish = false       # subscribers may publish
allow_subscribe = false     # any connected client may subscribe without a subscription token
allow_user_limited_channels = false  # "dm:1#alice,bob": only alice and bob, no token needed
allow_history = false       # subscribers may call history and presence
lane = "standard"           # critical, standard or ephemeral (see docs/explanation/resilience.md)
subscribe_proxy = ""        # a [proxies] name: /subscribe authorizes subscriptions
publish_proxy = ""          # /publish checks (and may replace) client publications
sub_refresh_proxy = ""      # /sub_refresh extends expiring subscriptions
push = false                # offline push for channels naming users (needs presence)
allowed_delta_types = []    # delta compression subscribers may ask for: ["fossil"]
delta_publish = false       # publications go as fossil deltas to subscribers that asked
wait_replicas = 0           # Redis: answer a publish once this many replicas have it (WAIT)
wait_timeout = 0.5          # seconds to wait for them; fewer by then: 503 (retry with the key)

# [namespaces.chat]
# history_size = 300
# history_ttl = 600
# recover = true
# presence = true
# join_leave = true
# allow_publish = true
# allow_subscribe = true
# allow_history = true
"""
