"""Helpers of the operations tests: what a node's /metrics exposes."""

from __future__ import annotations

import aiohttp

from tether.server import Server


def exposed_metric_names(text: str) -> set[str]:
    """Sample names of a /metrics text (histograms: the _bucket/_sum/_count series too)."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


async def scrape(server: Server) -> str:
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()
