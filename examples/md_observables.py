"""MD observables with uncertainties: NVT MD of fcc Cu with a calibrated LLPR wrapper.

    python examples/md_observables.py [--out md_observables/] [--steps 2000] [--threads 2]

1. Built-in EMT Cu data (bulk, vacancy and strained 32-atom cells at 300 and
   600 K), a small MiniMLIP trained on it (about a minute).
2. Last-layer Laplace (LLPR) with 8 posterior samples drawn once (the
   committee), recalibrated on the validation set.
3. NVT (Langevin) MD of a 32-atom Cu cell at 300 K with the mean potential,
   logging the 8 committee energies and the force uncertainty of every frame.
4. Committee reweighting: the radial distribution function with an
   uncertainty band (``rdf.png``) and the mean potential energy per atom, ± std.
5. Direct propagation: the lattice constant and bulk modulus from an equation
   of state per committee member, ± std; EMT's values for comparison.

Runs in about 3-4 minutes on one CPU core (the EMT data are generated once and cached).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState

import mlipuq
from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.propagation import potential_energy, radial_distribution, reweight, run_md, static
from mlipuq.uq import LastLayerLaplace


def emt_reference(a_guess: float) -> tuple[float, float]:
    """EMT lattice constant (Å) and bulk modulus (GPa) of fcc Cu, for comparison."""
    from ase import units

    scales = np.linspace(0.97, 1.03, 9)
    volumes, energies = [], []
    for s in scales:
        atoms = bulk("Cu", "fcc", a=a_guess * s, cubic=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    v0, _, b0 = EquationOfState(volumes, energies).fit()
    return v0 ** (1 / 3), b0 / units.GPa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="md_observables", help="output folder")
    parser.add_argument("--steps", type=int, default=1000, help="MD steps (4 fs each)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    # 1. data and a small model
    data = datasets.emt(("Cu",), 120, (300, 600), seed=0,
                               kinds=("bulk", "vacancy", "strained"))
    train, val, test = data.split([0.7, 0.15, 0.15], seed=0)
    model = MiniMLIP(["Cu"], cutoff=4.5, width=32, n_interactions=2, n_rbf=12,
                     n_readout_features=16, seed=0)
    mlipuq.train(model, train, val, epochs=args.epochs, batch_size=8, lr=3e-3,
                 forces_weight=50.0, patience=20, max_time=60, progress=False)
    model = model.double()
    errors = mlipuq.training.errors(model, test)
    print(f"[{time.perf_counter() - start:5.0f} s] model trained: test energy MAE "
          f"{1000 * errors['energy_mae']:.2f} meV/atom, force MAE "
          f"{1000 * errors['forces_mae']:.1f} meV/Å")

    # 2. calibrated LLPR with 8 posterior samples (the committee); sampled force
    #    variances cost 8 force evaluations of the last layer per MD step,
    #    exact ones one per readout feature (see benchmarks/md_speed.py)
    llpr = LastLayerLaplace(model, n_samples=8, force_variance="samples", seed=0)
    llpr.fit(train).calibrate(val)

    # 3. NVT MD with the mean potential
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    temperature = 300.0
    traj_path = os.path.join(args.out, "md.traj")
    if os.path.exists(traj_path):
        os.remove(traj_path)
    run = run_md(atoms, llpr, ensemble="nvt", temperature_K=temperature, timestep_fs=4.0,
                 steps=args.steps, seed=0, log_every=5, trajectory=traj_path, progress=False)
    print(f"[{time.perf_counter() - start:5.0f} s] MD: {len(run)} frames, max force std "
          f"{run.max_force_std.max():.3f} eV/Å, energy std {run.energy_std.mean():.3f} eV")

    # 4. reweighting (skip the first 20 % as equilibration)
    keep = slice(len(run) // 5, None)
    frames = run.frames[keep]
    energies, mean_energy = run.energies[keep], run.energy[keep]
    n = len(atoms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e_pot = reweight(potential_energy(run)[keep] / n, energies, mean_energy, temperature)
        r, g = radial_distribution(frames, r_max=5.0, n_bins=100)
        g_est = reweight(g, energies, mean_energy, temperature)
    for w in caught:
        print("warning:", w.message)
    print(f"mean potential energy: {e_pot.mean:.4f} ± {e_pot.std:.4f} eV/atom "
          f"(min ess {e_pot.ess.min():.2f})")
    peak = int(np.argmax(g_est.mean))
    print(f"first RDF peak: g({r[peak]:.2f} Å) = {g_est.mean[peak]:.2f} ± {g_est.std[peak]:.2f}")

    # 5. direct propagation: equation of state per member
    eos = static.equation_of_state(bulk("Cu", "fcc", a=3.6, cubic=True), llpr, lattice_constant=3.6)
    a_emt, b_emt = emt_reference(3.6)
    print(f"lattice constant: {eos.lattice_constant.mean:.4f} ± {eos.lattice_constant.std:.4f} Å "
          f"(EMT {a_emt:.4f} Å)")
    print(f"bulk modulus: {eos.bulk_modulus.mean:.1f} ± {eos.bulk_modulus.std:.1f} GPa "
          f"(EMT {b_emt:.1f} GPa)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.fill_between(r, g_est.mean - 2 * g_est.std, g_est.mean + 2 * g_est.std, alpha=0.3,
                    label="±2σ (committee reweighting)")
    ax.plot(r, g_est.mean, lw=1.2, label="reweighted mean")
    ax.plot(r, g.mean(axis=0), "k--", lw=0.8, label="mean-potential MD")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_title(f"Cu, NVT {temperature:.0f} K, LLPR (K={run.n_members})")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "rdf.png"), dpi=150)
    print(f"[{time.perf_counter() - start:5.0f} s] wrote {os.path.join(args.out, 'rdf.png')}")


if __name__ == "__main__":
    main()
