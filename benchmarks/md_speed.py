"""MD speed with uncertainties: steps/s of ``run_md`` with each wrapper vs the base model.

    python benchmarks/md_speed.py [--threads 1] [--steps 100] [--repeats 3] [--size 2]
    python benchmarks/md_speed.py --engines [--steps 100] [--repeats 3]

``--engines`` compares the engines instead (see :func:`engines`): for 108-atom
fcc Cu and an ethanol molecule, NVE steps/s of the base model alone (ASE),
and of a UQ wrapper in the ASE engine and in LAMMPS (``fix external``), and
each engine's overhead over the wrapper's own ``predict`` time per step,
measured side by side in one run (target: ≤ 10 %).

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
import copy
import time

import torch
from ase.build import bulk

from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.propagation import run_md
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def engines(steps: int, repeats: int) -> None:
    """Steps/s per engine and the engine overhead over ``predict`` (NVE, 1 fs)."""
    from ase.build import molecule

    from mlipuq.calculator import Calculator
    from mlipuq.engines.lammps_md import run_md as run_lammps

    md = dict(ensemble="nve", temperature_K=300.0, timestep_fs=1.0, steps=steps, seed=0,
              log_every=steps, progress=False)
    ethanol = molecule("CH3CH2OH")
    ethanol.cell, ethanol.pbc = [20.0, 20.0, 20.0], False
    ethanol.center()
    systems = {"Cu, 108 atoms": (bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3), ["Cu"]),
               "ethanol, 9 atoms": (ethanol, ["H", "C", "O"])}
    print(f"NVE MD, {steps} steps, {torch.get_num_threads()} thread(s), best of {repeats}")
    print(f"{'system':18s} {'case':32s} {'steps/s':>9s} {'predict/step':>13s} "
          f"{'engine overhead':>16s}")
    for name, (atoms, species) in systems.items():
        model = MiniMLIP(species, seed=0, avg_num_neighbors=20.0, **MODEL)
        fit_set = [atoms.copy() for _ in range(4)]
        for k, a in enumerate(fit_set):
            a.rattle(0.05, seed=k)
            a.calc = Calculator(model)
            a.get_potential_energy()
        wrapper = LastLayerLaplace(model, include_forces=False, force_variance="samples",
                                   n_samples=8, distance=None).fit(fit_set)
        probe = atoms.copy()
        probe.rattle(0.02, seed=9)
        engine_copy = copy.deepcopy(wrapper).to(torch.float64)  # both engines run float64
        t_predict = _best(lambda: [engine_copy.predict(probe, distributed=False)
                                   for _ in range(20)], repeats) / 20
        t_base = _best(lambda: run_md(atoms, model, **md), repeats) / steps
        rows = [("base model alone (ASE)", t_base, None)]
        for engine, runner in (("ASE", run_md), ("LAMMPS", run_lammps)):
            t = _best(lambda: runner(atoms, wrapper, **md), repeats) / steps
            rows.append((f"LLPR 8 samples ({engine})", t, t / t_predict - 1))
        for case, t, overhead in rows:
            extra = "" if overhead is None else f"{100 * overhead:15.1f}%"
            print(f"{name:18s} {case:32s} {1 / t:9.1f} {1e3 * t_predict:11.2f}ms {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2)
    parser.add_argument("--engines", action="store_true",
                        help="compare the MD engines (ASE, LAMMPS) instead of the wrappers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.engines:
        engines(args.steps, args.repeats)
        return

    def make(seed):
        return MiniMLIP(["Cu"], seed=seed, avg_num_neighbors=40.0, **MODEL)

    fit_set = datasets.emt(("Cu",), 16, (300,), seed=0, kinds=("bulk",))
    model = make(0)
    model.set_atomic_energies({29: 0.0})
    quick = dict(epochs=1, batch_size=8, progress=False)
    cases = {
        "base model": model,
        "LLPR, exact force variances": LastLayerLaplace(model, include_forces=False,
                                                        distance=None).fit(fit_set),
        "LLPR, sampled forces (8)": LastLayerLaplace(
            model, include_forces=False, force_variance="samples", n_samples=8,
            distance=None).fit(fit_set),
        "ShallowEnsemble (8 heads)": ShallowEnsemble(model, n_heads=8, init="random").fit(
            fit_set, **quick),
        "EvidentialHead": EvidentialHead(model).fit(fit_set, **quick),
        "DeepEnsemble (5 members)": DeepEnsemble([make(s) for s in range(5)], distance=None),
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
