"""The mlipuq.active package: public names, deprecated shims, no import cycles."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

import mlipuq
from mlipuq import active

PACKAGE = pathlib.Path(mlipuq.__file__).parent / "active"

#: Every name of the old single-module ``mlipuq.active.__all__``.
OLD_ALL = ("INFO_KEYS", "STRATEGIES", "LabelledPoolOracle", "LearningCurve", "Loop",
           "Selection", "energy_std_per_atom", "farthest_points", "force_deviation",
           "greedy_llpr", "harvest", "label", "plot_learning_curves", "pool_features",
           "score_pool", "select", "trust_levels")


def _module_imports(path: pathlib.Path) -> set[str]:
    """mlipuq.active.* modules imported at module level (not inside functions)."""
    name = "mlipuq.active." + path.stem if path.stem != "__init__" else "mlipuq.active"
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if node.level == 0 else "mlipuq.active." + node.module
            if mod == "mlipuq.active":
                found |= {f"mlipuq.active.{a.name}" for a in node.names}
            elif mod.startswith("mlipuq.active."):
                found.add(mod)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mlipuq.active.")}
    found.discard(name)
    return found


def test_old_names_still_importable():
    for name in OLD_ALL:
        assert name in active.__all__ and hasattr(active, name), name
    assert callable(active.select) and callable(active.harvest)


def test_no_import_cycles_inside_the_package():
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {f"mlipuq.active.{s}": _module_imports(p) for s, p in modules.items()}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    done, active_path = set(), []

    def visit(m):
        if m in active_path:
            raise AssertionError("import cycle: " + " -> ".join(active_path + [m]))
        if m in done:
            return
        active_path.append(m)
        for d in graph[m]:
            visit(d)
        active_path.pop()
        done.add(m)

    for m in graph:
        visit(m)
    assert "mlipuq.active.loop" not in graph["mlipuq.active.select"]
    assert not hasattr(active, "__getattr__")  # no lazy attribute tricks


@pytest.mark.parametrize("shim, names", [
    ("mlipuq.active_loop", ("Loop", "LearningCurve", "LabelledPoolOracle", "label",
                            "plot_learning_curves")),
    ("mlipuq.active_cli", ("add_parser", "run")),
])
def test_deprecated_modules_reexport_and_warn(shim, names):
    sys.modules.pop(shim, None)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        module = importlib.import_module(shim)
    target = active if shim == "mlipuq.active_loop" else importlib.import_module(
        "mlipuq.active.cli")
    for name in names:
        assert getattr(module, name) is getattr(target, name)


def test_registry_declares_unit_and_requirements():
    from mlipuq.active import strategies

    assert active.STRATEGIES == tuple(strategies.REGISTRY)
    for name, strat in strategies.REGISTRY.items():
        assert strat.name == name and isinstance(strat.unit, str)
        assert all(isinstance(r, str) for r in strat.requires)
        assert active.SCORE_UNITS[name] == strat.unit
    assert set(strategies.REGISTRY["batch_llpr"].requires) == {"design_matrix",
                                                                "energy_posterior_covariance"}
    with pytest.raises(ValueError, match="unknown strategy"):
        strategies.get("best")
