"""Distance-aware uncertainty from the base model's last-layer (readout) features.

An atom whose readout features :math:`\\phi_i` lie far from every training
atom of its element is outside the data the model learned from, and its
prediction deserves less trust (latent-space k-nearest-neighbour and Gaussian
mixture uncertainties: Hu et al., Mach. Learn.: Sci. Technol. 3, 045028, 2022;
Zhu et al., J. Chem. Phys. 158, 164111, 2023). One forward pass gives the
energy, the forces and :math:`\\phi_i` (by default, for models that name their
message-passing layers, every layer's invariant features before it too:
``features``); the features are standardised (float64, per feature, with the
training atoms' mean and std) and scored against the stored training atoms of the
same species:

* ``score="mahalanobis"`` (default): the distance to the species' training mean,
  :math:`|L^T(\\phi_i - \\mu)|`, :math:`LL^T` the inverse training covariance (+1e-4
  of each feature's variance within the species on its diagonal, ``ridge_scale``; a
  one-component :class:`sklearn.mixture.GaussianMixture`): an atom
  leaving a narrow direction of the correlated training cloud is far;
* ``score="knn"``: the mean Euclidean distance to the ``n_neighbors``
  nearest training atoms (:class:`sklearn.neighbors.NearestNeighbors`);
* ``score="gmm"``: a Gaussian mixture per species
  (:class:`sklearn.mixture.GaussianMixture`), raw score
  :math:`\\sqrt{2\\max(0, -\\log p(\\phi_i) + \\log p_{\\max})}`, a
  Mahalanobis-like distance (:math:`\\log p_{\\max}`: the largest training
  log-density).

Each species' raw scores are divided by that species' typical training score
(the median over training atoms, leave-one-out for the kNN score), so the
per-atom score :math:`u_i \\ge 0` is dimensionless: ``u ≈ 1`` is as far as
training atoms lie from each other, ``u ≫ 1`` is out of distribution.

Scores become variances with four parameters fitted by Gaussian NLL on held-out
data (``val``, or a hold-out fraction of ``train``):

.. math:: \\sigma^2_{F,ic} = a_F + b_F u_i^2, \\qquad
          \\sigma^2_E = n^2 (a_E + b_E U^2),

:math:`a, b \\ge 0` (eV²/Å², eV²), variances that grow with distance without
bound: per atom for the forces; for the energy, coherent over the structure's
n atoms, :math:`U` the latent distance of the structure as a whole
(:mod:`mlipuq.uq.structure_distance`; ``energy_distance="structure"``, the
default). ``energy_distance="atoms"`` keeps the sum of independent atoms,
:math:`\\sigma^2_E = a_E n + b_E \\textstyle\\sum_i u_i^2` (the default before,
and how files saved before load). ``a/b`` is capped by
``min_distance_share`` so that the distance term is never dropped (a handful
of held-out structures cannot tell the two terms apart). Atoms without a
neighbour within the cutoff feel no force: their force variance is 0.

``combine=other`` adds the latent variance to another fitted wrapper's:
mean = the other's (uncalibrated) mean, and
:math:`\\sigma^2 = \\lambda\\,\\sigma^2_{\\rm other} + a + b u^2` with
:math:`\\lambda, a, b \\ge 0` fitted jointly by NLL on the held-out data, so
that the two do not double-count the error they both explain; with
``energy_distance=None`` the energies keep the other's variance alone.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.models.base import MLIP
from mlipuq.prediction import Prediction
from mlipuq.calibration.recalibrate import stretch_members
from mlipuq.uq import base as uq_base
from mlipuq.uq import latent_features, structure_distance
from mlipuq.uq.base import COMMITTEE_CALIBRATION, UQWrapper, _check_model, register
from mlipuq.uq.latent_scores import LatentScores
from mlipuq.uq.latent_maps import (_C_MIN, RIDGE_SCALES, STRUCTURE_COVARIANCES,  # noqa: F401
                                   _gmm_log_density, check_ridge_scale, check_share,
                                   check_structure_covariance, fit_gmm, fit_variance_map,
                                   knn_scores, warn_if_few)

log = logging.getLogger(__name__)

_SCORES = ("mahalanobis", "knn", "gmm")
_ENERGY_DISTANCES = ("structure", "atoms", None)

__all__ = ["LatentDistance", "check_ridge_scale", "fit_variance_map", "knn_scores",
           "STRUCTURE_COVARIANCES"]


# ------------------------------------------------------------------- wrapper
@register
class LatentDistance(LatentScores, UQWrapper):
    """Uncertainty from the distance of each atom's readout features to the training atoms.

    Parameters
    ----------
    model
        A trained :class:`~mlipuq.models.MLIP`, used as is (not modified).
    score
        ``"mahalanobis"`` (distance to the species' training mean in units of
        its training covariance), ``"knn"`` (mean Euclidean distance to the
        ``n_neighbors`` nearest training atoms of the same species) or
        ``"gmm"`` (Gaussian-mixture negative log-likelihood per species, as a
        distance).
    n_neighbors
        k of the kNN score.
    n_components
        Mixture components per species for ``"gmm"`` (fewer for species with
        under ``4 n_components`` training atoms); full covariances.
    max_points
        At most this many training atoms per species are stored (kNN) or
        fitted (Mahalanobis, GMM), and training structures fitted (structure
        distance), drawn at random with ``fit``'s seed: memory and predict time
        stay bounded (float64, ``max_points × n_features × 8`` bytes per species;
        the structure precision ``(n_elements n_features)² × 8`` bytes);
        ``fit`` warns below ``5 n_features`` for a covariance.
    min_distance_share
        Smallest share of the distance term in the variance at ``u = 1``
        (the training data's own spacing): ``a <= b (1 - share) / share``.
    min_combined_share
        With ``combine``: the smallest share of the latent term ``a + b u²`` in
        the mean variance of the held-out data, so that the joint fit cannot
        give all of it to the other wrapper's variance, whose term does not grow
        away from the data (None, default: λ, a, b free;
        :class:`~mlipuq.uq.EvidentialHead` sets it, ``docs/shift.md``).
    combine
        Another fitted wrapper (any class) whose variance the latent variance
        is added to; its mean becomes the mean, and its ``default_calibration``
        this wrapper's (a committee's: a Student-t for the energies too). See
        the module notes. A :class:`~mlipuq.uq.DeepEnsemble` neither calibrated nor
        recentred (:meth:`~mlipuq.uq.DeepEnsemble.recentre`) is recentred on the
        held-out structures by ``fit``, as its own ``calibrate`` would.
    energy_distance
        ``"structure"`` (default): the energy variance grows with the latent
        distance of the whole structure, coherently over its atoms (``fit``
        warns below 5 training structures per structure feature, i.e. per
        element and readout feature); ``"atoms"``: a sum of independent
        per-atom variances. See the module notes. None (with ``combine`` only): no
        latent term for the energies, whose variance is the combined wrapper's alone
        (λ_E = 1; the forces still get theirs).
    structure_covariance
        Covariance of the training structures' descriptors that the structure
        distance is measured in: ``"held-out"``, the empirical covariance plus the
        diagonal term under which the held-out structures (``val``) are most likely
        (:func:`~mlipuq.uq.structure_distance.held_out_covariance`), or
        ``"ledoit-wolf"`` (shrunk, + 1e-4 on the diagonal). None (default):
        ``"held-out"`` for the structure distance, else ``"ledoit-wolf"`` (the
        default before 2026-12-04, and how files saved without it load). On
        refitted base models (``mlipuq.train``'s default) the held-out covariance
        met the energy goal under shift on 20 of 21 fits against 5 (with LLPR: 11),
        at a price in sharpness beyond the calibration range (``docs/shift.md``).
    features
        What the distances are measured in: ``"all_layers"``, the invariant features
        after every message-passing layer the model names (``model.layer_modules()``,
        MiniMLIP's) followed by the readout layer's input :math:`\\phi_i`,
        concatenated; ``"readout"``, :math:`\\phi_i` alone. None (default):
        ``"all_layers"`` where the model names its layers, else ``"readout"`` (the
        default until 2026-12-06, and what files saved without it load with). With
        every layer's, ``calibrate`` widens the force stds by ``r ** 0.5`` and the
        energies' by ``r ** 0.75`` beyond the calibration range
        (:attr:`all_layers_extrapolation`; energies ``r ** 1`` until a round of
        2026-12-06, docs/shift.md), with the readout's by ``r ** 0.75`` and
        ``r ** 1``. Trained on cells narrower than twice the cutoff, MiniMLIPs moved
        their first layer's features far more than their readout's in wider cells
        (``docs/latent.md``, "Features of every layer"); chosen in a round on twelve
        systems (``docs/shift.md``, "Every layer's features as latent distance's
        default").
    ridge_scale
        Whose spread the Mahalanobis and mixture scores' covariance ridge (1e-4) is
        relative to: ``"per_species"`` (None, the default for them), each element's
        own (the species' Gaussian fitted on its atoms standardised among
        themselves), nearly the exact Mahalanobis distance; ``"all_atoms"`` (the
        default until 2026-12-06, and what files saved before load with), every
        training atom's per feature, so that with several elements a direction in
        which one element's atoms barely vary (small beside the spread between
        elements) falls under the ridge and is not seen. One element: the two agree.
        ``"knn"`` has no ridge (None: ``"all_atoms"``, which it ignores; it refuses
        ``"per_species"``). Measured in ``docs/latent.md`` ("The ridge relative to
        each element") and ``docs/shift.md``.

    Attributes
    ----------
    energy_a_, energy_b_
        Energy variance map, eV²: ``σ²_E = n² (a_E + b_E U²)``
        (``energy_distance="atoms"``: ``a_E n + b_E Σ_i u_i²``); the local
        (per-atom) energy variance ``atom_energy_var`` is ``a_E + b_E u_i²``.
    structure_
        The training structures' descriptor location, precision and distance
        scale (:mod:`~mlipuq.uq.structure_distance`; None with ``"atoms"`` or None).
    forces_a_, forces_b_
        eV²/Å² (force-component variance map).
    energy_other_scale_, forces_other_scale_
        λ multiplying ``combine``'s variances (0 without ``combine``).
    score_scale_
        Per species (atomic number): the raw score that maps to ``u = 1``.
    """

    #: Energies widened by r ** 1 beyond the calibration range: a map fitted on
    #: in-distribution errors, linear in U, grows slower than the errors of surfaces and
    #: strained cells (EMT AgPd, Pt₃Ni): chosen on six systems (extrapolation.py)
    default_extrapolation = {"energy": 1.0, "forces": 0.75}
    #: ... and the forces by r ** 0.5 while the distances are measured in every layer's
    #: features (the default since 2026-12-06; docs/shift.md, "Every layer's features as
    #: latent distance's default": they grow faster far out themselves), the energies by
    #: r ** 0.75 ("A milder energy widening for every layer's features", the same day)
    all_layers_extrapolation = {"energy": 0.75, "forces": 0.5}
    #: Energies calibrated as the committees' are, a Student-t (ν ≤ 3) as for the forces,
    #: since 2026-12-05: over 25 fits of the shift benchmark the energy goal was met on 25
    #: against 24 with the scalar factor, the median in-distribution energy NLL 0.04 nats
    #: worse (docs/shift.md, "Latent distance's energies with a Student-t"). With
    #: ``combine``, the calibration of the wrapper it extends.
    default_calibration = dict(COMMITTEE_CALIBRATION)

    def __init__(
        self,
        model: MLIP,
        *,
        score: str = "mahalanobis",
        n_neighbors: int = 5,
        n_components: int = 4,
        max_points: int = 10000,
        min_distance_share: float = 0.1,
        combine: Optional[UQWrapper] = None,
        energy_distance: Optional[str] = "structure",
        structure_covariance: Optional[str] = None,
        min_combined_share: Optional[float] = None,
        features: Optional[str] = None,
        ridge_scale: Optional[str] = None,
    ):
        self.model = _check_model(model)
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
        features = latent_features.check_term_features(features, self.model, score,
                                                       "features")
        ridge_scale = check_ridge_scale(ridge_scale, score)
        if energy_distance not in _ENERGY_DISTANCES:
            raise ValueError(f"energy_distance must be one of {_ENERGY_DISTANCES}, "
                             f"got {energy_distance!r}")
        if structure_covariance is None:
            structure_covariance = "held-out" if energy_distance == "structure" else "ledoit-wolf"
        check_structure_covariance(structure_covariance)
        if structure_covariance != "ledoit-wolf" and energy_distance != "structure":
            raise ValueError(f"structure_covariance={structure_covariance!r} is the covariance "
                             "of the structure distance: it needs energy_distance='structure', "
                             f"got {energy_distance!r}")
        if energy_distance is None and combine is None:
            raise ValueError("energy_distance=None leaves the energies to the combined "
                             "wrapper's variance: it needs combine=")
        for name, value in (("n_neighbors", n_neighbors), ("n_components", n_components),
                            ("max_points", max_points)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_share(min_distance_share, "min_distance_share")
        if combine is not None and not isinstance(combine, UQWrapper):
            raise TypeError(f"combine must be a fitted UQ wrapper, got {type(combine).__name__}")
        check_share(min_combined_share, "min_combined_share", optional=True)
        self.score = score
        self.n_neighbors = int(n_neighbors)
        self.n_components = int(n_components)
        self.max_points = int(max_points)
        self.min_distance_share = float(min_distance_share)
        self.min_combined_share = (None if min_combined_share is None
                                   else float(min_combined_share))
        self.combine = combine
        if combine is not None:  # calibrated as the wrapper it extends (committees: a t for
            # their energies too, whose variance stays mostly a K-member estimate)
            self.default_calibration = dict(combine.default_calibration)
        self.energy_distance = energy_distance
        self.structure_covariance = structure_covariance
        self.features = features
        self.ridge_scale = ridge_scale
        self.structure_ = None
        self._index: dict = {}

    def __repr__(self) -> str:
        other = "" if self.combine is None else f", combine={type(self.combine).__name__}"
        knn = f", n_neighbors={self.n_neighbors}" if self.score == "knn" else ""
        energy = ("" if self.energy_distance == "structure"
                  else f", energy_distance={self.energy_distance!r}")
        if self.structure_covariance != "ledoit-wolf":
            energy += f", structure_covariance={self.structure_covariance!r}"
        if self.features != latent_features.check_term_features(None, self.model, self.score):
            energy += f", features={self.features!r}"
        if self.ridge_scale != check_ridge_scale(None, self.score):  # not the default
            energy += f", ridge_scale={self.ridge_scale!r}"
        return (f"LatentDistance({type(self.model).__name__}, score={self.score!r}{knn}{energy}"
                f"{other})")

    def default_widening(self) -> dict:
        """:attr:`all_layers_extrapolation` while the distances are measured in every
        layer's features, else :attr:`default_extrapolation`."""
        return latent_features.term_widening(self, self.features)

    # ------------------------------------------------------------ UQWrapper API
    def _models(self) -> list[MLIP]:
        return [self.model] + (self.combine._models() if self.combine is not None else [])

    def _set_models(self, models: list[MLIP]) -> None:
        self.model = models[0]
        if self.combine is not None:
            self.combine._set_models(models[1:])

    def config(self) -> dict:
        combine = None
        if self.combine is not None:
            combine = {"class": type(self.combine).__name__, "config": self.combine.config(),
                       "n_models": len(self.combine._models())}
        config = {"score": self.score, "n_neighbors": self.n_neighbors,
                  "n_components": self.n_components, "max_points": self.max_points,
                  "min_distance_share": self.min_distance_share, "combine": combine}
        if self.energy_distance != "atoms":  # files saved before keep their fingerprint
            config["energy_distance"] = self.energy_distance
        if self.structure_covariance != "ledoit-wolf":  # likewise
            config["structure_covariance"] = self.structure_covariance
        if self.min_combined_share is not None:  # likewise
            config["min_combined_share"] = self.min_combined_share
        if self.features != "readout":  # likewise
            config["features"] = self.features
        if self.ridge_scale != "all_atoms":  # likewise (saved: the default since 2026-12-06)
            config["ridge_scale"] = self.ridge_scale
        return config

    @classmethod
    def _from_config(cls, models: list[MLIP], config: dict) -> "LatentDistance":
        config = dict(config)
        config.setdefault("energy_distance", "atoms")  # files saved before it existed
        config.setdefault("structure_covariance", "ledoit-wolf")  # saved without: theirs
        config.setdefault("ridge_scale", "all_atoms")  # likewise (the default until 2026-12-06)
        config.setdefault("features", "readout")  # likewise
        spec = config.pop("combine", None)
        other = None
        if spec is not None:
            other_cls = uq_base.wrapper_class(spec["class"])
            if other_cls is None:
                raise ValueError(f"unknown combined wrapper class {spec['class']!r}")
            n = int(spec["n_models"])
            if len(models) != 1 + n:
                raise ValueError(f"{len(models)} base models for a combination needing {1 + n}")
            other = other_cls._from_config(models[1:], spec["config"])
        return cls(models[0], combine=other, **config)

    _STATE = ("feature_mean_", "feature_scale_", "species_", "points_", "score_scale_",
              "gmm_", "energy_a_", "energy_b_", "forces_a_", "forces_b_",
              "energy_other_scale_", "forces_other_scale_", "n_train_")

    def _get_state(self) -> dict:
        state = self._own_state()
        if self.combine is not None:
            state["combine_state"] = self.combine._get_state()
        return state

    def _own_state(self) -> dict:
        """The fitted reference and maps, without the combined wrapper's state."""
        state = {name: getattr(self, name) for name in self._STATE}
        # dictionaries keyed by atomic number: string keys for plain storage
        for name in ("points_", "score_scale_", "gmm_"):
            state[name] = {str(z): v for z, v in state[name].items()}
        if self.structure_ is not None:  # absent for "atoms" (files saved before)
            state["structure_"] = dict(self.structure_)
        return state

    def _set_state(self, state: dict) -> None:
        self._set_own_state(state)
        if self.combine is not None:
            self.combine._set_state(state["combine_state"])
            self.combine.fitted_ = True

    def _set_own_state(self, state: dict) -> None:
        for name in self._STATE:
            value = state[name]
            if name in ("points_", "score_scale_", "gmm_"):
                value = {int(z): v for z, v in value.items()}
            setattr(self, name, value)
        self.species_ = [int(z) for z in self.species_]
        self.structure_ = state.get("structure_")
        if (self.structure_ is not None) != (self.energy_distance == "structure"):
            raise ValueError(f"energy_distance={self.energy_distance!r} "
                             f"{'without' if self.structure_ is None else 'with'} a structure "
                             "reference (structure_)")
        self._index = {}

    @property
    def n_members(self) -> int:
        """The combined wrapper's members (stretched to the combined variance), else 0."""
        return 0 if self.combine is None else self.combine.n_members

    @property
    def has_consistent_members(self) -> bool:
        """False: stretched atom by atom, member forces are no energy gradients."""
        return self.combine is None

    def members_hint(self, *, forces: bool = False) -> str:
        if forces and self.combine is not None and self.combine.n_members:
            return (f"the {type(self.combine).__name__} itself: LatentDistance stretches its "
                    "members' forces atom by atom (no longer energy gradients)")
        return ("a committee wrapper (DeepEnsemble, ShallowEnsemble, LastLayerLaplace with "
                "force_variance='samples'), alone or as LatentDistance(combine=...)")

    # --------------------------------------------------------------- features
    def _passes(self, dataset, batch_size: int, forces: bool, progress: bool = False,
                desc: str = "latent"):
        """Per batch: (batch, model output, float64 NumPy features)."""
        return latent_features.passes(self, dataset, batch_size, forces, progress, desc)

    # -------------------------------------------------------------------- fit
    def fit(self, train, val=None, *, seed: int = 0, progress: bool = False,
            **method_options) -> "LatentDistance":
        """Store the training atoms' features (and structures' descriptors), then fit the
        variance map on held-out data.

        Parameters
        ----------
        train
            Structures with reference energies (eV) and forces (eV/Å); their
            atoms' features are the reference the distances are measured to.
        val
            Held-out structures (references needed) on which the variance map
            is fitted by Gaussian NLL, best data the base model was not trained
            on. None: a random ``val_fraction`` of ``train``'s structures (at
            least one) is held out and left out of the reference.
        seed
            Seeds the hold-out split, the stored-point subsample and the GMMs.
        progress
            Show progress bars.
        **method_options
            ``batch_size`` (16): structures per pass; ``val_fraction`` (0.2);
            ``covariance_data``: structures held out from ``train`` on which the
            ``"held-out"`` structure covariance is chosen (None: the held-out data).

        Returns
        -------
        LatentDistance
            ``self``, fitted.
        """
        batch_size = int(method_options.pop("batch_size", 16))
        val_fraction = float(method_options.pop("val_fraction", 0.2))
        covariance_data = method_options.pop("covariance_data", None)
        if method_options:
            raise TypeError(f"LatentDistance.fit got unexpected option(s) {sorted(method_options)}"
                            "; valid: batch_size, val_fraction, covariance_data")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if self.combine is not None:
            self.combine._check_fitted()
        dataset = mdata.as_dataset(train)
        latent_features.validate(dataset, self.species)  # each rank its share
        if val is None:
            reference, held_out = latent_features.hold_out(dataset, val_fraction, seed)
        else:
            held_out = mdata.as_dataset(val)
            latent_features.validate(held_out, self.species)
            reference = dataset
        if self._combine_needs_recentring():  # the deep ensemble's calibrate would have
            self.combine.recentre(held_out)   # recentred its members (docs/latent.md)
        self._fit_reference(reference, batch_size, seed, progress, held_out
                            if covariance_data is None else mdata.as_dataset(covariance_data))
        self._fit_map(held_out, batch_size, progress)
        self.n_train_ = len(reference)
        if mdist.active():  # every rank fitted on the same gathered data: rank 0's, bit for bit
            self._set_own_state(mdist.broadcast_object(self._own_state()))
        self.fitted_ = True
        return self

    def _combine_needs_recentring(self) -> bool:
        """Whether ``combine`` is a deep ensemble neither recentred nor calibrated: its
        members then keep the constant per-species errors that its calibrate removes
        first, and which would dominate the spread combined here."""
        combine = self.combine
        return (hasattr(combine, "recentre") and not combine.recentring_chosen_
                and not combine.calibrated_)

    def _fit_reference(self, reference, batch_size: int, seed: int, progress: bool,
                       held_out=None) -> None:
        phi, numbers, structure, n_structures = latent_features.reference_features(
            self, reference, batch_size, progress)
        mean, std = phi.mean(axis=0), phi.std(axis=0)
        self.feature_mean_ = mean
        self.feature_scale_ = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
        x = self.standardise(phi)
        rng = np.random.default_rng(seed)
        self.species_ = sorted(int(z) for z in np.unique(numbers))
        missing = sorted(set(self.species) - set(self.species_))
        if missing:
            log.warning("LatentDistance: no training atoms of atomic numbers %s; their atoms "
                        "are scored against the nearest training element and left out of "
                        "the structures' energy distance (a new element is a new "
                        "composition: see the composition variance)", missing)
        self.points_, self.gmm_, self.score_scale_ = {}, {}, {}
        self._index = {}
        for z in self.species_:
            rows = np.flatnonzero(numbers == z)
            if len(rows) > self.max_points:
                rows = np.sort(rng.choice(rows, size=self.max_points, replace=False))
            points = np.ascontiguousarray(x[rows])
            if self.score == "knn":
                self.points_[z] = points
                typical = knn_scores(points, None, self.n_neighbors, leave_one_out=True)
            else:
                warn_if_few(points.shape, f"atoms of atomic number {z}")
                self.gmm_[z] = self._fit_gmm(points, seed)
                typical = self._raw_scores(z, points)
            scale = float(np.median(typical)) if len(typical) else 0.0
            self.score_scale_[z] = scale
        self.structure_ = None
        if self.energy_distance == "structure":
            self.structure_ = structure_distance.wrapper_reference(
                self, x, numbers, structure, n_structures, rng,
                held_out if self.structure_covariance == "held-out" else None, batch_size,
                progress)
        positive = [v for v in self.score_scale_.values() if v > 0]
        fallback = float(np.median(positive)) if positive else 1.0
        for z, v in self.score_scale_.items():
            if not v > 0:
                log.warning("LatentDistance: atomic number %d has too few distinct training "
                            "atoms for its own score scale; using %.3g", z, fallback)
                self.score_scale_[z] = fallback

    def _fit_map(self, held_out, batch_size: int, progress: bool) -> None:
        own = self.combine is None  # with combine, the mean energies and forces are the other's
        v = latent_features.map_terms(self, held_out, batch_size, own, progress)
        e_other = f_other = None
        if self.combine is not None:
            other = self.combine.predict(held_out, batch_size=batch_size, calibrated=False,
                                         composition=False)  # as in predict: added after
            v["e"], v["f"] = other.energy, other.forces.reshape(-1)
            e_other, f_other = other.energy_var, other.forces_var.reshape(-1)
        keep = np.isfinite(v["fq"]) & np.isfinite(v["f_ref"])
        c_max = max((1.0 - self.min_distance_share) / self.min_distance_share, 2 * _C_MIN)
        energy = ({"a": 0.0, "b": 0.0, "other_scale": 1.0}  # the combined wrapper's alone
                  if self.energy_distance is None else
                  fit_variance_map((v["e"] - v["e_ref"]) ** 2, v["n"], v["q"], e_other,
                                   c_max=c_max, min_share=self.min_combined_share))
        forces = fit_variance_map(((v["f"] - v["f_ref"]) ** 2)[keep], np.ones(int(keep.sum())),
                                  v["fq"][keep], None if f_other is None else f_other[keep],
                                  c_max=c_max, min_share=self.min_combined_share)
        self.energy_a_, self.energy_b_ = energy["a"], energy["b"]
        self.forces_a_, self.forces_b_ = forces["a"], forces["b"]
        self.energy_other_scale_ = energy["other_scale"]
        self.forces_other_scale_ = forces["other_scale"]
        log.info("LatentDistance map: energy a=%.3g b=%.3g eV^2, forces a=%.3g b=%.3g eV^2/A^2"
                 " (combine scales %.3g, %.3g)", self.energy_a_, self.energy_b_, self.forces_a_,
                 self.forces_b_, self.energy_other_scale_, self.forces_other_scale_)

    # ---------------------------------------------------------------- predict
    def _predict_batch(self, batch: mdata.Batch) -> dict:
        out, phi = latent_features.model_pass(self, batch, forces=True)
        energy_var, atom_var, force_var = self.latent_parts(phi, batch)
        return {"energy": out["energy"].detach(), "energy_var": energy_var,
                "forces": out["forces"].detach(), "atom_energy_var": atom_var,
                "forces_var": np.repeat(force_var[:, None], 3, axis=1)}

    def _add_composition_variance(self, prediction: Prediction) -> Prediction:
        """``combine``'s when combined (its mean is the mean: a deep ensemble's drift
        is its members' mean), else every wrapper's."""
        if self.combine is not None:
            return self.combine._add_composition_variance(prediction)
        return super()._add_composition_variance(prediction)

    def _mean_stress(self, batch: mdata.Batch) -> torch.Tensor:
        """(B, 3, 3) stress (eV/Å^3) of the mean model: ``combine``'s when combined."""
        if self.combine is not None:
            return self.combine._mean_stress(batch)
        return super()._mean_stress(batch)

    def predict(self, structures, *, calibrated: bool = True, **options) -> Prediction:
        """Energies (eV), forces (eV/Å) and their variances (see the class notes).

        ``options`` are :meth:`UQWrapper.predict`'s (``batch_size``, ``progress``,
        ``composition``). With ``combine``, the other wrapper's uncalibrated mean
        and variance are combined with the latent variance; ``calibrated``
        applies this wrapper's own recalibration (:meth:`calibrate`); the
        composition variance (the combined wrapper's) is added once, after it.
        """
        composition = options.pop("composition", True)
        own = super().predict(structures, calibrated=False, composition=False, **options)
        if self.combine is not None:
            options.pop("progress", None)
            other = self.combine.predict(structures, calibrated=False, composition=False,
                                         **options)
            e_var = self.energy_other_scale_ * other.energy_var + own.energy_var
            f_var = self.forces_other_scale_ * other.forces_var + own.forces_var
            own = Prediction(  # members (if any) stretched to the combined variance
                energy=other.energy, energy_var=e_var, forces=other.forces, forces_var=f_var,
                energy_members=stretch_members(other.energy_members, other.energy, e_var,
                                               other.energy_var),
                forces_members=stretch_members(other.forces_members, other.forces, f_var,
                                               other.forces_var),
                n_atoms=own.n_atoms, batch=own.batch, numbers=own.numbers,
                atom_energy_var=None if other.atom_energy_var is None or own.atom_energy_var
                is None else self.energy_other_scale_ * other.atom_energy_var
                + own.atom_energy_var,  # per atom, as the energies: λσ² + the latent part
                # the stress and its spread are the combined wrapper's (no latent part)
                stress=other.stress, stress_var=other.stress_var,
                stress_members=other.stress_members, strain_energy_var=own.strain_energy_var,
            )
            self._check_finite(own)
        if calibrated:
            own = self._apply_calibration(own)
            self._warn_wide_cells(mdata.as_dataset(structures))
        return self._add_composition_variance(own) if composition else own
