"""The shipped package holds no benchmark and never imports it.

The benchmark and the real-process harnesses are a distribution of their own
(``bench/pyproject.toml``, package ``tether_bench``): it imports ``tether``, never the
other way round. The wheel itself is built and listed in
``tests/integration/test_wheel_contents.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tether
import tether_bench

PACKAGE_DIR = Path(tether.__file__).parent
SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))
MOVED_OUT = ("bench", "testing/cluster.py", "testing/redisserver.py")


def imported_roots(path: Path) -> set[str]:
    """Top-level names a module imports, in functions and under TYPE_CHECKING too."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_scan_sees_the_package_and_the_bench_sees_tether() -> None:
    assert PACKAGE_DIR / "cli.py" in SOURCES
    # the scan below can fail: the bench distribution does import tether
    bench_imports = set().union(
        *(imported_roots(p) for p in Path(tether_bench.__file__).parent.rglob("*.py"))
    )
    assert "tether" in bench_imports


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_module_of_the_package_imports_the_bench(path: Path) -> None:
    assert "tether_bench" not in imported_roots(path)


@pytest.mark.parametrize("moved", MOVED_OUT)
def test_the_bench_and_its_harnesses_are_not_in_the_package(moved: str) -> None:
    assert not (PACKAGE_DIR / moved).exists()
