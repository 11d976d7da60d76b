"""Isotonic CDF recalibration (Kuleshov, Fenner & Ermon, ICML 2018).

One of the recalibrators of :mod:`mlipuq.calibration.recalibrate` (``method="isotonic"``),
which re-exports it.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy.special import ndtr, ndtri

from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.recalibrate_base import Recalibrator
from mlipuq.calibration.recalibrate_base import check_std as _check_std

__all__ = ["DEFAULT_MATCH_LEVELS", "IsotonicRecalibrator"]

#: central-interval coverages 5 %, 10 %, ..., 95 % matched by the isotonic std
DEFAULT_MATCH_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


class IsotonicRecalibrator(Recalibrator):
    """Isotonic CDF recalibration (Kuleshov, Fenner & Ermon, ICML 2018).

    Kuleshov et al. learn a monotone map R from each prediction's CDF level
    :math:`p = \\Phi(z)`, :math:`z = (y - \\mu)/\\sigma`, to the observed
    frequency :math:`\\hat P(p) = \\#\\{p_i \\le p\\}/n` on validation data, by
    isotonic regression. The recalibrated CDF is :math:`R(\\Phi((y-\\mu)/\\sigma))`
    and the q-quantile :math:`\\mu + \\sigma\\,\\Phi^{-1}(R^{-1}(q))`
    (:meth:`cdf`, :meth:`quantile`, :meth:`interval`).

    Implementation: R is stored in the coordinate z rather than p (a
    monotone change of variable that keeps the far tails, where an
    over-confident model puts many references and p rounds to 0 or 1,
    resolvable). Knots sit at up to ``num_knots`` sample quantiles of the
    validation z with Hazen levels (rank + ½)/n; R is the isotonic
    regression through them, linear in z between knots. Beyond the outer
    knots R continues as a Gaussian tail, :math:`R = \\Phi(\\Phi^{-1}(F_K) + (z -
    z_K)/t)`, whose scale t is the least-squares slope of z against
    :math:`\\Phi^{-1}(R)` over the knots of that tail (outside the central
    quartiles; 1 when there are too few knots).

    **Which std transform returns.** R acts on standardised errors, so the
    recalibrated distribution of every prediction is one fixed shape scaled
    by its own σ, and any std summarising it is a constant multiple of σ.
    ``transform`` returns ``scale_ * σ`` where ``scale_`` makes the Gaussian
    central intervals match the recalibrated ones in least squares over
    ``match_levels``: with recalibrated half-widths
    :math:`w(p) = [\\Phi^{-1}(R^{-1}(\\tfrac12+\\tfrac p2)) -
    \\Phi^{-1}(R^{-1}(\\tfrac12-\\tfrac p2))]/2` and Gaussian ones
    :math:`u(p) = \\Phi^{-1}(\\tfrac12+\\tfrac p2)`,
    :math:`s = \\sum_p w u / \\sum_p u^2`. Use :meth:`quantile` or
    :meth:`interval` to keep the full (possibly skewed, heavy-tailed)
    recalibrated distribution.

    Parameters
    ----------
    num_knots
        Most knots of R (fewer if there are fewer validation predictions).
    match_levels
        Central-interval coverages used to turn R into a std scale.

    Attributes
    ----------
    knots_z_ : ndarray
        Standardised errors at the knots, strictly increasing.
    knots_level_ : ndarray
        R at the knots (observed CDF levels), strictly increasing in (0, 1).
    tail_scales_ : tuple of float
        Scales t of the lower and upper Gaussian tails.
    scale_ : float
        Std multiplier (dimensionless).
    """

    def __init__(
        self,
        num_knots: int = 1000,
        match_levels: Sequence[float] = DEFAULT_MATCH_LEVELS,
    ):
        self.num_knots = num_knots
        self.match_levels = match_levels

    def fit(self, y_pred, y_std, y_true) -> "IsotonicRecalibrator":
        """Fit R on validation data (any common shape, unit of the quantity)."""
        from sklearn.isotonic import IsotonicRegression

        if int(self.num_knots) != self.num_knots or self.num_knots < 2:
            raise ValueError(f"num_knots must be an integer >= 2, got {self.num_knots!r}")
        match = np.asarray(self.match_levels, dtype=np.float64).reshape(-1)
        if match.size == 0 or not np.all((match > 0) & (match < 1)):
            raise ValueError(f"match_levels must lie in (0, 1), got {self.match_levels!r}")
        pred, std, true = prepare(y_pred, y_std, y_true)
        z = np.sort((true - pred) / std)
        n = z.size
        ranks = np.unique(np.round(np.linspace(0, n - 1, min(int(self.num_knots), n))))
        ranks = ranks.astype(np.int64)
        # tied z share one knot at the mean Hazen level of the ties
        knots = np.unique(z[ranks])
        lo = np.searchsorted(z, knots, side="left")
        hi = np.searchsorted(z, knots, side="right")
        hazen = 0.5 * (lo + hi) / n
        iso = IsotonicRegression(increasing=True)
        level = iso.fit_transform(knots, hazen)
        self.knots_z_ = knots
        self.knots_level_ = level
        self.tail_scales_ = (
            self._tail_scale(0.25, lower=True),
            self._tail_scale(0.75, lower=False),
        )
        u = ndtri(0.5 + match / 2.0)
        w = 0.5 * (self._z_of(0.5 + match / 2.0) - self._z_of(0.5 - match / 2.0))
        self.scale_ = float(np.dot(w, u) / np.dot(u, u))
        return self

    def _tail_scale(self, anchor: float, lower: bool) -> float:
        # least-squares slope of z against Phi^-1(level) over the knots of one tail
        z, f = self.knots_z_, self.knots_level_
        tail = f <= anchor if lower else f >= anchor
        if np.count_nonzero(tail) < 2:
            return 1.0
        x = ndtri(f[tail])
        x = x - x.mean()
        denom = float(np.dot(x, x))
        scale = float(np.dot(x, z[tail] - z[tail].mean())) / denom if denom > 0 else 0.0
        return scale if np.isfinite(scale) and scale > 0 else 1.0

    # ------------------------------------------------------------ the map R
    def _level_of_z(self, z: np.ndarray) -> np.ndarray:
        zk, fk = self.knots_z_, self.knots_level_
        t_lo, t_hi = self.tail_scales_
        z = np.asarray(z, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out = np.interp(z, zk, fk)
            below, above = z < zk[0], z > zk[-1]
            out = np.where(below, ndtr(ndtri(fk[0]) + (z - zk[0]) / t_lo), out)
            out = np.where(above, ndtr(ndtri(fk[-1]) + (z - zk[-1]) / t_hi), out)
        return out

    def _z_of(self, q: np.ndarray) -> np.ndarray:
        zk, fk = self.knots_z_, self.knots_level_
        t_lo, t_hi = self.tail_scales_
        q = np.asarray(q, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.interp(q, fk, zk)
            out = np.where(q < fk[0], zk[0] + t_lo * (ndtri(q) - ndtri(fk[0])), out)
            out = np.where(q > fk[-1], zk[-1] + t_hi * (ndtri(q) - ndtri(fk[-1])), out)
        return out

    def calibrated_level(self, p) -> np.ndarray:
        """R(p): observed frequency of a predicted CDF level p in [0, 1]."""
        self._check_fitted()
        return self._level_of_z(ndtri(np.asarray(p, dtype=np.float64)))

    def inverse_level(self, q) -> np.ndarray:
        """R⁻¹(q): the predicted CDF level whose observed frequency is q."""
        self._check_fitted()
        return ndtr(self._z_of(q))

    # -------------------------------------------------- distribution views
    def cdf(self, y, y_pred, y_std) -> np.ndarray:
        """Recalibrated CDF :math:`R(\\Phi((y - \\mu)/\\sigma))` (dimensionless)."""
        self._check_fitted()
        z = (np.asarray(y, np.float64) - np.asarray(y_pred, np.float64)) / _check_std(y_std)
        return self._level_of_z(z)

    def quantile(self, q, y_pred, y_std) -> np.ndarray:
        """Recalibrated q-quantile :math:`\\mu + \\sigma\\Phi^{-1}(R^{-1}(q))` (unit of y)."""
        self._check_fitted()
        q = np.asarray(q, dtype=np.float64)
        if not np.all((q > 0) & (q < 1)):
            raise ValueError("quantile levels must lie in (0, 1)")
        return np.asarray(y_pred, np.float64) + _check_std(y_std) * self._z_of(q)

    def interval(self, level: float, y_pred, y_std) -> Tuple[np.ndarray, np.ndarray]:
        """Recalibrated central interval of nominal coverage ``level`` (unit of y)."""
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        return (
            self.quantile(0.5 - level / 2.0, y_pred, y_std),
            self.quantile(0.5 + level / 2.0, y_pred, y_std),
        )

    def transform(self, y_std) -> np.ndarray:
        """Interval-matched Gaussian std ``scale_ * y_std`` (same shape and unit)."""
        self._check_fitted()
        return self.scale_ * _check_std(y_std)
