"""Checks for numeric parameters (learning rates, noises, precisions, weights).

A parameter that is NaN or infinite is always refused: ``prior_precision=inf``
or ``energy_noise=inf`` would otherwise give zero or NaN variances without any
error.
"""

from __future__ import annotations

import math
import numbers


def finite_number(name: str, value, *, minimum: float = -math.inf, strict: bool = False) -> float:
    """``value`` as a finite float ≥ ``minimum`` (> with ``strict``), else an error.

    Raises ``TypeError`` for non-numbers (bools included) and ``ValueError``
    for NaN, ±inf or values out of range; the message names the parameter.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if out < minimum or (strict and out == minimum):
        if minimum == 0:
            bound = "positive (> 0)" if strict else "non-negative (>= 0)"
        else:
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return out


def positive(name: str, value) -> float:
    """``value`` as a finite float > 0, else an error naming ``name``."""
    return finite_number(name, value, minimum=0.0, strict=True)


def non_negative(name: str, value) -> float:
    """``value`` as a finite float ≥ 0, else an error naming ``name``."""
    return finite_number(name, value, minimum=0.0)
