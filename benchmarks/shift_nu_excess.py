"""Diagnostic: a Student-t ν per structure, heavy only beyond the calibration range.

The forces' Student-t ν is capped at 3 for every structure (``ROBUST_MAX_DOF``): the
ethanol and acetylacetone tails need that tail, the in-distribution data do not (ν as
fitted there, 5–23, gives a better in-distribution NLL; ``docs/shift.md``, "Heavy
tails for every wrapper"). Would it be enough to use the heavy tail only where a
structure's raw std lies beyond every calibration structure's
(``Prediction.calibration_excess`` > 1) and ν as fitted elsewhere? For each single
model of ``benchmarks/shift.py`` (its base model and fits, ``--cache`` as there), this
script calibrates twice on val, with ν ≤ 3 (the default) and with ν fitted within
1–1000, and scores per split the force components' 95 % coverage and NLL of each and of
their mixture (per structure the first where ``calibration_excess`` > 1, else the
second), with the fraction of structures beyond the range. A diagnostic, not a choice:
nothing here changes a default.

    python benchmarks/shift_nu_excess.py --cache /tmp/fits --parts ethanol acac
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import os

import numpy as np
import torch
from shift import HELD_OUT, PART_SETS, base_models
from shift_cache import cache_folder
from shift_wrappers import fit_wrappers

from mlipuq.calibration import metrics

HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPERS = ("LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "EvidentialHead")


def sums(pred, ref, structures: np.ndarray) -> np.ndarray:
    """(covered, NLL, count) summed over the force components of ``structures`` (mask)."""
    atoms = structures[np.repeat(np.arange(len(pred.n_atoms)), pred.n_atoms)]
    if not atoms.any():
        return np.zeros(3)
    f, s, t = pred.forces[atoms], pred.forces_std[atoms], ref.forces[atoms]
    d, n = pred.forces_dof, f.size
    return np.array([metrics.coverage(f, s, t, levels=[0.95], dof=d)[0] * n,
                     metrics.nll(f, s, t, dof=d) * n, n], dtype=np.float64)


def split_row(capped, free, data) -> dict:
    heavy, fitted = capped.predict(data), free.predict(data)
    beyond = np.asarray(heavy.calibration_excess) > 1.0
    every = np.ones_like(beyond)
    rows = {"capped": sums(heavy, data, every), "fitted": sums(fitted, data, every),
            "mixed": sums(heavy, data, beyond) + sums(fitted, data, ~beyond)}
    out = {"beyond": float(beyond.mean())}
    for name, (covered, nll, n) in rows.items():
        out[f"cover {name}"], out[f"nll {name}"] = covered / n, nll / n
    return out


def run_part(part: str, cache) -> dict:
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    folder = cache_folder(cache, part, 80)
    models = base_models(part, train, val, 80, 1, folder)
    out = {}
    for name, wrapper in fit_wrappers(models, train, val, None, folder, WRAPPERS).items():
        capped = wrapper.copy().calibrate(val)
        free = wrapper.copy().calibrate(val, dof_bounds=(1.0, 1000.0))
        row = {"nu fitted": float(free.recalibrator_.forces_.dof_)}
        for split, data in tests.items():
            row[split] = split_row(capped, free, data)
            print(part, name, split, {k: round(v, 3) for k, v in row[split].items()},
                  flush=True)
        out[name] = row
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["ethanol", "acac"],
                        choices=list(PART_SETS))
    parser.add_argument("--cache", default=None, help="as benchmarks/shift.py --cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "shift_nu_excess.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {part: run_part(part, args.cache) for part in args.parts}
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
