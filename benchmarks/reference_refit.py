"""The constant energy offset training leaves, and what refitting the reference energies
to the trained network removes (``mlipuq.train(..., refit_references=...)``).

    python benchmarks/reference_refit.py --cache /tmp/fits --threads 2 --docs docs/shift.md

For each system of the shift benchmark and each base model of its recipe (the deep
ensemble's members: seeds 0, 1, 2; trained and cached by ``shift.py`` as it does,
reference energies as fitted before training), the per-atom energy error on its own
training set, on the validation set and on each shift: its mean (the offset), its
spread around the mean and its mean absolute value, before and after
:func:`mlipuq.training.refit_reference_energies` on the training set. The refit
changes no weight and no force (tests/test_reference_refit.py). Results go to
``benchmarks/results/reference_refit.json``; ``--docs`` replaces the table between
the ``reference-refit`` markers of that file.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import os
import time
import warnings

import numpy as np
import torch

import shift
from mlipuq.training import refit_reference_energies

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "reference_refit.json")


def errors(model, dataset) -> dict:
    """Per-atom energy error (meV/atom) of ``model`` on ``dataset``: mean, spread, MAE."""
    error = 1000 * (model.compute(dataset)["energy"] - dataset.energies) / dataset.n_atoms
    return {"mean": float(error.mean()), "spread": float(error.std()),
            "mae": float(np.abs(error).mean())}


def run_part(part: str, seeds, args) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data notes; the rows say what was used
        train, val, tests = {**shift.PART_SETS, **shift.HELD_OUT}[part](False)
        cache = shift.cache_folder(args.cache, part, args.epochs)
        models = shift.base_models(part, train, val, args.epochs, max(seeds) + 1, cache)
    rows = []
    sets = {"train": train, "val": val, **{k: v for k, v in tests.items()
                                           if not k.startswith("in dist")}}
    for seed in seeds:
        model = models[seed]
        before = {name: errors(model, data) for name, data in sets.items()}
        shift_ev = refit_reference_energies(model, train)
        after = {name: errors(model, data) for name, data in sets.items()}
        for name in sets:
            rows.append({"system": part, "base_seed": seed, "split": name,
                         "before": before[name], "after": after[name],
                         "shift_eV": {str(z): v for z, v in shift_ev.items()}})
        print(f"{part} {seed}: train offset {before['train']['mean']:+.2f} meV/atom, "
              f"val MAE {before['val']['mae']:.2f} → {after['val']['mae']:.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Per system and base model: the training-set offset, the validation MAE before →
    after, and the shifts' median MAE before → after (meV/atom)."""
    lines = ["| system | base model | offset on its training set (spread), meV/atom "
             "| val MAE before → after | shifts: MAE before → after (median over shifts) |",
             "|---|---|---|---|---|"]
    keys = sorted({(r["system"], r["base_seed"]) for r in rows},
                  key=lambda k: ([*shift.PART_SETS, *shift.HELD_OUT].index(k[0]), k[1]))
    for system, seed in keys:
        mine = {r["split"]: r for r in rows if (r["system"], r["base_seed"]) == (system, seed)}
        shifts = [r for name, r in mine.items() if name not in ("train", "val")]
        b = np.median([r["before"]["mae"] for r in shifts])
        a = np.median([r["after"]["mae"] for r in shifts])
        t, v = mine["train"]["before"], mine["val"]
        lines.append(f"| {system} | {seed} | {t['mean']:+.2f} ({t['spread']:.2f}) | "
                     f"{v['before']['mae']:.2f} → {v['after']['mae']:.2f} | {b:.1f} → {a:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["ethanol", "acac", "alloy", "ptni", "cupd",
                                                       "nicu", "aupd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--from-json", default=None, help="rebuild the table only")
    parser.add_argument("--docs", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as fh:
            rows = json.load(fh)["rows"]
    else:
        rows = [r for part in args.parts for r in run_part(part, args.seeds, args)]
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    text = table(rows)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.docs:
        shift.write_between_markers(args.docs, text, name="reference-refit")


if __name__ == "__main__":
    main()
