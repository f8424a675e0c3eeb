"""``tether serve | token | check-config | genconfig``."""

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


def main() -> None:
    app()
