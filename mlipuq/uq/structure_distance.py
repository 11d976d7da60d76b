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
"""

from __future__ import annotations

import numpy as np

__all__ = ["descriptors", "fit_reference", "scores"]

_RIDGE = 1e-4  # on the diagonal of the shrunk covariance (standardised features)


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


def fit_reference(train_descriptors: np.ndarray) -> dict:
    """Location, precision and distance scale of the training structures' descriptors
    (plain arrays and a float: the wrapper saves them as state)."""
    from sklearn.covariance import LedoitWolf

    d = np.asarray(train_descriptors, dtype=np.float64)
    if len(d) > 1:
        fitted = LedoitWolf().fit(d)
        location, covariance = fitted.location_, fitted.covariance_ + _RIDGE * np.eye(d.shape[1])
    else:  # one structure: a unit Gaussian around it (as a one-atom element's)
        location, covariance = d[0].copy(), np.eye(d.shape[1])
    precision = np.linalg.inv(covariance)
    reference = {"location": location, "precision": 0.5 * (precision + precision.T),
                 "scale": 1.0}
    typical = float(np.median(scores(reference, d)))
    reference["scale"] = typical if typical > 0 else 1.0
    return reference


def scores(reference: dict, structure_descriptors: np.ndarray) -> np.ndarray:
    """``U >= 0`` per structure: the Mahalanobis distance of each descriptor to the
    training structures, in units of their median distance."""
    y = np.asarray(structure_descriptors, dtype=np.float64) - reference["location"]
    d2 = np.sum((y @ reference["precision"]) * y, axis=1)
    return np.sqrt(np.maximum(d2, 0.0)) / reference["scale"]
