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
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["MAX_EXPONENT", "MIN_STRUCTURES", "SIGNIFICANCE", "fit_scaling", "scaling_factor",
           "check_scaling"]

#: The largest exponent c the fit may choose.
MAX_EXPONENT = 1.0
#: Fewer calibration structures (of distinct positive scale) than this: c = 0.
MIN_STRUCTURES = 10
#: c = 0 unless the fitted exponent exceeds this many (structure-clustered) standard errors.
SIGNIFICANCE = 1.645
#: Keys of one target's fitted scaling.
KEYS = ("exponent", "reference", "smallest", "largest")


def fit_scaling(scales, std, error, owner) -> dict:
    """Fitted scaling of one target: ``{"exponent": c, "reference": S_ref,
    "smallest": S_min, "largest": S_max}``.

    ``scales`` (B,) are the calibration structures' scales; ``std`` and ``error``
    (flat, any unit) the raw stds and errors of the scored targets; ``owner``
    the structure of each (its index into ``scales``).
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
    x = np.log(scales[owner[use]] / reference)
    y = 2.0 * np.log(np.abs(error[use]) / std[use])  # log z²
    x, y = x - x.mean(), y - y.mean()
    sxx = float(np.dot(x, x))
    slope = float(np.dot(x, y)) / sxx
    # standard error of the slope, clustered by structure (sandwich estimator)
    per_structure = np.bincount(owner[use], x * (y - slope * x))
    stderr = float(np.sqrt(np.sum(per_structure**2))) / sxx
    if slope > SIGNIFICANCE * stderr:
        out["exponent"] = float(np.clip(0.5 * slope, 0.0, MAX_EXPONENT))
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


def check_scaling(payload) -> dict:
    """A saved scaling ``{"energy": {...}, "forces": {...}}`` (each with the keys of
    ``KEYS``, finite; the exponent in [0, MAX_EXPONENT], the reference > 0,
    0 <= smallest <= largest), else
    ``ValueError`` (a damaged file)."""
    if not isinstance(payload, dict) or set(payload) != {"energy", "forces"}:
        raise ValueError(f"structure_scaling must have the keys 'energy' and 'forces', "
                         f"got {payload!r}")
    out = {}
    for key, value in payload.items():
        if not isinstance(value, dict) or set(value) != set(KEYS):
            raise ValueError(f"structure_scaling[{key!r}] must have the keys {KEYS}")
        fitted = {name: float(v) for name, v in value.items()}
        if not (all(np.isfinite(v) for v in fitted.values())
                and 0.0 <= fitted["exponent"] <= MAX_EXPONENT
                and fitted["reference"] > 0 and 0 <= fitted["smallest"] <= fitted["largest"]):
            raise ValueError(f"structure_scaling[{key!r}] is out of range: {fitted}")
        out[key] = fitted
    return out
