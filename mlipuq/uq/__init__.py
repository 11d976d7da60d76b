"""UQ wrappers: one file each. Every wrapper's ``predict()`` returns a :class:`Prediction`."""

from mlipuq.uq.base import UQWrapper, load
from mlipuq.uq.deep_ensemble import DeepEnsemble
from mlipuq.uq.deep_distance import NoDistanceTermWarning
from mlipuq.uq.evidential import EvidentialHead
from mlipuq.uq.latent_distance import LatentDistance
from mlipuq.uq.llpr import LastLayerLaplace
from mlipuq.prediction import Prediction
from mlipuq.uq.shallow_ensemble import ShallowEnsemble
from mlipuq.uq.wide_cells import WideCellWarning

__all__ = [
    "DeepEnsemble",
    "EvidentialHead",
    "LastLayerLaplace",
    "LatentDistance",
    "NoDistanceTermWarning",
    "Prediction",
    "ShallowEnsemble",
    "UQWrapper",
    "WideCellWarning",
    "load",
]
