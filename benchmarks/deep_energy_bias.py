"""Why the deep ensemble's energies miss on hot bulk: a bias its members share.

    python benchmarks/deep_energy_bias.py [--parts ptni nial nicu agau cupd copper]
        [--cache /tmp/fits] [--threads 2] [--first-member 0]

For each EMT system of ``benchmarks/shift.py`` (its base models, trained or read from
``--cache`` as that benchmark does, references refitted), the default
``DeepEnsemble(models).calibrate(val)`` is scored on every split: the energies' 95 %
coverage, their MAE per atom and the mean signed error per atom (a bias that every
structure of the split shares shows as |mean| ≈ MAE), the median raw spread of the
members per atom and the median calibrated std per atom, and the median widening
ratio r of the split (``calibration_excess``: how far beyond the calibration
structures its stds are). A split whose error is a shared bias while the members'
spread stays at its in-distribution value is one no committee statistic can see.
The last column is the energies' 95 % coverage of the same ensemble with its
latent-distance term, ``DeepEnsemble(models).fit_distance(train, val).calibrate(val)``
(its default since 2026-12-07; the first columns are its members alone,
``distance=None``). ``--first-member K``:
members K to K + 2 of the recipe (trained and cached as ``shift.py`` does), another
fit of the same ensemble.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import types

import numpy as np
import torch

from mlipuq.uq import DeepEnsemble
from shift import base_models, part_sets
from shift_cache import EPOCHS, cache_folder
from shift_scores import scores


def split_row(wrapper, combined, test) -> dict:
    """The energy scores of one split (per atom, meV); ``combined``: the ensemble with
    a latent-distance term, whose coverage the row adds."""
    raw = wrapper.predict(test, calibrated=False, composition=False)
    pred = wrapper.predict(test)
    error = (pred.energy - test.energies) / pred.n_atoms
    excess = pred.calibration_excess
    return {
        "cover": scores(pred, test)["energy_cov95"],
        "mae": 1e3 * float(np.mean(np.abs(error))),
        "bias": 1e3 * float(np.mean(error)),
        "raw": 1e3 * float(np.median(raw.energy_std / raw.n_atoms)),
        "std": 1e3 * float(np.median(pred.energy_std / pred.n_atoms)),
        "r": float(np.median(excess)) if excess is not None else 1.0,
        "with_term": scores(combined.predict(test), test)["energy_cov95"],
    }


def part_rows(part: str, cache, first: int = 0) -> dict:
    train, val, tests = part_sets(part, types.SimpleNamespace(quick=False, unseen=False))
    models = base_models(part, train, val, EPOCHS, first + 3,
                         cache_folder(cache, part, EPOCHS), refit=True)[first:]
    wrapper = DeepEnsemble(models, distance=None).calibrate(val)
    combined = DeepEnsemble(models).fit_distance(train, val).calibrate(val)
    return {split: split_row(wrapper, combined, test) for split, test in tests.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+",
                        default=["ptni", "nial", "nicu", "agau", "cupd", "copper"])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first-member", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| system | split | E cover 95 % | MAE | mean error | members' spread | "
          "calibrated std | r | E cover with the term |")
    print("|---|---|---|---|---|---|---|---|---|")
    for part in args.parts:
        for split, row in part_rows(part, args.cache, args.first_member).items():
            print(f"| {part} | {split} | {row['cover']:.3f} | {row['mae']:.2f} | "
                  f"{row['bias']:+.2f} | {row['raw']:.2f} | {row['std']:.2f} | "
                  f"{row['r']:.2f} | {row['with_term']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
