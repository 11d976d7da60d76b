"""Deprecated: use :mod:`mlipuq.active` (the loop lives in :mod:`mlipuq.active.loop`).

Re-exports the loop's names for one release and warns on import.
"""

import warnings

from mlipuq.active.loop import (
    LabelledPoolOracle,
    LearningCurve,
    Loop,
    label,
    plot_learning_curves,
)
from mlipuq.active.select import select  # noqa: F401
from mlipuq.active.strategies import STRATEGIES  # noqa: F401

warnings.warn(
    "mlipuq.active_loop is deprecated and will be removed in the next release; "
    "import from mlipuq.active (e.g. from mlipuq.active import Loop)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LabelledPoolOracle", "LearningCurve", "Loop", "label", "plot_learning_curves"]
