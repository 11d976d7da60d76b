"""MACE base models for ``benchmarks/shift.py --base-model mace``: the shift benchmark on
an architecture none of mlipuq's defaults was chosen on.

Every default of the wrappers was chosen on MiniMLIP base models (docs/shift.md). This
module builds a small MACE (mace-torch's ``MACE``: 2 interactions, 32x0e+32x1o hidden
irreps, max_ell 2, correlation 3, float64), wraps it with
:func:`mlipuq.models.from_mace` and trains it with ``mlipuq.train`` on the part's
training set with the benchmark's recipe (``shift.TRAIN``, the same epochs), so that the
wrappers see the MACE features a user's fine-tuned MACE would give them. Needs the
``mace`` extra (its own environment: ``pip install -e ".[mace]" -c constraints.txt``).
Fits are kept under ``--cache`` as ``mace{seed}.pt`` (mlipuq's file, weights only; read
back into a freshly built MACE of the same architecture).

Nothing is chosen on these rows (written down before the first of them, 2026-12-07):
they measure whether the defaults chosen on MiniMLIP keep the goal of issue #20 on
another architecture, and a miss is reported as one.

    python benchmarks/shift.py --base-model mace --epochs 40 --parts copper ethanol \
        --methods default scalar --cache /tmp/fits --threads 2 --only LastLayerLaplace \
        LatentDistance "LatentDistance + LLPR" --out benchmarks/results/shift_mace.json

(the shallow ensemble and the evidential head too with their names after --only; on
Cu the shallow ensemble's heads alone were still training after 36 minutes,
docs/shift.md). Every wrapper's rows at the caps of 30 (energies) and 10 (forces), the
default since, are in results/shift_mace_caps.json (2026-12-08; docs/shift.md, "MACE's
rows at the caps of 30 and 10").
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import os
import time

import numpy as np
import torch

import mlipuq
from mlipuq.models import from_mace
from shift_cache import cached

#: The architecture: small enough to train on two CPU cores in minutes, with MACE's
#: equivariant messages (l = 1 hidden features, l ≤ 2 edges) and many-body products.
ARCHITECTURE = dict(num_bessel=8, num_polynomial_cutoff=5, max_ell=2, num_interactions=2,
                    hidden_irreps="32x0e+32x1o", MLP_irreps="16x0e", correlation=3,
                    radial_MLP=[32, 32])


def _neighbours(structures, cutoff: float) -> float:
    """The mean number of neighbours within ``cutoff`` over ``structures`` (MACE's
    ``avg_num_neighbors``, which normalises its messages)."""
    from ase.neighborlist import neighbor_list

    counts = [len(neighbor_list("i", atoms, cutoff)) / len(atoms) for atoms in structures]
    return float(np.mean(counts))


def build(species, cutoff: float, structures, seed: int):
    """A MACE module (float64) for the elements ``species`` (atomic numbers) with its
    neighbour normalisation and its reference energies (E0s, least squares; MACE's
    ``E0s="average"``) from ``structures``. ``mlipuq.train`` keeps a model's own
    reference energies; Cu's rows of 2026-12-07 came from E0s of 0 (commit 1c6e5c5),
    which EMT's near-zero energies allowed (its refit moved them by 0.17 eV); on
    ethanol that left the network to learn an offset of hundreds of eV (460 eV after
    its first epoch) and its fit had force errors of 0.8 eV/Å."""
    from mace import modules  # before e3nn: mace makes e3nn 0.4.4 importable on torch >= 2.6
    from e3nn import o3

    numbers = sorted(int(z) for z in species)
    e0 = mlipuq.data.fit_atomic_energies(structures, numbers)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    options = dict(ARCHITECTURE)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        return modules.MACE(
            r_max=cutoff, interaction_cls=block, interaction_cls_first=block,
            num_elements=len(numbers), atomic_numbers=numbers,
            # least-squares E0s (mace's "average"): mlipuq.train keeps a model's own
            atomic_energies=np.array([e0[z] for z in numbers]),
            avg_num_neighbors=_neighbours(structures, cutoff), gate=torch.nn.functional.silu,
            hidden_irreps=o3.Irreps(options.pop("hidden_irreps")),
            MLP_irreps=o3.Irreps(options.pop("MLP_irreps")), **options)
    finally:
        torch.set_default_dtype(before)


def mace_models(part: str, train, val, epochs: int, n: int, cutoff: float, recipe: dict,
                cache=None) -> list:
    """Base models 0 to n − 1: a MACE per seed, trained with ``recipe`` (or read from
    ``cache``)."""
    def fit(seed, module):
        model = from_mace(module)
        t0 = time.perf_counter()
        mlipuq.train(model, train, val, seed=seed, epochs=epochs, **recipe)
        print(f"  MACE base model {seed} ({part}): {time.perf_counter() - t0:.0f} s", flush=True)
        return model

    models = []
    for seed in range(n):
        module = build(train.species, cutoff, train, seed)
        models.append(cached(cache and os.path.join(cache, f"mace{seed}.pt"),
                             lambda: fit(seed, module),
                             lambda path: mlipuq.models.load(path, module=module)))
    return models
