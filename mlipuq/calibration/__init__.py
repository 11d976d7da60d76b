"""Judge uncertainties: calibration metrics, recalibration and plots.

* :mod:`mlipuq.calibration.metrics` — pure metric functions
  ``metric(y_pred, y_std, y_true, *, reduce="none", ...)`` and
  :func:`~mlipuq.calibration.metrics.all_metrics`;
* :func:`evaluate` — every metric for energies (total and per atom), force
  components and per-atom force norms, as a :class:`CalibrationReport`;
* :mod:`mlipuq.calibration.recalibrate` — scalar, power-law, isotonic and
  split-conformal (:mod:`mlipuq.calibration.conformal`) recalibrators
  (:func:`get_recalibrator`, :class:`PredictionRecalibrator`, which also fits how
  stds scale between structures, :mod:`mlipuq.calibration.structure_scaling`, and
  widens them beyond the calibration range, :mod:`mlipuq.calibration.extrapolation`);
* :mod:`mlipuq.calibration.plots` — matplotlib plots (imported lazily);
* :mod:`mlipuq.calibration.cli` — the ``mlipuq evaluate`` subcommand.

Units are eV and Å throughout.
"""

from mlipuq.calibration import conformal, metrics, recalibrate, student_t
from mlipuq.calibration.recalibrate import (
    ConformalRecalibrator,
    IsotonicRecalibrator,
    PowerLawRecalibrator,
    PredictionRecalibrator,
    ScalarRecalibrator,
    StudentTRecalibrator,
    get_recalibrator,
)
from mlipuq.calibration.report import CalibrationReport, evaluate, load_prediction

__all__ = [
    "CalibrationReport",
    "ConformalRecalibrator",
    "IsotonicRecalibrator",
    "PowerLawRecalibrator",
    "PredictionRecalibrator",
    "ScalarRecalibrator",
    "StudentTRecalibrator",
    "conformal",
    "evaluate",
    "get_recalibrator",
    "load_prediction",
    "metrics",
    "plots",
    "recalibrate",
    "student_t",
]


def __getattr__(name):
    # plots import matplotlib lazily; keep `import mlipuq.calibration` light
    if name == "plots":
        import importlib

        return importlib.import_module("mlipuq.calibration.plots")
    raise AttributeError(f"module 'mlipuq.calibration' has no attribute {name!r}")
