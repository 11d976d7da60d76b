"""No import cycles inside mlipuq, lazy (function-level) imports included.

The graph has one node per module; ``from package import name`` is resolved
to the submodule that defines ``name`` (through the package's ``__init__``
re-exports), so aggregating ``__init__`` files do not hide or invent cycles.
Run ``python tests/test_imports.py`` to print the package-level graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mlipuq"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _reexports(package: str) -> dict[str, str]:
    """name -> defining module, for names a package's __init__ imports."""
    tree = ast.parse(MODULES[package].read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(package, node)
            for alias in node.names:
                found[alias.asname or alias.name] = source
    return found


def _resolve(source: str, name: str | None, depth: int = 0) -> str | None:
    if name is not None and f"{source}.{name}" in MODULES:
        return f"{source}.{name}"
    if source not in MODULES:
        return None
    if name is not None and MODULES[source].name == "__init__.py" and depth < 5:
        origin = _reexports(source).get(name)
        if origin is not None and origin != source:
            return _resolve(origin, name, depth + 1) or origin
    return source


def import_graph() -> dict[str, set[str]]:
    """module -> modules it imports (anywhere in its body), within mlipuq."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [_resolve(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, node)
                targets = [_resolve(source, a.name) for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t and t != module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _aggregators() -> set[str]:
    """Package __init__ files: they re-export, and are excluded as nodes."""
    return {m for m, p in MODULES.items() if p.name == "__init__.py"}


def test_no_import_cycles():
    graph = import_graph()
    skip = _aggregators()
    graph = {m: {t for t in e if t not in skip} for m, e in graph.items() if m not in skip}
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_prediction_is_neutral():
    """mlipuq.prediction imports neither the wrappers nor their consumers."""
    graph = import_graph()
    banned = ("mlipuq.uq", "mlipuq.calibration", "mlipuq.propagation", "mlipuq.active")
    assert not [t for t in graph["mlipuq.prediction"] if t.startswith(banned)]


def package_graph() -> dict[str, set[str]]:
    def package(m):
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, edges in import_graph().items():
        out.setdefault(package(m), set()).update(
            package(t) for t in edges if package(t) != package(m)
        )
    return out


if __name__ == "__main__":
    for name, edges in sorted(package_graph().items()):
        print(f"{name} -> {', '.join(sorted(edges)) or '(nothing)'}")
    skip = _aggregators()
    graph = {m: {t for t in e if t not in skip} for m, e in import_graph().items() if m not in skip}
    print("module cycles:", cycles(graph) or "none")


def test_old_prediction_location_still_works():
    import importlib
    import sys

    import pytest

    sys.modules.pop("mlipuq.uq.prediction", None)
    with pytest.warns(DeprecationWarning, match="mlipuq.prediction"):
        old = importlib.import_module("mlipuq.uq.prediction")
    from mlipuq.prediction import Prediction

    assert old.Prediction is Prediction
