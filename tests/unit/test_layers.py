"""The layers of ``src/tether``, and which way imports may go.

::

    assembly     tether.server, tether.cli, tether.__main__, tether.capacity, tether.testing
        |
    edges        tether.brokers (memory, Redis, Cluster, sharded, the guard),
        |        tether.transports (WebSocket, HTTP API, metrics), tether.proxy (backend hooks)
    core         tether.core, tether.config, tether.auth, tether.resilience, tether.logs,
        |        tether.cluster, tether.saturation, and the interfaces the broker edge
        |        meets core on: tether.brokers.base (Broker, PresenceStore,
        |        BrokerEventHandler) and tether.brokers.addresses
    protocol     tether.protocol (sans-I/O), tether.errors, tether.randomness (ids),
                 the package root (version)

The rule (protocol <- core <- edges <- assembly): a module imports only modules of its
own layer or of a lower one, and no module imports one that imports it back, directly or
round a cycle. Every import counts: at module level, inside a function, and under
``TYPE_CHECKING`` (a type-only cycle is still two modules that cannot be read apart).
Implicit imports of a module's own parent packages do not count. Edges may use one
another (the metrics endpoint reads the broker guards' counters); core imports none of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import tether

SRC = Path(tether.__file__).parent

LAYER_OF = {
    "tether": "protocol",
    "tether.errors": "protocol",
    "tether.randomness": "protocol",
    "tether.protocol": "protocol",
    "tether.core": "core",
    "tether.config": "core",
    "tether.auth": "core",
    "tether.resilience": "core",
    "tether.logs": "core",
    "tether.cluster": "core",
    "tether.saturation": "core",
    "tether.brokers.base": "core",
    "tether.brokers.addresses": "core",
    "tether.brokers": "edges",
    "tether.transports": "edges",
    "tether.proxy": "edges",
    "tether.server": "assembly",
    "tether.cli": "assembly",
    "tether.__main__": "assembly",
    "tether.capacity": "assembly",
    "tether.testing": "assembly",
}
"""Module or package -> layer (see :func:`layer`)."""

RANK = {"protocol": 0, "core": 1, "edges": 2, "assembly": 3}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module under ``root`` (the directory of ``package``) -> its file."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its source."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from package import module`` imports the module; ``from module import
            # name`` the module.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def layer(module: str) -> str | None:
    """The layer of the longest entry of LAYER_OF that is ``module`` or a package of it
    (the root package counts only for itself: a new top-level module needs an entry)."""
    prefix = module
    while prefix:
        if prefix in LAYER_OF and (prefix != "tether" or module == "tether"):
            return LAYER_OF[prefix]
        prefix = prefix.rpartition(".")[0]
    return None


def wrong_way(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that goes up a layer."""
    out = []
    for module, deps in sorted(graph.items()):
        here = layer(module)
        assert here is not None, f"{module} has no layer: add it to LAYER_OF"
        for dep in sorted(deps):
            there = layer(dep)
            assert there is not None, f"{dep} has no layer: add it to LAYER_OF"
            if RANK[there] > RANK[here]:
                out.append(f"{module} ({here}) imports {dep} ({there})")
    return out


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    found = modules(root, package)
    return {module: imports_of(module, path, found) for module, path in found.items()}


GRAPH = import_graph(SRC, "tether")


def test_the_graph_sees_the_core_modules_and_their_imports() -> None:
    assert "tether.core.node" in GRAPH
    assert "tether.core.hub" in GRAPH["tether.core.node"]
    assert "tether.protocol.messages" in GRAPH["tether.core.hub"]


def test_every_module_has_a_layer() -> None:
    assert [m for m in GRAPH if layer(m) is None] == []


def test_imports_go_down_the_layers_only() -> None:
    assert wrong_way(GRAPH) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(GRAPH) == []


# -- the checker itself: it must see what it guards against ----------------------------------


def _package(tmp_path: Path, files: Mapping[str, str]) -> dict[str, set[str]]:
    root = tmp_path / "tether"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        if name.count("/"):
            (root / name).parent.joinpath("__init__.py").touch()
    return import_graph(root, "tether")


def test_checker_finds_a_cycle_made_of_a_type_checking_import(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "core/hub.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from tether.core.node import Node\n",
            "core/node.py": "from tether.core import hub\n",
        },
    )
    assert cycles(graph) == [["tether.core.hub", "tether.core.node", "tether.core.hub"]]


@pytest.mark.parametrize(
    ("module", "source", "finding"),
    [
        (
            "protocol/codec.py",
            "def f():\n    from tether.core import node\n",
            "tether.protocol.codec (protocol) imports tether.core.node (core)",
        ),
        (
            "core/node.py",
            "from ..brokers.memory import MemoryBroker\n",
            "tether.core.node (core) imports tether.brokers.memory (edges)",
        ),
        (
            "transports/http/api.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tether.server\n",
            "tether.transports.http.api (edges) imports tether.server (assembly)",
        ),
    ],
)
def test_checker_finds_an_import_against_the_layers(
    tmp_path: Path, module: str, source: str, finding: str
) -> None:
    files = {
        "protocol/codec.py": "",
        "core/node.py": "",
        "brokers/memory.py": "",
        "server.py": "",
        "transports/http/api.py": "",
    }
    graph = _package(tmp_path, {**files, module: source})
    assert wrong_way(graph) == [finding]
