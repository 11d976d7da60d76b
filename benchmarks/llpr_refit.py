"""LLPR with the trained readout (default) against ``refit_mean=True``, on packaged data.

    python benchmarks/llpr_refit.py --threads 1 --docs docs/llpr.md   # ~2 min on 2 cores

For every packaged pretrained MiniMLIP (:mod:`mlipuq.demo`: EMT Cu, three
models; DFT ethanol, one model) and both settings of ``refit_mean``:
``LastLayerLaplace(model, refit_mean=...).fit(train).calibrate(val)``, then on
the packaged test set the energy (per atom) and force MAE, NLL, 95 %
coverage, the energy z-mean (a mean offset shows here), the force
miscalibration area and the mean predicted std (sharpness). Nothing is tuned:
both rows use the wrapper's defaults otherwise. Results go to
``benchmarks/results/llpr_refit.json``; ``--docs`` replaces the table between
the ``llpr-refit`` markers of that file.
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

from mlipuq import demo
from mlipuq.calibration.metrics import all_metrics
from mlipuq.uq import LastLayerLaplace

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"cu_emt": ("cu_emt_0", "cu_emt_1", "cu_emt_2"), "ethanol": ("ethanol_0",)}


def score(wrapper, test) -> dict:
    """Test-set metrics of a calibrated wrapper (energies per atom, force components)."""
    pred = wrapper.predict(test)
    n_atoms = np.array([len(a) for a in test], dtype=np.float64)
    # scored as the predictive it is: a Student-t where the prediction carries ν
    energy = all_metrics(pred.energy / n_atoms, np.sqrt(pred.energy_var) / n_atoms,
                         np.asarray(test.energies) / n_atoms, dof=pred.energy_dof)
    forces = all_metrics(pred.forces, np.sqrt(pred.forces_var),
                         np.concatenate([a.get_forces() for a in test]), dof=pred.forces_dof)
    return {
        "energy_mae_meV_atom": 1000 * energy["mae"], "energy_nll": energy["nll"],
        "energy_coverage_95": energy["coverage_95"], "energy_z_mean": energy["z_mean"],
        "energy_z_std": energy["z_std"], "energy_std_meV_atom": 1000 * energy["sharpness"],
        "forces_mae_meV_A": 1000 * forces["mae"], "forces_nll": forces["nll"],
        "forces_coverage_95": forces["coverage_95"],
        "forces_miscalibration_area": forces["miscalibration_area"],
        "forces_std_meV_A": 1000 * forces["sharpness"],
    }


def run(system: str, name: str) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data-mismatch notes; the rows say what was used
        train, val, test = demo.system_data(system)
    model = demo.load_pretrained(name)
    rows = []
    for refit in (False, True):
        start = time.perf_counter()
        wrapper = LastLayerLaplace(model, refit_mean=refit, distance=None).fit(train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the offset warning is measured, not shown
            wrapper.calibrate(val)
        row = {"system": system, "model": name, "refit_mean": refit,
               "prior_precision": wrapper.prior_precision_,
               "energy_noise": wrapper.energy_noise_, "forces_noise": wrapper.forces_noise_,
               **score(wrapper, test), "seconds": time.perf_counter() - start}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list) -> str:
    head = ("| model | readout | E MAE (meV/atom) | E z-mean / z-std | E NLL | E cover 95 % "
            "| F MAE (meV/Å) | F NLL | F cover 95 % | F miscal. | mean F std (meV/Å) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'posterior mean' if r['refit_mean'] else 'trained'} "
            f"| {r['energy_mae_meV_atom']:.3f} | {r['energy_z_mean']:+.2f} / "
            f"{r['energy_z_std']:.2f} | {r['energy_nll']:.3f} | {r['energy_coverage_95']:.3f} "
            f"| {r['forces_mae_meV_A']:.2f} | {r['forces_nll']:.3f} "
            f"| {r['forces_coverage_95']:.3f} | {r['forces_miscalibration_area']:.3f} "
            f"| {r['forces_std_meV_A']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--docs", default=None, help="write the table between the "
                        "llpr-refit markers of this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for system, names in MODELS.items() for name in names for row in run(system, name)]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "llpr_refit.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    text = table(rows)
    print(text)
    if args.docs:
        from shift import write_between_markers

        write_between_markers(args.docs, text, name="llpr-refit")


if __name__ == "__main__":
    main()
