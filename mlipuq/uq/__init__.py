"""UQ wrappers: one file each. Every wrapper's ``predict()`` returns a :class:`Prediction`."""

from mlipuq.uq.base import UQWrapper, load
from mlipuq.uq.evidential import EvidentialHead
from mlipuq.uq.llpr import LastLayerLaplace
from mlipuq.uq.prediction import Prediction

__all__ = ["EvidentialHead", "LastLayerLaplace", "Prediction", "UQWrapper", "load"]
