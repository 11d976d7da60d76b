"""Does choosing LLPR's prior precision on held-out data help under shift?

    python benchmarks/llpr_prior_scan.py --threads 1 --docs docs/shift.md   # ~3 min

The packaged pretrained EMT Cu MiniMLIP (``cu_emt_0``: 300 and 600 K bulk,
vacancy, surface and strained cells) gets ``LastLayerLaplace(model).fit(train)``;
then the prior precision λ is multiplied by 10⁻⁴ … 10³ (the noise levels
kept, energy and joint posteriors alike), each posterior is scalar-calibrated
on the packaged validation set, and we report the validation force NLL
(what a held-out choice of λ would maximise) next to the 95 % force and
energy coverage on the packaged test set and on three shifts generated here
(EMT MD at 1500 K bulk and vacancy cells, 1200 K surfaces; 20 structures
each, seed 77). Results go to ``benchmarks/results/llpr_prior_scan.json``;
``--docs`` replaces the table between the ``llpr-prior-scan`` markers.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import os
import warnings

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import datasets, demo
from mlipuq.uq import LastLayerLaplace

HERE = os.path.dirname(os.path.abspath(__file__))
MULTIPLIERS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
SHIFTS = {
    "bulk 1500 K": dict(temperatures=(1500,), kinds=("bulk",)),
    "vacancy 1500 K": dict(temperatures=(1500,), kinds=("vacancy",)),
    "surface 1200 K": dict(temperatures=(1200,), kinds=("surface",)),
}


def rows_of(wrapper, dataset) -> tuple:
    """Energy rows f (B, D), force rows g (3N, D) and the residuals of the trained model."""
    parts = []
    for _, batch in mdata.iter_batches(dataset, wrapper.cutoff, 8, species=wrapper.species,
                                       dtype=wrapper.dtype):
        out = wrapper.model(batch, forces=True, features=True)
        phi = out["features"]
        parts.append((wrapper._structure_features(phi.detach(), batch).numpy(),
                      wrapper._force_features(phi, out["positions"]).numpy(),
                      (out["energy"].detach() - batch.energy).numpy(),
                      (out["forces"].detach() - batch.forces).numpy().reshape(-1)))
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))


def variances(wrapper, mult: float, rows: tuple) -> tuple:
    """(force, energy) variances of the posterior with λ scaled by ``mult``."""
    d = wrapper.gn_energy_.shape[0]
    joint = (wrapper.gn_energy_ / wrapper.energy_noise_**2
             + wrapper.gn_forces_ / wrapper.forces_noise_**2
             + wrapper.prior_precision_ * mult * np.eye(d))
    post = wrapper.energy_posterior_
    energy = (wrapper.gn_energy_ / post["energy_noise"] ** 2
              + post["prior_precision"] * mult * np.eye(d))
    f, g = rows[0], rows[1]
    var_f = np.einsum("ri,ij,rj->r", g, np.linalg.inv(joint), g)
    var_e = np.einsum("ri,ij,rj->r", f, np.linalg.inv(energy), f)
    return var_f, var_e


def scan() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, val, test = demo.system_data("cu_emt")
    sets = {"val": val, "test": test}
    for name, kw in SHIFTS.items():
        sets[name] = datasets.emt(("Cu",), n_structures=20, seed=77, size=2, **kw)
    wrapper = LastLayerLaplace(demo.load_pretrained("cu_emt_0"), distance=None).fit(train)
    rows = {k: rows_of(wrapper, v) for k, v in sets.items()}
    out = []
    for mult in MULTIPLIERS:
        var = {k: variances(wrapper, mult, r) for k, r in rows.items()}
        (vf, ve), (_, _, re, rf) = var["val"], rows["val"]
        s_f, s_e = np.sqrt(np.mean(rf**2 / vf)), np.sqrt(np.mean(re**2 / ve))  # scalar calib.
        row = {"multiplier": mult, "prior_precision": wrapper.prior_precision_ * mult,
               "val_force_nll": float(np.mean(0.5 * np.log(2 * np.pi * s_f**2 * vf)
                                              + 0.5 * rf**2 / (s_f**2 * vf)))}
        for k, (vf, ve) in var.items():
            _, _, re, rf = rows[k]
            row[f"{k} F cover"] = float(np.mean(np.abs(rf) < 1.959964 * s_f * np.sqrt(vf)))
            row[f"{k} E cover"] = float(np.mean(np.abs(re) < 1.959964 * s_e * np.sqrt(ve)))
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def table(rows: list) -> str:
    sets = ["test", *SHIFTS]
    head = "| λ / λ_evidence | val F NLL | " + " | ".join(f"{s}: F / E cover" for s in sets) + " |"
    lines = [head, "|" + "---|" * (2 + len(sets))]
    for r in rows:
        cells = " | ".join(f"{r[f'{s} F cover']:.3f} / {r[f'{s} E cover']:.2f}" for s in sets)
        lines.append(f"| {r['multiplier']:g} | {r['val_force_nll']:.3f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--docs", default=None, help="write the table between the "
                        "llpr-prior-scan markers of this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = scan()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "llpr_prior_scan.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    print(table(rows))
    if args.docs:
        from shift import write_between_markers

        write_between_markers(args.docs, table(rows), name="llpr-prior-scan")


if __name__ == "__main__":
    main()
