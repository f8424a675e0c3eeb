"""``tether-bench run SCENARIO | compare | scale``: the benchmark's command line.

``run`` is the load generator (a fleet of simulated devices against one target);
``compare`` (``make bench``) and ``scale`` (``make bench-scale``) start the servers, run
``tether-bench run`` against them and rewrite docs/benchmarks.md from what they measured.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from tether_bench.scenarios import SCENARIOS, BenchOptions, run_bench

app = typer.Typer(
    help="The Tether benchmark: load generator and the docs/benchmarks.md page writers.",
    no_args_is_help=True,
    add_completion=False,
)

# compare and scale keep their own argparse options (and --help): typer hands them the rest
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(no_args_is_help=True)
def run(
    scenario: Annotated[
        str,
        typer.Argument(
            help="fanout, rooms, idle, latency, connect-cost; resilience: slow-consumers, "
            "typing-storm, reconnect-storm, publish-burst; hook-outage (a hanging backend)."
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
        typer.Option(
            help="tether (Centrifugo v2 JSON), tether-protobuf, tether-mixed (half JSON, "
            "half Protobuf), socketio, or plain (bench peers)."
        ),
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
    duration: Annotated[
        float, typer.Option(help="Seconds of measurement (hook-outage: per phase and round).")
    ] = 10.0,
    rate: Annotated[
        float,
        typer.Option(
            help="Publications/s (rooms; latency: 0 = calibrate, use --fraction; "
            "slow-consumers 200, typing-storm 50 chat, reconnect-storm 100, hook-outage 20; "
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
            help="fanout: bursts (the median is reported); typing-storm, hook-outage: "
            "interleaved rounds of each phase."
        ),
    ] = 5,
    calibrate: Annotated[
        float, typer.Option(help="latency: seconds at max rate to find the maximum.")
    ] = 3.0,
    window: Annotated[
        int,
        typer.Option(
            help="fanout: publications ahead of the average subscriber "
            "(0: adaptive, --lag seconds of deliveries)."
        ),
    ] = 0,
    lag: Annotated[
        float,
        typer.Option(
            help="fanout, adaptive window: seconds of the measured delivery rate kept in "
            "flight. The rate found is about capacity x (1 - base latency / lag): a lag "
            "near the target's own publish-to-delivery latency throttles it."
        ),
    ] = 0.1,
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
    profile: Annotated[
        str,
        typer.Option(
            help="Sample the server (--server-pid) with py-spy while measuring; collapsed "
            "stacks to this file, a summary in the report."
        ),
    ] = "",
    profile_rate: Annotated[int, typer.Option(help="--profile: py-spy samples per second.")] = 200,
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
    backend_url: Annotated[
        str,
        typer.Option(
            help="hook-outage: the hook backend's http://host:port (tether_bench.peers."
            "hook_backend), which the target's [proxies.app] url points at (+ /hooks)."
        ),
    ] = "",
    hook_clients: Annotated[
        int, typer.Option(help="hook-outage: connections calling the hooked publish and RPC.")
    ] = 20,
    hook_rate: Annotated[
        float,
        typer.Option(help="hook-outage: hooked client publications/s (RPCs: a fifth of it)."),
    ] = 50.0,
    connect_concurrency: Annotated[int, typer.Option(help="Connection setups in flight.")] = 256,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress lines on stderr.")] = False,
) -> None:
    """Load-test a target with a fleet of simulated devices (see docs/benchmarks.md)."""
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
        lag=lag,
        concurrency=concurrency,
        check_sample=check_sample,
        server_pid=server_pid,
        source_addresses=source_addresses,
        start_file=start_file,
        profile=profile,
        profile_rate=profile_rate,
        slow=slow,
        payload=payload,
        outage=outage,
        channels=channels,
        factor=factor,
        http_connections=http_connections,
        metrics_url=metrics_url,
        backend_url=backend_url,
        hook_clients=hook_clients,
        hook_rate=hook_rate,
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


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def compare(ctx: typer.Context) -> None:
    """`make bench`: Tether and its peers under the same scenarios (options: compare --help)."""
    from tether_bench import compare as page

    raise typer.Exit(page.main(ctx.args))


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def scale(ctx: typer.Context) -> None:
    """`make bench-scale`: workers, a 3-node cluster, 50,000 connections (scale --help)."""
    from tether_bench import scale as page

    raise typer.Exit(page.main(ctx.args))


def main() -> None:
    app()
