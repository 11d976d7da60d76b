"""The base models' force error by cell size: what ``SmallCellWarning`` warns of.

    python benchmarks/cell_size.py --cache /tmp/fits [--parts copper agpd ...]

The shift benchmark's EMT base models (model 0 of ``--cache``, as ``shift.py`` trains
and caches them) were trained on 32-atom cells (2 × 2 × 2 conventional fcc cells,
7.2–8.2 Å wide) with cutoffs of 4.5–5 Å: narrower than twice the cutoff, so an atom
sees some neighbours through two periodic images. Per system, bulk at its lowest
training temperature in cells of 2, 3 and 4 conventional cells per side (32, 108 and
256 atoms; 20 structures each, new seeds) is labelled with EMT and predicted; printed
are the cells' width, twice the cutoff, and the force MAE per size, with the
ratio to the 32-atom cells'. If the images' constraint is what the network learned,
the error jumps once the cells are wider than twice the cutoff (size 3) and stays
there (size 4).
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
    composition, temperatures = training_recipe(train)
    rows = []
    for size in SIZES:
        data = datasets.emt(composition, n_structures=n, temperatures=(temperatures[0],),
                            kinds=("bulk",), seed=UNSEEN_SEEDS[part] + 7, size=size)
        errors = force_errors(model, data)
        width = perpendicular_widths(data[0].cell.array).min()
        rows.append((len(data[0]), width, np.abs(errors).mean()))
    return model.cutoff, temperatures[0], rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="shift.py's --cache folder")
    parser.add_argument("--parts", nargs="+", default=list(UNSEEN_SEEDS),
                        choices=list(UNSEEN_SEEDS))
    parser.add_argument("--structures", type=int, default=20, help="per cell size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
