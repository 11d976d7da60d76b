"""Latent distance of whole structures: the energy part of :class:`~mlipuq.uq.LatentDistance`.

An energy is one number per structure, and where a structure leaves the
training data as a whole (a strained cell, a vacancy among ordinary atoms) its
atoms' errors share a sign: the structure's error grows like n times an atom's,
which a sum of independent per-atom variances (growing like n) cannot follow.
Measured on EMT Cu strained cells (``docs/shift.md``): energy errors 12× the
std of the independent-atom sum, 95 % energy intervals covering 0.07.

Last-layer Laplace (LLPR, Bigi et al. 2024) gets this right because its energy
variance is the leverage of the structure's summed features among the training
structures' sums. The same idea as a distance: each structure is described by
the mean standardised readout features of its atoms of each training element
(concatenated, 0 for an element it lacks), and scored by its Mahalanobis
distance to the training structures' descriptors under a Ledoit–Wolf shrunk
covariance (:class:`sklearn.covariance.LedoitWolf`, + 1e-4 on the diagonal),
divided by the median over the training structures (``U ≈ 1`` is as far as
training structures lie from each other). A homogeneous strain moves every
atom's features the same way: little per atom, far along a direction in which
the training structures' means hardly vary. The energy variance is then the
coherent

.. math:: \\sigma^2_E = n^2 (a_E + b_E U^2),

n the number of atoms, fitted by NLL on held-out energies as the per-atom maps are.

``structure_covariance="held-out"`` (the wrappers' default since 2026-12-04;
:func:`fit_reference` given held-out descriptors) replaces the Ledoit–Wolf estimate by the empirical covariance plus a diagonal
term chosen among :data:`HELD_OUT_DIAGONALS` (decades, in units of the mean
variance of the training descriptors) by the mean Gaussian log-density of the
held-out structures' descriptors: the covariance that best describes
in-distribution structures the reference did not contain. With few training
structures per descriptor feature, the descriptors of a vacancy or a strained
cell move along directions in which the training structures hardly vary, and
the diagonal term decides how far they seem; here the held-out data choose
it, not a fixed constant (``docs/shift.md``, "What stays out of reach").
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("mlipuq.uq.latent_distance")

__all__ = ["dataset_descriptors", "descriptors", "fit_reference", "held_out_covariance",
           "held_out_log_densities", "reference_from", "scores", "wrapper_reference",
           "HELD_OUT_DIAGONALS"]

_RIDGE = 1e-4  # on the diagonal of the shrunk covariance (standardised features)
#: Diagonal terms tried by :func:`held_out_covariance`, in units of the mean variance
#: of the training descriptors.
HELD_OUT_DIAGONALS = 10.0 ** np.arange(-12.0, 1.0)


def descriptors(x: np.ndarray, numbers: np.ndarray, structure: np.ndarray,
                n_structures: int, species) -> np.ndarray:
    """Per structure, the mean standardised features ``x`` (N, F) of its atoms of
    each element of ``species``, concatenated: (n_structures, len(species) F),
    float64; 0 where a structure has no atom of an element."""
    from scipy.sparse import csr_matrix

    x = np.asarray(x, dtype=np.float64)
    numbers, structure = np.asarray(numbers), np.asarray(structure)
    blocks = []
    for z in species:
        rows = np.flatnonzero(numbers == z)
        members = csr_matrix((np.ones(len(rows)), (structure[rows], np.arange(len(rows)))),
                             shape=(n_structures, len(rows)))  # structure × atom of z
        count = np.bincount(structure[rows], minlength=n_structures)[:, None]
        blocks.append(np.asarray(members @ x[rows]) / np.maximum(count, 1))
    return np.concatenate(blocks, axis=1)


def fit_reference(train_descriptors: np.ndarray,
                  held_out_descriptors: np.ndarray | None = None) -> dict:
    """Location, precision and distance scale of the training structures' descriptors
    (plain arrays and floats: the wrapper saves them as state). With
    ``held_out_descriptors``, the covariance of :func:`held_out_covariance` (its
    diagonal term kept as ``"diagonal"``), else Ledoit–Wolf + 1e-4 on the diagonal."""
    from sklearn.covariance import LedoitWolf

    d = np.asarray(train_descriptors, dtype=np.float64)
    extra = {}
    if len(d) < 2:  # one structure: a unit Gaussian around it (as a one-atom element's)
        location, covariance = d[0].copy(), np.eye(d.shape[1])
    elif held_out_descriptors is None:
        fitted = LedoitWolf().fit(d)
        location, covariance = fitted.location_, fitted.covariance_ + _RIDGE * np.eye(d.shape[1])
    else:
        location = d.mean(axis=0)
        covariance, extra["diagonal"] = held_out_covariance(d, held_out_descriptors)
    return {**reference_from(location, covariance, d), **extra}


def reference_from(location: np.ndarray, covariance: np.ndarray,
                   train_descriptors: np.ndarray) -> dict:
    """The reference of a Gaussian ``(location, covariance)``: its precision and the
    distance scale, the median distance of ``train_descriptors`` (1 where that is 0)."""
    precision = np.linalg.inv(np.asarray(covariance, dtype=np.float64))
    reference = {"location": np.asarray(location, dtype=np.float64),
                 "precision": 0.5 * (precision + precision.T), "scale": 1.0}
    typical = float(np.median(scores(reference, train_descriptors)))
    reference["scale"] = typical if typical > 0 else 1.0
    return reference


def _checked_pair(train_descriptors, held_out_descriptors) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(train_descriptors, dtype=np.float64)
    h = np.asarray(held_out_descriptors, dtype=np.float64)
    if d.ndim != 2 or h.ndim != 2 or len(h) == 0 or h.shape[1] != d.shape[1]:
        raise ValueError(f"held-out descriptors of shape {h.shape} for training descriptors "
                         f"of shape {d.shape}: need at least one row of as many features")
    if not (np.isfinite(d).all() and np.isfinite(h).all()):
        raise ValueError("structure descriptors are not finite: the base model's readout "
                         "features hold NaN or inf")
    return d, h


def held_out_log_densities(train_descriptors: np.ndarray,
                           held_out_descriptors: np.ndarray) -> dict[float, float]:
    """Per candidate diagonal term δ (:data:`HELD_OUT_DIAGONALS` times the mean
    variance of the training descriptors), the mean log-density of the held-out
    descriptors under the Gaussian at the training mean with the empirical covariance
    + δ I, over the features that vary among the training structures (a feature
    constant there, such as a dead readout feature, would reward ever smaller δ
    without bound): ``{δ: mean log-density}``, -inf where not positive definite."""
    return _empirical_and_densities(train_descriptors, held_out_descriptors)[1]


def _empirical_and_densities(train_descriptors, held_out_descriptors) -> tuple[np.ndarray, dict]:
    """The training descriptors' empirical covariance (all features) and
    :func:`held_out_log_densities`."""
    d, h = _checked_pair(train_descriptors, held_out_descriptors)
    empirical = np.atleast_2d(np.cov(d, rowvar=False, bias=True))
    return empirical, _log_densities(empirical, h - d.mean(axis=0), np.var(d, axis=0) > 0)


def _log_densities(empirical: np.ndarray, y: np.ndarray, live: np.ndarray) -> dict:
    """:func:`held_out_log_densities` from the training descriptors' empirical
    covariance (D, D), the held-out descriptors less the training mean (m, D) and the
    mask of features that vary among the training structures."""
    from scipy.linalg import solve_triangular

    if not live.any():  # identical training structures: nothing to choose (a unit Gaussian)
        return {1.0: 0.0}
    empirical, y = empirical[np.ix_(live, live)], y[:, live]
    unit = float(np.trace(empirical)) / len(empirical)
    densities = {}
    for delta in HELD_OUT_DIAGONALS * (unit if unit > 0 else 1.0):
        try:
            chol = np.linalg.cholesky(empirical + delta * np.eye(len(empirical)))
        except np.linalg.LinAlgError:  # not positive definite at this δ: too small
            densities[float(delta)] = -np.inf
            continue
        z = solve_triangular(chol, y.T, lower=True)
        densities[float(delta)] = float(-0.5 * len(empirical) * np.log(2 * np.pi)
                                        - np.sum(np.log(np.diag(chol)))
                                        - 0.5 * np.mean(np.sum(z * z, axis=0)))
    return densities


def held_out_covariance(train_descriptors: np.ndarray,
                        held_out_descriptors: np.ndarray) -> tuple[np.ndarray, float]:
    """The empirical covariance of ``train_descriptors`` (n, D) plus ``δ I``, ``δ`` the
    candidate of :func:`held_out_log_densities` under which ``held_out_descriptors``
    (m, D) are most likely: ``(covariance, δ)``, float64 (δ absolute, in the
    descriptors' units). A choice at the edge of the grid is logged as a warning."""
    empirical, densities = _empirical_and_densities(train_descriptors, held_out_descriptors)
    grid = list(densities)
    delta = max(grid, key=densities.get)
    if len(grid) > 1 and delta in (grid[0], grid[-1]):
        log.warning("LatentDistance: the held-out structures chose the structure covariance's "
                    "diagonal term at the edge of its grid (%.3g, %s): the distance may be "
                    "%s", delta, "smallest" if delta == grid[0] else "largest",
                    "far too sharp" if delta == grid[0] else "hardly growing")
    return empirical + delta * np.eye(len(empirical)), delta


def scores(reference: dict, structure_descriptors: np.ndarray) -> np.ndarray:
    """``U >= 0`` per structure: the Mahalanobis distance of each descriptor to the
    training structures, in units of their median distance."""
    y = np.asarray(structure_descriptors, dtype=np.float64) - reference["location"]
    d2 = np.sum((y @ reference["precision"]) * y, axis=1)
    return np.sqrt(np.maximum(d2, 0.0)) / reference["scale"]


def dataset_descriptors(wrapper, dataset, batch_size: int = 16,
                        progress: bool = False) -> np.ndarray:
    """The descriptors of ``dataset``'s structures under a fitted (or fitting)
    :class:`~mlipuq.uq.LatentDistance` ``wrapper``: its standardised readout features
    per element of ``wrapper.species_``, in data order (collective after
    :func:`mlipuq.distributed.init`, as the wrapper's reference pass)."""
    from mlipuq.uq import latent_features

    phi, numbers, structure, count = latent_features.reference_features(
        wrapper, dataset, batch_size, progress)
    return descriptors(wrapper.standardise(phi), numbers, structure, count, wrapper.species_)


def wrapper_reference(wrapper, x, numbers, structure, n_structures: int, rng, held_out,
                      batch_size: int, progress: bool) -> dict:
    """The structure reference of a :class:`~mlipuq.uq.LatentDistance` from its training
    atoms' standardised features ``x`` (at most ``max_points`` structures, drawn with
    ``rng``); with ``held_out`` (``structure_covariance="held-out"``) its covariance
    chosen on those structures' descriptors (collective, as the reference pass)."""
    from mlipuq.uq.latent_maps import warn_if_few

    def subsample(d):
        if len(d) > wrapper.max_points:
            d = d[np.sort(rng.choice(len(d), wrapper.max_points, replace=False))]
        return d

    train = subsample(descriptors(x, numbers, structure, n_structures, wrapper.species_))
    warn_if_few(train.shape, "training structures",
                "; the energy stds far from them are less reliable")
    if held_out is None:
        return fit_reference(train)
    other = subsample(dataset_descriptors(wrapper, held_out, batch_size, progress))
    reference = fit_reference(train, other)
    log.info("LatentDistance: structure covariance's diagonal term %.3g, chosen on %d "
             "held-out structures", reference.get("diagonal", float("nan")), len(other))
    return reference
