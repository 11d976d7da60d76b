"""Evidence that every UQ wrapper works, on real DFT ethanol and on EMT Cu.

    python benchmarks/uq_evidence.py --readme README.md      # ~45 min on 2 cores
    python benchmarks/uq_evidence.py --model ethanol.pt      # reuse a trained base model
    python benchmarks/uq_evidence.py --model ethanol.pt --only EvidentialHead --readme README.md
                                               # re-measure one wrapper, keep the other rows
    python benchmarks/uq_evidence.py --parts copper --readme README.md
                                               # re-measure EMT Cu only, keep the ethanol rows

Ethanol (packaged DFT data, MiniMLIP base): every wrapper is fitted, then
``calibrate(val)``; on the 1000-structure test set we report the Spearman rank
correlation between the per-atom force error norm |F - F_ref| and the
predicted per-atom force std (norm of the component stds), the force
miscalibration area (per component), and NLLs. Targets: Spearman >= 0.3,
miscalibration area <= 0.1.

EMT Cu: the base model is trained on 300 K structures, by default 300 K
bulk MD frames only (``--cu-train-kinds``; the earlier setup also trained on
300 K vacancy, surface and strained frames); we report the mean predicted
energy std per atom on 1500 K (bulk and vacancy) structures and on
vacancy-cluster structures divided by that on 300 K test structures (target:
>= 3), and the same ratio for the actual |energy error| per atom, which says
whether the structures are out of distribution for the model at all. The Cu
models are trained for fixed epoch budgets (``--cu-epochs``,
``--cu-member-epochs``), so the Cu part is deterministic (two runs of
``--parts copper --threads 1`` gave identical rows, about 30 min each).

``--readme`` replaces the table between the ``uq-evidence`` markers of that file.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import os
import re
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import mlipuq
from mlipuq import datasets
from mlipuq.calibration import metrics
from mlipuq.models import MiniMLIP
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

ETHANOL_MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)
CU_MODEL = dict(cutoff=4.5, width=32, n_interactions=2, n_rbf=12, n_readout_features=32)
TRAIN = dict(batch_size=8, lr=2e-3, forces_weight=100.0, patience=60, lr_patience=12,
             epochs=100000, progress=False)


def force_scores(pred, reference) -> dict:
    err = np.linalg.norm(pred.forces - reference.forces, axis=1)
    std = np.linalg.norm(pred.forces_std, axis=1)
    return {
        "spearman": float(spearmanr(err, std).statistic),
        # scored as the predictive it is: a Student-t where the prediction carries ν
        "miscal_area": float(metrics.miscalibration_area(pred.forces, pred.forces_std,
                                                         reference.forces, dof=pred.forces_dof)),
        "nll_forces": float(metrics.nll(pred.forces, pred.forces_std, reference.forces,
                                        dof=pred.forces_dof)),
        "nll_energy": float(metrics.nll(pred.energy, pred.energy_std, reference.energies,
                                        dof=pred.energy_dof)),
        "force_mae": float(np.mean(np.abs(pred.forces - reference.forces))),
    }


LLPR_E = "LastLayerLaplace (include_forces=False)"
LLPR_JOINT = "LastLayerLaplace (energy_posterior='joint')"
#: the evidential head without its latent-distance term (its default before)
EVIDENTIAL_ALONE = "EvidentialHead (distance=None)"
WRAPPERS = ("LastLayerLaplace", LLPR_JOINT, LLPR_E, "ShallowEnsemble (8 heads)", "EvidentialHead",
            EVIDENTIAL_ALONE, "DeepEnsemble (5)")


def wrappers_for(model, make_model, train, val, member_options, seed=0, only=WRAPPERS) -> dict:
    """Fit and calibrate the wrappers in ``only``; extra deep-ensemble members are
    trained with ``{**TRAIN, **member_options}`` (a time or an epoch budget)."""
    t0 = time.perf_counter()
    out = {}
    if "LastLayerLaplace" in only:
        out["LastLayerLaplace"] = LastLayerLaplace(model, distance=None).fit(train)
    if LLPR_JOINT in only:
        out[LLPR_JOINT] = LastLayerLaplace(model, energy_posterior="joint", distance=None).fit(
            train)
    if LLPR_E in only:
        out[LLPR_E] = LastLayerLaplace(model, include_forces=False, distance=None).fit(train)
    if "ShallowEnsemble (8 heads)" in only:
        out["ShallowEnsemble (8 heads)"] = ShallowEnsemble(model, n_heads=8).fit(
            train, val, epochs=30, lr=1e-3, batch_size=16, seed=seed, patience=8,
            progress=False)  # lr=1e-2 diverged on ethanol after epoch 0 (best epoch 0)
    for name, distance in (("EvidentialHead", "mahalanobis"), (EVIDENTIAL_ALONE, None)):
        if name in only:
            # the head learns the frozen model's residuals: fit it on held-out data
            # (halves of val), not on the base model's own training set, to which its
            # latent-distance term measures distances
            out[name] = EvidentialHead(model, distance=distance).fit(
                *val.split([0.5, 0.5], seed=seed), reference=train, epochs=60, lr=1e-2,
                batch_size=16, seed=seed, patience=10, progress=False)
    if "DeepEnsemble (5)" in only:
        members = [model]
        for s in range(1, 5):
            member = make_model(seed + s)
            mlipuq.train(member, train, val, seed=seed + s, **{**TRAIN, **member_options})
            members.append(member)
        out["DeepEnsemble (5)"] = DeepEnsemble(members, distance=None)
    for name, wrapper in out.items():
        wrapper.calibrate(val)
    print(f"  wrappers fitted and calibrated in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def ethanol_part(args) -> list[dict]:
    train, val, test = datasets.ethanol("train"), datasets.ethanol("val"), datasets.ethanol("test")
    make = lambda s: MiniMLIP(["H", "C", "O"], seed=s, **ETHANOL_MODEL)  # noqa: E731
    if args.model:
        model = mlipuq.models.load(args.model).float()
    else:
        model = make(args.seed)
        mlipuq.train(model, train, val, seed=args.seed, max_time=args.base_time, **TRAIN)
    print("ethanol:", flush=True)
    rows = []
    for name, wrapper in wrappers_for(model, make, train, val, {"max_time": args.member_time},
                                      args.seed, args.only).items():
        scores = force_scores(wrapper.predict(test), test)
        rows.append({"system": "ethanol (DFT)", "wrapper": name, **scores})
        print(f"  {name:<28} spearman {scores['spearman']:.3f}  "
              f"miscal. area {scores['miscal_area']:.3f}", flush=True)
    return rows


CU_TRAIN_KINDS = ("bulk",)


def copper_sets(train_kinds=CU_TRAIN_KINDS):
    """EMT Cu: 300 K train/val/test of ``train_kinds``, 1500 K bulk and vacancy
    structures, and 300 K vacancy clusters."""
    data300 = datasets.emt(("Cu",), n_structures=240, temperatures=(300,),
                           kinds=tuple(train_kinds), seed=11)
    train, val, test300 = data300.split([0.7, 0.1, 0.2], seed=0)
    hot = datasets.emt(("Cu",), n_structures=40, temperatures=(1500,), kinds=("bulk", "vacancy"),
                       seed=12)
    cluster = datasets.emt(("Cu",), n_structures=40, temperatures=(300,),
                           kinds=("vacancy_cluster",), seed=13)
    return train, val, test300, hot, cluster


def copper_part(args) -> list[dict]:
    train, val, test300, hot, cluster = copper_sets(args.cu_train_kinds)
    make = lambda s: MiniMLIP(["Cu"], seed=s, **CU_MODEL)  # noqa: E731
    model = make(args.seed)
    # epoch budgets, not time budgets: the run is then deterministic (the Cu
    # model's validation energy error swings between 0.3 and 4 meV/atom from one
    # epoch to the next, so a time cap made the figures depend on machine load)
    history = mlipuq.train(model, train, val, seed=args.seed, **{**TRAIN, "epochs": args.cu_epochs})
    print(f"EMT Cu: base model {len(history)} epochs, best {history.best_epoch}", flush=True)
    rows = []
    for name, wrapper in wrappers_for(model, make, train, val, {"epochs": args.cu_member_epochs},
                                      args.seed, args.only).items():
        std, err = {}, {}
        for label, ds in (("300K", test300), ("1500K", hot), ("cluster", cluster)):
            p = wrapper.predict(ds)
            std[label] = float(np.mean(p.energy_per_atom_std))
            err[label] = float(np.mean(np.abs(p.energy - ds.energies) / p.n_atoms))
        row = {"system": "EMT Cu", "wrapper": name,
               "train_kinds": list(args.cu_train_kinds),
               "ratio_1500K": std["1500K"] / std["300K"],
               "ratio_vacancy_cluster": std["cluster"] / std["300K"],
               "error_ratio_1500K": err["1500K"] / err["300K"],
               "error_ratio_vacancy_cluster": err["cluster"] / err["300K"],
               "std_per_atom_300K_meV": 1000 * std["300K"],
               "error_per_atom_300K_meV": 1000 * err["300K"]}
        rows.append(row)
        print(f"  {name:<40} std 1500 K / 300 K {row['ratio_1500K']:.2f}   "
              f"vacancy cluster / 300 K {row['ratio_vacancy_cluster']:.2f}   "
              f"(|error|: {row['error_ratio_1500K']:.1f}, "
              f"{row['error_ratio_vacancy_cluster']:.1f})", flush=True)
    return rows


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``old`` with those re-measured in ``new`` replaced, in WRAPPERS order."""
    rows = {r["wrapper"]: r for r in old}
    rows.update({r["wrapper"]: r for r in new})
    return [rows[name] for name in WRAPPERS if name in rows]


def markdown(eth_rows, cu_rows) -> str:
    lines = [
        "| wrapper | ethanol: Spearman(force error, force std) | ethanol: force miscal. area "
        "| ethanol: force NLL | Cu: std/atom 1500 K ÷ 300 K | Cu: std/atom vacancy cluster ÷ 300 K "
        "| Cu: \\|E error\\|/atom 1500 K, vacancy cluster ÷ 300 K |",
        "|---|---|---|---|---|---|---|",
    ]
    eth = {r["wrapper"]: r for r in eth_rows}
    cu = {r["wrapper"]: r for r in cu_rows}
    nan = float("nan")
    for name in WRAPPERS:
        if name not in eth and name not in cu:
            continue
        e, c = eth.get(name, {}), cu.get(name, {})
        lines.append(
            f"| {name} | {e.get('spearman', nan):.3f} | {e.get('miscal_area', nan):.3f} | "
            f"{e.get('nll_forces', nan):.3f} | {c.get('ratio_1500K', nan):.2f} | "
            f"{c.get('ratio_vacancy_cluster', nan):.2f} | "
            f"{c.get('error_ratio_1500K', nan):.1f}, {c.get('error_ratio_vacancy_cluster', nan):.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained ethanol MiniMLIP (skips base training)")
    parser.add_argument("--base-time", type=float, default=840.0, help="ethanol base training (s)")
    parser.add_argument("--member-time", type=float, default=300.0,
                        help="training budget per extra deep-ensemble member on ethanol (s)")
    parser.add_argument("--cu-epochs", type=int, default=150, help="Cu base training epochs")
    parser.add_argument("--cu-member-epochs", type=int, default=75,
                        help="training epochs per extra deep-ensemble member on Cu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--readme", help="update the uq-evidence table in this file")
    parser.add_argument("--json", default="benchmarks/results/uq_evidence.json",
                        help="rows are written (and, with --only, merged) here")
    parser.add_argument("--only", nargs="+", choices=WRAPPERS, default=list(WRAPPERS),
                        help="re-measure only these wrappers, keeping the other rows of --json")
    parser.add_argument("--parts", nargs="+", choices=("ethanol", "copper"),
                        default=["ethanol", "copper"],
                        help="systems to re-measure; the rows of the others come from --json")
    parser.add_argument("--cu-train-kinds", nargs="+", default=list(CU_TRAIN_KINDS),
                        choices=("bulk", "vacancy", "surface", "strained"),
                        help="kinds of 300 K EMT Cu structures the Cu base model is trained on")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    eth_rows = ethanol_part(args) if "ethanol" in args.parts else []
    cu_rows = copper_part(args) if "copper" in args.parts else []
    partial = set(args.only) != set(WRAPPERS) or len(args.parts) < 2
    if partial and os.path.exists(args.json):
        with open(args.json) as fh:
            previous = json.load(fh)
        eth_rows = _merge(previous["ethanol"], eth_rows)
        cu_rows = _merge(previous["copper"], cu_rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"ethanol": eth_rows, "copper": cu_rows}, fh, indent=2)
    table = markdown(eth_rows, cu_rows)
    print("\n" + table)
    if args.readme:
        text = open(args.readme).read()
        block = f"<!-- uq-evidence:start -->\n{table}\n<!-- uq-evidence:end -->"
        new, n = re.subn(r"<!-- uq-evidence:start -->.*?<!-- uq-evidence:end -->", block, text,
                         flags=re.S)
        if n != 1:
            raise SystemExit(f"{args.readme}: no uq-evidence markers to replace")
        with open(args.readme, "w") as fh:
            fh.write(new)
        print(f"table written to {args.readme}")


if __name__ == "__main__":
    main()
