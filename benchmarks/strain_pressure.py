"""Why strained cells' energies escape the wrappers: the base model's stress error at the
training cell, measured on the calibration data, against the energy errors of the
strained cells (``docs/shift.md``, "What stays out of reach").

    python benchmarks/strain_pressure.py --cache /tmp/fits [--parts cupd nicu] [--seeds 0 1 2]

For each EMT system of the shift benchmark with a strained-cell shift (its bulk cells
at one volume; trained on energies and forces, no stress), per base model: the model's
stress minus EMT's on ``val`` (mean over structures, eV/Å³), and on the strained cells
the energy error per atom against its first-order prediction from that stress error
alone, ΔE/n = (V₀/n) Δσ : ε with ε the cell's strain from the training cell (the energy
is the strain's integral of V σ). Prints the slope and R² of error on prediction and the
error left after it (the energy offset at the training cell included). Reads the base
models from ``--cache`` (``shift.py --cache``); trains the missing ones (minutes each).

``--per-structure cupd:0``: the strained cells of that (system, base model), ordered by
volume per atom, with each default single model's (LLPR, latent distance) calibrated
energy std beside the error, z and ``calibration_excess`` (which cells the 95 %
intervals miss, and whether the widening saw them).
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse

import numpy as np
import torch
from ase import units

from mlipuq.uq import LastLayerLaplace, LatentDistance
from shift import base_models, cache_folder
from shift_data import HELD_OUT, PART_SETS, emt_stress

STRAINED = "strained 300 K"


def strain_from(cell0: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The small strain ε (symmetric, 3×3) taking the rows of ``cell0`` to ``cell``
    (ASE's convention, cell = cell0 (I + ε)). Not the strain term's measure:
    ``mlipuq.calibration.strain.green_lagrange`` is the finite (Green–Lagrange) strain,
    rotation invariant and matched up to a supercell; the two agree to first order in ε,
    which is all this diagnosis's first-order energy error uses."""
    deformation = np.linalg.solve(cell0, cell)
    return 0.5 * (deformation + deformation.T) - np.eye(3)


def predicted_errors(stress_error: np.ndarray, cell0: np.ndarray, structures) -> np.ndarray:
    """First-order energy error per atom of each structure from a constant stress error
    (3, 3): (V₀/n) Δσ : ε, eV/atom (ASE: σ = (1/V) ∂E/∂ε)."""
    volume0 = abs(np.linalg.det(cell0))
    return np.array([volume0 / len(a) * float(np.sum(stress_error
                                                      * strain_from(cell0, np.asarray(a.cell))))
                     for a in structures])


def line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x (with an intercept) and its R²."""
    design = np.column_stack([x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(coef[0]), float(1.0 - residual.var() / y.var())


def measure(model, val, strained) -> dict:
    """The stress error on ``val`` (its structures at one cell) and what it explains of
    the strained cells' energies."""
    cell0 = np.asarray(val[0].cell)
    if any(np.abs(np.asarray(a.cell) - cell0).max() > 1e-9 for a in val):
        raise ValueError("val holds more than one cell: no training cell to strain from")
    errors = model.compute(val, stress=True)["stress"] - np.array([emt_stress(a) for a in val])
    stress_error = errors.mean(axis=0)
    n = np.array([len(a) for a in strained])
    out = model.compute(strained)
    energy_error = (out["energy"] - np.array([a.get_potential_energy() for a in strained])) / n
    predicted = predicted_errors(stress_error, cell0, strained)
    slope, r2 = line(predicted, energy_error)
    return {"pressure_error": float(-np.trace(stress_error) / 3),
            "stress_error_spread": float(errors.std(axis=0).max()),
            "slope": slope, "r2": r2,
            "mae": float(np.abs(energy_error).mean()),
            "mae_left": float(np.abs(energy_error - predicted).mean())}


def report(part: str, seed: int, m: dict) -> str:
    """One row of the printed table (pressures in GPa, energies in meV/atom)."""
    gpa = 1.0 / units.GPa
    return (f"| {part} | {seed} | {m['pressure_error'] * gpa:+.2f} "
            f"({m['stress_error_spread'] * gpa:.2f}) | {m['slope']:.2f} | {m['r2']:.3f} | "
            f"{m['mae'] * 1e3:.1f} → {m['mae_left'] * 1e3:.1f} |")


def per_structure(model, train, val, strained) -> None:
    """Print, per strained cell by volume per atom, each single model's calibrated energy
    std (``W(model).fit(train).calibrate(val)``) beside its error, meV/atom."""
    n = np.array([len(a) for a in strained])
    volume = np.array([a.get_volume() / len(a) for a in strained])
    truth = np.array([a.get_potential_energy() for a in strained])
    for wrapper in (LastLayerLaplace, LatentDistance):
        p = wrapper(model).fit(train).calibrate(val).predict(strained)
        error = (np.asarray(p.energy) - truth) / n * 1e3
        std = np.sqrt(np.asarray(p.energy_var)) / n * 1e3
        excess = np.asarray(p.calibration_excess)
        print(f"{wrapper.__name__}: volume/atom (Å³), error, std (meV/atom), z, excess, missed")
        for k in np.argsort(volume):
            z = error[k] / std[k]
            print(f"  {volume[k]:6.2f} {error[k]:8.1f} {std[k]:8.1f} {z:6.2f} "
                  f"{excess[k]:6.2f} {'✗' if abs(z) > 1.96 else ''}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sets = {**PART_SETS, **HELD_OUT}
    parser.add_argument("--parts", nargs="+", default=["copper", "ptni", "platinum", "agpd",
                                                       "nial", "cupd", "nicu", "aupd", "agau"],
                        help="systems with a strained shift (default: all nine)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="base models (default: 0)")
    parser.add_argument("--epochs", type=int, default=80,
                        help="the base models' epochs, as shift.py (default: 80)")
    parser.add_argument("--cache", default=None, help="shift.py's --cache folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--per-structure", default=None, metavar="SYSTEM:SEED",
                        help="the strained cells of one fit, structure by structure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.per_structure:
        part, _, seed = args.per_structure.partition(":")
        if part not in sets or not seed.isdigit():
            parser.error(f"--per-structure wants SYSTEM:SEED with SYSTEM one of "
                         f"{sorted(sets)}, got {args.per_structure!r}")
        train, val, shifts = sets[part](False)
        models = base_models(part, train, val, args.epochs, int(seed) + 1,
                             cache=cache_folder(args.cache, part, args.epochs), refit=True)
        per_structure(models[int(seed)], train, val, shifts[STRAINED])
        return
    print("| system | base model | pressure error on val, GPa (largest spread of a stress "
          "component) | slope of error on (V₀/n) Δσ:ε | R² | strained energy MAE → left, "
          "meV/atom |\n|---|---|---|---|---|---|")
    for part in args.parts:
        train, val, shifts = sets[part](False)
        models = base_models(part, train, val, args.epochs, max(args.seeds) + 1,
                             cache=cache_folder(args.cache, part, args.epochs), refit=True)
        for seed in args.seeds:
            print(report(part, seed, measure(models[seed], val, shifts[STRAINED])), flush=True)


if __name__ == "__main__":
    main()
