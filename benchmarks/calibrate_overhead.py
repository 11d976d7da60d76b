"""Cost of ``calibrate``'s strain term: ``wrapper.calibrate(val)`` on stress-labelled
periodic cells (the default, ``strain=True``: one more pass that predicts their stress)
over ``calibrate(val, strain=False)`` on the same structures; and that pass itself,
``wrapper.mean_stress(val)`` (since 2026-12-05) over the full ``predict(val,
stress=True)`` with the stress uncertainty that it replaced.

    python benchmarks/calibrate_overhead.py [--threads 2] [--repeats 3] [--n-val 50]
        [--only "DeepEnsemble (3 members)" ...]

The last two columns: ``predict(val, calibrated=False)`` without stress, and
``calibrate(val, strain=False)`` over it, the calibration's cost in prediction passes
(the deep ensemble's recentring reuses its one pass since 2026-12-05).

``val`` holds EMT Cu bulk at 300 K (32-atom cells) labelled with EMT's energy, forces
and stress, as the shift benchmark's calibration sets. Both calls are timed in one run,
interleaved, best of ``--repeats``, per wrapper; the ratio is printed with the seconds.
Timings only: the base models are trained 5 epochs and the heads one (costs do not
depend on how well; an untrained model's absurd energies would send the calibration's
fits down paths no user's model takes).
"""

from __future__ import annotations

import argparse
import time

import torch

import mlipuq
from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble)
from shift_data import with_emt_stress

MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)


def best_times(calls: dict, repeats: int) -> dict:
    """The best of ``repeats`` timings of each call of ``calls``, interleaved (one
    warm-up of each first)."""
    best = dict.fromkeys(calls, float("inf"))
    for repeat in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if repeat:  # the first round warms up
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def wrappers(train, val, only=None):
    """``(name, wrapper)`` pairs, each fitted when reached; ``only``: these names."""
    def make(seed):
        model = MiniMLIP(train.species, seed=seed, **MODEL)
        mlipuq.train(model, train, val, epochs=5, batch_size=16, seed=seed, progress=False)
        return model

    quick = dict(epochs=1, batch_size=16, progress=False)
    factories = {
        "LastLayerLaplace": lambda model: LastLayerLaplace(model, distance=None).fit(train),
        "LatentDistance": lambda model: LatentDistance(model).fit(train, val),
        "ShallowEnsemble (8 heads)":
            lambda model: ShallowEnsemble(model, n_heads=8).fit(train, val, **quick),
        "EvidentialHead": lambda model: EvidentialHead(model).fit(train, val, **quick),
        "DeepEnsemble (3 members)": lambda model: DeepEnsemble([make(s) for s in range(3)],
                                                               distance=None),
    }
    unknown = set(only or ()) - set(factories)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {list(factories)}")
    model = None
    for name, factory in factories.items():
        if only and name not in only:
            continue
        if model is None and not name.startswith("DeepEnsemble"):
            model = make(0)
        yield name, factory(model)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-val", type=int, default=50, help="calibration structures")
    parser.add_argument("--only", nargs="+", help="these wrappers' rows alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = datasets.emt("Cu", n_structures=100 + args.n_val, temperatures=(300,),
                        kinds=("bulk",), seed=21)
    train, val = data[:100], with_emt_stress(data[100:])
    print(f"torch {torch.__version__}, {args.threads} threads; {len(val)} stress-labelled "
          "calibration structures of 32 atoms; best of "
          f"{args.repeats}")
    print(f"{'':<28}{'calibrate':^40}{'stress pass':^40}{'passes':^22}")
    print(f"{'wrapper':<28}{'strain=False (s)':>18}{'default (s)':>14}{'ratio':>8}"
          f"{'predict (s)':>14}{'mean_stress (s)':>18}{'ratio':>8}"
          f"{'predict (s)':>14}{'ratio':>8}")
    for name, wrapper in wrappers(train, val, args.only):
        best = best_times({
            "without": lambda: wrapper.calibrate(val, strain=False),
            "with": lambda: wrapper.calibrate(val),
            "predict": lambda: wrapper.predict(val, calibrated=False, composition=False,
                                               stress=True),
            "mean": lambda: wrapper.mean_stress(val),
            "plain": lambda: wrapper.predict(val, calibrated=False, composition=False)},
            args.repeats)
        print(f"{name:<28}{best['without']:>18.2f}{best['with']:>14.2f}"
              f"{best['with'] / best['without']:>7.2f}x{best['predict']:>14.2f}"
              f"{best['mean']:>18.2f}{best['mean'] / best['predict']:>7.2f}x"
              f"{best['plain']:>14.2f}{best['without'] / best['plain']:>7.2f}x")


if __name__ == "__main__":
    main()
