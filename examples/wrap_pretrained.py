"""Uncertainties for a pretrained foundation model: SevenNet-0 with a calibrated LLPR.

    python examples/wrap_pretrained.py --out wrap_pretrained/ [--overwrite] [--threads 2]

Needs the ``sevennet`` extra (``pip install -e ".[sevennet]" -c constraints.txt``);
SevenNet-0 ships inside the sevenn wheel, nothing is downloaded.

1. ``mlipuq.models.from_sevennet("7net-0")``: SevenNet-0's per-atom features
   are the 64 scalar inputs of its last linear layer.
2. SevenNet-0 is a PBE model of inorganic crystals (MPtrj); the packaged
   acetylacetone (acac) data are molecular PBE+D3 energies with another energy
   zero (about -9391 eV per molecule against SevenNet's -87 eV). Before
   anything else, the per-species energies are refitted by least squares on
   the training residuals (``mlipuq.data.fit_atomic_energies``) and added to the
   model's ``atomic_energies``: otherwise LLPR would read a 9300 eV offset as
   noise. All molecules share one composition, so only the offset per molecule
   is determined (the minimum-norm solution spreads it over H, C, O); this
   changes no force and leaves SevenNet's network untouched.
3. Last-layer Laplace (LLPR, ``mlipuq.uq.LastLayerLaplace``) fitted on 150
   training molecules. The fit uses energies only and force variances are
   sampled (8 posterior samples, one backward pass through SevenNet each):
   the force-exact options (``include_forces=True``, ``force_variance="exact"``)
   cost one backward pass per feature (64) per batch, i.e. 4x longer than
   this whole script on 2 cores. The force std is put on scale by the
   calibration instead.
4. ``calibrate(val, method="scalar")`` on the 50 validation molecules (a
   scalar factor for energy and one for force std), then a calibration report
   with plots on 50 test molecules (``report.md``, ``report.json``, ``summary.png`` in ``--out``).
5. Out-of-distribution: 8 test molecules rattled by 0, 0.05, 0.1 and 0.2 Å
   (no DFT for those): the mean energy and force std grow with the distortion.

Runs in about 2 minutes on 2 CPU cores (torch threads 2; 112 s measured with `time`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq import datasets
from mlipuq.calibration import evaluate
from mlipuq.uq import LastLayerLaplace

OUTPUTS = ("report.md", "report.json", "summary.png", "ood.json", "llpr_sevennet.pt")
AMPLITUDES = (0.0, 0.05, 0.1, 0.2)  # Å


def refit_offsets(model, train) -> float:
    """Add least-squares per-species corrections (eV) fitted on the residuals
    E_ref - E_model of ``train`` to the model's atomic energies; returns the
    mean correction per molecule (eV)."""
    predicted = np.concatenate([
        model(batch.to(device=model.device), forces=False)["energy"].detach().numpy()
        for _, batch in mlipuq.data.iter_batches(train, model.cutoff, 50, species=model.species,
                                                 dtype=model.dtype)
    ])
    residuals = []
    for atoms, e_ref, e_model in zip(train, train.energies, predicted):
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=e_ref - e_model)
        residuals.append(atoms)
    correction = mlipuq.data.fit_atomic_energies(mlipuq.AtomsDataset(residuals))
    energies = model.atomic_energies
    model.set_atomic_energies({z: e + correction.get(z, 0.0) for z, e in energies.items()})
    return float(np.mean(train.energies - predicted))


def rattled(structures, amplitude: float, seed: int = 0):
    out = []
    for k, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = None
        if amplitude > 0:
            atoms.rattle(amplitude, seed=seed + k)
        out.append(atoms)
    return out


def summary_row(name: str, report) -> str:
    e, f = report.metrics["energy"], report.metrics["forces"]
    return (f"| {name:<12} | {1000 * e['rmse']:8.1f} | {1000 * e['sharpness']:8.1f} | "
            f"{e['z_rms']:6.2f} | {e['spearman']:5.2f} | {1000 * f['rmse']:7.1f} | "
            f"{1000 * f['sharpness']:7.1f} | {f['z_rms']:6.2f} | {f['spearman']:5.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--n-train", type=int, default=150, help="training molecules for LLPR")
    parser.add_argument("--n-test", type=int, default=50, help="test molecules for the report")
    parser.add_argument("--n-samples", type=int, default=8, help="LLPR posterior samples")
    args = parser.parse_args()
    existing = [name for name in OUTPUTS if os.path.exists(os.path.join(args.out, name))]
    if existing and not args.overwrite:
        print(f"wrap_pretrained: {args.out} already holds {existing}; pass --overwrite",
              file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="No tensor product accelerator")
    start = time.perf_counter()

    def log(text):
        print(f"[{time.perf_counter() - start:5.0f} s] {text}", flush=True)

    # 1-2. the pretrained model, with its energy zero moved to acac's
    model = mlipuq.models.from_sevennet("7net-0")
    train = datasets.acac("train")[: args.n_train]
    val = datasets.acac("val")
    test = datasets.acac("test")[:: max(1, len(datasets.acac("test")) // args.n_test)][: args.n_test]
    offset = refit_offsets(model, train)
    log(f"SevenNet-0 ({model.n_features} features, cutoff {model.cutoff} Å); "
        f"energy offset to acac refitted: {offset:.2f} eV per molecule")

    # 3-4. LLPR, calibrated on the validation set, scored on the test set
    llpr = LastLayerLaplace(model, include_forces=False, force_variance="samples", n_samples=args.n_samples)
    # one scale factor per quantity (not the default Student-t for forces): the table
    # below compares root mean variances with RMSEs, i.e. reads the stds as Gaussian
    llpr.fit(train, batch_size=50).calibrate(val, method="scalar")
    log(f"LLPR fitted on {len(train)} molecules, calibrated on {len(val)} "
        f"(std scaled by {llpr.recalibrator_.energy_.scale_:.3g} for energies, "
        f"{llpr.recalibrator_.forces_.scale_:.3g} for forces)")
    raw = llpr.predict(test, batch_size=50, calibrated=False)
    calibrated = llpr.recalibrator_.transform(raw)
    report_raw, report = evaluate(raw, test), evaluate(calibrated, test)
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write(report.to_markdown())
    with open(os.path.join(args.out, "report.json"), "w") as fh:
        fh.write(report.to_json())
    import matplotlib

    matplotlib.use("Agg")
    from mlipuq.calibration import plots

    fig = plots.summary_figure(report)
    fig.savefig(os.path.join(args.out, "summary.png"), dpi=110)
    llpr.save(os.path.join(args.out, "llpr_sevennet.pt"), overwrite=args.overwrite)
    log(f"test set ({len(test)} molecules) scored; report, plots and wrapper in {args.out}")

    # 5. uncertainties on distorted molecules (no reference: uncertainties only)
    base = test[:8]
    structures = [a for amplitude in AMPLITUDES for a in rattled(base, amplitude)]
    pred = llpr.predict(structures, batch_size=len(structures))  # one pass for all amplitudes
    atom_amplitude = np.repeat(np.repeat(AMPLITUDES, len(base)), pred.n_atoms)
    ood = []
    for k, amplitude in enumerate(AMPLITUDES):
        rows = slice(k * len(base), (k + 1) * len(base))
        atoms = atom_amplitude == amplitude
        ood.append({"amplitude": amplitude,
                    "energy_std": float(np.mean(pred.energy_std[rows])),
                    "forces_std": float(np.mean(pred.forces_std[atoms])),
                    "forces_rms": float(np.sqrt(np.mean(pred.forces[atoms] ** 2)))})
    with open(os.path.join(args.out, "ood.json"), "w") as fh:
        json.dump(ood, fh, indent=2)
    log("rattled molecules predicted")

    print()
    print(f"SevenNet-0 + LLPR on acac test ({len(test)} molecules); energies in meV, "
          "forces in meV/Å (per component); RMV = root mean predicted variance")
    print("| std          | E RMSE   | E RMV    | E z_rms | E rho | F RMSE  | F RMV   | F z_rms | F rho |")
    print("|--------------|---------:|---------:|-------:|------:|--------:|--------:|-------:|------:|")
    print(summary_row("raw LLPR", report_raw))
    print(summary_row("calibrated", report))
    print()
    print(f"Rattled test molecules ({len(base)}), calibrated LLPR, no reference data:")
    print("| rattle (Å) | mean E std (meV) | mean F std (meV/Å) | F rms (meV/Å) |")
    print("|-----------:|-----------------:|-------------------:|--------------:|")
    for row in ood:
        print(f"| {row['amplitude']:10.2f} | {1000 * row['energy_std']:16.1f} | "
              f"{1000 * row['forces_std']:18.1f} | {1000 * row['forces_rms']:13.0f} |")
    print()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
