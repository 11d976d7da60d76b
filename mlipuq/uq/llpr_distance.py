"""LLPR's latent-distance term (``LastLayerLaplace(distance=...)``).

LLPR's variance is a quadratic form in the readout's features. Where a structure
leaves the training data without moving them it stays in-distribution sized: trained
on 32-atom cells narrower than twice the cutoff, the benchmark's EMT base models'
forces in 108-atom cells were 1.4–2.9 times less accurate and LLPR's 95 % force
intervals covered 0.705–0.8997 on five of ten systems (docs/llpr.md, "Its
latent-distance term"). With ``distance=`` (a :class:`~mlipuq.uq.LatentDistance` score,
``"mahalanobis"`` by default since a round of 2026-12-06, docs/shift.md) :meth:`fit`
adds latent distance's variance to LLPR's, fitted jointly on held-out data as
``LatentDistance(model, combine=llpr)`` fits it (:mod:`mlipuq.uq.distance_term`):

.. math:: \\sigma^2_F = \\lambda_F\\,\\sigma^2_{F,\\rm LLPR} + a_F + b_F u_i^2, \\qquad
          \\sigma^2_E = \\lambda_E\\,\\sigma^2_{E,\\rm LLPR} + n^2 (a_E + b_E U^2),

:math:`u_i` each atom's latent distance to the training atoms of its element,
:math:`U` the structure's to the training structures (in every layer's features
where the model names its layers), :math:`\\lambda, a, b \\ge 0` by Gaussian NLL on
``fit``'s ``val`` (None: a held-out fifth of ``train``). With
``energy_combination="max"`` the energies' term is fitted apart instead, as the
shallow ensemble's energy term is (:mod:`mlipuq.uq.shallow_distance`): :math:`a_E, b_E`
by latent distance's own NLL on ``val``, :math:`\\lambda_E` by that of LLPR's energy
variance alone, and the larger of the two taken,
:math:`\\sigma^2_E = \\max(\\lambda_E\\,\\sigma^2_{E,\\rm LLPR}, n^2 (a_E + b_E U^2))`
(the forces' term stays the joint fit); three parameters fitted jointly on a few held-out
energies can drop LLPR's variance altogether (λ_E = 0 on the demo's twenty).
``force_combination="max"`` does the same for the forces, per atom: the larger of
:math:`\\lambda_F` times the mean of LLPR's three component variances and
:math:`a_F + b_F u_i^2`, LLPR's components stretched by one factor to reach it
(:func:`~mlipuq.uq.distance_term.combine_force_variances`; the term passes on its whole
growth away from the data, not the share a joint fit gives it); the energies then keep
``energy_combination``'s: with ``"sum"`` a joint fit of their own, with ``"max"`` the
forces' term fitted apart. The
members (posterior samples) are stretched to the combined variances; the stress and its
variance stay LLPR's. Without the term (``distance=None``) LLPR is Bigi et al.'s,
unchanged.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.calibration.recalibrate import stretch_members
from mlipuq.errors import user_stacklevel
from mlipuq.uq import latent_features
from mlipuq.uq.distance_term import (COMBINATIONS, combine_force_variances, combine_variances,
                                     fit_distance_term, load_distance_term)
from mlipuq.uq.latent_distance import _SCORES, LatentDistance, check_ridge_scale

__all__ = ["LatentTerm"]


class LatentTerm:
    """The term's settings, fit, application and persistence, for
    :class:`~mlipuq.uq.LastLayerLaplace` (module notes)."""

    #: Widening powers while the term reads every layer's features: latent distance's
    #: (energies ``r ** 0.75``, forces ``r ** 0.5``; docs/shift.md), whose variance the
    #: term is.
    all_layers_extrapolation = LatentDistance.all_layers_extrapolation
    distance_: Optional[LatentDistance] = None  # the term the forces read
    energy_distance_: Optional[LatentDistance] = None  # the energies' where it differs

    def _set_term(self, model, distance, distance_ridge_scale, distance_features,
                  energy_combination="sum", force_combination="sum") -> None:
        """Check and keep the term's settings (``ValueError`` naming the argument)."""
        if distance is not None and distance not in _SCORES:
            raise ValueError(f"distance must be None or one of {_SCORES}, got {distance!r}")
        for name, value in (("energy_combination", energy_combination),
                            ("force_combination", force_combination)):
            if value not in COMBINATIONS:
                raise ValueError(f"{name} must be one of {COMBINATIONS}, got {value!r}")
        self.distance = distance
        self.energy_combination = energy_combination
        self.force_combination = force_combination
        self.distance_ridge_scale = check_ridge_scale(distance_ridge_scale, distance,
                                                      "distance_ridge_scale")
        self.distance_features = latent_features.check_term_features(distance_features,
                                                                     model, distance)
        self.distance_ = self.energy_distance_ = None

    def default_widening(self) -> dict:
        """:attr:`all_layers_extrapolation` with a term in every layer's features, else
        :attr:`default_extrapolation` (LLPR's own)."""
        if self.distance is None:
            return self.default_extrapolation
        return latent_features.term_widening(self)

    def _term_config(self) -> dict:
        """The settings :meth:`config` records: none without a term (files as before)."""
        if self.distance is None:
            return {}
        apart = {name: "max" for name in ("energy_combination", "force_combination")
                 if getattr(self, name) == "max"}
        return {"distance": self.distance, "distance_ridge_scale": self.distance_ridge_scale,
                "distance_features": self.distance_features,
                **apart}  # (only then: the configs and fingerprints of files before it)

    def _fit_term(self, train, val, *, batch_size: int, progress: bool) -> None:
        """Fit ``distance_`` around the fitted posterior (module notes); None without a
        term, or, with a warning, without forces to fit it on."""
        self.distance_ = self.energy_distance_ = None
        if self.distance is None:
            return
        if not mdata.as_dataset(train if val is None else val).has_forces.any():
            warnings.warn("LastLayerLaplace.fit: the latent-distance term is fitted on forces "
                          "and the data hold none; LLPR's variance alone is used "
                          "(distance=None)", UserWarning, stacklevel=user_stacklevel())
            self._set_term(self.model, None, None, None)
            return
        if val is None and len(train) < 2:
            raise ValueError("LastLayerLaplace.fit: the latent-distance term is fitted on val, "
                             "or on a held-out part of train (at least 2 structures); pass "
                             "val or distance=None")
        options = dict(score=self.distance, seed=self.seed, batch_size=batch_size,
                       progress=progress, ridge_scale=self.distance_ridge_scale,
                       features=self.distance_features)
        structure = {"structure_covariance": "held-out"}  # the energies' distance
        combinations = (self.force_combination, self.energy_combination)
        joint = None  # both fitted around LLPR alone, the joint one for the target(s) that sum
        if "sum" in combinations:
            joint = fit_distance_term(self, train, val, **(
                {"energy_distance": None} if self.energy_combination == "max" else structure),
                **options)
        apart = fit_distance_term(self, train, val, combination="max", **structure,
                                  **options) if "max" in combinations else None
        forces, energies = (joint if c == "sum" else apart for c in combinations)
        self.distance_, self.energy_distance_ = forces, None if energies is forces else energies

    def _predict_batch(self, batch: mdata.Batch, stress: bool = False) -> dict:
        """The host's ``_posterior_batch`` with the term's variance: the term reads the
        features of the posterior's own forward pass (its result's ``features``)."""
        with latent_features.capture(self.model, self.distance_features) as term_features:
            result = self._posterior_batch(batch, stress)
            phi = term_features(result.pop("features"))
        return self._with_term(batch, result, phi)

    def _with_term(self, batch: mdata.Batch, result: dict, phi: torch.Tensor) -> dict:
        """``result`` (one batch of LLPR's predictions) with the term's variance added
        and the members stretched to it; unchanged without a term. ``phi``: the (N, F)
        features of the batch's forward pass the term reads (``distance_features``)."""
        term = self.distance_
        if term is None:
            return result
        energy_var, atom_var, force_var = self._term_parts(batch, phi)
        out = dict(result)
        out["forces_var"] = _added(self.force_combination, term.forces_other_scale_,
                                   result["forces_var"], np.asarray(force_var)[:, None],
                                   combine=combine_force_variances)
        if self.energy_distance_ is not None:  # the energies' own term
            energy_var, atom_var, _ = self._term_parts(batch, phi, self.energy_distance_)
        scale = self._energy_term().energy_other_scale_
        out["energy_var"] = _added(self.energy_combination, scale, result["energy_var"],
                                   energy_var)
        if result.get("atom_energy_var") is not None:
            out["atom_energy_var"] = _added(self.energy_combination, scale,
                                            result["atom_energy_var"], atom_var)
        for name, mean in (("energy_members", "energy"), ("forces_members", "forces")):
            if result.get(name) is not None:
                var = name.replace("members", "var")
                out[name] = torch.as_tensor(stretch_members(
                    _numpy(result[name]), _numpy(result[mean]), _numpy(out[var]),
                    _numpy(result[var])))
        return out

    def _format_version(self) -> int:  # 3: version-2 readers would drop the term, 4: ...
        if self.distance_ is None:  # ... version-3 readers the energies' own term, 5: ...
            return 2  # ... version-4 readers would add the forces' term fitted apart
        if self.force_combination == "max":
            return 5
        return 3 if self.energy_distance_ is None else 4

    def _set_models(self, models) -> None:
        super()._set_models(models)
        for term in (self.distance_, self.energy_distance_):
            if term is not None:
                term.model = self.model

    def _term_parts(self, batch: mdata.Batch, phi: torch.Tensor, term=None) -> tuple:
        """The ``term``'s (None: ``distance_``) ``(energy_var (B,), atom_var (N,),
        force_var (N,))`` of ``batch`` (float64 NumPy, eV² and eV²/Å² per component)
        from its features ``phi``."""
        term = self.distance_ if term is None else term
        return term.latent_parts(phi.detach().cpu().to(torch.float64).numpy(), batch)

    def _energy_term(self) -> LatentDistance:
        """The term the energies read: the energies' own (``energy_combination="max"``),
        else the joint one."""
        return self.distance_ if self.energy_distance_ is None else self.energy_distance_

    def _term_energy_var(self, batch: mdata.Batch, energy_var: np.ndarray,
                         phi: torch.Tensor) -> np.ndarray:
        """LLPR's energy variances (B,) of ``batch`` with the term's (module notes), from
        the batch's features ``phi``; unchanged without a term."""
        if self.distance_ is None:
            return energy_var
        term = self._energy_term()
        return combine_variances(self.energy_combination, term.energy_other_scale_,
                                 energy_var, self._term_parts(batch, phi, term)[0])

    def _term_state(self) -> dict:
        state = {} if self.distance_ is None else {"distance": self.distance_._get_state()}
        if self.energy_distance_ is not None:
            state["energy_distance"] = self.energy_distance_._get_state()
        return state

    def _load_term(self, state: dict) -> None:
        """The saved term (absent in files saved without one, or before it existed)."""
        term = state.get("distance")
        if term is None:
            self._set_term(self.model, None, None, None)
            return

        def loaded(saved):
            return load_distance_term(
                self.model, self.distance, saved, structure_covariance="held-out",
                ridge_scale=self.distance_ridge_scale, features=self.distance_features)

        self.distance_ = loaded(term)
        energies = state.get("energy_distance")  # absent: the forces' term serves both
        self.energy_distance_ = None if energies is None else loaded(energies)
        if self.force_combination == "sum":  # the energies' own term is the apart one
            self.energy_combination = "sum" if energies is None else "max"


def _added(combination: str, scale: float, own, latent: np.ndarray,
           combine=combine_variances) -> torch.Tensor:
    """``scale × own + latent`` (``"sum"``) or the larger of the two (``"max"``, by
    ``combine``: the forces' per atom) as float64 on ``own``'s device."""
    own = torch.as_tensor(own, dtype=torch.float64)
    return combine(combination, scale, own,
                   torch.as_tensor(latent, dtype=torch.float64, device=own.device))


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
