"""The benchmarks that train or fit reproduce their rows on a rerun: each imports
``benchmarks/reproducible.py`` (``MKL_CBWR=AUTO``) before torch, and MKL then runs in its
reproducible mode (docs/getting-started.md#reproducible-fits)."""

from __future__ import annotations

import ast
import ctypes
import glob
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
#: The benchmarks that import torch only to time it (their rows are speed ratios).
TIMING_ONLY = {"md_speed.py", "uq_overhead.py", "calibrate_overhead.py"}


def _top_imports(path):
    """Module names a script imports at its top level, in order."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module.split(".")[0])
    return names


def _fitting_benchmarks():
    scripts = sorted(glob.glob(os.path.join(BENCHMARKS, "*.py")))
    return [s for s in scripts if os.path.basename(s) not in TIMING_ONLY
            and "torch" in _top_imports(s)]


@pytest.mark.parametrize("script", _fitting_benchmarks(), ids=os.path.basename)
def test_reproducible_is_imported_before_torch(script):
    names = _top_imports(script)
    assert "reproducible" in names, f"{script} does not import reproducible"
    assert names.index("reproducible") < names.index("torch")


def test_timing_only_names_benchmarks_that_exist():
    """A renamed timing benchmark would otherwise fall out of the check above unseen."""
    missing = sorted(n for n in TIMING_ONLY if not os.path.exists(os.path.join(BENCHMARKS, n)))
    assert not missing, f"TIMING_ONLY names no benchmark: {missing}"


def test_mkl_runs_reproducibly_after_the_import():
    """MKL reports conditional numerical reproducibility (mode 2, AUTO) when the variable
    is set by the import, after ``import torch`` and before any computation."""
    import torch

    library = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib",
                                     "libtorch_cpu.*"))
    try:
        ctypes.CDLL(library[0]).mkl_serv_cbwr_get
    except (IndexError, OSError, AttributeError):
        pytest.skip("this torch build does not link MKL")
    code = (
        "import ctypes, sys, torch\n"
        f"sys.path.insert(0, {BENCHMARKS!r})\n"
        "import reproducible\n"
        "a = torch.ones(64, 64, dtype=torch.float64); (a @ a).sum()\n"
        f"print(ctypes.CDLL({library[0]!r}).mkl_serv_cbwr_get(1))\n")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[-1] == "2"
