"""Scores and variance maps of :class:`~mlipuq.uq.LatentDistance`: the k-nearest-
neighbour distance, the Gaussian-mixture log-density, and the Gaussian-NLL fit
that turns squared scores into variances (see that module's notes)."""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np

log = logging.getLogger("mlipuq.uq.latent_distance")

_C_MIN = 1e-3  # smallest a/b (at u = 1): keeps variances positive on exact training atoms
_LOG_S_BOUNDS = (-80.0, 40.0)
_LAMBDA_MAX = 1e6

__all__ = ["fit_variance_map", "knn_scores", "fit_gmm", "mahalanobis", "warn_if_few", "check_share",
           "check_structure_covariance", "STRUCTURE_COVARIANCES", "RIDGE_SCALES",
           "check_ridge_scale"]

#: The covariances the structure distance can be measured in (``structure_covariance``).
STRUCTURE_COVARIANCES = ("ledoit-wolf", "held-out")
#: Whose spread the Gaussian scores' covariance ridge (1e-4) is relative to
#: (``ridge_scale=``): every training atom's, or each element's own.
RIDGE_SCALES = ("all_atoms", "per_species")

#: Fewer points than this many per feature: a poorly determined covariance (a warning).
POINTS_PER_FEATURE = 5

#: Smallest spread per feature that ``fit_gmm(rescale=True)`` standardises by.
MIN_SPREAD = 1e-4


def check_structure_covariance(value) -> None:
    """Refuse a ``structure_covariance`` that is not one of :data:`STRUCTURE_COVARIANCES`."""
    if value not in STRUCTURE_COVARIANCES:
        raise ValueError(f"structure_covariance must be one of {STRUCTURE_COVARIANCES}, "
                         f"got {value!r}")


def check_ridge_scale(ridge_scale: Optional[str], score: Optional[str],
                      name: str = "ridge_scale") -> str:
    """``ridge_scale`` for ``score``, None resolved to the default (``"per_species"``
    for the Gaussian scores, ``"all_atoms"``, ignored, for kNN and for a wrapper
    without a latent term, ``score=None``); else ``ValueError`` (``name``: the
    argument's name in the message)."""
    if score is None:
        return "all_atoms"
    if ridge_scale is None:
        return "all_atoms" if score == "knn" else "per_species"
    if ridge_scale not in RIDGE_SCALES:
        raise ValueError(f"{name} must be one of {RIDGE_SCALES}, got {ridge_scale!r}")
    if ridge_scale != "all_atoms" and score == "knn":
        raise ValueError(f"{name}='per_species' sets the Gaussian scores' covariance ridge; "
                         "score='knn' has none")
    return ridge_scale


def check_share(value, name: str, optional: bool = False) -> None:
    """Refuse a share (``min_distance_share``, ``min_combined_share``) outside (0, 1]
    (None too where ``optional``)."""
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
            or not 0 < float(value) <= 1):
        raise ValueError(f"{name} must be {'None or ' * optional}in (0, 1], got {value!r}")


# ------------------------------------------------------------------- scoring
def knn_scores(reference: np.ndarray, query: np.ndarray, n_neighbors: int, *,
               leave_one_out: bool = False) -> np.ndarray:
    """Mean Euclidean distance of each ``query`` row to its ``n_neighbors`` nearest
    ``reference`` rows (float64; fewer neighbours when ``reference`` is smaller).

    ``leave_one_out=True`` scores ``reference`` against itself without each
    point's own zero distance (``query`` is then ignored). A ball tree computes
    each distance exactly, so a row's score does not depend on the other rows.
    """
    from sklearn.neighbors import NearestNeighbors

    reference = np.asarray(reference, dtype=np.float64)
    index = NearestNeighbors(algorithm="ball_tree").fit(reference)
    if leave_one_out:
        k = min(int(n_neighbors), len(reference) - 1)
        if k < 1:
            return np.zeros(len(reference))
        dist, _ = index.kneighbors(reference, n_neighbors=k + 1)
        return np.sort(dist, axis=1)[:, 1:].mean(axis=1)
    k = min(int(n_neighbors), len(reference))
    dist, _ = index.kneighbors(np.asarray(query, dtype=np.float64), n_neighbors=k)
    return dist.mean(axis=1)


def warn_if_few(shape: tuple, what: str, consequence: str = "") -> None:
    """Warn when ``shape`` = (points, features) gives fewer than
    :data:`POINTS_PER_FEATURE` points per feature for a covariance."""
    if shape[0] < POINTS_PER_FEATURE * shape[1]:
        log.warning("LatentDistance: %d %s for %d features: a poorly determined covariance%s",
                    shape[0], what, shape[1], consequence)


def fit_gmm(points: np.ndarray, n_components: int, seed: int, *,
            rescale: bool = False) -> dict:
    """A full-covariance Gaussian mixture of ``n_components`` on ``points`` (n, F)
    (:class:`sklearn.mixture.GaussianMixture`, ``reg_covar`` 1e-4; one point: a unit
    Gaussian at it) as plain arrays, with the largest log-density over ``points``.

    ``rescale``: fitted on ``points`` standardised by their own mean and spread per
    feature, so that ``reg_covar`` is 1e-4 of each feature's variance within
    ``points``, and returned in the units of ``points`` (the means shifted and scaled
    back, each precision Cholesky factor's rows divided by the spreads): the same
    scores, ``(x - mean) @ L``, of any ``x`` in those units. Spreads below
    :data:`MIN_SPREAD` (in those units; :class:`~mlipuq.uq.LatentDistance`'s: the
    feature's spread over all training atoms) count as that, so that a feature
    constant within ``points`` up to float rounding does not turn rounding into
    distance."""
    from sklearn.mixture import GaussianMixture

    points = np.asarray(points, dtype=np.float64)
    shift, spread = np.zeros(points.shape[1]), np.ones(points.shape[1])
    if rescale and len(points) > 1:
        shift, spread = points.mean(axis=0), np.maximum(points.std(axis=0), MIN_SPREAD)
    local = (points - shift) / spread
    if len(points) > 1:
        gmm = GaussianMixture(n_components=n_components, covariance_type="full",
                              reg_covar=1e-4, random_state=seed).fit(local)
        means, cholesky = gmm.means_, gmm.precisions_cholesky_
        model = {"weights": np.asarray(gmm.weights_, dtype=np.float64)}
    else:
        means, cholesky = local.copy(), np.eye(points.shape[1])[None]
        model = {"weights": np.ones(1)}
    model["means"] = shift + spread * np.asarray(means, dtype=np.float64)
    model["precisions_cholesky"] = (np.asarray(cholesky, dtype=np.float64)
                                    / spread[None, :, None])
    log_p = _gmm_log_density(points, model["weights"], model["means"],
                             model["precisions_cholesky"])
    model["max_log_density"] = float(log_p.max())
    return model


def mahalanobis(model: dict, x: np.ndarray) -> np.ndarray:
    """Distance of each row of ``x`` to the first component of a :func:`fit_gmm`
    ``model``: ``|(x - mean) @ L|``, ``L`` its precision Cholesky factor."""
    y = (x - model["means"][0]) @ model["precisions_cholesky"][0]
    return np.sqrt(np.sum(y * y, axis=1))


def _gmm_log_density(x: np.ndarray, weights, means, precisions_cholesky) -> np.ndarray:
    """log p(x) of a full-covariance Gaussian mixture, from its precision Cholesky factors.

    ``precisions_cholesky[k]`` is ``L_k`` with precision ``L_k L_k^T``:
    ``log N(x) = -d/2 log 2π + Σ log diag L_k - |(x - μ_k) L_k|²/2``.
    """
    d = x.shape[1]
    parts = []
    for w, mu, chol in zip(weights, means, precisions_cholesky):
        y = (x - mu) @ chol
        parts.append(math.log(w) - 0.5 * d * math.log(2 * math.pi)
                     + np.sum(np.log(np.diag(chol))) - 0.5 * np.sum(y * y, axis=1))
    parts = np.stack(parts, axis=1)
    top = parts.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(parts - top).sum(axis=1, keepdims=True)))[:, 0]


# ------------------------------------------------------------- variance map
def fit_variance_map(sq_error: np.ndarray, count: np.ndarray, score_sq: np.ndarray,
                     other_var: Optional[np.ndarray] = None, *,
                     c_max: float = 9.0, min_share: Optional[float] = None) -> dict:
    """Gaussian-NLL fit of ``var = s (c count + score_sq) [+ λ other_var]``.

    Parameters
    ----------
    sq_error
        Squared errors of the held-out targets (eV² or eV²/Å²).
    count
        Per target: 1 for force components; for energies ``n²`` (structure
        distance) or the atom count ``n`` (independent atoms).
    score_sq
        Per target: ``u_i²`` of the atom; for energies ``n² U²`` of the structure
        or ``Σ_i u_i²`` over its atoms.
    other_var
        Another wrapper's variance of the same targets (``combine``), or None.
    c_max
        Upper bound of ``c = a/b`` (``c >= 1e-3``).
    min_share
        With ``other_var``: the smallest share of the distance term in the mean
        variance of the held-out targets, ``mean(s (c count + score_sq)) >=
        min_share × mean(var)``, so that a joint fit cannot drop the term that grows
        away from the data (None: no floor, λ free).

    Returns
    -------
    dict
        ``a = s c`` and ``b = s`` (the units of ``sq_error``), ``other_scale``
        (λ, 0 without ``other_var``) and the mean NLL per target.
    """
    r2 = np.asarray(sq_error, dtype=np.float64)
    n = np.asarray(count, dtype=np.float64)
    q = np.asarray(score_sq, dtype=np.float64)
    o = None if other_var is None else np.asarray(other_var, dtype=np.float64)
    if r2.size == 0:
        raise ValueError("no held-out targets to fit the variance map on")
    if min_share is not None and not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
    floor = o is not None and min_share is not None and float(np.mean(o)) > 0
    # with the floor, λ = t s mean(c n + q) / mean(o), t in [0, (1 - share) / share]
    ratio = (float(np.mean(n)) / float(np.mean(o)), float(np.mean(q)) / float(np.mean(o))) \
        if floor else None

    def parts(x):
        """The variance and its derivatives by log s, c and the third parameter."""
        s, c = math.exp(x[0]), x[1]
        own = s * (c * n + q)
        if o is None:
            return own, [own, s * n]
        if not floor:
            return own + x[2] * o, [own, s * n, o]
        k = ratio[0] * c + ratio[1]  # mean(c n + q) / mean(o)
        var = own + x[2] * s * k * o
        return var, [var, s * (n + x[2] * ratio[0] * o), s * k * o]

    def nll(x):
        var, dvar = parts(x)
        var = np.maximum(var, 1e-300)
        value = 0.5 * np.mean(np.log(2 * math.pi * var) + r2 / var)
        dv = 0.5 * (1.0 / var - r2 / var**2) / r2.size
        return float(value), np.array([float(np.sum(dv * d)) for d in dvar])

    best = _minimise(nll, r2, n, q, o, c_max, (1.0 - min_share) / min_share if floor else None)
    s, c = math.exp(best.x[0]), float(best.x[1])
    lam = 0.0 if o is None else float(best.x[2]) * (s * (ratio[0] * c + ratio[1])
                                                   if floor else 1.0)
    return {"a": s * c, "b": s, "other_scale": lam, "nll": float(best.fun)}


def _minimise(nll, r2, n, q, o, c_max: float, t_max):
    """L-BFGS-B over (log s, c[, λ or t]) from a few starts (the NLL need not be
    convex in c); ``t_max``: the floor's bound on t (None: λ itself, free)."""
    from scipy.optimize import minimize

    mean_r2 = max(float(np.mean(r2)), 1e-300)
    best = None
    for c0 in (_C_MIN, 1.0, c_max):
        c0 = min(max(c0, _C_MIN), c_max)
        s0 = mean_r2 / max(float(np.mean(c0 * n + q)), 1e-300)
        x0 = [math.log(s0), c0]
        bounds = [_LOG_S_BOUNDS, (_C_MIN, c_max)]
        if o is not None and t_max is not None:  # half the mean variance each, within the floor
            x0[0] -= math.log(2.0)
            x0.append(min(1.0, t_max))
            bounds.append((0.0, t_max))
        elif o is not None:
            x0[0] -= math.log(2.0)
            x0.append(min(0.5 * mean_r2 / max(float(np.mean(o)), 1e-300), _LAMBDA_MAX))
            bounds.append((0.0, _LAMBDA_MAX))
        x0[0] = min(max(x0[0], _LOG_S_BOUNDS[0]), _LOG_S_BOUNDS[1])
        result = minimize(nll, np.array(x0), jac=True, method="L-BFGS-B", bounds=bounds)
        if best is None or result.fun < best.fun:
            best = result
    return best
