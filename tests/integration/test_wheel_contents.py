"""``pip wheel .`` ships Tether and its test kit, and no benchmark module.

Builds the wheel from a copy of the project files (so nothing is written into the
checkout) with pip, as a user or CI would, and lists what it holds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = {"tether/testing/cluster.py", "tether/testing/redisserver.py"}


class Wheel:
    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as zf:
            self.files = zf.namelist()
            (meta,) = (f for f in self.files if f.endswith(".dist-info/METADATA"))
            self.metadata = zf.read(meta).decode()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    src = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(out), "--no-deps", "-q"],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("tether-*.whl")
    return Wheel(path)


def test_the_wheel_ships_tether_and_its_test_kit(wheel: Wheel) -> None:
    assert "tether/cli.py" in wheel.files
    assert "tether/testing/broker_contract.py" in wheel.files
    assert "tether/testing/wsclient.py" in wheel.files


def test_the_wheel_ships_no_benchmark_module(wheel: Wheel) -> None:
    modules = [f for f in wheel.files if f.endswith(".py")]
    assert modules
    assert [f for f in modules if not f.startswith("tether/")] == []
    assert [f for f in modules if "bench" in f] == []
    assert HARNESSES.isdisjoint(modules)
    assert [f for f in wheel.files if f.endswith(".whl")] == []


def test_the_wheel_offers_no_bench_extra(wheel: Wheel) -> None:
    extras = [ln for ln in wheel.metadata.splitlines() if ln.startswith("Provides-Extra:")]
    assert "Provides-Extra: redis" in extras
    assert [e for e in extras if "bench" in e] == []


def test_the_testing_extra_brings_what_the_shipped_contract_suites_run_under(
    wheel: Wheel,
) -> None:
    requires = [ln for ln in wheel.metadata.splitlines() if ln.startswith("Requires-Dist:")]
    testing = [ln for ln in requires if 'extra == "testing"' in ln]
    assert any(ln.startswith("Requires-Dist: pytest==") for ln in testing), requires
    assert any(ln.startswith("Requires-Dist: pytest-asyncio==") for ln in testing), requires
