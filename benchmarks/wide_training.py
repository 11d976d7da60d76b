"""The remedy ``WideCellWarning`` names: wide cells in the training data. Per EMT
system, every wrapper refitted on base models trained with 20 labelled 108-atom cells
added to the training set (and 5 to ``val``), tested on the same in-distribution split
and shift kinds no round saw as ``shift.py --unseen``, beside that run's rows.

    python benchmarks/wide_training.py --parts agpd aupd --cache /tmp/fits_wide
    python benchmarks/wide_training.py --parts agpd aupd --cache /tmp/fits_wide --diagnose-deep

The 25 wide cells are those of ``shift_data.unseen_frontier`` (an MD run of their
own, seed + 4; the test sets use seed to seed + 3); the recipe (network, epochs,
wrappers, default calibration) is the shift table's. The base models and trained heads
are cached in ``--cache``/PART. Rows are written to
``results/wide_training_PART.json``; the table prints the 95 % force and energy
coverage and the in-distribution force miscalibration area, narrow-trained → wide-trained.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)

import numpy as np
import torch

from mlipuq.data import concatenate
from mlipuq.uq import WideCellWarning
from shift import base_models
from shift_data import (HELD_OUT, PART_SETS, UNSEEN_SEEDS, unseen_frontier, unseen_shifts,
                        with_emt_stress)
from shift_scores import scores
from shift_wrappers import fit_wrappers

HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPERS = ["LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "ShallowEnsemble",
            "EvidentialHead", "DeepEnsemble (3)"]
N_TRAIN, N_VAL = 20, 5


def sets(part: str) -> tuple:
    """``(train, val, tests)`` with the wide cells added to ``train`` and ``val``; the
    tests are ``shift.py --unseen``'s (the in-distribution split first)."""
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    first = next(iter(tests))
    tests = {first: tests[first], **unseen_shifts(train, UNSEEN_SEEDS[part], False)}
    _, wide = unseen_frontier(train, UNSEEN_SEEDS[part], N_TRAIN + N_VAL)
    return (concatenate([train, wide[:N_TRAIN]]),
            concatenate([val, with_emt_stress(wide[N_TRAIN:])]), tests)


def run(part: str, cache: str, epochs: int) -> list[dict]:
    train, val, tests = sets(part)
    folder = os.path.join(cache, part)
    os.makedirs(folder, exist_ok=True)
    models = base_models(part, train, val, epochs, 3, folder, refit=True)
    rows = []
    for name, wrapper in fit_wrappers(models, train, val, None, folder, WRAPPERS).items():
        wrapper.calibrate(val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WideCellWarning)  # calibrated on wide cells
            for split, test in tests.items():
                rows.append({"system": part, "wrapper": name, "split": split,
                             **scores(wrapper.predict(test), test)})
    return rows


def diagnose_deep(part: str, cache: str) -> None:
    """The deep ensemble's energies of the 108-atom test cells (cached fits): raw, and
    calibrated by default, without structure scaling, without recentring, recentred on
    the total energies (the only fit until the option existed), with the members moved
    onto their mean (``recentre="members"``, the mean kept) and on ``val`` without
    its wide cells (recentred either way); median per-atom |error| and std (meV) and
    the energy NLL, and the in-distribution split's energy coverage, mean per-atom
    |error| and std (meV) and NLL."""
    train, val, tests = sets(part)
    folder = os.path.join(cache, part)
    models = base_models(part, train, val, 80, 3, folder, refit=True)
    deep = fit_wrappers(models, train, val, None, folder, ["DeepEnsemble (3)"])
    deep = deep["DeepEnsemble (3)"]
    large = next(name for name in tests if name.startswith("bulk 108"))
    first = next(iter(tests))  # the in-distribution split
    test = tests[large]
    narrow = val[: len(val) - N_VAL]
    print(f"# {part}", flush=True)
    variants = {"raw": None, "default": dict(), "no structure scaling":
                dict(structure_scaling=False), "no recentring": dict(recentre=False),
                "recentred on total energies": dict(recentre="total"),
                "members onto their mean": dict(recentre="members"),
                "val without its wide cells": dict(val=narrow),
                "  the same, total energies": dict(val=narrow, recentre="total")}
    whole = {"default": True, "members onto their mean": "members"}  # every split
    rows = {}
    for name, options in variants.items():
        if options is not None:
            options = dict(options)
            deep.calibrate(options.pop("val", val), **options)
        splits = tests if name in whole else (large, first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WideCellWarning)
            preds = {split: deep.predict(tests[split], calibrated=options is not None)
                     for split in splits}
        scored = {split: scores(preds[split], tests[split]) for split in splits}
        if name in whole:
            rows[whole[name]] = scored
        pred, shifted, inside = preds[large], scored[large], scored[first]
        n = pred.n_atoms
        print(f"{name:<28} E cover 95 % {shifted['energy_cov95']:.3f}, per atom "
              f"|error| {1e3 * np.median(abs(pred.energy - test.energies) / n):.3f} meV, "
              f"std {1e3 * np.median(pred.energy_std / n):.3f} meV, NLL "
              f"{shifted['energy_nll']:.2f}; in distribution {inside['energy_cov95']:.3f}, "
              f"MAE {1e3 * inside['energy_mae_per_atom']:.3f} meV, std "
              f"{1e3 * inside['energy_std_per_atom']:.3f} meV, NLL {inside['energy_nll']:.2f}",
              flush=True)
    every_split(rows, tests)


def every_split(rows: dict, tests) -> None:
    """The deep ensemble's energy coverage and NLL on every test split (``rows``, scores
    by recentring and split), recentred per atom (the default) beside the members moved
    onto their mean."""
    for name in tests:
        one, two = rows[True][name], rows["members"][name]
        print(f"  {name:<34} E cover 95 % {one['energy_cov95']:.3f} -> "
              f"{two['energy_cov95']:.3f}, NLL {one['energy_nll']:.2f} -> "
              f"{two['energy_nll']:.2f} (per atom -> members)", flush=True)


def narrow_rows(part: str) -> dict:
    """``shift.py --unseen``'s default rows of ``part`` (narrow training), by wrapper
    and split."""
    path = os.path.join(HERE, "results", f"shift_unseen_{part}.json")
    return {(r["wrapper"], r["split"]): r for r in json.load(open(path))["rows"]
            if r["method"] == "default"}


def table(rows: list[dict], narrow: dict) -> str:
    lines = ["| system | wrapper | split | F cover 95 % | E cover 95 % | F miscal. |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        old = narrow.get((r["wrapper"], r["split"]))
        cells = [f"{old[k]:.3f} → {r[k]:.3f}" if old else f"{r[k]:.3f}"
                 for k in ("force_cov95", "energy_cov95", "force_miscal")]
        lines.append(f"| {r['system']} | {r['wrapper']} | {r['split']} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["agpd"], choices=list(UNSEEN_SEEDS))
    parser.add_argument("--cache", required=True, help="folder for base models and heads")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--diagnose-deep", action="store_true",
                        help="the deep ensemble's 108-atom energies under four calibrations "
                        "(needs the cached fits)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.diagnose_deep:
        for part in args.parts:
            diagnose_deep(part, args.cache)
        return
    for part in args.parts:
        rows = run(part, args.cache, args.epochs)
        out = os.path.join(HERE, "results", f"wide_training_{part}.json")
        with open(out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
        print(table(rows, narrow_rows(part)), flush=True)


if __name__ == "__main__":
    main()
