"""The base models' force error by cell size: what ``SmallCellWarning`` warns of.

    python benchmarks/cell_size.py --cache /tmp/fits [--parts copper agpd ...]

The shift benchmark's EMT base models (model 0 of ``--cache``, as ``shift.py`` trains
and caches them) were trained on 32-atom cells (2 × 2 × 2 conventional fcc cells,
7.1–8.1 Å wide) with cutoffs of 4.5–5 Å: narrower than twice the cutoff, so an atom
sees some neighbours through two periodic images. Per system, bulk at its lowest
training temperature in cells of 2, 3 and 4 conventional cells per side (32, 108 and
256 atoms; 20 structures each, new seeds) is labelled with EMT and predicted; printed
are the cells' width, twice the cutoff, and the force MAE per size, with the
ratio to the 32-atom cells'. If the images' constraint is what the network learned,
the error jumps once the cells are wider than twice the cutoff (size 3) and stays
there (size 4).

    python benchmarks/cell_size.py --retrain agpd [--epochs 80]

tests that cause: two base models of the shift benchmark's recipe for the system, one
trained on its training set (32-atom cells), one on as many atoms in 108-atom cells at
the same temperatures (new EMT data, validated on 108-atom cells), the same epochs;
both predict the cells of every size. If the narrow cells are the cause, the wide
model's error does not jump from 108 to 256 atoms nor stand far above the narrow
model's own 32-atom error there.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO)
import argparse
import os

import numpy as np
import torch

import mlipuq
from mlipuq import datasets
from mlipuq.checks import perpendicular_widths
from mlipuq.models import MiniMLIP
from shift_data import HELD_OUT, PART_SETS, UNSEEN_SEEDS, training_recipe

SIZES = (2, 3, 4)


def force_errors(model, dataset) -> np.ndarray:
    """Force-component errors (eV/Å) of ``model`` on ``dataset``."""
    predicted = model.compute(dataset)["forces"]  # (N, 3), the structures in order
    return predicted.ravel() - np.concatenate([atoms.get_forces().ravel() for atoms in dataset])


def by_size(part: str, cache: str, n: int) -> tuple:
    """The model's cutoff, the lowest training temperature, and per cell size (atoms,
    width Å, force MAE eV/Å) for system ``part``."""
    train, _, _ = {**PART_SETS, **HELD_OUT}[part](False)
    model = mlipuq.models.load(os.path.join(cache, f"{part}-80", "model0.pt"))
    rows = []
    for atoms, data in size_sets(part, train, n).items():
        width = perpendicular_widths(data[0].cell.array).min()
        rows.append((atoms, width, np.abs(force_errors(model, data)).mean()))
    return model.cutoff, training_recipe(train)[1][0], rows


def size_sets(part: str, train, n: int) -> dict:
    """Bulk at the lowest training temperature of ``part`` per cell size (atoms: set)."""
    composition, temperatures = training_recipe(train)
    return {4 * size ** 3: datasets.emt(composition, n_structures=n,
                                        temperatures=(temperatures[0],), kinds=("bulk",),
                                        seed=UNSEEN_SEEDS[part] + 7, size=size)
            for size in SIZES}


def retrain(part: str, epochs: int, n: int) -> None:
    """Narrow- against wide-cell training of ``part``'s recipe (module docstring)."""
    from shift import MODEL, TRAIN

    train, val, _ = {**PART_SETS, **HELD_OUT}[part](False)
    composition, temperatures = training_recipe(train)
    n_wide = round(len(train) * len(train[0]) / 108)
    wide = datasets.emt(composition, n_structures=n_wide + 16, temperatures=temperatures,
                        kinds=("bulk",), seed=UNSEEN_SEEDS[part] + 8, size=3)
    wide_train, wide_val = wide.split([n_wide / len(wide), 16 / len(wide)], seed=0)
    tests = size_sets(part, train, n)
    print(f"| {part}, trained on | atoms | " + " | ".join(
        f"{atoms} atoms: F MAE meV/Å" for atoms in tests) + " |")
    print("|---|---|" + "---|" * len(tests))
    for name, (fit_set, val_set) in {"32-atom cells": (train, val),
                                     "108-atom cells": (wide_train, wide_val)}.items():
        model = MiniMLIP(fit_set.species, seed=0, **MODEL[part])
        mlipuq.train(model, fit_set, val_set, seed=0, epochs=epochs, **TRAIN)
        cells = [f"{1e3 * np.abs(force_errors(model, test)).mean():.1f}"
                 for test in tests.values()]
        atoms = sum(len(a) for a in fit_set)
        print(f"| {name} ({len(fit_set)}) | {atoms} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="shift.py's --cache folder")
    parser.add_argument("--parts", nargs="+", default=list(UNSEEN_SEEDS),
                        choices=list(UNSEEN_SEEDS))
    parser.add_argument("--structures", type=int, default=20, help="per cell size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", choices=list(UNSEEN_SEEDS), default=None,
                        help="train this system's recipe on 32- and on 108-atom cells")
    parser.add_argument("--epochs", type=int, default=80,
                        help="with --retrain (default 80, the shift table's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retrain:
        retrain(args.retrain, args.epochs, args.structures)
        return
    if args.cache is None:
        parser.error("--cache (shift.py's) is needed, unless --retrain")
    print("| system | cutoff × 2 (Å) | T (K) | " + " | ".join(
        f"{4 * s ** 3} atoms: width Å / F MAE meV/Å (× 32's)" for s in SIZES) + " |")
    print("|---|---|---|" + "---|" * len(SIZES))
    for part in args.parts:
        cutoff, temperature, rows = by_size(part, args.cache, args.structures)
        first = rows[0][2]
        cells = [f"{w:.1f} / {1e3 * mae:.1f} (×{mae / first:.2f})" for _, w, mae in rows]
        print(f"| {part} | {2 * cutoff:g} | {temperature:g} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
