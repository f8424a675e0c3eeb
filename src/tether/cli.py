"""``tether serve | token | check-config | genconfig | capacity``."""

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


@app.command()
def capacity(
    connections: Annotated[int, typer.Option(help="Target: connected clients.")],
    publications: Annotated[float, typer.Option(help="Target: publications per second.")],
    fanout: Annotated[
        float, typer.Option(help="Target: average subscribers per publication (fleet-wide).")
    ],
    channels: Annotated[int, typer.Option(help="Target: channels in use.")] = 0,
    storm: Annotated[
        int, typer.Option(help="Reconnection storm: clients reconnecting at once (0: none).")
    ] = 0,
    storm_seconds: Annotated[
        float, typer.Option(help="Reconnection storm: seconds within which all are back.")
    ] = 30.0,
    bench_json: Annotated[
        Path, typer.Option("--bench", help="Bench figures (a `make bench` JSON).")
    ] = Path("docs/benchmarks.json"),
    utilization: Annotated[
        float, typer.Option(help="Steady CPU per node, fraction of a core.")
    ] = 0.6,
    max_connections_per_node: Annotated[
        int, typer.Option(help="Connections a node may hold (max_connections).")
    ] = 100_000,
    max_connects_per_second: Annotated[
        float, typer.Option(help="Connects a node admits per second (config).")
    ] = 2000.0,
    min_nodes: Annotated[int, typer.Option(help="Smallest fleet.")] = 2,
    check_rooms: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="A `tether-bench run rooms --json` report (or a bench JSON) whose "
            "measured server CPU the model predicts (default: the rooms run in --bench)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the plan as one JSON object.")
    ] = False,
) -> None:
    """Nodes, cores and memory for a target load, from measured bench figures; prints
    every assumption, and the model's error predicting a measured rooms run."""
    import json

    from tether import capacity as model

    def read(path: Path) -> object:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            typer.echo(f"error: cannot read {path}: {exc}", err=True)
            raise typer.Exit(2) from None

    bench_data = read(bench_json)
    target = model.Target(
        connections=connections,
        channels=channels,
        publications_per_s=publications,
        fanout=fanout,
        storm_clients=storm,
        storm_seconds=storm_seconds,
        utilization=utilization,
        max_connections_per_node=max_connections_per_node,
        max_connects_per_second=max_connects_per_second,
        min_nodes=min_nodes,
    )
    try:
        costs = model.costs_from_bench(bench_data)
        result = model.plan(costs, target)
        rooms = model.rooms_run(read(check_rooms) if check_rooms else bench_data)
        check = model.check_rooms(costs, rooms)
    except model.CapacityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps({"plan": result.as_dict(), "rooms_check": check.as_dict()}))
        return
    typer.echo(
        f"target: {connections} connections, {channels} channels, {publications:g} "
        f"publications/s, fan-out {fanout:g}, storm {storm} clients in {storm_seconds:g} s\n"
        f"nodes:  {result.nodes} (limited by: {result.limited_by})\n"
        f"cores:  {result.cores} (1 per node; steady {result.steady_cores_per_node:g} "
        f"of a core each)\n"
        f"memory: {result.memory_per_node_mib:g} MiB per node, "
        f"{result.memory_total_gib:g} GiB in all\n"
        f"per node: {result.connections_per_node} connections, "
        f"{result.storm_connects_per_node_per_s:g} connects/s during the storm\n"
        f"drain_window: at least {result.drain_window_s:g} s (a leaving node's clients "
        f"stay under the others' admission rate)\n"
        f"model check: predicts {check.predicted_cores:g} cores for the rooms run, "
        f"measured {check.measured_cores:g} (error {check.error:+.1%})\n"
        "assumptions:"
    )
    for assumption in result.assumptions:
        typer.echo(f"  - {assumption}")


def main() -> None:
    app()
