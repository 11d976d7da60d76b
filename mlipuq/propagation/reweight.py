"""Committee reweighting of MD averages (Imbalzano et al., J. Chem. Phys. 154, 074102, 2021).

A trajectory sampled with the committee's mean potential :math:`\\bar V` is
reused to estimate the average of an observable :math:`A` in the ensemble of
every member :math:`V_k`, without running K simulations. With
:math:`\\Delta V_k = V_k - \\bar V` and :math:`\\beta = 1/k_B T`:

direct (importance sampling)
    .. math:: \\langle A\\rangle_k = \\frac{\\langle A\\, e^{-\\beta\\Delta V_k}\\rangle}
              {\\langle e^{-\\beta\\Delta V_k}\\rangle}

cumulant (first order in :math:`\\beta\\Delta V_k`)
    .. math:: \\langle A\\rangle_k \\approx \\langle A\\rangle
              - \\beta\\big(\\langle A\\Delta V_k\\rangle
              - \\langle A\\rangle\\langle\\Delta V_k\\rangle\\big)

Averages without a subscript run over the frames of the mean-potential
trajectory. The uncertainty of :math:`\\langle A\\rangle` is the spread of the
K member estimates.

Effective sample size (Kish): for the direct weights
:math:`w_{ik} = e^{-\\beta\\Delta V_{ik}}` of member k over n frames,

.. math:: \\mathrm{ess}_k = \\frac{(\\sum_i w_{ik})^2}{n \\sum_i w_{ik}^2} \\in (0, 1],

the fraction of frames that effectively contribute. It is 1 when
:math:`\\Delta V_k` is constant and small when a few frames dominate; the
direct estimate is then unreliable (and the cumulant expansion, which assumes
small :math:`\\beta\\Delta V_k` fluctuations, as well). It is reported for both
methods (for ``"cumulant"`` as a diagnostic of the same weights).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from ase import units

log = logging.getLogger(__name__)

METHODS = ("direct", "cumulant")

#: Default ess fraction below which :func:`reweight` warns.
ESS_WARNING = 0.1


@dataclass
class ObservableEstimate:
    """An MD average with its committee uncertainty.

    Attributes
    ----------
    mean : numpy.ndarray
        Mean over members of the reweighted averages (the observable's shape
        per frame; a 0-d array for scalars), in the observable's unit.
    std : numpy.ndarray
        Standard deviation over members (``ddof=0``), same shape and unit.
    members : numpy.ndarray
        (K, ...) reweighted average for each member.
    ess : numpy.ndarray
        (K,) Kish effective-sample-size fraction of each member's weights
        (see the module docstring).
    sampled : numpy.ndarray
        The plain trajectory average (the mean-potential ensemble), for comparison.
    method : str
        ``"direct"`` or ``"cumulant"``.
    """

    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray
    ess: np.ndarray
    sampled: np.ndarray
    method: str = "direct"

    @property
    def n_members(self) -> int:
        return int(self.members.shape[0])

    def __str__(self) -> str:
        if np.ndim(self.mean) == 0:
            return f"{float(self.mean):.6g} ± {float(self.std):.3g} (min ess {self.ess.min():.2f})"
        return (
            f"ObservableEstimate(shape={np.shape(self.mean)}, K={self.n_members}, "
            f"method={self.method!r}, min ess={self.ess.min():.2f})"
        )


def beta(temperature_K: float) -> float:
    """1 / (k_B T) in 1/eV for a temperature in K (ValueError unless positive and finite)."""
    try:
        t = float(temperature_K)
    except (TypeError, ValueError):
        raise ValueError(f"temperature_K must be a number, got {temperature_K!r}") from None
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature_K must be positive and finite (K), got {temperature_K!r}")
    return 1.0 / (units.kB * t)


def _finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")


def kish_ess(log_weights: np.ndarray) -> np.ndarray:
    """Kish effective-sample-size fraction of each column of ``log_weights`` (n, K)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    w = np.exp(lw - lw.max(axis=0, keepdims=True))
    return w.sum(axis=0) ** 2 / (lw.shape[0] * (w**2).sum(axis=0))


def reweight(
    observable,
    member_energies,
    mean_energy,
    temperature_K: float,
    *,
    method: str = "direct",
    ess_warning: float = ESS_WARNING,
) -> ObservableEstimate:
    """Average of an observable in every committee member's ensemble, from one trajectory.

    Parameters
    ----------
    observable
        (n_frames, ...) value of the observable in each frame: a scalar per
        frame or any array per frame (an RDF histogram, say), any unit.
    member_energies
        (n_frames, K) potential energy of each member in each frame (eV).
        :attr:`MDTrajectory.energies <mlipuq.propagation.md.MDTrajectory>`
        holds exactly this.
    mean_energy
        (n_frames,) the potential that generated the frames (eV), normally the
        committee mean.
    temperature_K
        Temperature of the trajectory (K).
    method
        ``"direct"`` (exponential weights) or ``"cumulant"`` (first-order
        expansion); see the module docstring.
    ess_warning
        Warn (``RuntimeWarning``) when a member's effective-sample-size
        fraction falls below this value.

    Returns
    -------
    ObservableEstimate
        Member averages, their mean and std (unit of the observable), the ess.

    Raises
    ------
    ValueError
        For mismatched shapes, fewer than two frames, NaN/inf values, a
        non-positive temperature or an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    b = beta(temperature_K)
    a = np.asarray(observable, dtype=np.float64)
    v = np.asarray(member_energies, dtype=np.float64)
    v0 = np.asarray(mean_energy, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"member_energies must have shape (n_frames, K), got {v.shape}")
    n, k = v.shape
    if n < 2 or k < 1:
        raise ValueError(f"need at least 2 frames and 1 member, got member_energies {v.shape}")
    if v0.shape != (n,):
        raise ValueError(
            f"mean_energy must have shape ({n},) to match member_energies, got {v0.shape}"
        )
    if a.ndim < 1 or a.shape[0] != n:
        raise ValueError(
            f"observable must have n_frames={n} as its first axis, got shape {a.shape}"
        )
    for name, x in (("observable", a), ("member_energies", v), ("mean_energy", v0)):
        _finite(name, x)
    shape = a.shape[1:]
    flat = a.reshape(n, -1)
    dv = v - v0[:, None]
    log_w = -b * dv
    ess = kish_ess(log_w)
    sampled = flat.mean(axis=0)
    if method == "direct":
        w = np.exp(log_w - log_w.max(axis=0, keepdims=True))
        w /= w.sum(axis=0, keepdims=True)
        members = w.T @ flat
    else:
        dvc = dv - dv.mean(axis=0)
        members = sampled[None, :] - b * (dvc.T @ (flat - sampled)) / n
    low = ess < ess_warning
    if np.any(low):
        warnings.warn(
            f"committee reweighting: effective sample size fraction {ess.min():.3g} below "
            f"{ess_warning} for member(s) {np.flatnonzero(low).tolist()}; the members' "
            "ensembles barely overlap with the sampled one and their averages are unreliable "
            "(run longer, or sample with that member)",
            RuntimeWarning,
            stacklevel=2,
        )
    members = members.reshape((k,) + shape)
    return ObservableEstimate(
        mean=np.asarray(members.mean(axis=0)),
        std=np.asarray(members.std(axis=0)),
        members=members,
        ess=ess,
        sampled=np.asarray(sampled.reshape(shape)),
        method=method,
    )


def block_standard_error(series, *, n_blocks: int = 20) -> float:
    """Standard error of the mean of a correlated time series by block averaging.

    The series is cut into ``n_blocks`` contiguous blocks (trailing frames that
    do not fill a block are dropped); the block means are treated as
    independent. Blocks must be longer than the correlation time.

    Parameters
    ----------
    series
        (n,) values in time order.
    n_blocks
        Number of blocks (>= 2).

    Returns
    -------
    float
        Standard error of the mean, in the series' unit.
    """
    x = np.asarray(series, dtype=np.float64).reshape(-1)
    if n_blocks < 2 or len(x) < n_blocks:
        raise ValueError(
            f"need n_blocks >= 2 and at least n_blocks values, got {n_blocks}, {len(x)}"
        )
    size = len(x) // n_blocks
    means = x[: size * n_blocks].reshape(n_blocks, size).mean(axis=1)
    return float(means.std(ddof=1) / np.sqrt(n_blocks))
