"""Accuracy metrics and how well σ ranks the errors.

Every function takes ``(y_pred, y_std, y_true, *, reduce="none", ...)``
(see :mod:`mlipuq.calibration.metrics_common`). Ranking metrics only use the
order of σ, so they are invariant to any monotone recalibration of σ: a
good calibration cannot fix a bad ranking, nor spoil a good one.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from mlipuq.calibration.metrics_common import UndefinedMetricError, average_ranks, prepare


class DetectionAUC(NamedTuple):
    """How well σ flags large errors (see :func:`error_detection_auc`).

    Attributes
    ----------
    auroc : float
        Area under the ROC curve; 0.5 is chance, 1 is perfect.
    auprc : float
        Area under the precision-recall curve (average precision); chance
        level is ``positive_fraction``.
    threshold : float
        Absolute-error threshold (unit of the quantity) defining positives.
    positive_fraction : float
        Fraction of predictions with ``|error| > threshold``.
    """

    auroc: float
    auprc: float
    threshold: float
    positive_fraction: float


# ------------------------------------------------------------------ kernels
def spearman_from_ranks(rank_a: np.ndarray, rank_b: np.ndarray) -> float:
    """Pearson correlation of two rank vectors (Spearman's rho)."""
    a = rank_a - rank_a.mean()
    b = rank_b - rank_b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if denom == 0:
        raise UndefinedMetricError(
            "Spearman correlation is undefined: |error| or std is constant"
        )
    return float(np.dot(a, b) / denom)


def auroc_from_ranks(score_rank: np.ndarray, positive: np.ndarray) -> float:
    """AUROC (Mann-Whitney U) from average ranks of the scores."""
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(
            f"AUROC is undefined with {n_pos} positive and {n_neg} negative predictions"
        )
    u = float(score_rank[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * float(n_neg))


def average_precision(
    score: np.ndarray, positive: np.ndarray, order: Optional[np.ndarray] = None
) -> float:
    """Average precision: sum over thresholds of (ΔRecall × Precision).

    Tied scores form one threshold, as in scikit-learn's
    ``average_precision_score``. ``order`` may pass ``argsort(score)``
    (ascending) to save the sort.
    """
    n_pos = int(np.count_nonzero(positive))
    if n_pos == 0:
        raise UndefinedMetricError("AUPRC is undefined without positive predictions")
    if order is None:
        order = np.argsort(score, kind="stable")
    order = order[::-1]  # descending; the order inside tie groups does not matter
    s = score[order]
    tp = np.cumsum(positive[order])
    last = np.concatenate([np.nonzero(np.diff(s))[0], [s.size - 1]])  # end of each tie group
    tp = tp[last].astype(np.float64)
    precision = tp / (last + 1.0)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def detection_from(
    abs_err: np.ndarray,
    std: np.ndarray,
    std_rank: np.ndarray,
    threshold: Optional[float],
    quantile: float,
    std_order: Optional[np.ndarray] = None,
) -> DetectionAUC:
    if threshold is None:
        threshold = float(np.quantile(abs_err, quantile))
    positive = abs_err > threshold
    return DetectionAUC(
        auroc=auroc_from_ranks(std_rank, positive),
        auprc=average_precision(std, positive, std_order),
        threshold=float(threshold),
        positive_fraction=float(positive.mean()),
    )


# ------------------------------------------------------------------ public
def mae(y_pred, y_std, y_true, *, reduce: str = "none") -> float:
    """Mean absolute error (unit of the quantity). ``y_std`` is only checked."""
    pred, _, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    return float(np.mean(np.abs(true - pred)))


def rmse(y_pred, y_std, y_true, *, reduce: str = "none") -> float:
    """Root mean squared error (unit of the quantity). ``y_std`` is only checked."""
    pred, _, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    return float(np.sqrt(np.mean((true - pred) ** 2)))


def spearman_error_std(y_pred, y_std, y_true, *, reduce: str = "none") -> float:
    """Spearman rank correlation between |error| and σ.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (>= 0) and reference, unit of the quantity.
    reduce
        ``"none"`` or ``"norm"``.

    Returns
    -------
    float
        Dimensionless, in [-1, 1]; ties get average ranks. Even perfectly
        calibrated Gaussian predictions give well below 1, because |error|
        scatters around σ.

    Raises
    ------
    UndefinedMetricError
        (a ``ValueError``) when |error| or σ is constant.
    """
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    return spearman_from_ranks(average_ranks(np.abs(true - pred)), average_ranks(std))


def error_detection_auc(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    threshold: Optional[float] = None,
    quantile: float = 0.9,
) -> DetectionAUC:
    """AUROC and AUPRC of σ as a score for flagging large errors.

    A prediction is *positive* when ``|y_true - y_pred| > threshold``; σ is
    the score. This is what active learning and "trust this prediction?"
    decisions rely on.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (>= 0) and reference, unit of the quantity.
    reduce
        ``"none"`` or ``"norm"``.
    threshold
        Absolute-error threshold in the unit of the quantity (eV, eV/Å).
        Default: the ``quantile`` of |error|, so that about
        ``1 - quantile`` of the predictions are positive.
    quantile
        Used only when ``threshold`` is None; in (0, 1).

    Returns
    -------
    DetectionAUC
        ``auroc``, ``auprc`` (dimensionless), the ``threshold`` used and the
        positive fraction (the AUPRC of a random score).

    Raises
    ------
    UndefinedMetricError
        (a ``ValueError``) when no prediction, or every one, is positive.
    """
    if threshold is None and not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    order = np.argsort(std, kind="stable")
    return detection_from(
        np.abs(true - pred), std, average_ranks(std, order), threshold, quantile, order
    )
