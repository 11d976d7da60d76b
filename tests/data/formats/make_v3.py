"""Write the frozen format-3 LLPR file of this folder (run once, with the mlipuq of
commit 3847493: LastLayerLaplace with its latent-distance term, energies fitted
jointly, before ``energy_combination`` existed)::

    git worktree add /tmp/v3tree 3847493
    PYTHONPATH=/tmp/v3tree python tests/data/formats/make_v3.py tests/data/formats

``llpr_term_v3.pt`` must keep loading with identical predictions and fingerprint
(``tests/test_fileio.py``): never regenerate it with a newer mlipuq. Its reference
predictions and fingerprint, computed by the code that wrote it, are in
``llpr_term_v3.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import mlipuq
from mlipuq.models import MiniMLIP
from mlipuq.uq import LastLayerLaplace

HERE = Path(__file__).resolve().parent
ETHANOL = HERE.parent / "ethanol_small.xyz"


def main(out: str) -> None:
    out = Path(out)
    torch.manual_seed(0)
    data = mlipuq.load(ETHANOL)
    train, val, test = data[:8], data[8:12], data[12:15]
    base = MiniMLIP(("H", "C", "O"), cutoff=3.5, width=4, n_interactions=1, n_rbf=4,
                    n_readout_features=4, avg_num_neighbors=6.0,
                    atomic_energies={"H": -13.6, "C": -1029.0, "O": -2041.0},
                    seed=0).double()
    mlipuq.train(base, train, val, epochs=2, lr=5e-3, seed=0, batch_size=4, progress=False)
    llpr = LastLayerLaplace(base).fit(train, val, batch_size=4).calibrate(val)
    path = out / "llpr_term_v3.pt"
    llpr.save(path, overwrite=True)
    assert torch.load(path, weights_only=True)["format_version"] == 3
    pred = llpr.predict(test)
    arrays = {k: getattr(pred, k) for k in ("energy", "energy_var", "forces", "forces_var")}
    np.savez(out / "llpr_term_v3.npz", fingerprint=np.array(llpr.fingerprint()), **arrays)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE))
