"""Deprecated location of :class:`mlipuq.prediction.Prediction`.

``Prediction`` and its file I/O moved to the neutral module
:mod:`mlipuq.prediction`, which both ``mlipuq.uq`` and ``mlipuq.calibration``
import. Importing from here keeps working for one release, with a
``DeprecationWarning``.
"""

import warnings

from mlipuq.prediction import Prediction, read_prediction  # noqa: F401

warnings.warn(
    "mlipuq.uq.prediction is deprecated; import Prediction from mlipuq.prediction "
    "(or mlipuq.Prediction)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["Prediction", "read_prediction"]
