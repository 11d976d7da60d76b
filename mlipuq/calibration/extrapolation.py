"""Stds beyond the range the calibration data covered, and how they are widened.

A recalibrator maps raw stds to calibrated ones, but the map is only *fitted*
over the stds the validation data contains. A structure whose raw std lies far
beyond all of them is an extrapolation, and the shift benchmark
(``benchmarks/shift.py``, docs/shift.md) measured which way it errs: the error
grew faster than the std for every single-model wrapper (EMT Cu, 300 K bulk →
1500 K: LLPR force std ×11, error ×36) and for the deep ensemble's energies
(vacancies: spread 7, error 32 meV/atom); only the deep ensemble's force
spread kept pace with its error.

So :class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator` records the
largest *scale* of each target on its calibration data,

* energies: the per-atom energy std σ_E / n_atoms of a structure;
* forces: the root-mean-square force-component std of a structure,
  sqrt(mean_ic σ²_F,ic),

and a structure whose scale s lies beyond that largest value s_max in either
target, by the ratio r = max over targets of max(1, s / s_max), is out of the
calibrated range for both: the calibrated std of each target is multiplied by

    r ** power,

all of its force components by the same factor (a vacancy raises the energy
std of a whole cell, a hot atom the force std of a few; either says the
structure is new). LLPR's energy-only ``predict_energy`` sees the energy
ratio alone. ``power`` is one per target, each wrapper's
``default_extrapolation``: forces 0.75 (the evidential head's and the shallow
ensemble's 1 since 2026-12-05, the deep ensemble's 0.5 until then); energies 1
(every wrapper).
Each is the smallest power of the grid 0, 0.25,
..., 1 (not below the earlier default) at which that wrapper's 95 % intervals
met the goal (forces ≥ 0.90, energies ≥ 0.85) on every shift that p = 1 mends
of the shift benchmark's systems (``benchmarks/shift_widening.py``,
docs/shift.md): chosen first on four (EMT Cu and Cu₃Au, ethanol,
acetylacetone; the Cu₃Au alloy, whose calibration data show no trend to fit,
set the forces'), then on six (with EMT AgPd and Pt₃Ni, whose surfaces and
strained cells raised the energies' of LLPR, latent distance and the deep
ensemble; the shallow ensemble's, 0.5 then, was raised to 1 when the same
rule was applied to its rows rerun with reproducible heads, 2026-12-03),
then on nine (with EMT Pt, Ni₃Al and Cu₃Pd; Cu₃Pd's surfaces raised
LLPR's from 0.75 to 1, 2026-12-04), then for the forces on the 25 fits of the
rounds of 2026-12-05 (Au₃Pd's and Cu₃Au's 900 K bulk raised the evidential
head's and the shallow ensemble's to 1 and the deep ensemble's to 0.75;
``benchmarks/rounds.py forces-*``).
A stronger power costs sharpness where r is large (Cu at 1500 K).
:class:`PredictionRecalibrator` used alone widens by ``DEFAULT_POWER``. The
widened std saturates below ``BOUND_FACTOR``
(10) times the largest error plausible for the calibration data (forces: its
largest reference force component, eV/Å; energies: the larger of the largest
deviation of its per-atom reference energies from their median and the work
of that force over 1 Å, eV/atom). Inside the range nothing changes, so the
in-distribution calibration is untouched; beyond it the calibrated std grows
faster than s. The ratio r is reported per structure as
``Prediction.calibration_excess``:
above 1 the interval is extrapolated and widened, not fitted.

The recalibrator's ``widening_cap`` stops the factor r ** power at C, per target
if given so (``calibrate(val, widening_cap=C)``; the wrappers' default
``UQWrapper.default_widening_cap``: 10 since 2026-12-07, energies 30 since a round
on three fits the same day; None: no cap; a
:class:`PredictionRecalibrator` used alone has none). Where a base model's raw
stds far out already outgrow its errors (a small MACE on EMT Cu's surfaces:
r ≈ 370), the uncapped factor multiplies a std that needed no widening; capped
at 10 it lowered no coverage of the shift benchmark's first fits by more than
0.002, and on two more fits the energies needed 30 (``benchmarks/shift_caps.py``,
docs/shift.md "The widening capped" and "The widening cap on three fits").

Where a wrapper combines a latent-distance term with another energy variance
(the evidential head: max(λ σ²_NIG, a + b u²)), the largest total on the
calibration data may come from the other part, and a structure far from the
reference in the term's own measure then lies less far beyond it. With the
recalibrator's ``distance_range=True`` (the default) the term's per-atom energy std
(``Prediction.energy_distance_var``) is a third scale with its own largest
value (``DISTANCE_KEY``), and r is the largest of the three ratios. That is the
default since 2026-12-05: on the evidential head's 25 fits of the shift
benchmark it met the energy goal on one more (Ni₃Cu base model 2's vacancies
0.825 → 1.000), lost none and left the in-distribution NLL alone
(``benchmarks/rounds.py range``, docs/shift.md).

That bound holds for every calibrated std, widened or not: a plain
recalibration (a power law, a scalar) maps a raw std far beyond the data to
a std as far beyond the plausible errors (the evidential head's, the latent
distance's u² term). Each calibrated std σ leaves the recalibration as

    σ · (1 + (σ / bound)¹⁶)^(-1/16)        (:func:`saturate`)

— σ itself to 1e-9 relative below a third of the bound, increasing in σ (the
ranking is kept), below the bound always. The composition part of an energy
variance (offsets the training compositions left undetermined) is added after
calibration and is not bounded: it is the error of a reference energy the
data never fixed, not a plausible error of the data.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

__all__ = ["DEFAULT_POWER", "BOUND_FACTOR", "DISTANCE_KEY", "check_power", "check_cap",
           "check_range", "structure_scales", "prediction_scales", "plausible_errors",
           "calibration_range", "excess", "bounded_factor", "soft_cap", "saturate", "widen"]

#: Exponent of the widening beyond the calibration range when a
#: ``PredictionRecalibrator`` is given none (``calibrate`` passes each wrapper's
#: ``default_extrapolation``, one power per target: module notes).
DEFAULT_POWER = 0.5
#: The widening stops at this many times the largest error plausible for the calibration data.
BOUND_FACTOR = 10.0
#: Keys of a recorded range: largest scales, then the bounds of the widened std.
RANGE_KEYS = ("energy", "forces", "energy_bound", "forces_bound")
#: Key of the latent-distance term's largest per-atom energy std in a recorded range
#: (present only where the calibration data's prediction had the term's part).
DISTANCE_KEY = "energy_distance"


def _per_target(value, check, name: str) -> dict:
    """``value`` (one for both targets, or ``{"energy": ..., "forces": ...}``) as
    ``{"energy": float, "forces": float}``, each through ``check``."""
    if isinstance(value, dict):
        if set(value) != {"energy", "forces"}:
            raise ValueError(f"{name} per target must have exactly the keys 'energy' "
                             f"and 'forces', got {value!r}")
        return {key: check(one) for key, one in value.items()}
    return dict.fromkeys(("energy", "forces"), check(value))


def _number(value, name: str, smallest: float, none: float) -> float:
    """``value`` as a finite float >= ``smallest`` (None: ``none``), else ``ValueError``."""
    if value is None:
        return none
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = np.nan
    if not (np.isfinite(out) and out >= smallest):
        raise ValueError(f"{name} must be a number >= {smallest:g} or None, got {value!r}")
    return out


def check_power(power) -> dict:
    """``power`` (a number >= 0, None for 0, or one per target ``{"energy": ...,
    "forces": ...}``) as ``{"energy": float, "forces": float}``, else ``ValueError``."""
    return _per_target(power, lambda p: _number(p, "extrapolation", 0.0, 0.0), "extrapolation")


def check_cap(cap) -> dict:
    """``widening_cap`` (a number >= 1, None for no cap, or one per target) as
    ``{"energy": float, "forces": float}`` (inf: no cap), else ``ValueError``."""
    return _per_target(cap, lambda c: _number(c, "widening_cap", 1.0, np.inf), "widening_cap")


def structure_scales(energy_std, n_atoms, forces_std, batch) -> dict:
    """Per-structure scales (B,): ``"energy"`` σ_E / n_atoms (eV/atom) and
    ``"forces"`` the RMS of the structure's force-component stds (eV/Å)."""
    n_atoms = np.asarray(n_atoms)
    var = np.asarray(forces_std, dtype=np.float64) ** 2
    per_structure = np.bincount(batch, var.mean(axis=1), minlength=n_atoms.size)
    counts = np.maximum(np.bincount(batch, minlength=n_atoms.size), 1)
    return {"energy": np.asarray(energy_std, dtype=np.float64) / np.maximum(n_atoms, 1),
            "forces": np.sqrt(per_structure / counts)}


def prediction_scales(prediction) -> dict:
    """:func:`structure_scales` of a :class:`~mlipuq.prediction.Prediction`'s stds, and
    ``"energy_distance"``, the per-atom std of its latent-distance term (eV/atom), where
    the prediction has one (``energy_distance_var``)."""
    out = structure_scales(prediction.energy_std, prediction.n_atoms,
                           prediction.forces_std, prediction.batch)
    term = getattr(prediction, "energy_distance_var", None)
    if term is not None:
        out[DISTANCE_KEY] = np.sqrt(np.asarray(term, dtype=np.float64)) / np.maximum(
            np.asarray(prediction.n_atoms), 1)
    return out


def plausible_errors(per_atom_energy, forces) -> tuple[float, float]:
    """The largest errors plausible for a data set: the largest deviation of its
    per-atom energies from their median (eV/atom) and its largest reference
    force component (eV/Å), over the finite values (0 without any)."""
    per_atom = np.asarray(per_atom_energy, dtype=np.float64)
    finite = per_atom[np.isfinite(per_atom)]
    spread = float(np.max(np.abs(finite - np.median(finite)))) if finite.size else 0.0
    f = np.asarray(forces, dtype=np.float64)
    f_max = float(np.max(np.abs(f[np.isfinite(f)]))) if np.isfinite(f).any() else 0.0
    return spread, f_max


def calibration_range(scales: dict, energy, n_atoms, forces) -> dict:
    """Largest scale per target over the calibration structures, and the bounds
    of the widened std (``BOUND_FACTOR`` x the largest plausible error) from
    their reference energies (B,) eV and forces (N, 3) eV/Å (floats)."""
    out = {key: float(np.max(value)) if np.size(value) else 0.0 for key, value in scales.items()}
    spread, f_max = plausible_errors(
        np.asarray(energy, dtype=np.float64) / np.maximum(np.asarray(n_atoms), 1), forces)
    out["energy_bound"] = BOUND_FACTOR * max(spread, f_max * 1.0, 1e-6)  # f_max x 1 Å
    out["forces_bound"] = BOUND_FACTOR * max(f_max, 1e-6)
    return out


def check_range(limits) -> dict:
    """A saved calibration range (the keys of ``RANGE_KEYS``, perhaps ``DISTANCE_KEY``,
    each finite and >= 0, the bounds > 0), else ``ValueError`` (a damaged file)."""
    if not isinstance(limits, dict) or set(limits) - {DISTANCE_KEY} != set(RANGE_KEYS):
        raise ValueError(f"std_range must have the keys {RANGE_KEYS} (and optionally "
                         f"{DISTANCE_KEY!r}), got {limits!r}")
    out = {key: float(value) for key, value in limits.items()}
    if not all(np.isfinite(v) and v >= 0 for v in out.values()):
        raise ValueError(f"std_range values must be finite and >= 0, got {out}")
    if not (out["energy_bound"] > 0 and out["forces_bound"] > 0):  # would zero every std
        raise ValueError(f"std_range bounds must be > 0, got {out}")
    return out


def excess(scales: dict, limits: Optional[dict]) -> Optional[dict]:
    """Per target, max(1, scale / largest calibration scale) per structure (B,);
    None without recorded limits. A zero limit (exact calibration targets) never
    counts as exceeded, nor does a scale whose limit was not recorded (the
    latent-distance term's, of a range recorded without it)."""
    if not limits:
        return None
    out = {}
    for key, scale in scales.items():
        if key not in limits:
            continue
        limit = float(limits[key])
        ratio = np.ones_like(scale) if limit <= 0 else scale / limit
        out[key] = np.maximum(ratio, 1.0)
    return out


def _saturating(ratio, power: int):
    """Pieces of the soft cap of ``ratio`` = value / cap (array or tensor):
    ``(r/m, (m^-p + (r/m)^p)^(-1/p), m)`` with m = max(r, 1), a form that neither
    overflows far beyond the cap nor underflows far below it."""
    if not hasattr(ratio, "clip"):
        ratio = np.asarray(ratio, dtype=np.float64)
    big = ratio.clip(min=1.0)
    scaled = ratio / big
    return scaled, (big ** -power + scaled ** power) ** (-1.0 / power), big


def soft_cap(var, cap_var, power: int = 8):
    """Factor f = (1 + (var/cap)^p)^(-1/p) (arrays or tensors): ``var·f < cap``,
    ``var·f`` increasing in ``var``, and equal to ``var`` up to (var/cap)^p/p while
    ``var ≪ cap`` (a saturating bound that keeps the order of the variances).
    Computed as (m^-p + (r/m)^p)^(-1/p) / m with r = var/cap, m = max(r, 1)."""
    _, root, big = _saturating(var / cap_var, power)
    return root / big


def saturate(std, bound) -> np.ndarray:
    """``std`` under the soft bound ``bound`` (broadcastable; module notes):
    std · (1 + (std/bound)^16)^(-1/16), never above ``bound`` (computed as
    bound · (r/m) · (m^-16 + (r/m)^16)^(-1/16), r = std/bound: rounded monotonically)."""
    std = np.asarray(std, dtype=np.float64)
    bound = np.maximum(np.asarray(bound, dtype=np.float64), 1e-300)
    scaled, root, _ = _saturating(std / bound, 16)
    return bound * scaled * root


def bounded_factor(factor, std, bound) -> np.ndarray:
    """The widening ``factor``, reduced where it would take ``std`` beyond
    ``bound`` (same shapes or broadcastable); never below 1.

    Deprecated: the hard stop :func:`widen` used before every calibrated std got
    the soft bound of :func:`saturate` (which keeps the order); kept for callers."""
    warnings.warn("mlipuq.calibration.extrapolation.bounded_factor is deprecated: widen "
                  "bounds every calibrated std with saturate", DeprecationWarning, stacklevel=2)
    std = np.asarray(std, dtype=np.float64)
    with np.errstate(divide="ignore"):
        room = np.where(std > 0, bound / std, np.inf)
    return np.minimum(factor, np.maximum(room, 1.0))


def widen(limits: Optional[dict], power: dict, scales: dict, stds: dict, n_atoms,
          batch=None, cap: Optional[dict] = None) -> Optional[dict]:
    """Calibrated ``stds`` per target (energies (B,) eV, forces (N, 3) eV/Å with
    ``batch``) widened by ``r ** power[target]`` (at most ``cap[target]``, a
    :func:`check_cap` result; None: no cap), r the largest of the targets'
    excess ratios of the raw ``scales`` over the recorded ``limits`` (given under
    ``"excess"``, (B,)), then all of them under
    the soft bound (:func:`saturate`); None without recorded limits (older files:
    neither widened nor bounded, as they predicted)."""
    ratios = excess(scales, limits)
    if ratios is None:
        return None
    joint = np.maximum.reduce(list(ratios.values()))  # out in one target: out in both
    out = {"excess": joint}
    for key, std in stds.items():
        factor = np.minimum(joint ** power[key], np.inf if cap is None else cap[key])
        if key == "forces":
            factor, bound = factor[batch][:, None], limits["forces_bound"]
        else:
            bound = limits["energy_bound"] * np.asarray(n_atoms, dtype=np.float64)
        out[key] = saturate(std * factor, bound)
    return out
