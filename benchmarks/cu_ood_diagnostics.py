"""Why energy uncertainty barely rises on hot EMT Cu: errors and stds per set and kind.

    python benchmarks/cu_ood_diagnostics.py [--train-time 150] [--threads 1]
        [--train-kinds bulk vacancy surface strained]

Trains MiniMLIP on 300 K EMT Cu (bulk, vacancy, surface, strained), then for
LLPR fitted with and without force rows prints, on 300 K test, 1500 K (bulk,
vacancy) and vacancy-cluster structures: the mean predicted energy std per
atom, the actual |energy error| per atom, the mean force-component std and the
actual force MAE (meV, meV/Å). It separates "the uncertainty did not rise"
from "the error did not rise either".
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse

import numpy as np
import torch

import mlipuq
from mlipuq.models import MiniMLIP
from mlipuq.uq import LastLayerLaplace
from uq_evidence import copper_sets  # benchmarks/ is on sys.path when run as a script


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-time", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--train-kinds", nargs="+",
                        default=["bulk", "vacancy", "surface", "strained"],
                        help="300 K kinds to train on (uq_evidence.py now uses bulk only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val, test300, hot, cluster = copper_sets(args.train_kinds)  # uq_evidence.py's sets
    model = MiniMLIP(["Cu"], seed=0, cutoff=4.5, width=32, n_interactions=2, n_rbf=12)
    mlipuq.train(model, train, val, batch_size=8, lr=2e-3, forces_weight=100.0, patience=60,
                 epochs=10000, max_time=args.train_time, progress=False)
    print(f"{'LLPR':<22}{'set':<10}{'E std/atom':>11}{'|E err|/atom':>13}{'F std':>8}"
          f"{'F MAE':>8}   (meV, meV/Å)")
    for include_forces in (True, False):
        llpr = LastLayerLaplace(model, include_forces=include_forces, distance=None).fit(train)
        label = f"include_forces={include_forces}"
        for name, ds in (("300 K", test300), ("1500 K", hot), ("vac. cl.", cluster)):
            p = llpr.predict(ds)
            e_err = np.mean(np.abs(p.energy - ds.energies) / p.n_atoms)
            print(f"{label:<22}{name:<10}{1000 * np.mean(p.energy_per_atom_std):>11.3f}"
                  f"{1000 * e_err:>13.2f}{1000 * p.forces_std.mean():>8.2f}"
                  f"{1000 * np.mean(np.abs(p.forces - ds.forces)):>8.1f}")
            label = ""


if __name__ == "__main__":
    main()
