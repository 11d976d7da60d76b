"""What keeps an evidential head's variances honest away from its data.

Two parts of :class:`~mlipuq.uq.EvidentialHead`:

* **the bound.** A NIG variance grows without limit as the evidence vanishes (93
  eV/atom was seen on a torsion scan). :func:`soft_cap` keeps the reported std
  below :data:`STD_CAP_FACTOR` times the largest error plausible for the data the
  head was fitted on (:func:`std_caps`) while keeping the order of the variances.
* **the latent-distance term** (``EvidentialHead(distance=...)``, default
  ``"mahalanobis"``). The head is a smooth function of the readout features and
  extrapolates them freely: on EMT Cu vacancies and strained cells its force std
  grew less than the error (mean std 0.76 and 0.85 of the mean absolute error,
  against 1.18 in distribution) and 95 % force intervals covered 0.60 and 0.66
  (``docs/shift.md``). Natural posterior networks (Charpentier et al.,
  ICLR 2022) let the evidence fall with the density of the latent features; here
  the head's variance is combined with :class:`~mlipuq.uq.LatentDistance`'s,

  .. math:: \\sigma^2_F = \\lambda_F\\,\\sigma^2_{\\rm NIG} + a_F + b_F\\,u^2, \\qquad
            \\sigma^2_E = \\lambda_E\\,\\sigma^2_{\\rm NIG} + n^2 (a_E + b_E U^2),

  :math:`u` each atom's latent distance to the reference atoms of its element (the
  base model's training set passed as ``fit(..., reference=)``, else the head's own
  fitting data), :math:`U` the structure's to the reference structures (coherent over
  the structure's n atoms, :mod:`mlipuq.uq.structure_distance`; heads fitted before it
  existed sum independent atoms, :math:`a_E n + b_E \\sum_i u_i^2`), and
  :math:`\\lambda, a, b \\ge 0` fitted by Gaussian NLL on held-out data (the
  ``combine=`` fit of :class:`~mlipuq.uq.LatentDistance`), so that the two do not
  count the same error twice (``distance_combination="sum"``). By default
  (``"max"``, since 2026-12-04) the two are fitted apart on the same data and the
  larger is taken, :math:`\\max(\\lambda\\sigma^2_{\\rm NIG}, a + b u^2)`
  (:mod:`mlipuq.uq.distance_term`). The bound applies twice: to the NIG variances
  (as λ was fitted on them) and to the combination.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.calibration.extrapolation import (  # noqa: F401  (soft_cap: public here too)
    plausible_errors,
    soft_cap,
)
from mlipuq.uq.distance_term import (  # noqa: F401  (re-exported: their first home)
    COMBINATIONS,
    combine_variances,
    fit_distance_term,
    load_distance_term,
    term_variances,
)
from mlipuq.uq.latent_distance import (_SCORES, LatentDistance, check_ridge_scale,
                                       check_share, check_structure_covariance)
from mlipuq.uq.latent_features import check_term_features

#: The reported std stays below this many times the largest error plausible for
#: the data the head was fitted on (see :func:`std_caps`).
STD_CAP_FACTOR = 10.0

#: The term settings of a head without a latent-distance term (``distance=None``; what
#: ``fit`` resets them to when it drops the term).
NO_TERM = MappingProxyType({
    "distance": None, "structure_covariance": "ledoit-wolf", "min_distance_share": None,
    "distance_combination": "sum", "distance_ridge_scale": "all_atoms",
    "distance_features": "readout"})

__all__ = ["NO_TERM", "STD_CAP_FACTOR", "cap_variances", "distance_variances",
           "fit_distance_term", "load_distance_term", "soft_cap", "std_caps", "term_config",
           "term_settings"]


def term_settings(model, distance, structure_covariance, min_distance_share,
                  distance_combination, distance_ridge_scale, distance_features) -> dict:
    """:class:`~mlipuq.uq.EvidentialHead`'s term arguments checked (``ValueError``
    naming the argument) and resolved: :data:`NO_TERM` without ``distance``."""
    if distance is not None and distance not in _SCORES:
        raise ValueError(f"distance must be None or one of {_SCORES}, got {distance!r}")
    if structure_covariance is None:
        structure_covariance = "ledoit-wolf" if distance is None else "held-out"
    check_structure_covariance(structure_covariance)
    if structure_covariance != "ledoit-wolf" and distance is None:
        raise ValueError(f"structure_covariance={structure_covariance!r} is the latent-"
                         "distance term's: it needs distance (not None)")
    check_share(min_distance_share, "min_distance_share", optional=True)
    if distance_combination not in COMBINATIONS:
        raise ValueError(f"distance_combination must be one of {COMBINATIONS}, "
                         f"got {distance_combination!r}")
    distance_features = check_term_features(distance_features, model, distance)
    if distance is None:
        return dict(NO_TERM)
    return {"distance": distance, "structure_covariance": structure_covariance,
            "min_distance_share": (None if min_distance_share is None  # the joint fit's
                                   or distance_combination == "max"
                                   else float(min_distance_share)),
            "distance_combination": distance_combination,
            "distance_ridge_scale": check_ridge_scale(distance_ridge_scale, distance,
                                                      "distance_ridge_scale"),
            "distance_features": distance_features}


def term_config(head) -> dict:
    """``head``'s term settings that differ from :data:`NO_TERM` (what a file saved
    before the setting existed holds), in :data:`NO_TERM`'s order."""
    return {name: getattr(head, name) for name, value in NO_TERM.items()
            if getattr(head, name) != value}


def std_caps(wrapper, dataset: mdata.AtomsDataset) -> dict:
    """Bounds of an evidential head's reported std: ``STD_CAP_FACTOR`` times the
    largest error plausible for ``dataset`` — the spread of the per-atom energies
    (about the species offsets, eV/atom) and the largest reference force component
    (eV/Å), at least the base model's error scales on the fitting data."""
    reference = wrapper.model.atomic_energies
    offsets = mdata.composition_matrix(dataset, wrapper.species) @ np.array(
        [reference[z] for z in wrapper.species])
    spread, f_max = plausible_errors((dataset.energies - offsets) / dataset.n_atoms,
                                     dataset.forces)
    scales = (float(wrapper.head_.energy_scale), float(wrapper.head_.forces_scale))
    return {
        "energy_per_atom": STD_CAP_FACTOR * max(spread, np.sqrt(scales[0]), 1e-6),
        "forces": STD_CAP_FACTOR * max(f_max, np.sqrt(scales[1]), 1e-6),
    }


def cap_variances(caps: Optional[dict], n_atoms: torch.Tensor, e_alea, e_epi, f_var):
    """The energy parts (eV², per structure) and force variances (eV²/Å², per atom)
    under the bound ``caps`` (:func:`std_caps`; None: unchanged, files saved
    before the bound existed)."""
    if caps is None:
        return e_alea, e_epi, f_var
    n = n_atoms.to(e_alea.dtype)
    factor = soft_cap(e_alea + e_epi, (caps["energy_per_atom"] * n) ** 2)
    return e_alea * factor, e_epi * factor, f_var * soft_cap(f_var, caps["forces"] ** 2)


def distance_variances(term: LatentDistance, features: torch.Tensor, batch: mdata.Batch,
                       e_alea, e_epi, f_var, combination: str = "sum", *,
                       with_term: bool = False):
    """``λ σ²_NIG`` plus the latent-distance term's variance (module notes), or the
    larger of the two (``combination="max"``): the NIG energy parts (B,) and force
    variances (N,) of one batch combined with it (the latent part is epistemic: with
    ``"max"`` the aleatoric part stays ``λ σ²_alea`` and the epistemic part is the rest).
    ``with_term``: the term's own energy variances (B,) follow as a fourth element."""
    energy_var, force_var = term_variances(term, features, batch)
    like = dict(dtype=e_alea.dtype, device=e_alea.device)
    latent_e = torch.as_tensor(energy_var, **like)
    scale_e, latent_f = term.energy_other_scale_, torch.as_tensor(force_var, **like)
    e_epi = (scale_e * e_epi + latent_e if combination == "sum" else
             combine_variances(combination, scale_e, e_alea + e_epi, latent_e) - scale_e * e_alea)
    out = (scale_e * e_alea, e_epi,
           combine_variances(combination, term.forces_other_scale_, f_var, latent_f))
    return out + (latent_e,) if with_term else out
