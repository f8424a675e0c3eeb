"""``tether.protocol`` is sans-I/O: importing it pulls in no event loop, socket or client."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tether.protocol

FORBIDDEN = ("asyncio", "socket", "selectors", "ssl", "redis", "aiohttp", "uvloop")
PROTOCOL_DIR = Path(tether.protocol.__file__).parent
MODULES = sorted(f"tether.protocol.{m.name}" for m in pkgutil.iter_modules([str(PROTOCOL_DIR)]))


def test_protocol_package_has_modules_to_check() -> None:
    assert "tether.protocol.codec" in MODULES
    assert "tether.protocol.session" in MODULES


def test_importing_the_protocol_loads_no_io_module() -> None:
    # A fresh interpreter: this test process has long imported asyncio itself.
    imports = "; ".join(f"import {m}" for m in MODULES)
    check = f"import sys; print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", f"{imports}; {check}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_source_names_no_io_module(path: Path) -> None:
    # Also catches imports that only run inside functions or under TYPE_CHECKING.
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint(FORBIDDEN)
