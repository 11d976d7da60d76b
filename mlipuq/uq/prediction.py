"""Deprecated location of :class:`mlipuq.prediction.Prediction` (moved to the
neutral module :mod:`mlipuq.prediction`, which both ``mlipuq.uq`` and
``mlipuq.calibration`` import). Importing from here keeps working."""

from mlipuq.prediction import Prediction, read_prediction  # noqa: F401

__all__ = ["Prediction", "read_prediction"]
