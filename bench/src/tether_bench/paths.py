"""Where the page writers find the Tether checkout they measure and write into."""

from __future__ import annotations

from pathlib import Path


def checkout() -> Path:
    """The checkout holding this package (``pip install -e bench``), else the current
    directory: the servers' configs (``bench/*.toml``), the Node.js peer (``bench/js``) and
    the pages (``docs/``) are files of the repository, not of the installed package."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "bench" / "tether.bench.toml").is_file() else Path.cwd()
