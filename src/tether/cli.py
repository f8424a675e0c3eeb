"""``tether serve | token | check-config | genconfig | bench``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tether import __version__
from tether.auth import mint_connection_token, mint_subscription_token
from tether.config import DEFAULT_CONFIG_TOML, LoadedConfig, load_config
from tether.errors import ConfigError

app = typer.Typer(
    help="Tether: a real-time event gateway speaking the Centrifugo client protocol v2.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    Optional[Path],  # noqa: UP045  (typer needs Optional here)
    typer.Option(
        "--config", "-c", help="TOML config file (default: $TETHER_CONFIG).", show_default=False
    ),
]


def _load(config: Path | None) -> LoadedConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            envvar="TETHER_WORKERS",
            help="Worker processes sharing the ports (SO_REUSEPORT), one event loop each; "
            'more than 1 needs broker = "redis".',
        ),
    ] = 1,
) -> None:
    """Start a node (WebSocket on `port`, server API and page on `http_port`)."""
    from tether import logs, server

    loaded = _load(config)
    cfg = loaded.config
    try:
        server.check_workers(cfg, workers)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logs.configure(cfg.log_level, cfg.log_format)
    shown_host = "localhost" if cfg.host in ("0.0.0.0", "::") else cfg.host
    if loaded.generated_secrets:
        typer.echo(
            "WARNING: no token_secret/api_key configured: this is a DEVELOPMENT setup with\n"
            "secrets generated for this run only. Set TETHER_TOKEN_SECRET and TETHER_API_KEY\n"
            "(or a config file) for anything else.\n"
            f"  token secret: {cfg.token_secret}\n"
            f"  API key:      {cfg.api_key}\n"
            f"  mint a token: TETHER_TOKEN_SECRET={cfg.token_secret} "
            f"{sys.argv[0]} token --user alice\n",
            err=True,
        )
    typer.echo(
        f"Tether {__version__} (config: {loaded.source})\n"
        f"  clients:  ws://{shown_host}:{cfg.port}/connection/websocket\n"
        f"  API:      http://{shown_host}:{cfg.http_port}/api/<method>  (X-API-Key)\n"
        f"  page:     http://{shown_host}:{cfg.http_port}/\n"
        f"  admin:    http://{shown_host}:{cfg.http_port}/admin  (live figures; /metrics)\n"
        f"  health:   http://{shown_host}:{cfg.http_port}/health  /ready",
        err=True,
    )
    if workers > 1:
        raise typer.Exit(server.serve_workers(cfg, workers))
    if cfg.use_uvloop:
        try:
            import uvloop
        except ImportError:
            asyncio.run(server.run(cfg))
        else:
            uvloop.run(server.run(cfg))
    else:
        asyncio.run(server.run(cfg))


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", "-u", help="User ID (the `sub` claim).")],
    ttl: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Seconds of validity (default: no expiry)."),
    ] = None,
    channel: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--channel",
            help="Mint a subscription token for this channel "
            "(repeat for several: one token per line).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a connection token (or subscription tokens with --channel), and nothing else."""
    loaded = _load(config)
    secret = loaded.config.token_secret
    if loaded.generated_token_secret:
        typer.echo(
            "error: no token_secret configured (set TETHER_TOKEN_SECRET or use "
            "--config): a token signed with a throw-away secret is useless",
            err=True,
        )
        raise typer.Exit(2)
    if channel:
        for ch in channel:
            typer.echo(mint_subscription_token(secret, user, ch, ttl=ttl))
    else:
        typer.echo(mint_connection_token(secret, user, ttl=ttl))


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration; exit 2 with the reason if it is invalid."""
    loaded = _load(config)
    namespaces = ", ".join(sorted(loaded.config.namespaces))
    typer.echo(f"ok: {loaded.source} (namespaces: {namespaces})")


@app.command()
def genconfig() -> None:
    """Print a commented configuration with every option at its default."""
    sys.stdout.write(DEFAULT_CONFIG_TOML)


@app.command(no_args_is_help=True)
def bench(
    scenario: Annotated[
        str,
        typer.Argument(
            help="fanout, rooms, idle, latency; resilience: slow-consumers, typing-storm, "
            "reconnect-storm, publish-burst."
        ),
    ],
    url: Annotated[
        str, typer.Option(help="WebSocket URL of the target.")
    ] = "ws://127.0.0.1:8000/connection/websocket",
    api_url: Annotated[
        str, typer.Option(help="Server API base URL (Tether: publications go here).")
    ] = "http://127.0.0.1:9000/api",
    api_key: Annotated[
        str, typer.Option(envvar="TETHER_API_KEY", help="Server API key (X-API-Key).")
    ] = "",
    token_secret: Annotated[
        str,
        typer.Option(
            envvar="TETHER_TOKEN_SECRET",
            help="The target's token secret: each connection gets its own token "
            "(empty: anonymous connections).",
        ),
    ] = "",
    protocol: Annotated[
        str,
        typer.Option(help="tether (Centrifugo v2 JSON), socketio, or plain (bench peers)."),
    ] = "tether",
    namespace: Annotated[
        str, typer.Option(help="Namespace of the bench channels (Tether).")
    ] = "bench",
    connections: Annotated[
        int,
        typer.Option(
            "--connections",
            "-n",
            help="Connections (default: fanout 2000, rooms 2000, idle 10000, latency 1000, "
            "slow-consumers 500 healthy, typing-storm 300, reconnect-storm 2000, "
            "publish-burst 200).",
        ),
    ] = 0,
    duration: Annotated[float, typer.Option(help="Seconds of measurement.")] = 10.0,
    rate: Annotated[
        float,
        typer.Option(
            help="Publications/s (rooms; latency: 0 = calibrate, use --fraction; "
            "slow-consumers 200, typing-storm 50 chat, reconnect-storm 100; "
            "publish-burst: 0 = factor x the calibrated rate)."
        ),
    ] = 0.0,
    fraction: Annotated[
        float, typer.Option(help="latency: fraction of the measured maximum to publish at.")
    ] = 0.5,
    batch: Annotated[
        int, typer.Option(help="Publications per publish request (0: fanout 10, others 1).")
    ] = 0,
    bursts: Annotated[
        int,
        typer.Option(
            help="fanout: bursts (the median is reported); typing-storm: interleaved rounds "
            "of each phase."
        ),
    ] = 5,
    calibrate: Annotated[
        float, typer.Option(help="latency: seconds at max rate to find the maximum.")
    ] = 3.0,
    window: Annotated[
        int,
        typer.Option(
            help="fanout: publications ahead of the average subscriber "
            "(0: adaptive, ~0.1 s of deliveries)."
        ),
    ] = 0,
    concurrency: Annotated[
        int, typer.Option(help="Publish requests in flight (0: fanout 4, others 64).")
    ] = 0,
    check_sample: Annotated[
        int,
        typer.Option(
            help="Connections whose offsets/latency are checked (-1: scenario default: "
            "fanout 64, latency 100, rooms all)."
        ),
    ] = -1,
    server_pid: Annotated[
        int, typer.Option(help="PID of the server, to sample its CPU and RSS (psutil).")
    ] = 0,
    source_addresses: Annotated[
        int,
        typer.Option(help="Spread connections over 127.0.0.2.. (0: automatic past ~25k)."),
    ] = 0,
    start_file: Annotated[
        str,
        typer.Option(
            help="rooms: after connecting, wait until this file exists before publishing "
            "(to start several bench processes together)."
        ),
    ] = "",
    slow: Annotated[int, typer.Option(help="slow-consumers: clients that stop reading.")] = 20,
    payload: Annotated[
        int, typer.Option(help="Filler bytes per publication (0: scenario default).")
    ] = 0,
    outage: Annotated[
        float, typer.Option(help="reconnect-storm: seconds before everyone reconnects.")
    ] = 1.0,
    channels: Annotated[
        int, typer.Option(help="reconnect-storm: channels the clients are spread over.")
    ] = 4,
    factor: Annotated[
        float,
        typer.Option(
            help="publish-burst: burst rate / sustainable rate; "
            "typing-storm: typing rate / chat rate."
        ),
    ] = 10.0,
    http_connections: Annotated[
        int,
        typer.Option(help="Resilience scenarios: API client sockets (0: scenario default)."),
    ] = 0,
    metrics_url: Annotated[
        str, typer.Option(help="Target's /metrics (default: next to --api-url).")
    ] = "",
    connect_concurrency: Annotated[int, typer.Option(help="Connection setups in flight.")] = 256,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress lines on stderr.")] = False,
) -> None:
    """Load-test a target with a fleet of simulated devices (see docs/benchmarks.md)."""
    import json

    from tether.bench import SCENARIOS, BenchOptions, run_bench

    if scenario not in SCENARIOS:
        typer.echo(
            f"error: unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})", err=True
        )
        raise typer.Exit(2)
    options = BenchOptions(
        scenario=scenario,
        url=url,
        api_url=api_url,
        api_key=api_key,
        token_secret=token_secret,
        protocol=protocol,
        namespace=namespace,
        connections=connections,
        duration=duration,
        rate=rate,
        fraction=fraction,
        batch=batch,
        bursts=bursts,
        calibrate=calibrate,
        window=window,
        concurrency=concurrency,
        check_sample=check_sample,
        server_pid=server_pid,
        source_addresses=source_addresses,
        start_file=start_file,
        slow=slow,
        payload=payload,
        outage=outage,
        channels=channels,
        factor=factor,
        http_connections=http_connections,
        metrics_url=metrics_url,
        connect_concurrency=connect_concurrency,
        progress=not quiet,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        report = asyncio.run(run_bench(options))
    else:
        report = uvloop.run(run_bench(options))
    if json_output:
        typer.echo(json.dumps(report))
    else:
        for key, value in report.items():
            typer.echo(f"{key:>32}: {value}")
    failed = report.get("losses", 0) or report.get("duplicates", 0)
    if failed or report.get("order_violations", 0):
        raise typer.Exit(1)


def main() -> None:
    app()
