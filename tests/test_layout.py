"""The package layout is the data flow: imports run only down the layers

    ground (errors, types, params, io, backends, progress, stages; kernels)
      ← pool ← graph ← d2 ← methods ← select ← cli

``web`` and ``vision`` sit beside the chain: they use ground, and pool, graph and d2 only
through those packages' faces (``from d2scale.graph import …``). Nothing but ``cli`` imports
``select``, ``web`` or ``vision``, and no module imports itself back through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ["ground", "pool", "graph", "d2", "methods", "select", "cli"]
SIDE = {"web", "vision"}
FACES = {"pool", "graph", "d2"}  # packages the side groups may use, through their __init__


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("cli", "kernels"):  # installed as d2scale.cli / d2scale.kernels
        parts.insert(0, "d2scale")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*CHAIN, *SIDE):
        return parts[1]
    return "ground"  # d2scale's top-level modules, and kernels


def imports() -> dict[str, set[str]]:
    """Each module of the package → the d2scale modules it imports (anywhere in its body)."""
    files = [*ROOT.glob("d2scale/**/*.py"), *ROOT.glob("cli/*.py"), *ROOT.glob("kernels/*.py")]
    modules = {_module(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        found = graph.setdefault(_module(path), set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "d2scale" or node.module.startswith("d2scale."):
                    found.add(node.module)
                    # ``from d2scale.graph import build`` imports the module d2scale.graph.build
                    found.update(f"{node.module}.{a.name}" for a in node.names
                                 if f"{node.module}.{a.name}" in modules)  # fmt: skip
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("d2scale."))
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the layers, as ``importer -> imported (why)``."""
    bad = []
    for src, targets in graph.items():
        g = _group(src)
        for dst in sorted(targets):
            h = _group(dst)
            if g == h or h == "ground":
                continue
            if g in SIDE:
                ok = h in FACES and dst == f"d2scale.{h}"
                why = "a side group uses pool/graph/d2 through their faces only"
            elif h in SIDE or h == "select":
                ok = g == "cli"
                why = f"only cli imports {h}"
            else:
                ok = g != "ground" and CHAIN.index(h) < CHAIN.index(g)
                why = "imports run down the layers"
            if not ok:
                bad.append(f"{src} -> {dst} ({why})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_down_the_layers():
    assert violations(imports()) == []


def test_no_import_cycles():
    assert cycles(imports()) == []


def test_the_rules_catch_what_they_forbid():
    """The checker itself: an upward import, a side group reaching inside, a cycle."""
    graph = {
        "d2scale.params": {"d2scale.methods.registry"},
        "d2scale.vision.coresets": {"d2scale.graph.scan", "d2scale.d2"},
        "d2scale.graph.build": {"d2scale.select.pipeline"},
        "d2scale.methods.d2": {"d2scale.d2.order", "d2scale.graph.symmetric"},
        "d2scale.d2.order": {"d2scale.d2.forward"},
        "d2scale.d2.forward": {"d2scale.d2.order"},
    }
    assert violations(graph) == [
        "d2scale.params -> d2scale.methods.registry (imports run down the layers)",
        "d2scale.vision.coresets -> d2scale.graph.scan "
        "(a side group uses pool/graph/d2 through their faces only)",
        "d2scale.graph.build -> d2scale.select.pipeline (only cli imports select)",
    ]
    assert cycles(graph) == [["d2scale.d2.forward", "d2scale.d2.order"]]


def test_a_module_imported_from_its_package_counts():
    """``from d2scale.graph import torch_engine`` is an edge to d2scale.graph.torch_engine."""
    assert "d2scale.graph.torch_engine" in imports()["d2scale.graph.build"]
