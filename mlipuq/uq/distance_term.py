"""A latent-distance term built into another wrapper.

:class:`~mlipuq.uq.EvidentialHead` and :class:`~mlipuq.uq.ShallowEnsemble` add
:class:`~mlipuq.uq.LatentDistance`'s variance to their own (``distance=``,
default ``"mahalanobis"``):

.. math:: \\sigma^2 = \\lambda\\,\\sigma^2_{\\rm own} + a + b\\,u^2,

:math:`u` each atom's latent distance to the reference atoms of its element and
:math:`\\lambda, a, b \\ge 0` fitted by Gaussian NLL on held-out data against the
wrapper's own variances (the ``combine=`` fit of
:class:`~mlipuq.uq.LatentDistance`), so that the two do not count the same error
twice. A wrapper holding such a term keeps it in ``distance_`` and predicts
without it when ``distance_`` is None; this module fits, loads and applies it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.uq.latent_distance import LatentDistance

__all__ = ["fit_distance_term", "load_distance_term", "term_variances"]


def fit_distance_term(wrapper, train, val, *, score: str, seed: int, batch_size: int,
                      progress: bool = False, energy_distance="structure",
                      reference=None, structure_covariance="ledoit-wolf",
                      min_share=None) -> LatentDistance:
    """The latent-distance term of a fitted ``wrapper`` (one with a ``distance_``
    attribute): reference atoms and structures from ``reference`` (None: ``train``),
    λ, a and b fitted on ``val`` (None: ``train`` when a ``reference`` is given,
    else a held-out fraction of ``train``) against the wrapper's own variances;
    ``energy_distance`` and ``structure_covariance`` as in
    :class:`~mlipuq.uq.LatentDistance` (``energy_distance=None``: the energies keep the
    wrapper's variance alone); ``min_share``: its ``min_combined_share``, the term's
    smallest share of the held-out mean variance (None: none)."""
    alone = copy.copy(wrapper)  # shares the model and parameters, predicts without the term
    alone.distance_ = None
    alone.fitted_ = True
    term = LatentDistance(wrapper.model, score=score, combine=alone,
                          energy_distance=energy_distance,
                          structure_covariance=structure_covariance,
                          min_combined_share=min_share)
    points, held_out = ((train, val) if reference is None
                        else (reference, train if val is None else val))
    term.fit(points, held_out, seed=seed, batch_size=batch_size, progress=progress)
    term.combine = None  # its scales λ are kept; the wrapper supplies its own part
    # (fit is collective after distributed.init: shares computed per rank, rank 0's term kept)
    return term


def load_distance_term(model, score: str, state: dict,
                       structure_covariance: str = "ledoit-wolf") -> LatentDistance:
    """A saved distance term (``LatentDistance._get_state()``) around ``model``.

    Without a structure reference it sums independent atoms (terms saved before
    the structure distance existed; a term fitted with ``energy_distance=None``
    has a_E = b_E = 0 and λ_E = 1, so that its energies are the wrapper's alone
    either way)."""
    mode = "atoms" if state.get("structure_") is None else "structure"
    term = LatentDistance(model, score=score, energy_distance=mode,
                          structure_covariance=structure_covariance if mode == "structure"
                          else "ledoit-wolf")
    term._set_state(state)
    term.fitted_ = True
    return term


def term_variances(term: LatentDistance, features: torch.Tensor, batch: mdata.Batch):
    """The term's variances of one batch from the readout ``features`` (N, F):
    ``(energy_var (B,), force_var (N,))`` as float64 NumPy, eV² and eV²/Å² per
    component (0 for atoms without neighbours)."""
    phi = features.detach().cpu().to(torch.float64).numpy()
    energy_var, _, force_var = term.latent_parts(phi, batch)
    return np.asarray(energy_var, dtype=np.float64), force_var
