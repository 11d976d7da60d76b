"""The shallow ensemble's latent-distance terms: fitted around its heads and applied.

:class:`~mlipuq.uq.ShallowEnsemble` (``distance=``, default ``"mahalanobis"``) holds up
to two :class:`~mlipuq.uq.LatentDistance` terms (:mod:`mlipuq.uq.distance_term`):

* **the force term** (``distance_``), fitted jointly with the heads' force variance,
  :math:`\\sigma^2_{F,ic} = \\lambda_F\\,\\sigma^2_{{\\rm heads},ic} + a_F + b_F u_i^2`;
  with ``force_combination="max"`` fitted apart instead (the energy term's fit, below)
  and the larger taken per atom, of :math:`\\lambda_F` times the mean of the atom's
  three component variances and :math:`a_F + b_F u_i^2`, the heads' components stretched
  by one factor to reach it
  (:func:`~mlipuq.uq.distance_term.combine_force_variances`; componentwise, as before
  2026-12-07, the atom's total variance changed when the structure was rotated);
* **the energy term** (``energy_distance_``, ``energy_combination="max"``), fitted
  apart from the heads on the same held-out data (:math:`a_E, b_E` as
  :class:`~mlipuq.uq.LatentDistance` alone fits them by default: distances to the
  training structures in the covariance the held-out structures make most likely;
  :math:`\\lambda_E` by the NLL of the
  heads' energy variance alone), the larger taken:
  :math:`\\sigma^2_E = \\max(\\lambda_E\\,\\sigma^2_{{\\rm heads},E}, n^2(a_E + b_E U^2))`,
  :math:`U` the structure's latent distance (coherent over its n atoms). K heads span at
  most K - 1 directions of the weight space, and their energy spread need not grow where
  the features leave the training data; the larger of two variances grows with the
  faster (the argument of the evidential head's round, docs/shift.md).

The members are stretched to the combined variances, per force component and per
energy, so that a member-wise spread agrees with the reported one.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from mlipuq import data as mdata
from mlipuq.calibration.recalibrate import stretch_members
from mlipuq.errors import user_stacklevel
from mlipuq.uq.distance_term import (COMBINATIONS, combine_force_variances, combine_variances,
                                     fit_distance_term, term_variances)

__all__ = ["ENERGY_COMBINATIONS", "FORCE_COMBINATIONS", "check_energy_combination",
           "check_force_combination", "fit_terms", "with_terms"]

#: How the energy term joins the heads' energy variance: not at all (None) or the
#: larger of the two, fitted apart ("max").
ENERGY_COMBINATIONS = (None, "max")
#: How the force term joins the heads' force variance: the joint sum ("sum") or the
#: larger of the two, fitted apart ("max": the term is then the energy term's fit); the
#: forms :func:`~mlipuq.uq.distance_term.combine_variances` implements.
FORCE_COMBINATIONS = COMBINATIONS


def check_energy_combination(value) -> Optional[str]:
    """``value`` if it is one of :data:`ENERGY_COMBINATIONS`, else ``ValueError``."""
    if value not in ENERGY_COMBINATIONS:
        raise ValueError(f"energy_combination must be one of {ENERGY_COMBINATIONS}, "
                         f"got {value!r}")
    return value


def check_force_combination(value) -> str:
    """``value`` if it is one of :data:`FORCE_COMBINATIONS`, else ``ValueError``."""
    if value not in FORCE_COMBINATIONS:
        raise ValueError(f"force_combination must be one of {FORCE_COMBINATIONS}, "
                         f"got {value!r}")
    return value


def fit_terms(ensemble, train, val, *, seed: int, progress: bool, need_forces: bool,
              batch_size: int) -> None:
    """Fit ``ensemble.distance_`` and ``ensemble.energy_distance_`` (module notes) around
    its trained heads; None where ``ensemble.distance`` is None."""
    ensemble.distance_, ensemble.energy_distance_ = None, None
    if ensemble.distance is None:
        return
    if not need_forces:
        warnings.warn("ShallowEnsemble.fit: the latent-distance term is a force term and "
                      "forces_weight=0 fits no forces; the heads' variance alone is used "
                      "(distance=None)", UserWarning, stacklevel=user_stacklevel())
        ensemble._drop_terms()
        return
    if val is None and len(train) < 2:
        raise ValueError("ShallowEnsemble.fit: the latent-distance term is fitted on val, "
                         "or on a held-out part of train (at least 2 structures); pass "
                         "val or distance=None")
    options = dict(score=ensemble.distance, seed=seed, batch_size=batch_size,
                   progress=progress, ridge_scale=ensemble.distance_ridge_scale,
                   features=ensemble.distance_features)
    joint = ensemble.force_combination == "sum"
    forces = fit_distance_term(ensemble, train, val, energy_distance=None,
                               **options) if joint else None
    apart = None  # the term fitted apart from the heads (on the heads alone: no term yet)
    if ensemble.energy_combination == "max" or not joint:
        apart = fit_distance_term(ensemble, train, val, combination="max",
                                  structure_covariance="held-out", **options)
    ensemble.energy_distance_ = apart if ensemble.energy_combination == "max" else None
    ensemble.distance_ = forces if joint else apart


def with_terms(ensemble, features: torch.Tensor, batch: mdata.Batch, statistics: dict) -> dict:
    """``statistics`` (the heads' ``energy``, ``energy_var``, ``energy_members``,
    ``forces``, ``forces_var``, ``forces_members`` of one batch) with the ensemble's
    terms applied (module notes); the members stretched to the new variances.
    ``features``: the batch's (N, F) features the terms measure distances in."""
    out = dict(statistics)
    if ensemble.distance_ is not None:
        _, latent = term_variances(ensemble.distance_, features, batch)
        total = combine_force_variances(ensemble.force_combination,
                                        ensemble.distance_.forces_other_scale_,
                                        out["forces_var"], torch.from_numpy(latent)[:, None])
        out["forces_members"] = _stretched(out["forces_members"], out["forces"], total,
                                           out["forces_var"])
        out["forces_var"] = total
    term = getattr(ensemble, "energy_distance_", None)
    if term is not None:
        latent, _ = term_variances(term, features, batch)
        total = combine_variances("max", term.energy_other_scale_, out["energy_var"],
                                  torch.from_numpy(latent))
        out["energy_members"] = _stretched(out["energy_members"], out["energy"], total,
                                           out["energy_var"])
        out["energy_var"] = total
    return out


def _stretched(members: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
               member_var: torch.Tensor) -> torch.Tensor:
    """``members`` (K, ...) stretched about ``mean`` from ``member_var`` to ``var``."""
    return torch.from_numpy(stretch_members(members.numpy(), mean.numpy(), var.numpy(),
                                            member_var.numpy()))
