"""How much of an alloy model's energy error on another stoichiometry its offset drift
explains, and what the composition std was before and after the drift term.

    python benchmarks/composition_drift.py --cache /tmp/fits             # Cu3Au (alloy)
    python benchmarks/composition_drift.py --cache /tmp/fits --parts alloy agpd

The base models are ``shift.py``'s (read from its ``--cache`` folder when there,
trained as it trains them otherwise), three per system, each trained on
structures of one stoichiometry, so that the per-species reference energies are
determined only in sum (``mlipuq.training.fit_reference_energies``). Per model
and test set of shift.py whose composition leaves that span, it prints the mean
energy error per structure, the part the drift predicts (``cᵀNδ``), the
composition std of the prior alone (``τ|Nᵀc|``, the composition variance before
2026-12-02) and with the drift term, and the share of structures whose error the
composition std alone covers at 95 % (``|error| ≤ 1.96 std``).
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse

import numpy as np
import torch

from mlipuq.data import composition_matrix
from shift import EPOCHS, base_models, cache_folder
from shift_data import HELD_OUT, PART_SETS

SYSTEMS = {**PART_SETS, **HELD_OUT}


def rows(part: str, epochs: int, cache_root) -> list[dict]:
    train, val, tests = SYSTEMS[part](False)
    models = base_models(part, train, val, epochs, 3, cache_folder(cache_root, part, epochs))
    out = []
    for k, model in enumerate(models):
        basis = model.offset_basis
        if basis is None:
            continue
        for name, data in tests.items():
            counts = composition_matrix(data, model.species)
            projected = counts @ basis
            if not np.any(np.abs(projected) > 1e-9):
                continue  # a composition the training data span: no composition variance
            error = model.compute(data)["energy"] - data.energies
            prior = model.offset_prior_std * np.linalg.norm(projected, axis=1)
            std = np.sqrt(model.composition_variance(counts))
            out.append({"system": part, "model": k, "split": name,
                        "error": float(np.mean(error)),
                        "drift": float(np.mean(projected @ model.offset_drift)),
                        "prior_std": float(np.mean(prior)), "std": float(np.mean(std)),
                        "covered_prior": float(np.mean(np.abs(error) <= 1.96 * prior)),
                        "covered": float(np.mean(np.abs(error) <= 1.96 * std))})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["alloy"], choices=list(SYSTEMS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--cache", default=None, help="shift.py's --cache folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| system | model | test set | mean error (eV) | drift cᵀNδ (eV) | prior std "
          "(eV) | std with drift (eV) | 95 % covered: prior | with drift |")
    print("|---|---|---|---|---|---|---|---|---|")
    for part in args.parts:
        for r in rows(part, args.epochs, args.cache):
            print(f"| {r['system']} | {r['model']} | {r['split']} | {r['error']:+.2f} | "
                  f"{r['drift']:+.2f} | {r['prior_std']:.2f} | {r['std']:.2f} | "
                  f"{r['covered_prior']:.2f} | {r['covered']:.2f} |")


if __name__ == "__main__":
    main()
