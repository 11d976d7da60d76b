"""When a mean offset, not scatter, dominates the errors: say so instead of stretching σ.

With z = (y_pred − y_true)/σ, a calibrated model has z-mean ≈ 0 and z-std ≈ 1.
A model that is biased on the data at hand (wrong reference energies, an
energy shift between two DFT setups, a briefly trained readout) has
|z-mean| ≳ z-std: most of the squared error is one shared offset. Any
recalibration of σ then inflates every std to cover that constant shift
(e.g. z-mean 0.98, z-std 0.20 → σ stretched ~5×), which hides the bias
instead of fixing it. :func:`offset_report` measures it per target and
:func:`warn_offsets` warns with what to do; ``calibrate`` and ``evaluate``
call it.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from mlipuq.errors import user_stacklevel

#: |z-mean| / z-std above which the shared offset dominates the errors
OFFSET_RATIO = 1.0
#: fewer scored targets than this: no verdict (the mean itself is too uncertain)
MIN_TARGETS = 10

_ADVICE = {
    "energy": ("fix the mean rather than the std: check the per-species reference "
               "energies (isolated-atom energies, model.set_atomic_energies), the energy "
               "zero of the reference data, or retrain/fine-tune on data like this"),
    "forces": "the forces share a systematic error: retrain or fine-tune on data like this",
}


class OffsetWarning(UserWarning):
    """The errors of a target are dominated by a shared mean offset."""


def z_statistics(y_pred, y_std, y_true) -> tuple[float, float, int]:
    """(z-mean, z-std, n) of z = (y_pred − y_true)/σ over targets with σ > 0 (float64)."""
    pred, std, true = (np.asarray(x, dtype=np.float64).ravel() for x in (y_pred, y_std, y_true))
    keep = std > 0
    z = (pred[keep] - true[keep]) / std[keep]
    if z.size == 0:
        return float("nan"), float("nan"), 0
    return float(z.mean()), float(z.std()), int(z.size)


def offset_message(target: str, z_mean: float, z_std: float, n: int) -> Optional[str]:
    """The warning text when the offset dominates, else None."""
    if n < MIN_TARGETS or not np.isfinite(z_mean) or abs(z_mean) <= OFFSET_RATIO * z_std:
        return None
    return (f"{target}: the errors share a mean offset (z-mean {z_mean:+.2f}, z-std "
            f"{z_std:.2f} over {n} values): recalibrating would widen every std to cover "
            f"a constant shift; {_ADVICE.get(target, _ADVICE['forces'])}")


def offset_report(prediction, energy, forces) -> dict:
    """``{target: {"z_mean", "z_std", "n", "dominated"}}`` for energies and forces."""
    return offsets_of({"energy": (prediction.energy, prediction.energy_std, energy),
                       "forces": (prediction.forces, prediction.forces_std, forces)})


def offsets_of(arrays: dict) -> dict:
    """:func:`offset_report` of ``{target: (y_pred, y_std, y_true)}``."""
    out = {}
    for target, (pred, std, true) in arrays.items():
        z_mean, z_std, n = z_statistics(pred, std, true)
        out[target] = {"z_mean": z_mean, "z_std": z_std, "n": n,
                       "dominated": offset_message(target, z_mean, z_std, n) is not None}
    return out


def warn_offsets(report: dict, *, where: str, stacklevel: Optional[int] = None) -> list:
    """Warn (:class:`OffsetWarning`) for every target whose offset dominates; the messages.
    ``stacklevel`` None: the warning points at the user's call, however deep in mlipuq."""
    stacklevel = user_stacklevel() if stacklevel is None else stacklevel
    messages = []
    for target, stats in report.items():
        message = offset_message(target, stats["z_mean"], stats["z_std"], stats["n"])
        if message is not None:
            messages.append(message)
            warnings.warn(f"{where}: {message}", OffsetWarning, stacklevel=stacklevel)
    return messages
