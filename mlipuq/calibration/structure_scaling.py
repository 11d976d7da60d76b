"""How a wrapper's stds scale *between* structures, fitted on the calibration data.

A scalar recalibration keeps the wrapper's ranking of structures and fixes
only the overall scale. The shift benchmark (``benchmarks/shift.py``,
docs/shift.md) found that the calibration data already say that this ranking
is too flat for every single-model wrapper: regressing the log of a
structure's RMS force error on the log of its RMS force std over the
validation structures gives slopes of 1.25–2.0 for LLPR, the shallow
ensemble and the evidential head and 1.0–1.6 with latent distance (EMT Cu
and ethanol), not 1: a structure whose std is twice another's has, on
average, up to 4 times its error. The
same wrappers then under-cover under shift, where structures move up that
scale (ethanol highest-energy frames: LLPR force std ×1.21, force MAE ×1.81).
Deep ensembles measured slopes below 1 (0.7–0.9): their spread already grows
as fast as their error.

So :class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator` fits, per
target, one exponent c of the structure's scale S (per-atom energy std;
RMS force-component std, :func:`~mlipuq.calibration.extrapolation.structure_scales`)
and multiplies the raw stds of a structure by

    g = (clip(S, S_min, S_max) / S_ref) ** c

before the target's recalibrator (scalar factor, Student-t, ...) is fitted on
them. S_ref is the geometric mean of the calibration structures' scales
(any reference gives the same calibrated stds: the recalibrator's scale
absorbs it), S_min and S_max their smallest and largest. Outside that range
the fit is not extrapolated: below S_min the factor stays at its value there
(no further shrinking of stds the data never showed), beyond S_max the
widening of :mod:`mlipuq.calibration.extrapolation` takes over.

c is Harvey's (1976) estimator of multiplicative heteroscedasticity: half the
least-squares slope of log z² against log(S / S_ref) over the calibration
targets, z = error / raw std. If the scaled z-scores share one distribution,
whatever its shape, log z² = const + 2c log(S / S_ref) + noise, so the slope
is unbiased for Gaussian and heavy-tailed errors alike; a Gaussian
likelihood fit of c is not, and chased the outliers of few-member
committees (c > 0.3 for 20–30 % of synthetic sets with Student-t errors of
ν = 1–2 that did not depend on S, where this estimator stays below 0.15:
``tests/test_structure_scaling.py``).
c is used only where the calibration data show it beyond noise: the slope's
standard error is clustered by structure (the components of one structure
share its S and often its error level), and c = 0 unless the estimate exceeds
``SIGNIFICANCE`` (1.645) standard errors, a one-sided 5 % test. Without that
test, 15 calibration structures with errors independent of S gave c > 0.3 in
45 % of synthetic sets (clipping a noisy slope at 0 biases it upwards); with
it, 9 % (the clustered standard error is a little small for few structures). c is confined to [0, ``MAX_EXPONENT``]: a
negative c would shrink the stds of the very structures a model knows least,
and the cap keeps a fit from stretching the calibrated range by more than its
square. With fewer than ``MIN_STRUCTURES`` calibration structures of distinct
positive scale, c = 0.

The same estimator, one level down (``ATOMS``): a structure's RMS force std
averages over its atoms, so an atom whose std stands out inside an ordinary
structure (the neighbours of a vacancy) is not seen by it. So, before the
scaling between structures, :func:`fit_atom_scaling` fits one exponent of
each atom's own scale s (the RMS of its force-component stds) against the
atoms *of the same element*, in any calibration structure (x and y centred
per element, the reference, smallest and largest s per element; the
per-element Student-t scale absorbs levels between elements), and multiplies
an atom's force stds by (clip(s, s_min, s_max) / s_ref) ** c_atoms, with the
same clustered test, cap and minimum number of structures. The regression is
pooled over structures, so c_atoms carries the trend between atoms whether
they share a structure or not; the forces' c between structures is then
fitted on the scaled stds, takes what is left, and is capped so that the two
stages together, (1 + c_atoms)(1 + c) - 1, stay within the same cap.
(Comparing atoms only with those of their own structure, the alternative,
covered fewer of the Cu vacancy cells' force components with the shift
benchmark's LLPR, 0.85 against 0.995, in a one-off comparison.) An atom beyond its element's largest s keeps the
factor at the edge; only a structure beyond the calibration range is widened
(:mod:`~mlipuq.calibration.extrapolation`, on the raw stds). Measured on the
shift benchmark (docs/shift.md): c_atoms is significant for LLPR on EMT Cu (EMT Cu vacancies:
neighbours' force std ×3.5, error ×28: coverage 0.79 → 0.995), zero for
every other wrapper there and for every wrapper on ethanol.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["ATOMS", "MAX_EXPONENT", "MIN_STRUCTURES", "SIGNIFICANCE", "atom_scales",
           "atom_scaling_factor", "check_scaling", "fit_atom_scaling", "fit_scaling",
           "scaling_factor"]

#: The largest exponent c the fit may choose.
MAX_EXPONENT = 1.0
#: Fewer calibration structures (of distinct positive scale) than this: c = 0.
MIN_STRUCTURES = 10
#: c = 0 unless the fitted exponent exceeds this many (structure-clustered) standard errors.
SIGNIFICANCE = 1.645
#: Keys of one target's fitted scaling.
KEYS = ("exponent", "reference", "smallest", "largest")
#: Key of the scaling between the atoms of one element (forces) in a recalibrator's
#: ``structure_scaling_``.
ATOMS = "atoms"


def _exponent(x, y, clusters, groups=None, largest: float = MAX_EXPONENT) -> float:
    """Harvey's c: half the least-squares slope of ``y`` (log z²) on ``x`` (log of the
    scale over its reference), x and y centred per group (one group: None); 0 unless
    the slope exceeds ``SIGNIFICANCE`` standard errors clustered by ``clusters``."""
    x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    for g in (np.unique(groups) if groups is not None else [None]):
        part = slice(None) if g is None else groups == g
        x[part] -= x[part].mean()
        y[part] -= y[part].mean()
    sxx = float(np.dot(x, x))
    if sxx <= 0:
        return 0.0
    slope = float(np.dot(x, y)) / sxx
    # standard error of the slope, clustered (sandwich estimator)
    per_cluster = np.bincount(clusters, x * (y - slope * x))
    stderr = float(np.sqrt(np.sum(per_cluster**2))) / sxx
    if slope > SIGNIFICANCE * stderr:
        return float(np.clip(0.5 * slope, 0.0, largest))
    return 0.0


def fit_scaling(scales, std, error, owner, *, after: float = 0.0) -> dict:
    """Fitted scaling of one target: ``{"exponent": c, "reference": S_ref,
    "smallest": S_min, "largest": S_max}``.

    ``scales`` (B,) are the calibration structures' scales; ``std`` and ``error``
    (flat, any unit) the raw stds and errors of the scored targets; ``owner``
    the structure of each (its index into ``scales``). ``after``: the exponent
    c_atoms the stds were already scaled with; c is then capped so that the
    two together, (1 + c_atoms)(1 + c) - 1, stay within ``MAX_EXPONENT``.
    """
    scales = np.asarray(scales, dtype=np.float64)
    std, error = np.asarray(std, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    owner = np.asarray(owner).ravel()
    positive = scales[np.isfinite(scales) & (scales > 0)]
    if positive.size == 0:
        return {"exponent": 0.0, "reference": 1.0, "smallest": 0.0, "largest": 0.0}
    reference = float(np.exp(np.mean(np.log(positive))))
    out = {"exponent": 0.0, "reference": reference, "smallest": float(positive.min()),
           "largest": float(positive.max())}
    use = (std > 0) & (error != 0) & (scales[owner] > 0)
    if np.unique(scales[owner[use]]).size < MIN_STRUCTURES:
        return out
    out["exponent"] = _exponent(np.log(scales[owner[use]] / reference),
                                2.0 * np.log(np.abs(error[use]) / std[use]), owner[use],
                                largest=(1.0 + MAX_EXPONENT) / (1.0 + after) - 1.0)
    return out


def scaling_factor(fitted: Optional[dict], scales) -> np.ndarray:
    """The factor g (B,) of each structure's raw stds: ``(clip(S, S_min, S_max) / S_ref)
    ** c``, 1 for a zero scale or without a fitted scaling (None: an older file)."""
    scales = np.asarray(scales, dtype=np.float64)
    if not fitted or fitted["exponent"] == 0.0:
        return np.ones_like(scales)
    capped = np.clip(scales, fitted["smallest"], fitted["largest"])
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = (capped / fitted["reference"]) ** fitted["exponent"]
    return np.where(scales > 0, factor, 1.0)


def atom_scales(forces_std) -> np.ndarray:
    """(N,) scale of each atom: the RMS of its force-component stds (eV/Å)."""
    return np.sqrt(np.mean(np.asarray(forces_std, dtype=np.float64) ** 2, axis=1))


def _species(numbers, n: int) -> np.ndarray:
    """Atomic numbers (N,), or -1 for every atom when a prediction has none."""
    return np.full(n, -1, dtype=np.int64) if numbers is None else np.asarray(numbers, np.int64)


def fit_atom_scaling(forces_std, error, batch, numbers=None) -> dict:
    """Fitted scaling between the atoms of one element (module notes):
    ``{"exponent": c, "numbers": [Z...], "reference": [...], "smallest": [...],
    "largest": [...]}`` (per element, eV/Å). ``forces_std`` and ``error`` (N, 3) are
    the raw stds and errors of the calibration forces (components with a zero std or
    a zero error are left out of the slope), ``batch`` (N,) the structure of each
    atom, ``numbers`` (N,) their atomic numbers (None: all atoms one group,
    ``numbers`` = [-1])."""
    std, error = np.asarray(forces_std, np.float64), np.asarray(error, np.float64)
    scale, batch = atom_scales(std), np.asarray(batch)
    species = _species(numbers, len(scale))
    out = {"exponent": 0.0, "numbers": [], "reference": [], "smallest": [], "largest": []}
    for z in np.unique(species):
        positive = scale[(species == z) & np.isfinite(scale) & (scale > 0)]
        if positive.size:
            out["numbers"].append(int(z))
            out["reference"].append(float(np.exp(np.mean(np.log(positive)))))
            out["smallest"].append(float(positive.min()))
            out["largest"].append(float(positive.max()))
    use = (std > 0) & (error != 0) & (scale[:, None] > 0)
    atom = np.broadcast_to(np.arange(len(scale))[:, None], std.shape)[use]
    if np.unique(batch[atom]).size >= MIN_STRUCTURES:
        log_z2 = 2.0 * np.log(np.abs(error[use]) / std[use])
        out["exponent"] = _exponent(np.log(scale[atom]), log_z2, batch[atom], species[atom])
    return out


def atom_scaling_factor(fitted: Optional[dict], forces_std, numbers=None) -> np.ndarray:
    """The factor (N,) of each atom's raw force stds: ``(clip(s, s_min, s_max) / s_ref)
    ** c`` with its element's s_ref, s_min, s_max; 1 for a zero scale, an element the
    fit did not see, or without a fitted scaling (None: an older file). ``ValueError``
    without ``numbers`` when the fit had them."""
    scale = atom_scales(forces_std)
    factor = np.ones_like(scale)
    if not fitted or fitted["exponent"] == 0.0:
        return factor
    if numbers is None and fitted["numbers"] != [-1]:
        raise ValueError("the force stds were scaled between the atoms of each element at "
                         "calibration, which needs the atomic number of every atom, but this "
                         "Prediction has no `numbers` (predict() fills them; set "
                         "Prediction(numbers=...) for hand-made predictions)")
    species = _species(numbers, len(scale))
    for k, z in enumerate(fitted["numbers"]):
        here = ((species == z) | (z == -1)) & (scale > 0)
        capped = np.clip(scale[here], fitted["smallest"][k], fitted["largest"][k])
        factor[here] = (capped / fitted["reference"][k]) ** fitted["exponent"]
    return factor


def check_scaling(payload) -> dict:
    """A saved scaling ``{"energy": {...}, "forces": {...}}`` (each with the keys of
    ``KEYS``, finite; the exponent in [0, MAX_EXPONENT], the reference > 0,
    0 <= smallest <= largest) and, in files written since it exists, ``"atoms"``
    (:func:`fit_atom_scaling`'s, the same conditions per element), else
    ``ValueError`` (a damaged file)."""
    if not isinstance(payload, dict) or set(payload) - {ATOMS} != {"energy", "forces"}:
        raise ValueError(f"structure_scaling must have the keys 'energy' and 'forces' "
                         f"(and optionally {ATOMS!r}), got {payload!r}")
    out = {}
    for key, value in payload.items():
        if key == ATOMS:
            out[key] = _check_atoms(value)
            continue
        if not isinstance(value, dict) or set(value) != set(KEYS):
            raise ValueError(f"structure_scaling[{key!r}] must have the keys {KEYS}")
        fitted = {name: float(v) for name, v in value.items()}
        _check_entry(key, fitted)
        out[key] = fitted
    if ATOMS in out:  # the two force stages together within the cap
        total = (1 + out[ATOMS]["exponent"]) * (1 + out["forces"]["exponent"]) - 1
        if total > MAX_EXPONENT + 1e-9:
            raise ValueError(f"structure_scaling: the exponents between atoms and between "
                             f"structures stretch the force stds by {total:.3g} > "
                             f"{MAX_EXPONENT}")
    return out


def _check_entry(key: str, fitted: dict) -> None:
    if not (all(np.isfinite(v) for v in fitted.values())
            and 0.0 <= fitted["exponent"] <= MAX_EXPONENT
            and fitted["reference"] > 0 and 0 <= fitted["smallest"] <= fitted["largest"]):
        raise ValueError(f"structure_scaling[{key!r}] is out of range: {fitted}")


def _check_atoms(value) -> dict:
    keys = ("exponent", "numbers") + KEYS[1:]
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ValueError(f"structure_scaling[{ATOMS!r}] must have the keys {keys}")
    try:
        if not all(isinstance(value[k], (list, tuple)) for k in keys[1:]):
            raise TypeError
        lists = {k: [float(v) for v in value[k]] for k in keys[1:]}
        exponent = float(value["exponent"])
    except (TypeError, ValueError):
        raise ValueError(f"structure_scaling[{ATOMS!r}] must hold numbers and lists of "
                         f"numbers, got {value!r}") from None
    if len({len(v) for v in lists.values()}) != 1:
        raise ValueError(f"structure_scaling[{ATOMS!r}]: lists of unequal length")
    if not (np.isfinite(exponent) and 0.0 <= exponent <= MAX_EXPONENT):
        raise ValueError(f"structure_scaling[{ATOMS!r}]: exponent out of range: {exponent}")
    numbers = lists.pop("numbers")
    if not all(z.is_integer() and z >= -1 for z in numbers) or len(set(numbers)) < len(numbers):
        raise ValueError(f"structure_scaling[{ATOMS!r}]: atomic numbers must be distinct "
                         f"integers, got {numbers}")
    for k, z in enumerate(numbers):
        _check_entry(f"{ATOMS}, Z = {int(z)}", {"exponent": exponent,
                                                  **{n: v[k] for n, v in lists.items()}})
    return {"exponent": exponent, "numbers": [int(z) for z in numbers], **lists}
