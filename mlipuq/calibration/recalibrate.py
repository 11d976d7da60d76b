"""Recalibration of predicted standard deviations on a validation set.

Every recalibrator follows the metrics' argument order and scikit-learn's
conventions:

* the constructor only stores options;
* ``fit(y_pred, y_std, y_true)`` (validation predictions, their std and the
  references, any common shape, unit of the quantity) learns the map and
  returns ``self``; fitted attributes end in ``_``;
* ``transform(y_std)`` returns recalibrated std of the same shape and unit;
  calling it before ``fit`` raises :class:`~mlipuq.errors.NotFittedError`.

Methods (``get_recalibrator(method)``):

``"scalar"`` — :class:`ScalarRecalibrator`
    σ' = s σ with the NLL-optimal :math:`s^2 = \\langle z^2\\rangle`,
    :math:`z = (y - \\mu)/\\sigma` (closed form).
``"power"`` — :class:`PowerLawRecalibrator`
    σ' = a σ^b, (a, b) minimising the Gaussian NLL (a in closed form for each
    b, b by a bounded 1-D search of a convex profile).
``"isotonic"`` — :class:`IsotonicRecalibrator`
    Kuleshov et al. (2018): an isotonic map R of predicted to observed CDF
    levels. It gives recalibrated CDFs, quantiles and intervals; its
    ``transform`` returns the Gaussian std whose central intervals best match
    the recalibrated ones (see the class).
``"conformal"`` — :class:`~mlipuq.calibration.conformal.ConformalRecalibrator`
    Split-conformal intervals ŷ ± q̂σ at a target ``coverage`` (finite-sample
    guarantee on exchangeable data), optionally one q̂ per element for forces
    (``per_species=True``); ``transform`` returns σ' = q̂σ/Φ⁻¹((1+c)/2), whose
    Gaussian interval at that coverage is the conformal one (see
    :mod:`mlipuq.calibration.conformal`).
``"student_t"`` — :class:`~mlipuq.calibration.student_t.StudentTRecalibrator`
    A Student-t predictive: ν and a scale fitted by maximum likelihood on the
    validation z-scores (heavy tails, e.g. small committees); ``transform``
    returns the Gaussian-equivalent std (68 % half-width) and the
    recalibrated prediction carries ν as ``energy_dof`` / ``forces_dof``.

A recalibrator whose ``needs_numbers`` is True also takes ``numbers=`` (the
atomic number of each target) in ``fit`` and ``transform``.

Energies and forces are recalibrated separately; :class:`PredictionRecalibrator`
does both for a :class:`~mlipuq.prediction.Prediction` and is what UQ
wrappers use in ``calibrate(val, method=...)``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Dict, Optional, Sequence, Tuple, Type, Union

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import ndtr, ndtri

# recalibrators in their own modules; saved wrappers name every class through this module
from mlipuq.calibration.conformal import ConformalRecalibrator
from mlipuq.calibration.extrapolation import (
    DEFAULT_POWER,
    calibration_range,
    check_power,
    prediction_scales,
    widen,
)
from mlipuq.calibration.student_t import StudentTRecalibrator
from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.recalibrate_base import Recalibrator
from mlipuq.calibration.recalibrate_base import check_std as _check_std
from mlipuq.errors import NotFittedError

log = logging.getLogger(__name__)

__all__ = [
    "RECALIBRATORS",
    "ConformalRecalibrator",
    "IsotonicRecalibrator",
    "PowerLawRecalibrator",
    "PredictionRecalibrator",
    "Recalibrator",
    "ScalarRecalibrator",
    "StudentTRecalibrator",
    "get_recalibrator",
]


class ScalarRecalibrator(Recalibrator):
    """σ' = s σ with the NLL-optimal scale (closed form).

    Minimising the mean Gaussian NLL
    :math:`\\langle \\log(s\\sigma) + (y-\\mu)^2 / (2 s^2\\sigma^2)\\rangle`
    over s gives :math:`s = \\sqrt{\\langle z^2\\rangle}`.

    Attributes
    ----------
    scale_ : float
        The fitted s (dimensionless).
    """

    def fit(self, y_pred, y_std, y_true) -> "ScalarRecalibrator":
        """Fit s on validation data (any common shape, unit of the quantity)."""
        pred, std, true = prepare(y_pred, y_std, y_true)
        z = (true - pred) / std
        scale = float(np.sqrt(np.mean(z * z)))
        if scale == 0.0:
            raise ValueError("all validation errors are zero: the NLL-optimal scale is 0")
        self.scale_ = scale
        return self

    def transform(self, y_std) -> np.ndarray:
        """Recalibrated std ``scale_ * y_std`` (same shape and unit)."""
        self._check_fitted()
        return self.scale_ * _check_std(y_std)


class PowerLawRecalibrator(Recalibrator):
    """σ' = a σ^b, fitted by Gaussian NLL.

    For fixed b the optimal :math:`a^2 = \\langle e^2 \\sigma^{-2b}\\rangle`
    (e the error); substituting gives the profile
    :math:`f(b) = \\tfrac12\\log\\langle e^2\\sigma^{-2b}\\rangle + b\\langle\\log\\sigma\\rangle`,
    convex in b (a log-sum-exp plus a linear term), minimised over
    ``b_bounds``. σ is divided by its geometric mean internally so the fit
    is independent of units. If every validation σ is the same, b is
    undetermined and set to 1 (a pure scale).

    Parameters
    ----------
    b_bounds
        Allowed range of the exponent. b = 1 is a pure scale, b = 0 replaces
        σ by a constant (σ carries no information), b > 1 stretches the
        spread of σ.

    Attributes
    ----------
    a_ : float
        Prefactor, in (unit of the quantity)^(1 - b).
    b_ : float
        Exponent (dimensionless).
    scale_ : float
        The same map written as σ' = scale_ (σ / reference_std_)^b_
        (unit of the quantity).
    reference_std_ : float
        Geometric mean of the validation σ (unit of the quantity).
    """

    def __init__(self, b_bounds: Tuple[float, float] = (0.0, 4.0)):
        self.b_bounds = b_bounds

    def fit(self, y_pred, y_std, y_true) -> "PowerLawRecalibrator":
        """Fit (a, b) on validation data (any common shape, unit of the quantity)."""
        lo, hi = (float(v) for v in self.b_bounds)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"b_bounds must be finite with lo < hi, got {self.b_bounds!r}")
        pred, std, true = prepare(y_pred, y_std, y_true)
        e2 = (true - pred) ** 2
        if not (e2 > 0).any():
            raise ValueError("all validation errors are zero: the power law is undetermined")
        log_ref = float(np.mean(np.log(std)))
        x = np.log(std) - log_ref  # mean 0

        def log_a2(b: float) -> float:
            # log <e^2 exp(-2 b x)>, evaluated stably
            t = np.log(e2[e2 > 0]) - 2.0 * b * x[e2 > 0]
            m = float(t.max())
            return m + float(np.log(np.sum(np.exp(t - m)) / e2.size))

        if np.ptp(x) == 0.0:
            # constant σ leaves b undetermined: keep it a pure scale (if allowed)
            b = float(np.clip(1.0, lo, hi))
        else:
            # profile NLL up to constants; <x> = 0 removes the linear term
            result = minimize_scalar(
                lambda b: 0.5 * log_a2(b), bounds=(lo, hi), method="bounded",
                options={"xatol": 1e-10},
            )
            b = float(result.x)
        self.b_ = b
        self.reference_std_ = float(np.exp(log_ref))
        self.scale_ = float(np.exp(0.5 * log_a2(b)))
        self.a_ = float(self.scale_ * self.reference_std_ ** (-b))
        return self

    def transform(self, y_std) -> np.ndarray:
        """Recalibrated std ``a_ * y_std ** b_`` (same shape and unit)."""
        self._check_fitted()
        std = _check_std(y_std)
        with np.errstate(divide="ignore"):
            ratio = std / self.reference_std_
            return self.scale_ * np.power(ratio, self.b_)


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


#: method name -> recalibrator class
RECALIBRATORS: Dict[str, Type[Recalibrator]] = {
    "scalar": ScalarRecalibrator,
    "power": PowerLawRecalibrator,
    "isotonic": IsotonicRecalibrator,
    "conformal": ConformalRecalibrator,
    "student_t": StudentTRecalibrator,
}


def get_recalibrator(method: str, **options) -> Recalibrator:
    """A new, unfitted recalibrator: ``"scalar"``, ``"power"``, ``"isotonic"`` or
    ``"conformal"``.

    ``options`` go to the constructor (e.g. ``b_bounds`` for ``"power"``,
    ``coverage`` and ``per_species`` for ``"conformal"``).
    """
    if method not in RECALIBRATORS:
        raise ValueError(
            f"unknown recalibration method {method!r}; choose from {sorted(RECALIBRATORS)}"
        )
    return RECALIBRATORS[method](**options)


def _rescale_members(members: Optional[np.ndarray], mean: np.ndarray, factor: np.ndarray):
    if members is None:
        return None
    return mean[None] + factor[None] * (members - mean[None])


def _atom_numbers(prediction, what: str) -> np.ndarray:
    """(N,) atomic numbers of a Prediction, for recalibrators that need them."""
    numbers = getattr(prediction, "numbers", None)
    if numbers is None:
        raise ValueError(
            f"the {what} recalibrator is per species and needs the atomic number of every "
            "atom, but this Prediction has no `numbers` (predict() fills them; set "
            "Prediction(numbers=...) for hand-made predictions)"
        )
    return np.asarray(numbers, dtype=np.int64)


class PredictionRecalibrator:
    """One recalibrator for energies and one for forces, applied to a Prediction.

    Energies are recalibrated on total energies (eV), forces per Cartesian
    component (eV/Å). :meth:`transform` returns a new
    :class:`~mlipuq.prediction.Prediction` whose variances are replaced;
    committee members are stretched about the mean by σ'/σ so that their
    spread follows, and aleatoric/epistemic parts (and per-atom energy
    variances) are scaled by (σ'/σ)² so that they still add up.

    Parameters
    ----------
    method
        ``"scalar"``, ``"power"``, ``"isotonic"``, ``"conformal"`` or ``"student_t"``;
        or one per target, ``{"energy": "scalar", "forces": "student_t"}``
        (the committees' default).
    extrapolation
        Exponent of the widening of stds beyond the calibration data's range
        (default 0.5; 0 or None: none; or one per target, ``{"energy": 0.25,
        "forces": 0}``, the deep ensemble's): a structure whose per-atom energy std
        or RMS force std exceeds the largest of the calibration structures by
        the ratio r (the larger of the two) gets the calibrated stds of both
        multiplied by r ** extrapolation, and ``calibration_excess`` = r
        (:mod:`mlipuq.calibration.extrapolation`).
    **options
        Passed to both recalibrators' constructors, except options that apply
        only to per-atom targets (the recalibrator's ``per_atom_options``,
        e.g. the conformal ``per_species``), which go to the force
        recalibrator alone. A recalibrator that ``needs_numbers`` gets
        ``prediction.numbers`` (atomic numbers) in ``fit`` and ``transform``.

    Attributes
    ----------
    energy_, forces_ : Recalibrator
        The fitted recalibrators.
    std_range_ : dict
        Largest per-atom energy std and RMS force std (raw, before
        recalibration) over the calibration structures.
    offsets_ : dict
        z-mean, z-std and count of the validation errors per target
        (:func:`mlipuq.calibration.bias.offset_report`); when the mean offset
        dominates, ``fit`` warns (:class:`~mlipuq.calibration.bias.OffsetWarning`)
        that recalibration would only widen the stds to cover it.
    """

    def __init__(self, method: Union[str, Mapping[str, str]] = "scalar", **options):
        self.method = method
        self.options = options
        self.extrapolation  # noqa: B018  (validates the powers early)
        for key in ("energy", "forces"):  # validate early
            get_recalibrator(self.method_of(key), **self._options_for(key))

    def method_of(self, target: str) -> str:
        """The method of ``target`` (``"energy"`` or ``"forces"``): ``method`` itself,
        or its entry when ``method`` is a mapping ``{"energy": ..., "forces": ...}``."""
        if isinstance(self.method, str):
            return self.method
        if not isinstance(self.method, Mapping) or set(self.method) != {"energy", "forces"}:
            raise ValueError("method must be a method name or a mapping with exactly the keys "
                             f"'energy' and 'forces', got {self.method!r}")
        return self.method[target]

    @property
    def description(self) -> str:
        """``"student_t"``, or ``"energy scalar, forces student_t"`` for per-target methods."""
        energy, forces = self.method_of("energy"), self.method_of("forces")
        return energy if energy == forces else f"energy {energy}, forces {forces}"

    def _options_for(self, target: str) -> dict:
        """The options of ``target``'s recalibrator: per-atom options go to forces
        only; with per-target methods, only the options its constructor takes."""
        cls = RECALIBRATORS.get(self.method_of(target))
        if cls is None:
            return dict(self.options)  # get_recalibrator names the unknown method
        options = {k: v for k, v in self.options.items() if k != "extrapolation"
                   and (target == "forces" or k not in cls.per_atom_options)}
        if not isinstance(self.method, str):
            accepted = inspect.signature(cls).parameters
            options = {k: v for k, v in options.items() if k in accepted}
        return options

    def fit(self, prediction, reference) -> "PredictionRecalibrator":
        """Fit on validation predictions and reference data.

        Parameters
        ----------
        prediction : Prediction
            Predictions for the validation structures.
        reference
            An ``AtomsDataset`` (or anything ``mlipuq.data.as_dataset``
            accepts) with reference energies (eV) and forces (eV/Å), in the
            order of ``prediction``.
        """
        from mlipuq.calibration.bias import offset_report, warn_offsets
        from mlipuq.calibration.targets import reference_arrays, scored_mask

        energy, forces = reference_arrays(prediction, reference)
        self.offsets_ = offset_report(prediction, energy, forces)
        warn_offsets(self.offsets_, where="calibrate", stacklevel=4)
        structures = np.arange(prediction.n_structures)
        self.excluded_ = {}
        for key, pred, std, true, owner in (
            ("energy", prediction.energy, prediction.energy_std, energy, structures),
            ("forces", prediction.forces, prediction.forces_std, forces, prediction.batch),
        ):
            keep = scored_mask(pred, std, true, owner, key)
            self.excluded_[key] = int(keep.size - np.count_nonzero(keep))
            if self.excluded_[key]:
                log.info("calibration: %d exact %s target(s) excluded (zero std and error)",
                         self.excluded_[key], key)
            part = get_recalibrator(self.method_of(key), **self._options_for(key))
            extra = {}
            if part.needs_numbers:
                if key != "forces":
                    raise ValueError(
                        f"{type(part).__name__} needs atomic numbers, which per-structure "
                        f"{key} targets do not have"
                    )
                numbers = _atom_numbers(prediction, key)
                extra["numbers"] = np.broadcast_to(numbers[:, None], pred.shape)[keep]
            setattr(self, f"{key}_", part.fit(pred[keep], std[keep], true[keep], **extra))
        self.std_range_ = calibration_range(prediction_scales(prediction), energy,
                                            prediction.n_atoms, forces)
        return self

    @property
    def extrapolation(self) -> dict:
        """Widening powers ``{"energy": p, "forces": p}`` (option ``extrapolation``)."""
        return check_power(self.options.get("extrapolation", DEFAULT_POWER))

    def transform_energy_std(self, energy_std, n_atoms) -> np.ndarray:
        """Calibrated energy stds (B,) eV from raw ones, without forces (the
        energy-only path of LLPR's ``predict_energy``): the energy recalibrator,
        then the widening beyond the calibration range."""
        std = _check_std(energy_std)
        new = self.energy_.transform(std)
        scales = {"energy": std / np.maximum(np.asarray(n_atoms), 1)}
        widened = widen(getattr(self, "std_range_", None), self.extrapolation, scales,
                        {"energy": new}, n_atoms)
        return new if widened is None else widened["energy"]

    def transform(self, prediction):
        """A recalibrated copy of ``prediction`` (energies and forces)."""
        from mlipuq.prediction import Prediction

        if not hasattr(self, "forces_"):
            raise NotFittedError(
                "PredictionRecalibrator is not fitted; call fit(prediction, reference)"
            )
        e_std, f_std = prediction.energy_std, prediction.forces_std
        new_e_std = self.energy_.transform(e_std)
        if self.forces_.needs_numbers:
            new_f_std = self.forces_.transform(
                f_std, numbers=_atom_numbers(prediction, "forces")
            )
        else:
            new_f_std = self.forces_.transform(f_std)
        widened = widen(getattr(self, "std_range_", None), self.extrapolation,
                        prediction_scales(prediction), {"energy": new_e_std, "forces": new_f_std},
                        prediction.n_atoms, prediction.batch)
        if widened is not None:  # beyond the calibration range (extrapolation.py)
            new_e_std, new_f_std = widened["energy"], widened["forces"]
        with np.errstate(divide="ignore", invalid="ignore"):
            e_factor = np.where(e_std > 0, new_e_std / e_std, 1.0)
            f_factor = np.where(f_std > 0, new_f_std / f_std, 1.0)
        kwargs = dict(
            energy=prediction.energy,
            energy_var=new_e_std**2,
            forces=prediction.forces,
            forces_var=new_f_std**2,
            n_atoms=prediction.n_atoms,
            batch=prediction.batch,
            numbers=prediction.numbers,
            energy_members=_rescale_members(prediction.energy_members, prediction.energy, e_factor),
            forces_members=_rescale_members(prediction.forces_members, prediction.forces, f_factor),
        )
        for name in ("energy_aleatoric_var", "energy_epistemic_var"):
            value = getattr(prediction, name)
            kwargs[name] = None if value is None else value * e_factor**2
        atom_var = getattr(prediction, "atom_energy_var", None)
        if atom_var is not None:  # local energy variances follow their structure's factor
            kwargs["atom_energy_var"] = atom_var * e_factor[prediction.batch] ** 2
        for name in ("stress", "stress_var", "stress_members"):  # not recalibrated
            kwargs[name] = getattr(prediction, name, None)
        # a Student-t recalibration gives the predictive's degrees of freedom
        kwargs["energy_dof"] = getattr(self.energy_, "dof_", None)
        kwargs["forces_dof"] = getattr(self.forces_, "dof_", None)
        if widened is not None:
            kwargs["calibration_excess"] = widened["excess"]
        return Prediction(**kwargs)

    def __repr__(self) -> str:
        return f"PredictionRecalibrator(method={self.method!r})"
