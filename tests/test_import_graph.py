"""No import cycle among our packages (detector, sweeps, dashboards, benchmarks): the graph is read from the
source with ``ast``, every import statement counted, the ones inside functions too (a lazy import
in both directions is still a cycle: each module needs the other to be whole)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "sweeps", "dashboards", "benchmarks")


def modules(root: Path = REPO, packages=PACKAGES) -> dict:
    """dotted name -> (file, is a package's __init__)."""
    out = {}
    for package in packages:
        for f in sorted((root / package).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (f, is_package)
    return out


def import_graph(mods: dict) -> dict:
    """module -> the modules of ``mods`` it imports (a name resolves to its longest known prefix:
    ``from sweeps import cluster`` is sweeps.cluster, ``from detector.config import X`` is
    detector.config). A module's own package, imported implicitly first, is not an edge."""

    def known(name: str):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            targets |= {t for t in map(known, names) if t is not None and t != name}
        graph[name] = targets
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycle():
    mods = modules()
    assert {"detector.train", "detector.run", "sweeps.cli", "dashboards.findings", "benchmarks.run"} <= set(mods)
    graph = import_graph(mods)
    assert "detector.config" in graph["detector.train"] and "sweeps.cluster" in graph["sweeps.runner"]
    assert cycles(graph) == [], "import cycles (each a set of modules that import one another): " \
        f"{cycles(graph)}"


def test_the_science_imports_none_of_the_tools():
    """detector is usable on its own: no module of it imports sweeps, dashboards or benchmarks."""
    graph = import_graph(modules())
    assert "detector.losses" in graph["benchmarks.torchvision_compare"]  # the check sees the other direction
    wrong = {m: sorted(t for t in targets if t.split(".")[0] != "detector")
             for m, targets in graph.items() if m.split(".")[0] == "detector"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_check_sees_a_cycle_through_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "detector"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from detector.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import detector.a\n")
    (pkg / "d.py").write_text("from detector import a\n")
    assert cycles(import_graph(modules(tmp_path, ("detector",)))) == [["detector.a", "detector.b", "detector.c"]]
