"""Base-model benchmark: energy+force throughput and the ethanol training run.

    python benchmarks/base_model.py                 # throughput + 15-minute ethanol training
    python benchmarks/base_model.py --train-time 0  # throughput only

Prints structures/s and atoms/s for energy+forces on the packaged ethanol test
set and on 108-atom EMT Cu cells (float32 and float64), then trains MiniMLIP on
the packaged ethanol training data within the time budget and reports the
test-set errors (the figure quoted in the README). Use ``--out`` to save the
trained model, ``--json`` to write the numbers.
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import json
import time

import torch

from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.training import errors, train

ETHANOL_MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)


def throughput(model, structures, *, batch_size: int, repeats: int = 3) -> dict:
    model.compute(structures[:batch_size], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.compute(structures, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    n_atoms = sum(len(a) for a in structures)
    return {
        "structures_per_s": len(structures) / best,
        "atoms_per_s": n_atoms / best,
        "seconds": best,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-time", type=float, default=840.0,
                        help="ethanol training budget in s (the issue allows 15 min); 0 skips")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="save the trained ethanol model here")
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads}

    ethanol_test = datasets.ethanol("test")
    cu = datasets.emt(("Cu",), n_structures=40, size=3, kinds=("bulk",), seed=1)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'system':<22}{'dtype':<9}{'structures/s':>14}{'atoms/s':>12}")
    for name, structures, species, batch in (
        ("ethanol (9 atoms)", list(ethanol_test[:400]), ["H", "C", "O"], 32),
        ("Cu fcc (108 atoms)", list(cu), ["Cu"], 4),
    ):
        model = MiniMLIP(species, seed=0, avg_num_neighbors=20.0, **ETHANOL_MODEL)
        for dtype in (torch.float32, torch.float64):
            model.to(dtype)
            r = throughput(model, structures, batch_size=batch)
            results[f"{name} {dtype}"] = r
            print(f"{name:<22}{str(dtype).replace('torch.', ''):<9}"
                  f"{r['structures_per_s']:>14.1f}{r['atoms_per_s']:>12.0f}", flush=True)

    if args.train_time > 0:
        train_set = datasets.ethanol("train")
        val_set = datasets.ethanol("val")
        model = MiniMLIP(["H", "C", "O"], seed=args.seed, **ETHANOL_MODEL)
        print(f"\ntraining MiniMLIP on ethanol: {len(train_set)} train / {len(val_set)} val, "
              f"budget {args.train_time:.0f} s")
        history = train(
            model, train_set, val_set,
            epochs=100000, batch_size=8, lr=2e-3, energy_weight=1.0, forces_weight=100.0,
            seed=args.seed, patience=80, lr_patience=15, max_time=args.train_time,
        )
        model.double()
        test_errors = errors(model, ethanol_test)
        results["training"] = {
            "epochs": len(history), "wall_time_s": history.wall_time,
            "best_epoch": history.best_epoch, **test_errors,
        }
        print(f"{len(history)} epochs in {history.wall_time:.0f} s (best epoch {history.best_epoch})")
        print(f"ethanol test (1000 structures): energy MAE {1000 * test_errors['energy_mae']:.2f} "
              f"meV/atom, forces MAE {1000 * test_errors['forces_mae']:.1f} meV/Å, "
              f"forces RMSE {1000 * test_errors['forces_rmse']:.1f} meV/Å")
        if args.out:
            model.save(args.out, overwrite=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
