"""The :class:`Recalibrator` base class shared by every recalibrator.

It lives apart from :mod:`mlipuq.calibration.recalibrate` so that recalibrators
in their own modules (:mod:`mlipuq.calibration.conformal`) can subclass it
while ``recalibrate`` imports and registers them, without an import cycle.
Import it from :mod:`mlipuq.calibration.recalibrate`, which re-exports it.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from mlipuq.errors import NotFittedError

__all__ = ["Recalibrator", "check_std", "target_numbers"]


def check_std(y_std) -> np.ndarray:
    """``y_std`` as float64, raising ``ValueError`` for NaN/inf or negative values."""
    std = np.asarray(y_std, dtype=np.float64)
    if not np.isfinite(std).all():
        raise ValueError("y_std holds non-finite (NaN/inf) values")
    if (std < 0).any():
        raise ValueError(f"y_std holds {int((std < 0).sum())} negative value(s)")
    return std


def target_numbers(numbers, shape) -> np.ndarray:
    """Flat int64 atomic numbers, one per target of an array of ``shape``
    (``numbers`` of that shape, or one per row: ``shape[:1]``); per-species
    recalibrators' ``numbers=``."""
    if numbers is None:
        raise ValueError(
            "per_species=True needs the atomic number of every target (numbers=...)"
        )
    z = np.asarray(numbers)
    if z.size and not np.issubdtype(z.dtype, np.integer) and not (
        np.all(np.isfinite(z)) and np.all(z == np.round(z))
    ):
        raise ValueError("numbers must be integer atomic numbers")
    z = z.astype(np.int64)
    shape = tuple(shape)
    if z.shape != shape:
        if len(shape) >= 1 and z.shape == shape[:1]:
            z = np.broadcast_to(z.reshape(z.shape + (1,) * (len(shape) - 1)), shape)
        else:
            raise ValueError(
                f"numbers has shape {z.shape}; expected {shape} or {shape[:1]} "
                "(one atomic number per target or per row)"
            )
    return np.ascontiguousarray(z).reshape(-1)


class Recalibrator:
    """Base class: fit on validation predictions, then map std to std."""

    #: attribute whose presence marks a fitted recalibrator
    _fitted_attr = "scale_"

    #: constructor options that apply only to per-atom targets (forces);
    #: :class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator` leaves them out for energies
    per_atom_options: Tuple[str, ...] = ()

    @property
    def needs_numbers(self) -> bool:
        """True when ``fit`` and ``transform`` need ``numbers=`` (atomic numbers)."""
        return False

    def fit(self, y_pred, y_std, y_true) -> "Recalibrator":  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, y_std) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_transform(self, y_pred, y_std, y_true) -> np.ndarray:
        """``fit(y_pred, y_std, y_true)`` then ``transform(y_std)``."""
        return self.fit(y_pred, y_std, y_true).transform(y_std)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, self._fitted_attr)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call fit(y_pred, y_std, y_true) first"
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({options})"
