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

``combination="max"`` (an option of :class:`~mlipuq.uq.EvidentialHead`) fits the two
apart on the same held-out data, :math:`a, b` as :class:`~mlipuq.uq.LatentDistance`
alone and :math:`\\lambda` by the Gaussian NLL of the wrapper's variance alone
(:func:`own_scale`), and takes the larger, :math:`\\sigma^2 = \\max(\\lambda
\\sigma^2_{\\rm own}, a + b\\,u^2)`: a joint fit gives the term a share s of the
variance and so only the fraction s of its growth away from the data.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.uq import latent_features
from mlipuq.uq.latent_distance import LatentDistance

__all__ = ["COMBINATIONS", "combine_force_variances", "combine_variances", "fit_distance_term",
           "load_distance_term", "own_scale", "term_variances"]

#: How a term's variance joins the wrapper's: a sum fitted jointly, or the larger of two
#: fitted apart (module notes).
COMBINATIONS = ("sum", "max")


def fit_distance_term(wrapper, train, val, *, score: str, seed: int, batch_size: int,
                      progress: bool = False, energy_distance="structure",
                      reference=None, structure_covariance="ledoit-wolf",
                      min_share=None, combination="sum",
                      covariance_data=None, map_data=None,
                      ridge_scale="all_atoms", features=None) -> LatentDistance:
    """The latent-distance term of a fitted ``wrapper`` (one with a ``distance_``
    attribute): reference atoms and structures from ``reference`` (None: ``train``),
    λ, a and b fitted on ``val`` (None: ``train`` when a ``reference`` is given,
    else a held-out fraction of ``train``) against the wrapper's own variances;
    ``energy_distance`` and ``structure_covariance`` as in
    :class:`~mlipuq.uq.LatentDistance` (``energy_distance=None``: the energies keep the
    wrapper's variance alone); ``min_share``: its ``min_combined_share``, the term's
    smallest share of the held-out mean variance (None: none); ``combination``: ``"sum"``
    (the joint fit) or ``"max"`` (fitted apart, ``min_share`` unused; module notes);
    ``covariance_data``: the structures the held-out structure covariance is chosen on
    (None: those λ, a and b are fitted on); ``map_data``: with ``"max"``, the structures
    a and b are fitted on, held out from the reference (None: those λ is fitted on; a
    and b read only the mean model's errors, so data the wrapper itself was fitted on
    serve as well); ``ridge_scale`` and ``features``: :class:`~mlipuq.uq.LatentDistance`'s
    (the wrappers' ``distance_ridge_scale`` and ``distance_features``; ``features=None``:
    the wrapper's ``distance_features``, which its predictions feed the term)."""
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
    if map_data is not None and combination != "max":
        raise ValueError("map_data needs combination='max' (the joint fit fits λ, a and b "
                         "together, on the wrapper's own held-out data)")
    if combination == "max" and energy_distance is None:
        raise ValueError("combination='max' needs the term's energies (energy_distance)")
    if features is None:
        features = getattr(wrapper, "distance_features", "readout")
    alone = copy.copy(wrapper)  # shares the model and parameters, predicts without the term
    alone.distance_ = None
    alone.fitted_ = True
    joint = combination == "sum"
    term = LatentDistance(wrapper.model, score=score, combine=alone if joint else None,
                          energy_distance=energy_distance,
                          structure_covariance=structure_covariance,
                          min_combined_share=min_share if joint else None,
                          ridge_scale=ridge_scale, features=features)
    points, held_out = ((train, val) if reference is None
                        else (reference, train if val is None else val))
    if held_out is None and not joint:  # the term's own split, to fit λ on the same data
        points, held_out = latent_features.hold_out(mdata.as_dataset(points), 0.2, seed)
    term.fit(points, held_out if map_data is None else map_data, seed=seed,
             batch_size=batch_size, progress=progress, covariance_data=covariance_data)
    if not joint:  # (predict is collective after distributed.init: rank 0's λ kept)
        term.energy_other_scale_, term.forces_other_scale_ = mdist.broadcast_object(
            own_scale(alone, held_out, batch_size))
    term.combine = None  # its scales λ are kept; the wrapper supplies its own part
    # (fit is collective after distributed.init: shares computed per rank, rank 0's term kept)
    return term


def own_scale(wrapper, held_out, batch_size: int) -> tuple[float, float]:
    """λ_E, λ_F: the maximum-likelihood scales of ``wrapper``'s uncalibrated energy and
    force variances on ``held_out`` (Gaussian, a common factor per target:
    λ = mean(r²/σ²) over the finite targets with σ² > 0)."""
    data = mdata.as_dataset(held_out)
    own = wrapper.predict(data, batch_size=batch_size, calibrated=False, composition=False)

    def mle(error, var):
        error, var = np.ravel(error).astype(np.float64), np.ravel(var).astype(np.float64)
        keep = np.isfinite(error) & (var > 0)
        if not keep.any():
            raise ValueError("no held-out targets with a positive variance to fit λ on")
        return float(np.mean(error[keep] ** 2 / var[keep]))

    return (mle(own.energy - data.energies, own.energy_var),
            mle(own.forces - data.forces, own.forces_var))


def combine_variances(combination: str, scale: float, own, term):
    """The combined variance of one target: ``scale × own + term`` (``"sum"``) or the
    larger of the two (``"max"``); arrays or tensors alike."""
    if combination == "sum":
        return scale * own + term
    scaled = scale * own
    return scaled + (term - scaled).clip(min=0)


def combine_force_variances(combination: str, scale: float, own: torch.Tensor,
                            term: torch.Tensor) -> torch.Tensor:
    """The combined force variances (N, 3) from the wrapper's ``own`` (N, 3, per
    component) and the term's ``term`` (N, 1, the same for every component).

    ``"sum"``: ``scale × own + term``. ``"max"``: per atom the larger of the two mean
    component variances, λ·mean_c σ²_own and the term's, with the atom's own components
    stretched by one factor to reach it (where the own variance is zero, the term's in
    every component). A componentwise maximum would not do: the atom's total variance
    would then change when the structure is rotated (the check suite's invariance)."""
    if combination == "sum":
        return combine_variances("sum", scale, own, term)
    scaled = scale * own
    mean = scaled.mean(dim=-1, keepdim=True)
    larger = torch.maximum(mean, term)
    return torch.where(mean > 0, scaled * (larger / mean.clamp(min=torch.finfo(mean.dtype).tiny)),
                       larger.expand_as(scaled))


def load_distance_term(model, score: str, state: dict,
                       structure_covariance: str = "ledoit-wolf",
                       ridge_scale: str = "all_atoms",
                       features: str = "readout") -> LatentDistance:
    """A saved distance term (``LatentDistance._get_state()``) around ``model``.

    Without a structure reference it sums independent atoms (terms saved before
    the structure distance existed; a term fitted with ``energy_distance=None``
    has a_E = b_E = 0 and λ_E = 1, so that its energies are the wrapper's alone
    either way). ``ridge_scale``: the one it was fitted with (predictions do not
    depend on it: the fitted Gaussians are saved in the wrapper's units); ``features``:
    those its distances are measured in."""
    mode = "atoms" if state.get("structure_") is None else "structure"
    term = LatentDistance(model, score=score, energy_distance=mode,
                          structure_covariance=structure_covariance if mode == "structure"
                          else "ledoit-wolf", ridge_scale=ridge_scale, features=features)
    term._set_state(state)
    term.fitted_ = True
    return term


def term_variances(term: LatentDistance, features: torch.Tensor, batch: mdata.Batch):
    """The term's variances of one batch from its ``features`` (N, F; the readout's or
    every layer's, :func:`~mlipuq.uq.latent_features.capture`):
    ``(energy_var (B,), force_var (N,))`` as float64 NumPy, eV² and eV²/Å² per
    component (0 for atoms without neighbours)."""
    phi = features.detach().cpu().to(torch.float64).numpy()
    energy_var, _, force_var = term.latent_parts(phi, batch)
    return np.asarray(energy_var, dtype=np.float64), force_var
