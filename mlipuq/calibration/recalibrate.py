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

import copy
import inspect
import logging
from collections.abc import Mapping
from typing import Dict, Optional, Tuple, Type, Union

import numpy as np
from scipy.optimize import minimize_scalar

# recalibrators in their own modules; saved wrappers name every class through this module
from mlipuq.calibration.conformal import ConformalRecalibrator
from mlipuq.calibration.isotonic import DEFAULT_MATCH_LEVELS, IsotonicRecalibrator  # noqa: F401
from mlipuq.calibration.extrapolation import (
    DEFAULT_POWER,
    DISTANCE_KEY,
    calibration_range,
    check_cap,
    check_power,
    check_range,
    prediction_scales,
    structure_scales,
    widen,
)
from mlipuq.calibration.structure_scaling import (
    ATOMS,
    atom_scaling_factor,
    check_scaling,
    fit_atom_scaling,
    fit_scaling,
    scaling_factor,
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
    unknown = sorted(set(options) - _accepted(RECALIBRATORS[method]))
    if unknown:
        raise ValueError(f"recalibration method {method!r} takes no option "
                         f"{', '.join(map(repr, unknown))}; its options: "
                         f"{sorted(_accepted(RECALIBRATORS[method])) or 'none'}")
    return RECALIBRATORS[method](**options)


def _accepted(cls) -> set:
    """The keyword options a recalibrator class's constructor takes."""
    return {name for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


#: Options of PredictionRecalibrator itself, not of its two recalibrators.
OUTER_OPTIONS = ("extrapolation", "widening_cap", "structure_scaling", "distance_range")


def _rescale_members(members: Optional[np.ndarray], mean: np.ndarray, factor: np.ndarray):
    if members is None:
        return None
    return mean[None] + factor[None] * (members - mean[None])


def stretch_members(members: Optional[np.ndarray], mean: np.ndarray, var: np.ndarray,
                    member_var: np.ndarray) -> Optional[np.ndarray]:
    """Committee ``members`` (K, ...) stretched about ``mean`` by sqrt(var / member_var)
    per entry, so that a spread whose variance was ``member_var`` matches ``var``
    (entries with ``member_var`` 0 keep their members); None stays None."""
    if members is None:
        return None
    var, member_var = np.asarray(var, dtype=np.float64), np.asarray(member_var, dtype=np.float64)
    ratio = np.divide(var, member_var, out=np.ones_like(var), where=member_var > 0)
    return _rescale_members(members, mean, np.sqrt(ratio))


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
        (:mod:`mlipuq.calibration.extrapolation`). Whatever this is, every
        calibrated std saturates below 10 x the largest error plausible for the
        calibration data (``std_range_``'s ``*_bound``; ``saturate`` there).
    widening_cap
        Largest factor of that widening (None: none, this class's default; a number >= 1
        or one per target; a wrapper's ``calibrate`` passes its ``default_widening_cap``):
        far out some base models' raw stds outgrow their errors (docs/shift.md).
    distance_range
        True (default, since 2026-12-05): where the prediction has a latent-distance
        term's part of its energy variance (``energy_distance_var``: the evidential
        head's), that term's largest per-atom std is recorded too, and r is the
        largest of the three ratios (a round on 25 fits, docs/shift.md). False: the
        range of the two stds alone (the default before). Without the term's part
        nothing differs.
    structure_scaling
        True (default): before the recalibrators are fitted, the raw stds of each
        structure are multiplied by (S / S_ref) ** c, S its per-atom energy std or
        RMS force std clipped to the calibration structures' range, with one
        exponent c in [0, 1] per target fitted on the calibration data (0 unless
        significant; :mod:`mlipuq.calibration.structure_scaling`); before that,
        each atom's raw force stds are multiplied by (s / s_ref) ** c_atoms, s
        its RMS force-component std against the atoms of its element (the same
        fit, one level down). Never for a conformal target (its guarantee needs
        a normalisation fixed before the calibration data are seen).
        ``"structures"``: between structures only (no scaling between atoms; the
        default before it existed). False: neither.
    **options
        Passed to both recalibrators' constructors, except options that apply
        only to per-atom targets (the recalibrator's ``per_atom_options``,
        e.g. the conformal ``per_species``), which go to the force
        recalibrator alone. With one method per target, each recalibrator gets
        the options its constructor takes; an option that neither takes (a
        misspelt ``dof_bound=``) raises a ``ValueError`` naming it. A recalibrator
        that ``needs_numbers`` gets ``prediction.numbers`` (atomic numbers) in
        ``fit`` and ``transform``.

    Attributes
    ----------
    energy_, forces_ : Recalibrator
        The fitted recalibrators.
    std_range_ : dict
        Largest per-atom energy std and RMS force std (raw, before
        recalibration) over the calibration structures (and, with
        ``distance_range``, the latent-distance term's per-atom energy std,
        ``"energy_distance"``), and the bounds of the calibrated stds.
    structure_scaling_ : dict
        Per target, the fitted ``{"exponent": c, "reference": S_ref, "smallest": S_min,
        "largest": S_max}`` between structures, and under ``"atoms"`` the scaling of
        force stds between the atoms of one element, applied first
        (:func:`~mlipuq.calibration.structure_scaling.fit_atom_scaling`; absent when
        its exponent is 0).
    offsets_ : dict
        z-mean, z-std and count of the validation errors per target
        (:func:`mlipuq.calibration.bias.offset_report`); when the mean offset
        dominates, ``fit`` warns (:class:`~mlipuq.calibration.bias.OffsetWarning`)
        that recalibration would only widen the stds to cover it.
    """

    def __init__(self, method: Union[str, Mapping[str, str]] = "scalar", **options):
        self.method = method
        self.options = options
        self.extrapolation, self.widening_cap  # noqa: B018  (validates them early)
        if options.get("distance_range", True) not in (True, False):
            raise ValueError(f"distance_range must be True or False, "
                             f"got {options['distance_range']!r}")
        self._scales_between("forces")  # validates structure_scaling early
        methods = {self.method_of(key) for key in ("energy", "forces")}
        accepted = self.accepted_options(method)
        unknown = sorted(set(options) - accepted)
        if unknown and all(m in RECALIBRATORS for m in methods):  # a misspelt option
            raise ValueError(f"calibration option {', '.join(map(repr, unknown))} is taken by "
                             f"neither recalibrator ({' and '.join(sorted(methods))}); "
                             f"options: {sorted(accepted)}")
        for key in ("energy", "forces"):  # validate early
            get_recalibrator(self.method_of(key), **self._options_for(key))

    @staticmethod
    def accepted_options(method) -> set:
        """The options a ``PredictionRecalibrator(method, ...)`` takes: its own and those
        of its recalibrators (unknown methods contribute none)."""
        methods = {method} if isinstance(method, str) else (
            set(method.values()) if isinstance(method, Mapping) else set())
        return set(OUTER_OPTIONS).union(*(_accepted(RECALIBRATORS[m]) for m in methods
                                          if m in RECALIBRATORS))

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
        """``"student_t"``, or ``"energy scalar, forces student_t per species"`` for
        per-target methods (forces with a scale per element: "per species")."""
        energy, forces = self.method_of("energy"), self.method_of("forces")
        fitted = getattr(getattr(self, "forces_", None), "species_", None)  # empty: one scale
        if self.options.get("per_species") and "per_species" in getattr(
                RECALIBRATORS.get(forces), "per_atom_options", ()) and (
                fitted is None or len(fitted)):
            forces += " per species"
        return energy if energy == forces else f"energy {energy}, forces {forces}"

    def _options_for(self, target: str) -> dict:
        """The options of ``target``'s recalibrator: per-atom options go to forces
        only; with per-target methods, only the options its constructor takes."""
        cls = RECALIBRATORS.get(self.method_of(target))
        if cls is None:
            return dict(self.options)  # get_recalibrator names the unknown method
        options = {k: v for k, v in self.options.items() if k not in OUTER_OPTIONS
                   and (target == "forces" or k not in cls.per_atom_options)}
        if not isinstance(self.method, str):
            accepted = _accepted(cls)
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
        warn_offsets(self.offsets_, where="calibrate")
        structures = np.arange(prediction.n_structures)
        self.excluded_, self.structure_scaling_ = {}, {}
        if self._scales_atoms():  # between the atoms of one element, first
            atoms = fit_atom_scaling(prediction.forces_std, forces - prediction.forces,
                                     prediction.batch, getattr(prediction, "numbers", None))
            if atoms["exponent"] > 0:  # else absent: files stay readable by older versions
                self.structure_scaling_[ATOMS] = atoms
        f_std, scales, raw_scales = self._atom_scaled(prediction)
        for key, pred, std, true, owner in (
            ("energy", prediction.energy, prediction.energy_std, energy, structures),
            ("forces", prediction.forces, f_std, forces, prediction.batch),
        ):
            keep = scored_mask(pred, std, true, owner, key)
            self.excluded_[key] = int(keep.size - np.count_nonzero(keep))
            if self.excluded_[key]:
                log.info("calibration: %d exact %s target(s) excluded (zero std and error)",
                         self.excluded_[key], key)
            part = get_recalibrator(self.method_of(key), **self._options_for(key))
            rows = np.broadcast_to(owner.reshape(-1, *[1] * (std.ndim - 1)), std.shape)
            after = self.structure_scaling_.get(ATOMS, {}).get("exponent", 0.0)
            self.structure_scaling_[key] = fit_scaling(
                scales[key], std[keep], (true - pred)[keep], rows[keep],
                after=after if key == "forces" else 0.0)
            if not self._scales_between(key):
                self.structure_scaling_[key]["exponent"] = 0.0
            std = self._scaled(key, std, scales, owner)
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
        # the range (and the widening beyond it) is that of the raw stds
        self.std_range_ = calibration_range(raw_scales, energy, prediction.n_atoms, forces)
        return self

    def _scales_between(self, target: str) -> bool:
        """Whether ``target`` gets the fitted between-structure scaling (option
        ``structure_scaling``, default True; never for a conformal target)."""
        option = self.options.get("structure_scaling", True)
        if option not in (True, False, "structures"):
            raise ValueError(f"structure_scaling must be True, False or 'structures', "
                             f"got {option!r}")
        return bool(option) and self.method_of(target) != "conformal"

    def _scales_atoms(self) -> bool:
        """Whether force stds get the fitted scaling between the atoms of one element
        (``structure_scaling=True``, the default; never for conformal forces)."""
        option = self.options.get("structure_scaling", True)
        return self._scales_between("forces") and option != "structures"

    def _atom_scaled(self, prediction) -> tuple:
        """``(force stds, their structure scales, the raw structure scales)``: the raw
        force stds (N, 3) times each atom's fitted factor between the atoms of its
        element (the raw ones without that fit: an older file, c_atoms = 0, or the
        scaling turned off)."""
        raw = prediction_scales(prediction)
        if not self.options.get("distance_range", True):
            raw.pop(DISTANCE_KEY, None)
        fitted = (getattr(self, "structure_scaling_", None) or {}).get(ATOMS)
        if not fitted:
            return np.asarray(prediction.forces_std), raw, raw
        factor = atom_scaling_factor(fitted, prediction.forces_std,
                                     getattr(prediction, "numbers", None))
        f_std = np.asarray(prediction.forces_std) * factor[:, None]
        return f_std, structure_scales(prediction.energy_std, prediction.n_atoms, f_std,
                                       prediction.batch), raw

    def _scaled(self, target: str, std, scales: dict, owner=None) -> np.ndarray:
        """Raw stds of ``target`` times each structure's fitted factor (``owner``: the
        structure of each row; None: one row per structure)."""
        fitted = (getattr(self, "structure_scaling_", None) or {}).get(target)
        factor = scaling_factor(fitted, scales[target])
        factor = factor if owner is None else factor[owner]
        return np.asarray(std) * factor.reshape(-1, *[1] * (np.ndim(std) - 1))

    def outer_state(self) -> dict:
        """Fitted attributes besides the two recalibrators, as plain data (files; a copy)."""
        return copy.deepcopy({"std_range": getattr(self, "std_range_", None),
                              "structure_scaling": getattr(self, "structure_scaling_", None)})

    def set_outer_state(self, state: Mapping) -> None:
        """Restore :meth:`outer_state` from a file (``ValueError`` if damaged); what an
        older file lacks stays unset (no widening, no scaling: as it predicted)."""
        if state.get("std_range") is not None:
            self.std_range_ = check_range(state["std_range"])
        if state.get("structure_scaling") is not None:
            self.structure_scaling_ = check_scaling(state["structure_scaling"])

    @property
    def extrapolation(self) -> dict:
        """Widening powers ``{"energy": p, "forces": p}`` (option ``extrapolation``)."""
        return check_power(self.options.get("extrapolation", DEFAULT_POWER))

    @property
    def widening_cap(self) -> dict:
        """Largest widening factors ``{"energy": c, "forces": c}`` (inf: none)."""
        return check_cap(self.options.get("widening_cap"))

    def transform_energy_std(self, energy_std, n_atoms) -> np.ndarray:
        """Calibrated energy stds (B,) eV from raw ones, without forces (the
        energy-only path of LLPR's ``predict_energy``): the between-structure scaling
        and the energy recalibrator, then the widening beyond the calibration range."""
        std = _check_std(energy_std)
        scales = {"energy": std / np.maximum(np.asarray(n_atoms), 1)}
        new = self.energy_.transform(self._scaled("energy", std, scales))
        widened = widen(getattr(self, "std_range_", None), self.extrapolation, scales,
                        {"energy": new}, n_atoms, cap=self.widening_cap)
        return new if widened is None else widened["energy"]

    def transform(self, prediction):
        """A recalibrated copy of ``prediction`` (energies and forces)."""
        from mlipuq.prediction import Prediction

        if not hasattr(self, "forces_"):
            raise NotFittedError(
                "PredictionRecalibrator is not fitted; call fit(prediction, reference)"
            )
        e_std, f_std = prediction.energy_std, prediction.forces_std
        atom_scaled, scales, raw_scales = self._atom_scaled(prediction)
        new_e_std = self.energy_.transform(self._scaled("energy", e_std, scales))
        scaled_f = self._scaled("forces", atom_scaled, scales, prediction.batch)
        extra = ({"numbers": _atom_numbers(prediction, "forces")}
                 if self.forces_.needs_numbers else {})
        new_f_std = self.forces_.transform(scaled_f, **extra)
        widened = widen(getattr(self, "std_range_", None), self.extrapolation,
                        raw_scales, {"energy": new_e_std, "forces": new_f_std},
                        prediction.n_atoms, prediction.batch, self.widening_cap)
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
        for name in ("energy_aleatoric_var", "energy_epistemic_var", "energy_distance_var"):
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
