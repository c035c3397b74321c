"""The package's dependency rule, read from the import graph of the installed package.

core <- runtime <- exporters <- passes <- bundle <- train / eval <- cli; data and testing sit just
above the runtime. A module may import its own layer's modules and any lower layer, never a higher
one or a sibling at its own rank (train and eval do not import each other). The runtime therefore
never imports the build side (passes, exporters) or the application (bundle, eval, train, cli).
Function-local imports count as edges too: laziness must not hide a dependency.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import evospec

RANK = {"core": 0, "runtime": 1, "data": 2, "exporters": 2, "testing": 2, "serving": 2, "passes": 3, "bundle": 4,
        "train": 5, "eval": 5, "cli": 6}
ROOT_MAY_IMPORT = {"core", "runtime"}  # `import evospec` is the public API and stays light


def modules() -> dict[str, Path]:
    """Every module of the installed package. runtime, passes and exporters are installed from their own
    folders (pyproject's package-dir), so each ranked subpackage is walked from its own path."""
    found = {"evospec": Path(evospec.__file__)}
    packages = [evospec] + [importlib.import_module(f"evospec.{name}") for name in RANK]
    for package in packages:
        found[package.__name__] = Path(package.__file__)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """evospec modules ``name`` imports anywhere in its file (``from pkg import module`` resolved to the module)."""
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name.startswith("evospec")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evospec"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                edges.add(child if child in known else node.module)
    edges.discard(name)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def test_every_subpackage_has_a_rank():
    layers = {layer(m) for m in modules()} - {"root", "assets"}
    assert layers <= set(RANK), f"subpackages without a place in the dependency rule: {sorted(layers - set(RANK))}"
    assert {"core", "runtime", "passes", "exporters", "bundle", "train", "eval", "cli"} <= layers


def test_no_upward_or_sideways_edges():
    wrong = []
    for module, targets in graph().items():
        source = layer(module)
        for target in targets:
            to = layer(target)
            if source == "root":
                ok = to in ROOT_MAY_IMPORT or target == "evospec"
            else:
                ok = to == source or (to != "root" and RANK[to] < RANK[source])
            if not ok:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the dependency rule:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    done: set[str] = set()
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(edges):
        if node not in done:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rule_is_checked_on_a_real_edge():
    """The graph is read, not empty: the CLI reaches the runtime, and the runtime reaches core."""
    edges = graph()
    assert any(layer(t) == "runtime" for m, ts in edges.items() if layer(m) == "eval" for t in ts)
    assert "evospec.core.errors" in edges["evospec.runtime.target"]
