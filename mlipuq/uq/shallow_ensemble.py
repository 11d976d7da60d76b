"""Shallow ensemble: K last-layer heads on one shared backbone.

Kellner & Ceriotti (2024), "Uncertainty quantification by direct propagation
of shallow ensembles", Mach. Learn.: Sci. Technol. 5, 035006.

The base model's readout ``eps_i = w·phi_i + b`` is replaced by K heads
``(W_k, b_k)`` acting on the same per-atom features ``phi_i`` (F,):

.. math:: \\varepsilon_{ik} = W_k \\cdot \\phi_i + b_k, \\qquad
          E_k = \\sum_i \\varepsilon_{ik} + \\sum_i e_{Z_i}, \\qquad
          F_k = -\\partial E_k / \\partial r = -\\sum_i J_i^T W_k,

with :math:`J_i = \\partial \\phi_i / \\partial r`. During training the heads are parameterised
on centred features, :math:`\\varepsilon_{ik} = W_k \\cdot (\\phi_i - \\bar\\phi) + o_k` with
:math:`\\bar\\phi` the mean training feature (so :math:`b_k = o_k - W_k \\cdot \\bar\\phi`):
otherwise a weight step that improves the forces also shifts every atom's energy by
:math:`\\delta W_k \\cdot \\bar\\phi`, so the ensemble's mean energy drifts away from the base
model while its heads spread by a structure-independent offset (``docs/ensembles.md``).

The K force sets are K vector-Jacobian products of one retained feature graph: one batched
backward pass (``is_grads_batched``) on GPU; on CPU a loop over the retained graph, which is
faster than vmap there (``vectorize``; see :mod:`mlipuq.uq.jacobians` and the README's
overhead notes). Mean and variance are taken over heads (population variance, ``ddof=0``,
float64); the variance of the per-atom energies :math:`\\varepsilon_{ik}` is reported as
the local uncertainty ``atom_energy_var`` (eV²).

Stresses (``predict(..., stress=True)``, periodic cells): the heads are linear in the
features (centring only moves the biases, which do not depend on the geometry), so head
k's stress is
:math:`\\sigma_k = V^{-1} \\sum_i W_k \\cdot \\partial\\phi_i / \\partial\\varepsilon`.
The K vector-Jacobian products that give the head forces are taken with respect to the
positions and the strain together (:func:`~mlipuq.uq.jacobians.feature_vjps_strain`), so
the member stresses cost no extra backward pass; ``stress`` and ``stress_var`` are their
mean and population variance (the mean is the stress of the mean head, i.e. of
``base_model``); the latent-distance terms stretch the energy and force members, not
these, which stay the heads' own.

Training minimises the Gaussian negative log-likelihood of the per-atom
energies and of the force components under the ensemble mean and variance

.. math:: \\mathrm{NLL}(y; \\mu, \\sigma^2) = \\tfrac12 \\left(\\log 2\\pi
          + \\log(\\sigma^2 + \\epsilon) + \\frac{(y - \\mu)^2}{\\sigma^2 + \\epsilon}\\right),

:math:`L = w_E \\langle \\mathrm{NLL}_E \\rangle + w_F \\langle \\mathrm{NLL}_F \\rangle`,
with a small floor :math:`\\epsilon` for stability.

Initialisation ``"laplace"`` draws the heads from the last-layer Laplace
(LLPR) posterior :math:`N(\\theta^*, \\alpha^2 \\Sigma)`,
:math:`\\Sigma = (X^T X / \\sigma^2 + \\lambda I)^{-1}`, built from the summed
per-structure features :math:`x_s = (\\sum_i \\phi_i, n_s)` of the training
set in float64, with :math:`\\sigma^2` the mean squared energy residual of the
base model and :math:`\\alpha^2` the NLL-optimal scale of the energy variance
:math:`x^T \\Sigma x` (on the validation set when given). Heads then start
calibrated on energies and training converges in a few epochs.
``"random"`` perturbs the trained readout with small Gaussian noise.

Direct force heads (a model with ``force_mode == "direct"`` when the ensemble
is built; see :mod:`mlipuq.models.base` and ``docs/direct-forces.md``): the
ensemble also has K direct force heads :math:`w^F_k` (C,) on the model's
per-atom vector features :math:`v_{ic}`, :math:`F_{ik} = \\sum_c w^F_{kc} v_{ic}`,
and the member forces are theirs: a matrix product, no vector-Jacobian
product, in training as in prediction. The energy heads stay as above (their
stresses, the strain derivatives of the member energies, still take K
backward passes with respect to the strain). The NLL is the same;
``"laplace"`` draws the force heads from the direct head's own last-layer
posterior (:class:`~mlipuq.uq.llpr.LastLayerLaplace` on a direct model),
scaled by their own NLL-optimal factor on the forces, and the energy heads
from the energy-row posterior scaled on the energies. Member forces are not
gradients of member energies (``has_consistent_members`` is False).

The latent-distance term (``ShallowEnsemble(distance=...)``, default
``"mahalanobis"``; :mod:`mlipuq.uq.distance_term`). K heads span at most K - 1
directions of the weight space: along a feature direction that the training
data never varied, their spread is whatever the K draws happen to give, and
under shift the force errors grew faster than it (EMT Cu and ethanol's cis
hydroxyl torsion, ``docs/shift.md``: 95 % force intervals covered 0.896 there).
:meth:`fit` therefore adds :class:`~mlipuq.uq.LatentDistance`'s force variance,
measured to the training atoms of each element,

.. math:: \\sigma^2_{F,ic} = \\lambda_F\\,\\sigma^2_{{\\rm heads},ic} + a_F + b_F u_i^2,

with :math:`\\lambda_F, a_F, b_F \\ge 0` fitted by Gaussian NLL on ``val`` (else
on a held-out fifth of ``train``). For the energies a second term is fitted
apart on the same data and the larger of it and the heads' variance is taken,
:math:`\\sigma^2_E = \\max(\\lambda_E\\,\\sigma^2_{{\\rm heads},E}, n^2(a_E + b_E U^2))`
(``energy_combination="max"``, the default since 2026-12-05; None: the heads'
energy variance alone; :mod:`mlipuq.uq.shallow_distance` fits and applies both
terms). The members are stretched to those variances, per force component and
per energy (so a member-wise spread agrees with the reported one): they are
then no energy gradients, and ``has_consistent_members`` is False.
``distance=None`` keeps the heads alone (member forces that are energy
gradients, e.g. for member-wise MD).

Module layout: this module holds the wrapper and the Laplace initialisation;
the heads, their energies, forces and stresses (:func:`head_members`) and
their NLL loss (:class:`HeadsNLL`) live in :mod:`mlipuq.uq.shallow_heads`.
"""

from __future__ import annotations

import copy
import logging
from types import MappingProxyType
from typing import Optional

import numpy as np
import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.models.base import MLIP
from mlipuq.params import positive
from mlipuq.training import (History, fit_offset_drift, fit_scales, prepare_graphs,
                             split_fit_options)
from mlipuq.uq.base import UQWrapper, _check_model, register
from mlipuq.uq.deep_ensemble import COMMITTEE_CALIBRATION, member_statistics
from mlipuq.uq.distance_term import load_distance_term
from mlipuq.uq.latent_distance import _SCORES, check_ridge_scale
from mlipuq.uq.latent_features import capture, check_term_features, term_widening
from mlipuq.uq.shallow_distance import (check_energy_combination, check_force_combination,
                                        fit_terms, with_terms)
from mlipuq.uq.shallow_heads import (  # noqa: F401  (re-exported: their old home)
    _LOG_2PI,
    HeadsNLL,
    _direct_head_members,
    _feature_sum,
    _Heads,
    _mean_var,
    gaussian_nll,
    head_members,
    mean_feature,
)
from mlipuq.uq.shallow_init import laplace_direct_heads, laplace_heads

log = logging.getLogger(__name__)

INITS = ("laplace", "random")
#: Relative std of the noise added to the readout weights by ``init="random"``.
RANDOM_INIT_SCALE = 0.1


@register
class ShallowEnsemble(UQWrapper):
    """K last-layer heads on a shared backbone, trained by Gaussian NLL.

    Parameters
    ----------
    model
        A trained :class:`~mlipuq.models.MLIP`. The wrapper works on its own
        deep copy; the caller's model is never modified.
    n_heads
        Number of heads K (>= 2).
    init
        ``"laplace"`` (heads drawn from the calibrated last-layer Laplace
        posterior; converges in a few epochs) or ``"random"`` (readout weights
        plus Gaussian noise of relative size ``RANDOM_INIT_SCALE``).
    train_backbone
        Also train the backbone (the wrapper's copy) with the NLL; by default
        it is frozen and only the heads are trained.
    distance
        The latent-distance score of the force term :meth:`fit` adds
        (``"mahalanobis"``, default; ``"knn"``, ``"gmm"``: see
        :class:`~mlipuq.uq.LatentDistance`), or None: the heads' variance alone
        (module notes).
    energy_combination
        ``"max"`` (default since 2026-12-05): the energy variance is the larger of
        the heads' and a latent-distance energy term's, each fitted on ``val``
        (:mod:`mlipuq.uq.shallow_distance`; chosen by a round on 25 fits,
        docs/shift.md); None: the heads' variance alone (the default before; files
        saved before load so). Ignored with ``distance=None``.
    force_combination
        ``"sum"`` (default): the force term is fitted jointly with the heads' force
        variance and added; ``"max"``: fitted apart (a and b as latent distance alone,
        λ_F by the heads' own likelihood) and the larger of the two taken (a round on
        25 fits found no gain, docs/shift.md). Ignored with ``distance=None``.
    distance_ridge_scale
        The terms' :class:`~mlipuq.uq.LatentDistance` ``ridge_scale``: None (default)
        as LatentDistance's, ``"per_species"`` (each element's own spread; the default
        here since 2026-12-06, measured on ten systems in docs/shift.md) for the
        Gaussian scores; ``"all_atoms"`` the ridge before (files saved before load
        so). Ignored with ``distance=None``.
    distance_features
        The terms' :class:`~mlipuq.uq.LatentDistance` ``features``: None (default)
        ``"all_layers"`` where the model names its message-passing layers
        (``layer_modules()``, as MiniMLIP), else ``"readout"``. ``"all_layers"``:
        every layer's invariant features and the readout's, the stds widened by
        ``r ** 0.5`` beyond the calibration range (:attr:`all_layers_extrapolation`;
        the default since 2026-12-06, a rule on twelve systems, docs/shift.md);
        ``"readout"``: the readout's input, widened by ``r ** 1`` (the default before;
        files saved before load so). Ignored with ``distance=None``.

    Attributes
    ----------
    head_weight_ : torch.Tensor
        (K, F) head weights.
    head_bias_ : torch.Tensor
        (K,) head biases (eV per atom).
    direct_weight_ : torch.Tensor or None
        (K, C) direct force heads, for a model whose ``force_mode`` was
        ``"direct"`` when the ensemble was built (module notes); None otherwise.
    distance_ : LatentDistance or None
        The fitted latent-distance force term (``distance=None``: None).
    energy_distance_ : LatentDistance or None
        The fitted energy term (``energy_combination=None``: None).
    history_ : History
        Training history of the last :meth:`fit` (not saved).

    Notes
    -----
    After :meth:`fit` the readout of the wrapper's model holds the mean head,
    so ``base_model`` (used e.g. for stresses) predicts the ensemble mean.
    """

    # ``calibrate(val)`` fits a Student-t to the forces (the default of every wrapper):
    # K heads estimate the variance from K samples (measured ν ≈ 5-7 for 8 heads)

    def __init__(
        self,
        model: MLIP,
        *,
        n_heads: int = 8,
        init: str = "laplace",
        train_backbone: bool = False,
        vectorize="auto",
        distance: Optional[str] = "mahalanobis",
        energy_combination: Optional[str] = "max",
        force_combination: str = "sum",
        distance_ridge_scale: Optional[str] = None,
        distance_features: Optional[str] = None,
    ):
        _check_model(model)
        self._check_config(n_heads, init, train_backbone)
        if distance is not None and distance not in _SCORES:
            raise ValueError(f"distance must be None or one of {_SCORES}, got {distance!r}")
        self._setup(copy.deepcopy(model), n_heads, init, train_backbone)
        self.vectorize = vectorize
        self.distance = distance
        check_energy_combination(energy_combination)
        self.energy_combination = None if distance is None else energy_combination
        check_force_combination(force_combination)  # no term: the heads' alone
        self.force_combination = "sum" if distance is None else force_combination
        self.distance_ridge_scale = check_ridge_scale(distance_ridge_scale, distance,
                                                      "distance_ridge_scale")
        self.distance_features = check_term_features(distance_features, model, distance)

    @staticmethod
    def _check_config(n_heads, init, train_backbone) -> None:
        if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 2:
            raise ValueError(f"n_heads must be an integer >= 2, got {n_heads!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(train_backbone, (bool, np.bool_)):
            raise TypeError(f"train_backbone must be a bool, got {type(train_backbone).__name__}")

    def _setup(self, model: MLIP, n_heads, init, train_backbone) -> None:
        self._check_config(n_heads, init, train_backbone)
        self.model = model
        self.n_heads = int(n_heads)
        self.init = init
        self.train_backbone = bool(train_backbone)
        layer = model.readout_layer
        if not isinstance(layer, nn.Linear) or layer.out_features != 1:
            raise ValueError("the model's readout must be a torch.nn.Linear with one output")
        self._readout_weight = layer.weight.detach().reshape(-1).to(torch.float64).cpu().clone()
        self._readout_bias = (
            None if layer.bias is None else layer.bias.detach().reshape(-1).to(torch.float64).cpu()
        )
        self._direct = model.has_direct_forces and model.force_mode == "direct"
        self._direct_readout_weight = (
            model.direct_readout_weight.to(torch.float64).cpu().clone() if self._direct else None)
        self.direct_weight_: Optional[torch.Tensor] = None
        self.head_weight_: Optional[torch.Tensor] = None
        self.head_bias_: Optional[torch.Tensor] = None
        self.history_: Optional[History] = None
        self.vectorize = "auto"
        self._drop_terms()
        self.fitted_ = False

    def _drop_terms(self) -> None:
        """The heads alone: no latent-distance terms, their settings as
        ``ShallowEnsemble(model, distance=None)`` holds them (saved and shown alike)."""
        self.distance: Optional[str] = None
        self.distance_, self.energy_distance_ = None, None
        self.energy_combination: Optional[str] = None
        self.force_combination = "sum"
        self.distance_ridge_scale, self.distance_features = "all_atoms", "readout"

    @property
    def n_members(self) -> int:
        return self.n_heads

    @property
    def has_consistent_members(self) -> bool:
        """False with direct force heads or a latent-distance term (its members
        stretched atom by atom, or structure by structure): their forces are no
        gradients of their energies."""
        return not self._direct and self.distance_ is None and self.energy_distance_ is None

    def members_hint(self, *, forces: bool = False) -> str:
        if forces and self.distance_ is not None and not self._direct:
            return ("ShallowEnsemble(model, distance=None): the latent-distance term "
                    "stretches the member forces atom by atom (no longer energy gradients)")
        return super().members_hint(forces=forces)

    def __repr__(self) -> str:
        distance = "" if self.distance == "mahalanobis" else f", distance={self.distance!r}"
        if self.distance is not None and self.energy_combination != "max":
            distance += f", energy_combination={self.energy_combination!r}"
        if self.force_combination != "sum":
            distance += f", force_combination={self.force_combination!r}"
        if self.distance_ridge_scale != check_ridge_scale(None, self.distance):
            distance += f", distance_ridge_scale={self.distance_ridge_scale!r}"
        if self.distance_features != check_term_features(None, self.model, self.distance):
            distance += f", distance_features={self.distance_features!r}"
        return (f"ShallowEnsemble({type(self.model).__name__}, n_heads={self.n_heads}, "
                f"init={self.init!r}, train_backbone={self.train_backbone}{distance})")

    # ------------------------------------------------------------------ training
    def _initial_heads(self, train, val, seed: int, energy_weight: float,
                       forces_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(int(seed))
        w = self._readout_weight
        has_bias = self._readout_bias is not None
        b = self._readout_bias if has_bias else torch.zeros(1, dtype=torch.float64)
        if self.init == "random":
            scale = RANDOM_INIT_SCALE * (float(w.pow(2).mean().sqrt()) or 1e-2)
            noise = torch.randn(self.n_heads, len(w), generator=generator, dtype=torch.float64)
            if self._direct:
                wd = self._direct_readout_weight
                scale_d = RANDOM_INIT_SCALE * (float(wd.pow(2).mean().sqrt()) or 1e-2)
                noise_d = torch.randn(self.n_heads, len(wd), generator=generator,
                                      dtype=torch.float64)
                self._initial_direct = wd[None, :] + scale_d * noise_d
            return w[None, :] + scale * noise, b.expand(self.n_heads).clone()
        if self._direct:
            heads, direct = laplace_direct_heads(self.model, train, val, self.n_heads, generator)
            self._initial_direct = torch.from_numpy(direct)
            heads = torch.from_numpy(heads)
            if has_bias:
                return heads[:, :-1].contiguous(), heads[:, -1].contiguous()
            return heads, torch.zeros(self.n_heads, dtype=torch.float64)
        heads = laplace_heads(self.model, train, val, self.n_heads, generator,
                              include_forces=forces_weight > 0,
                              energy_weight=energy_weight, forces_weight=forces_weight)
        heads = torch.from_numpy(heads)
        if has_bias:
            return heads[:, :-1].contiguous(), heads[:, -1].contiguous()
        return heads, torch.zeros(self.n_heads, dtype=torch.float64)

    def _set_readout(self, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     direct: Optional[torch.Tensor] = None) -> None:
        layer = self.model.readout_layer
        with torch.no_grad():
            layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
            if layer.bias is not None and bias is not None:
                layer.bias.copy_(bias.reshape(layer.bias.shape).to(layer.bias))
            if direct is not None:
                force_layer = self.model.force_readout_layer
                force_layer.weight.copy_(direct.reshape(force_layer.weight.shape)
                                         .to(force_layer.weight))

    #: A committee of heads: a Student-t for energies and forces (deep_ensemble.py)
    default_calibration = dict(COMMITTEE_CALIBRATION)
    #: Stds widened by r ** 1 beyond the calibration range: energies since the choice on
    #: six systems with reproducible heads (2026-12-03), forces (0.75 before) since their
    #: round on 25 fits (2026-12-05: Au3Pd's 900 K bulk 0.871 -> 0.914; docs/shift.md)
    default_extrapolation = {"energy": 1.0, "forces": 1.0}
    #: ... and by r ** 0.5 while the terms read every layer's features (the default since
    #: 2026-12-06): they grow faster themselves far out (docs/shift.md, "Every layer's
    #: features for the wrappers' terms")
    all_layers_extrapolation = {"energy": 0.5, "forces": 0.5}

    def default_widening(self) -> dict:
        """:attr:`all_layers_extrapolation` while the terms read every layer's features,
        else :attr:`default_extrapolation`."""
        return term_widening(self)

    #: Defaults of ``fit(**method_options)``; the other :data:`mlipuq.training.TRAINER_OPTIONS`
    #: (``lr_factor``, ``max_time``, ``weight_decay``...) take :func:`mlipuq.train`'s defaults.
    fit_defaults = MappingProxyType({"epochs": 50, "lr": 1e-3, "batch_size": 16, "patience": 20,
                    "energy_weight": 1.0, "forces_weight": 1.0, "var_floor": 1e-8})

    def fit(self, train, val=None, *, seed: int = 0, progress: bool = False,
            **method_options) -> "ShallowEnsemble":
        """Initialise the heads and train them (and the backbone if asked) by Gaussian NLL.

        Parameters
        ----------
        train, val
            Data with reference energies (eV) and, if ``forces_weight > 0``,
            forces (eV/Å). ``val`` drives early stopping and the best-epoch
            selection, calibrates the Laplace init, and is where the
            latent-distance term (``distance``) fits λ, a and b (None: on a
            held-out fifth of ``train``, whose atoms are then left out of the
            term's reference; the heads saw them, so pass ``val``). The term
            needs forces: with ``forces_weight=0`` it is left out, with a warning.
        seed
            Seeds the head initialisation and the trainer: a fit is reproducible,
            its heads bitwise with ``MKL_CBWR=AUTO`` in the environment (otherwise MKL's
            last digits vary from run to run and training amplifies them).
        progress
            Show a progress bar.
        **method_options
            ``epochs`` (50), ``lr`` (1e-3), ``batch_size`` (16), ``patience``
            (20) and the other :func:`mlipuq.train` options (``lr_factor``,
            ``max_time``, ``weight_decay``...; not ``checkpoint``);
            ``energy_weight``, ``forces_weight`` (1, 1): weights of the mean
            NLL of per-atom energies and of force components;
            ``var_floor`` (1e-8): added to the variances in the loss,
            (eV/atom)² for energies, (eV/Å)² for forces.

        Returns
        -------
        ShallowEnsemble
            ``self``, fitted.

        Notes
        -----
        After :func:`mlipuq.distributed.init` with two or more processes this
        is collective (every rank passes the same data and options): the
        Laplace init and the feature centre are computed over shards, and the
        heads (with ``train_backbone``, also the backbone) are trained data
        parallel with :class:`torch.nn.parallel.DistributedDataParallel`,
        each rank on its contiguous shard of ``train`` with ``batch_size``
        structures per step (global batch ``batch_size × world_size``; see
        :func:`mlipuq.train`). Every rank ends with the same heads.
        """
        options, trainer = split_fit_options("ShallowEnsemble", self.fit_defaults, method_options)
        options["var_floor"] = positive("var_floor", options["var_floor"])
        if self._direct and not options["forces_weight"] > 0:
            raise ValueError("an ensemble of direct force heads trains them on forces: "
                             "forces_weight must be > 0")
        model = self.model
        self.fitted_ = False
        train = mdata.as_dataset(train)
        val = None if val is None else mdata.as_dataset(val)
        need_forces = options["forces_weight"] > 0
        if not model.atomic_energies_set or getattr(model, "avg_num_neighbors", 0) is None:
            fit_scales(model, train, prepare_graphs(train, model, need_forces=need_forces))
        else:
            train.validate(model.species, require_energy=True, require_forces=need_forces)
        self._set_readout(self._readout_weight, self._readout_bias, self._direct_readout_weight)
        weight, bias = self._initial_heads(train, val, seed, options["energy_weight"],
                                           options["forces_weight"])
        direct = self._initial_direct.to(model.dtype) if self._direct else None
        center = mean_feature(model, train, trainer["batch_size"], sharded=True)
        heads = _Heads(weight.to(model.dtype), bias.to(model.dtype),
                       self._readout_bias is not None, center.to(model.dtype),
                       direct).to(model.device)
        trainable = HeadsNLL(model, heads, train_backbone=self.train_backbone,
                             vectorize=self.vectorize, **options)
        self.history_ = trainable.fit(train, val, seed=seed, progress=progress, **trainer)
        self.head_weight_ = heads.weight.detach().clone()
        self.head_bias_ = heads.bias.detach().clone()
        self.direct_weight_ = None if heads.direct is None else heads.direct.detach().clone()
        self._set_readout(self.head_weight_.to(torch.float64).mean(0),
                          self.head_bias_.to(torch.float64).mean(0),
                          None if self.direct_weight_ is None
                          else self.direct_weight_.to(torch.float64).mean(0))
        fit_offset_drift(model, train)  # the heads' mean is the mean: its own drift
        fit_terms(self, train, val, seed=seed, progress=progress, need_forces=need_forces,
                  batch_size=trainer["batch_size"])
        self.fitted_ = True
        return self

    # ---------------------------------------------------------------- predict
    has_stress_uncertainty = True

    def _predict_batch(self, batch: mdata.Batch, stress: bool = False) -> dict:
        with capture(self.model, self.distance_features) as term_features:
            out = head_members(self.model, batch, self.head_weight_, self.head_bias_,
                               forces=True, vectorize=self.vectorize, stress=stress,
                               direct_weight=self.direct_weight_)
            phi = term_features(out["features"])
        energy_members = out["energy"].detach().cpu()
        forces_members = out["forces"].detach().cpu()
        energy, energy_var = member_statistics(energy_members)
        forces, forces_var = member_statistics(forces_members)
        result = with_terms(self, phi, batch, {
            "energy": energy, "energy_var": energy_var, "energy_members": energy_members,
            "forces": forces, "forces_var": forces_var, "forces_members": forces_members})
        _, result["atom_energy_var"] = member_statistics(out["atom_energy"].cpu())
        if stress:
            stress_members = out["stress"].detach().cpu()
            result["stress"], result["stress_var"] = member_statistics(stress_members)
            result["stress_members"] = stress_members
        return result

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"n_heads": self.n_heads, "init": self.init, "train_backbone": self.train_backbone,
                "vectorize": self.vectorize,
                # absent for the heads alone, as in files saved before the term: equal fingerprints
                **({} if self.distance is None else {"distance": self.distance}),
                **({} if self.energy_combination is None
                   else {"energy_combination": self.energy_combination}),
                **({} if self.force_combination == "sum"  # absent: files as before
                   else {"force_combination": self.force_combination}),
                **({} if self.distance_ridge_scale == "all_atoms"  # absent: the ridge before
                   else {"distance_ridge_scale": self.distance_ridge_scale}),
                **({} if self.distance_features == "readout"
                   else {"distance_features": self.distance_features})}

    def _set_models(self, models) -> None:
        super()._set_models(models)
        for term in (self.distance_, self.energy_distance_):
            if term is not None:
                term.model = self.model

    @classmethod
    def _from_config(cls, models: list[MLIP], config: dict) -> "ShallowEnsemble":
        (model,) = models
        wrapper = cls.__new__(cls)
        wrapper._setup(model, config["n_heads"], config["init"], config["train_backbone"])
        wrapper.vectorize = config.get("vectorize", "auto")
        wrapper.distance = config.get("distance")  # absent in files saved before the term
        wrapper.energy_combination = check_energy_combination(  # absent before it existed
            config.get("energy_combination"))
        wrapper.force_combination = check_force_combination(
            config.get("force_combination", "sum"))
        wrapper.distance_ridge_scale = check_ridge_scale(
            config.get("distance_ridge_scale", "all_atoms"), wrapper.distance or "mahalanobis",
            "distance_ridge_scale")
        wrapper.distance_features = check_term_features(
            config.get("distance_features", "readout"), model, wrapper.distance)
        return wrapper

    def _format_version(self) -> int:  # 3: version-2 readers would drop a shared term
        return 3 if self.energy_distance_ is self.distance_ is not None else 2

    def _get_state(self) -> dict:
        state = {
            "head_weight": self.head_weight_,
            "head_bias": self.head_bias_,
            "readout_weight": self._readout_weight,
            "readout_bias": self._readout_bias,
        }
        if self._direct:  # only then: files of other ensembles unchanged
            state["direct_weight"] = self.direct_weight_
            state["direct_readout_weight"] = self._direct_readout_weight
        if self.distance_ is not None:
            state["distance"] = self.distance_._get_state()
        if self._format_version() == 3:  # one term for both (force_combination="max")
            state["energy_distance_shared"] = True  # saved once
        elif self.energy_distance_ is not None:
            state["energy_distance"] = self.energy_distance_._get_state()
        return state

    def _set_state(self, state: dict) -> None:
        self.head_weight_ = torch.as_tensor(state["head_weight"])
        self.head_bias_ = torch.as_tensor(state["head_bias"])
        self._readout_weight = torch.as_tensor(state["readout_weight"], dtype=torch.float64)
        bias = state.get("readout_bias")
        self._readout_bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float64)
        direct = state.get("direct_weight")  # absent: no direct heads (and older files)
        self._direct = direct is not None
        self.direct_weight_ = None if direct is None else torch.as_tensor(direct)
        self._direct_readout_weight = (
            None if direct is None
            else torch.as_tensor(state["direct_readout_weight"], dtype=torch.float64))
        term = state.get("distance")  # absent in files saved before the distance term
        self.distance = None if term is None else (self.distance or "mahalanobis")
        self.distance_ = None if term is None else load_distance_term(
            self.model, self.distance, term, structure_covariance=(
                "held-out" if self.force_combination == "max" else "ledoit-wolf"),
            ridge_scale=self.distance_ridge_scale, features=self.distance_features)
        term = state.get("energy_distance")  # absent in files saved before the energy term
        self.energy_distance_ = self.distance_ if state.get("energy_distance_shared") else (
            None if term is None else load_distance_term(
                self.model, self.distance or "mahalanobis", term,
                structure_covariance="held-out", ridge_scale=self.distance_ridge_scale,
                features=self.distance_features))
