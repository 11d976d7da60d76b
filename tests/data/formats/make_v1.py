"""Write the frozen format-1 files of this folder (run once, with mlipuq at format 1).

These files were written by the mlipuq code of commit baf8b89 (models and UQ
wrappers at format version 1, no checksum), from a checkout of that commit::

    git worktree add /tmp/v1tree baf8b89
    PYTHONPATH=/tmp/v1tree python tests/data/formats/make_v1.py tests/data/formats

They must keep loading with identical predictions (``tests/test_fileio.py``):
never regenerate them with a newer mlipuq. Each ``<name>_v1.pt`` has its
reference predictions, computed by the code that wrote it, in ``<name>_v1.npz``.
``wrapped_v1.pt`` is a model made by ``wrap()``: format 1 pickled the user's
module into it, which no newer mlipuq unpickles (it must be refused).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

import mlipuq
from mlipuq.models import MiniMLIP, wrap
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

HERE = Path(__file__).resolve().parent
ETHANOL = HERE.parent / "ethanol_small.xyz"
FAST = dict(batch_size=4, progress=False)


def tiny(seed: int) -> MiniMLIP:
    model = MiniMLIP(
        ("H", "C", "O"), cutoff=3.5, n_features=4, n_interactions=1, n_rbf=4,
        n_readout_features=4, avg_num_neighbors=6.0,
        atomic_energies={"H": -13.6, "C": -1029.0, "O": -2041.0}, seed=seed,
    )
    return model.double()


class TinyModule(torch.nn.Module):
    """A user's module for wrap(): per-atom energies from the atomic numbers."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(9, 3, dtype=torch.float64)
        self.out = torch.nn.Linear(3, 1, dtype=torch.float64)

    def forward(self, batch):
        return self.out(torch.tanh(self.embed(batch.numbers) + batch.positions.sum(1, keepdim=True)))


def main(out: str) -> None:
    out = Path(out)
    torch.manual_seed(0)
    data = mlipuq.load(ETHANOL)
    train, val, test = data[:8], data[8:12], data[12:15]
    base = tiny(0)
    mlipuq.train(base, train, val, epochs=2, lr=5e-3, seed=0, **FAST)
    wrappers = {
        "model": base,
        "llpr": LastLayerLaplace(base, energy_posterior="joint").fit(train, batch_size=4),
        "llpr_calibrated": LastLayerLaplace(base).fit(train, batch_size=4).calibrate(val),
        "shallow": ShallowEnsemble(base, n_heads=3).fit(train, val, epochs=1, seed=0, **FAST),
        "evidential": EvidentialHead(base, hidden=4).fit(train, val, epochs=2, seed=0, **FAST),
        "deep": DeepEnsemble([tiny(s) for s in range(3)]),
    }
    for name, obj in wrappers.items():
        path = out / f"{name}_v1.pt"
        obj.save(path, overwrite=True)
        if name == "model":
            result = obj.compute(test)
            arrays = {"energy": result["energy"], "forces": result["forces"]}
        else:
            pred = obj.predict(test)
            arrays = {
                k: getattr(pred, k)
                for k in ("energy", "energy_var", "forces", "forces_var", "energy_members")
                if getattr(pred, k) is not None
            }
        np.savez(out / f"{name}_v1.npz", **arrays)
    wrapped = wrap(TinyModule(), "out", species=("H", "C", "O"), cutoff=3.0,
                   atomic_energies={"H": 0.0, "C": 0.0, "O": 0.0})
    wrapped.save(out / "wrapped_v1.pt", overwrite=True)
    for p in sorted(out.iterdir()):
        print(f"{p.name:28s} {os.path.getsize(p):8d} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE))
