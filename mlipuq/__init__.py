"""mlipuq: uncertainty quantification for machine-learned interatomic potentials.

Energies are in eV, lengths in Å, forces in eV/Å everywhere.
"""

from mlipuq import data, models
from mlipuq.data import AtomsDataset, load
from mlipuq.training import History, train
from mlipuq.prediction import Prediction

__version__ = "0.1.0"

__all__ = ["AtomsDataset", "History", "Prediction", "data", "load", "models", "train"]


_LAZY = {
    "Calculator": "mlipuq.calculator",
    "LastLayerLaplace": "mlipuq.uq",
    "EvidentialHead": "mlipuq.uq",
    "DeepEnsemble": "mlipuq.uq",
    "ShallowEnsemble": "mlipuq.uq",
    "LatentDistance": "mlipuq.uq",
}


_SUBMODULES = ("active", "calibration", "datasets", "propagation", "testing", "uq")


def __getattr__(name):
    # Heavier pieces are imported on first use so `import mlipuq` stays light.
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mlipuq.{name}")
    raise AttributeError(f"module 'mlipuq' has no attribute {name!r}")
