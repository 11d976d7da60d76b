"""Input checks and shared helpers for the calibration metrics.

Every metric takes ``(y_pred, y_std, y_true, *, reduce="none", ...)``:

``y_pred``
    predicted means, any shape (energies (B,), forces (N, 3), ...), in the
    unit of the quantity (eV, eV/Å).
``y_std``
    predicted standard deviations, same shape and unit as ``y_pred``.
``y_true``
    reference values, same shape and unit.
``reduce``
    ``"none"`` (default): every element is one Gaussian prediction (for
    forces: one Cartesian component). ``"norm"``: reduce the last axis to
    vector norms before scoring; for forces this scores per-atom force
    magnitudes (see :func:`reduce_norm`).

Inputs are converted to float64. Non-finite values, negative (or, where a
metric divides by it, zero) standard deviations, empty inputs and mismatched
shapes raise ``ValueError``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

REDUCTIONS = ("none", "norm")


class UndefinedMetricError(ValueError):
    """A metric is mathematically undefined for the given data.

    Examples: a rank correlation with a constant std, an AUROC when no (or
    every) error exceeds the threshold.
    """


def _as_float64(name: str, x) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} cannot be converted to a float64 array: {exc}") from None
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} holds {bad} non-finite (NaN/inf) value(s)")


def reduce_norm(
    y_pred: np.ndarray, y_std: Optional[np.ndarray], y_true: Optional[np.ndarray]
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Reduce the last axis of vector predictions to norms.

    The predicted and reference values become ``|y_pred|`` and ``|y_true|``
    (norms over the last axis, e.g. per-atom force magnitudes in eV/Å). The
    standard deviation of the predicted norm is propagated to first order
    (delta method) from independent per-component standard deviations:

    .. math:: \\sigma_{|y|} = \\sqrt{\\sum_c (\\hat y_c / |\\hat y|)^2 \\sigma_c^2}

    Where ``|y_pred| = 0`` the direction is undefined and the root mean
    component variance :math:`\\sqrt{\\langle\\sigma_c^2\\rangle_c}` is used.
    The first-order approximation is poor for norms comparable to their
    std (near-zero forces), where the norm is far from Gaussian.

    Parameters
    ----------
    y_pred, y_std, y_true
        Arrays of shape (..., d), unit of the quantity; ``y_std`` and
        ``y_true`` may be None.

    Returns
    -------
    tuple
        ``(norm_pred, norm_std, norm_true)``, each of shape (...,).
    """
    if y_pred.ndim < 1 or y_pred.shape[-1] < 1:
        raise ValueError(f'reduce="norm" needs arrays with a vector axis last, got {y_pred.shape}')
    norm_pred = np.sqrt(np.einsum("...c,...c->...", y_pred, y_pred))
    norm_std = None
    if y_std is not None:
        var = y_std * y_std
        with np.errstate(invalid="ignore", divide="ignore"):
            directional = np.einsum("...c,...c,...c->...", y_pred, y_pred, var) / (norm_pred**2)
        isotropic = var.mean(axis=-1)
        norm_std = np.sqrt(np.where(norm_pred > 0, directional, isotropic))
    norm_true = None if y_true is None else np.sqrt(np.einsum("...c,...c->...", y_true, y_true))
    return norm_pred, norm_std, norm_true


def prepare(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    positive_std: bool = True,
    need_true: bool = True,
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Check inputs and return flat float64 ``(y_pred, y_std, y_true)``.

    Parameters
    ----------
    y_pred, y_std, y_true
        Array-likes of one common shape (unit of the quantity). ``y_true``
        may be None when ``need_true`` is False.
    reduce
        ``"none"`` or ``"norm"`` (see :func:`reduce_norm`).
    positive_std
        Demand strictly positive std (metrics that divide by it). Negative
        std is always an error.
    need_true
        Whether ``y_true`` is required.

    Raises
    ------
    ValueError
        Non-finite values, negative or zero std (as above), empty input,
        mismatched shapes or an unknown ``reduce``.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    pred = _as_float64("y_pred", y_pred)
    std = _as_float64("y_std", y_std)
    true = None
    if y_true is not None:
        true = _as_float64("y_true", y_true)
    elif need_true:
        raise ValueError("y_true is required")
    if std.shape != pred.shape:
        raise ValueError(f"y_std has shape {std.shape}, y_pred has shape {pred.shape}")
    if true is not None and true.shape != pred.shape:
        raise ValueError(f"y_true has shape {true.shape}, y_pred has shape {pred.shape}")
    if pred.size == 0:
        raise ValueError("empty input: metrics need at least one prediction")
    _check_finite("y_pred", pred)
    _check_finite("y_std", std)
    if true is not None:
        _check_finite("y_true", true)
    if (std < 0).any():
        raise ValueError(f"y_std holds {int((std < 0).sum())} negative value(s)")
    if reduce == "norm":
        pred, std, true = reduce_norm(pred, std, true)
    if positive_std and not (std > 0).all():
        raise ValueError(
            f"y_std holds {int((std <= 0).sum())} zero value(s); this metric divides by "
            "the std (floor it, e.g. np.maximum(y_std, 1e-8), if zeros are genuine)"
        )
    pred = pred.reshape(-1)
    std = std.reshape(-1)
    if true is not None:
        true = true.reshape(-1)
    _check_range(pred, std, true, positive_std)
    return pred, std, true


def _check_range(pred, std, true, positive_std: bool) -> None:
    """Refuse values whose squares or z-scores leave float64 (e.g. σ = 1e±300).

    Every metric then stays finite, or this raises naming the first index.
    """
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        bad = ~np.isfinite(std * std)
        if positive_std:
            bad |= std * std == 0
        if true is not None:
            err = true - pred
            bad |= ~np.isfinite(err * err)
            if positive_std:
                bad |= ~np.isfinite(err / std) | ~np.isfinite((err / std) ** 2)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} value(s) out of float64 range for the metrics (first: index {k}, "
            f"y_std={std[k]:.3g}"
            + ("" if true is None else f", error={true[k] - pred[k]:.3g}")
            + "): the squared std or error, or z = error/σ, overflows or underflows"
        )


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else ``ValueError``."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def aggregate(values: np.ndarray, reduction: str) -> float:
    """Mean or sum of per-prediction scores, as a Python float."""
    return float(values.mean() if reduction == "mean" else values.sum())


def average_ranks(x: np.ndarray, order: Optional[np.ndarray] = None) -> np.ndarray:
    """Ranks 1..n of a flat array, ties getting their average rank.

    ``order`` may pass a precomputed ``argsort(x)`` to save the sort.
    """
    if order is None:
        order = np.argsort(x, kind="stable")
    s = x[order]
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [s.size]]) - 1
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = (0.5 * (starts + ends) + 1.0)[group]
    return ranks
