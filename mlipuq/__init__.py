"""mlipuq: uncertainty quantification for machine-learned interatomic potentials.

Energies are in eV, lengths in Å, forces in eV/Å everywhere.
"""

from mlipuq import data, models
from mlipuq.data import AtomsDataset, load
from mlipuq.training import History, train
from mlipuq.uq.prediction import Prediction

__version__ = "0.1.0"

__all__ = ["AtomsDataset", "History", "Prediction", "data", "load", "models", "train"]


def __getattr__(name):
    # Lazily import heavier pieces so `import mlipuq` stays light.
    if name == "Calculator":
        from mlipuq.calculator import Calculator

        return Calculator
    raise AttributeError(f"module 'mlipuq' has no attribute {name!r}")
