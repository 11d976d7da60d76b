"""MD speed with uncertainties: steps/s of ``run_md`` with each wrapper vs the base model.

    python benchmarks/md_speed.py [--threads 1] [--steps 100] [--repeats 3] [--size 2]

NVT (Langevin) MD of an fcc Cu cell (``4 size³`` atoms) with
:func:`mlipuq.propagation.run_md`, logging every 10 steps (committee energies,
force std, stress). Cases, all with the same MiniMLIP (64 features, 3
interactions, 5 Å cutoff):

* base model alone (no uncertainty), the reference;
* LLPR with exact force variances (16 energy samples);
* LLPR with sampled force variances (8 samples);
* ShallowEnsemble (8 heads), EvidentialHead, DeepEnsemble (5 members).

Each case is timed ``--repeats`` times, interleaved, best time kept. Timings
only: the models are trained for one epoch (costs do not depend on the weights),
with small readout weights so the atoms barely feel each other.
"""

from __future__ import annotations

import argparse
import time

import torch
from ase.build import bulk

from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.propagation import run_md
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def make(seed):
        return MiniMLIP(["Cu"], seed=seed, avg_num_neighbors=40.0, **MODEL)

    fit_set = datasets.emt(("Cu",), 16, (300,), seed=0, kinds=("bulk",))
    model = make(0)
    model.set_atomic_energies({29: 0.0})
    quick = dict(epochs=1, batch_size=8, progress=False)
    cases = {
        "base model": model,
        "LLPR, exact force variances": LastLayerLaplace(model, include_forces=False).fit(fit_set),
        "LLPR, sampled forces (8)": LastLayerLaplace(
            model, include_forces=False, force_variance="samples", n_samples=8).fit(fit_set),
        "ShallowEnsemble (8 heads)": ShallowEnsemble(model, n_heads=8, init="random").fit(
            fit_set, **quick),
        "EvidentialHead": EvidentialHead(model).fit(fit_set, **quick),
        "DeepEnsemble (5 members)": DeepEnsemble([make(s) for s in range(5)]),
    }
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(args.size)
    md = dict(ensemble="nvt", temperature_K=300.0, timestep_fs=2.0, steps=args.steps, seed=0,
              log_every=10, progress=False)
    best = {name: float("inf") for name in cases}
    for name, wrapper in cases.items():  # warm-up
        run_md(atoms, wrapper, **dict(md, steps=2))
    for _ in range(args.repeats):
        for name, wrapper in cases.items():
            start = time.perf_counter()
            run_md(atoms, wrapper, **md)
            best[name] = min(best[name], time.perf_counter() - start)
    base = args.steps / best["base model"]
    print(f"NVT MD, {len(atoms)} Cu atoms, {args.steps} steps, "
          f"{torch.get_num_threads()} thread(s), "
          f"best of {args.repeats}")
    print(f"{'case':32s} {'steps/s':>9s} {'ratio to base':>14s}")
    for name in cases:
        rate = args.steps / best[name]
        print(f"{name:32s} {rate:9.1f} {rate / base:14.2f}")


if __name__ == "__main__":
    main()
