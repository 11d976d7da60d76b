"""Evidence that uncertainty-driven selection beats random selection.

    python benchmarks/active_learning.py --seeds 4 --out al_emt.png       # EMT Cu, EMT oracle
    python benchmarks/active_learning.py --data ethanol --out al_eth.png  # packaged DFT ethanol
    python benchmarks/active_learning.py --seeds 4 --strategies batch_llpr --out al.png \
        --reuse benchmarks/results/active_learning_emt_md_pool.json --json al.json
                                    # re-measure one strategy, keep the others' curves
    python benchmarks/active_learning.py --strategies "" --reuse a.json b.json --out al.png
                                    # merge runs made in parallel (e.g. split by strategy)

EMT Cu: the pool mixes 300/900/1500 K bulk, vacancy and surface structures
(size=2, 31-32 atoms), uniformly (``--pool-design uniform``) or, as candidate
pools harvested from MD at an operating point are, dominated by near-duplicate
300 K bulk frames (``--pool-design md``: a fraction ``--common-fraction`` of
them plus the uniform mix); the test set is always the uniform mix; the initial
set is 300 K bulk only; the validation set (``--val``) is another draw of the
uniform mix; EMT labels the picks. Ethanol: the pool is the packaged training split (labels known, looked
up by :class:`mlipuq.active.LabelledPoolOracle`), the test and validation sets
disjoint subsets of the MD test split. Each round a small MiniMLIP is retrained from scratch (same
seed, fixed number of epochs) on the labelled set, LastLayerLaplace is fitted
on top and recalibrated on the validation set (``--calibration``, the wrapper's
own default calibration unless given; ``--calibrate-on-selected`` adds each round's picks); strategies are compared over ``--seeds`` repetitions (different
initial sets). The script prints, for the best UQ strategy, the labels it
needs to reach random selection's final test force RMSE divided by random's
final labels (target <= 0.6), and saves the learning curves to ``--out``.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import time

import numpy as np
import torch

from mlipuq import datasets
from mlipuq.active import LabelledPoolOracle, LearningCurve, Loop, plot_learning_curves
from mlipuq.models import MiniMLIP
from mlipuq.training import train
from mlipuq.uq import LastLayerLaplace

CU_MODEL = dict(cutoff=4.5, width=16, n_interactions=2, n_rbf=8, n_readout_features=16)
ETH_MODEL = dict(cutoff=5.0, width=16, n_interactions=2, n_rbf=8, n_readout_features=16)


def make_uq_factory(species, model_kwargs, epochs, seed, max_time):
    def make_uq(labelled):
        model = MiniMLIP(species, seed=seed, **model_kwargs)
        train(model, labelled, None, epochs=epochs, batch_size=4, lr=3e-3, forces_weight=100.0,
              patience=10**6, seed=seed, max_time=max_time, progress=False)
        model.double().eval()
        return LastLayerLaplace(model, force_variance="samples", n_samples=8, distance=None).fit(labelled)
    return make_uq


def emt_setup(args, rep):
    kinds = ("bulk", "vacancy", "surface")
    temps = (300, 900, 1500)
    if args.pool_design == "uniform":
        pool = datasets.emt("Cu", args.pool, temps, seed=1, kinds=kinds)
    else:  # "md": most candidates are near-duplicates of the already-known region
        n_rare = int(round(args.pool * (1.0 - args.common_fraction)))
        common = datasets.emt("Cu", args.pool - n_rare, (300,), seed=3, kinds=("bulk",))
        pool = common + datasets.emt("Cu", n_rare, temps, seed=1, kinds=kinds)
    test = datasets.emt("Cu", args.test, temps, seed=2, kinds=kinds)
    if args.val_design == "initial":  # only in-distribution data to calibrate on
        val = datasets.emt("Cu", args.val, (300,), seed=4, kinds=("bulk",))
    else:
        val = datasets.emt("Cu", args.val, temps, seed=4, kinds=kinds)
    initial = datasets.emt("Cu", args.initial, (300,), seed=10 + rep, kinds=("bulk",))
    from ase.calculators.emt import EMT

    for a in pool:  # unlabelled candidates: drop the stored EMT labels
        a.calc = None
    return pool, test, val, initial, EMT(), ["Cu"], CU_MODEL


def ethanol_setup(args, rep):
    full = datasets.ethanol("train")
    rng = np.random.default_rng(rep)
    order = rng.permutation(len(full))
    initial = full[order[: args.initial]]
    pool = full[order[args.initial : args.initial + args.pool]]
    md_test = datasets.ethanol("test")
    step = len(md_test) // (args.test + args.val)
    test = md_test[np.arange(args.test) * step]
    val = md_test[np.arange(args.test, args.test + args.val) * step]
    return pool, test, val, initial, LabelledPoolOracle(full), ["H", "C", "O"], ETH_MODEL


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("emt", "ethanol"), default="emt")
    p.add_argument("--out", required=True, help="PNG of the learning curves")
    p.add_argument("--json", default=None, help="also write the curves as JSON")
    p.add_argument("--strategies", default="random,max_force_std,batch_llpr,fps")
    p.add_argument("--pool", type=int, default=240)
    p.add_argument("--pool-design", choices=("uniform", "md"), default="md",
                   help="EMT pool: uniform over kinds x temperatures, or 'md': a fraction "
                        "--common-fraction of 300 K bulk frames (what MD at the operating "
                        "point mostly yields) plus the uniform mix")
    p.add_argument("--common-fraction", type=float, default=0.75)
    p.add_argument("--test", type=int, default=45)
    p.add_argument("--val", type=int, default=30, help="validation structures (calibration)")
    p.add_argument("--calibration", choices=("default", "scalar", "power", "isotonic", "none"),
                   default="default", help="recalibration of each round's wrapper on --val "
                   "(default: the wrapper's own, a Student-t for forces and a scalar factor "
                   "for energies)")
    p.add_argument("--val-design", choices=("mix", "initial"), default="mix",
                   help="EMT validation set: the uniform mix of the test set, or drawn like "
                        "the initial set (300 K bulk: no shifted data to calibrate on, the "
                        "case --calibrate-on-selected is for)")
    p.add_argument("--calibrate-on-selected", action="store_true",
                   help="also calibrate on each round's newly labelled structures")
    p.add_argument("--label-noise", choices=("none", "fitted"), default="none",
                   help="batch_llpr: noise-free labels or the fitted energy noise")
    p.add_argument("--initial", type=int, default=10)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--max-time", type=float, default=None, help="training time cap per fit (s)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds first-seed .. first-seed + seeds - 1 (to split a run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", nargs="+", default=None,
                   help="JSONs of earlier runs with the same settings: their per-seed curves "
                        "stand in for the strategies not given to --strategies (files with "
                        "the same strategy must hold different seeds, see --first-seed; "
                        "their curves are concatenated)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = emt_setup if args.data == "emt" else ethanol_setup
    strategies = [s for s in args.strategies.split(",") if s]
    runs = {s: [] for s in strategies}
    t_start = time.perf_counter()
    for rep in range(args.first_seed, args.first_seed + args.seeds):
        if not strategies:
            break
        pool, test, val, initial, oracle, species, mk = setup(args, rep)
        make_uq = make_uq_factory(species, mk, args.epochs, seed=rep, max_time=args.max_time)
        calibrate = args.calibration != "none"
        for s in strategies:
            t0 = time.perf_counter()
            curve = Loop(make_uq, oracle, pool, initial, k=args.k, rounds=args.rounds, test=test,
                         val=val if calibrate else None,
                         calibration=None if args.calibration in ("default", "none")
                         else args.calibration,
                         calibrate_on_selected=calibrate and args.calibrate_on_selected,
                         select_options={"label_noise": args.label_noise}
                         if s == "batch_llpr" else None,
                         strategy=s, seed=rep).run()
            runs[s].append(curve)
            print(f"seed {rep} {s:>14}: RMSE_F " + " ".join(f"{v:.4f}" for v in curve.forces_rmse)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.reuse:
        earlier = {}
        for path in args.reuse:
            with open(path) as fh:
                for s, cs in json.load(fh).items():
                    earlier.setdefault(s, []).extend(cs)
        for s, cs in earlier.items():
            if s not in runs and len(cs) != args.seeds:
                raise SystemExit(f"--reuse: {s} has {len(cs)} seeds, not {args.seeds}")
            runs.setdefault(s, [LearningCurve(**c) for c in cs])
        order = list(earlier) + [s for s in strategies if s not in earlier]
        runs = {s: runs[s] for s in order}
        strategies = order
    curves = {s: LearningCurve.average(c) for s, c in runs.items()}
    design = f" ({args.pool_design})" if args.data == "emt" else ""
    print(f"\n{args.data}: pool {args.pool}{design}, initial {args.initial}, k {args.k}, rounds "
          f"{args.rounds}, epochs {args.epochs}, seeds {args.seeds}, val {args.val} "
          f"(calibration {args.calibration}"
          f"{', +selected' if args.calibrate_on_selected else ''}), label noise "
          f"{args.label_noise}; "
          f"{time.perf_counter() - t_start:.0f} s")
    print(f"{'strategy':>14} " + " ".join(f"{n:>7d}" for n in curves[strategies[0]].n_labels))
    for s, c in curves.items():
        print(f"{s:>14} " + " ".join(f"{v:7.4f}" for v in c.forces_rmse))
    print("force miscalibration area, calibrated (uncalibrated) per round:")
    for s, c in curves.items():
        pairs = zip(c.forces_miscal_area, c.forces_miscal_area_uncalibrated)
        print(f"{s:>14} " + " ".join(f"{a:.3f}({b:.3f})" for a, b in pairs))
    if "random" in curves:
        target = curves["random"].forces_rmse[-1]
        final = curves["random"].n_labels[-1]
        print(f"random final: {final} labels, test force RMSE {target:.4f} eV/Å (seed mean)")
        best = None
        for s, c in curves.items():
            if s == "random":
                continue
            ratio = c.labels_to_reach(target) / final
            print(f"{s:>14}: labels to reach it / random's labels = {ratio:.2f}")
            if best is None or ratio < best[1]:
                best = (s, ratio)
        if best is not None:
            verdict = "meets" if best[1] <= 0.6 else "misses"
            print(f"best UQ strategy {best[0]}: ratio {best[1]:.2f} ({verdict} the <= 0.60 target)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    plot_learning_curves(curves, ax=axes[0])
    plot_learning_curves(curves, ax=axes[1], metric="forces_miscal_area")
    plot_learning_curves(curves, ax=axes[2], metric="forces_miscal_area_uncalibrated")
    axes[0].set_title(f"{args.data}: mean of {args.seeds} seeds")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({s: [c.to_dict() for c in cs] for s, cs in runs.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
