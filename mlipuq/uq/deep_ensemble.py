"""Deep ensemble: K independently trained models (Lakshminarayanan et al. 2017).

Every member is a complete MLIP trained from its own random initialisation
(and optionally its own bootstrap resample of the training set). For a
structure with member energies :math:`E_k` (eV) and forces :math:`F_k` (eV/Å),

.. math:: \\bar E = \\frac1K \\sum_k E_k, \\qquad
          \\sigma_E^2 = \\frac1K \\sum_k (E_k - \\bar E)^2,

and the same per atom and Cartesian component for the forces, and per atom
for the local energies :math:`\\varepsilon_{ik} + e_{Z_i}` (``atom_energy_var``,
eV², members' species reference energies included). The variance
is the population variance over members (``ddof=0``), computed in float64;
multiply by ``K / (K - 1)`` for the unbiased estimate (recalibration with
:meth:`~mlipuq.uq.base.UQWrapper.calibrate` absorbs any such constant).

Stresses (``predict(..., stress=True)``, periodic cells): each member's own
stress, the strain derivative of its energy (:meth:`mlipuq.models.MLIP.forward`
with ``stress=True``, in the same pass as its forces); ``stress`` is their
mean, ``stress_var`` their population variance and ``stress_members`` (K, B, 3,
3) the members (recentring offsets are constant per atom and do not move them).
Cost: training and prediction are K times those of one model.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.models.base import MLIP
from mlipuq.prediction import Prediction
from mlipuq.training import History
from mlipuq.training import train as train_model
from mlipuq.uq import deep_distance
from mlipuq.uq.latent_distance import _SCORES
from mlipuq.uq.base import (COMMITTEE_CALIBRATION, UQWrapper, _check_model,  # noqa: F401
                             calibration_data, register)  # (COMMITTEE_CALIBRATION: its first home)
from mlipuq.uq.recentring import (mean_drift, member_alignment, members_only,
                                  recentring_offsets, recentring_weighting, shifted_members)

log = logging.getLogger(__name__)

DEFAULT_MEMBERS = 5


def member_statistics(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance (``ddof=0``) over the first axis, in float64.

    Parameters
    ----------
    members
        (K, ...) member predictions (eV or eV/Å).

    Returns
    -------
    mean, var
        Detached float64 tensors of shape ``members.shape[1:]`` (eV and eV²,
        or eV/Å and eV²/Å²).
    """
    values = members.detach().to(torch.float64)
    mean = values.mean(dim=0)
    var = ((values - mean) ** 2).mean(dim=0)
    return mean, var


def _atom_energies(model: MLIP, batch: mdata.Batch, eps: torch.Tensor) -> torch.Tensor:
    """(N,) float64 per-atom energies including each atom's species reference energy (eV).

    Members may have different reference energies (fitted on their own
    bootstrap sample), so they are part of the local energy of a member.
    """
    table = torch.zeros(119, dtype=torch.float64)
    for z, e in model.atomic_energies.items():
        table[z] = e
    return eps.detach().to(torch.float64).cpu().reshape(-1) + table[batch.numbers.cpu()]


def _check_members(models: Sequence[MLIP]) -> list[MLIP]:
    if isinstance(models, torch.nn.Module):
        raise TypeError(f"DeepEnsemble needs a list of models, got one {type(models).__name__}")
    try:
        models = list(models)
    except TypeError:
        raise TypeError(
            f"DeepEnsemble needs a list of models, got {type(models).__name__}") from None
    models = [_check_model(m) for m in models]
    if len(models) < 2:
        raise ValueError(f"a deep ensemble needs at least 2 members, got {len(models)}")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("the same model object appears more than once among the members")
    first = models[0]
    for k, m in enumerate(models[1:], start=1):
        if list(m.species) != list(first.species):
            raise ValueError(
                f"member {k} knows species {m.species}, member 0 knows {first.species}: "
                "all members must share species"
            )
        if m.cutoff != first.cutoff:
            raise ValueError(
                f"member {k} has cutoff {m.cutoff} Å, member 0 has {first.cutoff} Å: "
                "all members must share the cutoff"
            )
    return models


def _resolve_seeds(n_members: Optional[int], seeds: Optional[Sequence[int]]) -> list[int]:
    if seeds is None:
        n = DEFAULT_MEMBERS if n_members is None else n_members
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n_members must be an integer >= 2, got {n_members!r}")
        return list(range(int(n)))
    seeds = [int(s) for s in seeds]
    if n_members is not None and len(seeds) != n_members:
        raise ValueError(f"got {len(seeds)} seeds for n_members={n_members}")
    if len(seeds) < 2:
        raise ValueError(f"a deep ensemble needs at least 2 members, got {len(seeds)} seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative, got {seeds}")
    return seeds


def bootstrap_indices(n: int, seed: int) -> np.ndarray:
    """Indices of a bootstrap resample (n draws with replacement) for one seed."""
    # SeedSequence([seed, 1]): a stream independent of the trainer's shuffling RNG.
    return np.random.default_rng([int(seed), 1]).integers(0, n, size=n)


@register
class DeepEnsemble(UQWrapper):
    """Committee of independently trained MLIPs.

    Parameters
    ----------
    models
        Two or more trained :class:`~mlipuq.models.MLIP` with the same species
        and cutoff (Å). The ensemble stores its own copies (``copy.deepcopy``),
        so later changes to the wrapper never touch the caller's models. An
        ensemble built from models is ready to predict (``fitted_`` is True);
        use :meth:`train` to build and train the members in one call.
    distance
        The score of the latent-distance term (:mod:`mlipuq.uq.deep_distance`; default
        ``"mahalanobis"``, ``"knn"``, None: the members' spread alone) that :meth:`fit`
        fits after training the members and :meth:`fit_distance` around members as they
        are; one built from models has none until then (``calibrate`` warns: NoDistanceTermWarning).

    Attributes
    ----------
    models : list of MLIP
        The members.
    seeds_ : list of int or None
        Seeds the members were trained with (None when built from models).
    bootstrap_indices_ : list of numpy.ndarray or None
        Training-set indices each member saw when trained with ``bootstrap=True``.
    histories_ : list of History or None
        Training histories of the last :meth:`fit` (not saved).
    distance_ : LatentDistance or None
        The fitted latent-distance term in member 0's features (None: none fitted).

    Notes
    -----
    ``predict`` returns the member mean, the population variance over members
    (``ddof=0``, float64) and the members themselves as ``energy_members``
    (K, B) in eV and ``forces_members`` (K, N, 3) in eV/Å. With a latent-distance
    term the variances are λσ² + a + b u² and the members are stretched to them.
    """

    def __init__(self, models: Sequence[MLIP], *, distance: Optional[str] = "mahalanobis"):
        self._setup([copy.deepcopy(m) for m in _check_members(models)], distance)

    def _setup(self, models: list[MLIP], distance: Optional[str]) -> None:
        if distance is not None and distance not in _SCORES:
            raise ValueError(f"distance must be None or one of {_SCORES}, got {distance!r}")
        self.models = _check_members(models)
        self.distance = distance
        self.distance_ = None
        self.seeds_: Optional[list[int]] = None
        self.bootstrap_indices_: Optional[list[np.ndarray]] = None
        self.histories_: Optional[list[History]] = None
        self.member_offsets_: Optional[np.ndarray] = None
        #: whether the offsets were fitted on calibration data (or recentre=False chosen)
        self.recentring_chosen_ = False
        self.fitted_ = True

    @classmethod
    def _adopt(cls, models: list[MLIP], distance: Optional[str] = None) -> "DeepEnsemble":
        """An ensemble that takes ownership of ``models`` (no copy)."""
        ensemble = cls.__new__(cls)
        ensemble._setup(list(models), distance)
        return ensemble

    @property
    def n_members(self) -> int:
        return len(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __repr__(self) -> str:
        distance = "" if self.distance == "mahalanobis" else f", distance={self.distance!r}"
        return f"DeepEnsemble({self.n_members} x {type(self.models[0]).__name__}{distance})"

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        make_model: Callable[[int], MLIP],
        train,
        val=None,
        *,
        n_members: Optional[int] = None,
        seeds: Optional[Sequence[int]] = None,
        bootstrap: bool = False,
        distance: Optional[str] = "mahalanobis",
        **train_options,
    ) -> "DeepEnsemble":
        """Build K models with ``make_model(seed)`` and train each with :func:`mlipuq.train`.

        Parameters
        ----------
        make_model
            Called once per member with that member's seed; must return a new,
            untrained :class:`~mlipuq.models.MLIP` initialised from the seed,
            e.g. ``lambda s: MiniMLIP(["H", "C", "O"], seed=s)``.
        train, val
            Training and validation data (energies in eV, forces in eV/Å).
        n_members
            Number of members (default 5, or ``len(seeds)``).
        seeds
            One distinct non-negative seed per member (default ``0 .. K-1``,
            or ``seed .. seed+K-1`` with ``seed=``); each is passed to
            ``make_model`` and as ``seed`` to the trainer.
        bootstrap
            Train each member on a bootstrap resample of ``train`` (drawn with
            its seed) instead of the full set.
        distance
            The latent-distance term's score (the class's ``distance``), fitted
            after the members (None: none).
        **train_options
            ``seed``, ``progress`` and the :meth:`fit` options: :func:`mlipuq.train`
            options (``epochs``, ``lr``, ``batch_size``, ``forces_weight``,
            ``patience``, ...).

        Returns
        -------
        DeepEnsemble
            The trained ensemble.
        """
        seed = train_options.pop("seed", None)
        if seed is not None and seeds is None:
            n = DEFAULT_MEMBERS if n_members is None else n_members
            seeds = [int(seed) + k for k in range(int(n))]
        seeds = _resolve_seeds(n_members, seeds)
        if not callable(make_model):
            raise TypeError("make_model must be a callable taking a seed and returning a model")
        models = [make_model(s) for s in seeds]
        ensemble = cls._adopt(models, distance)
        return ensemble.fit(train, val, seeds=seeds, bootstrap=bootstrap, **train_options)

    def fit(self, train, val=None, *, seed: Optional[int] = None, progress: bool = False,
            **method_options) -> "DeepEnsemble":
        """(Re)train every member, independently, with :func:`mlipuq.train`, then fit the
        latent-distance term (``distance``; :meth:`fit_distance` with ``train``, ``val``).

        Training continues from the members' current weights (the ensemble's
        own copies). Members are trained one after the other; after
        :func:`mlipuq.distributed.init` (a collective call: every rank passes
        the same data and options) member k is trained on rank
        ``k % world_size`` and then sent to every rank, so that every rank
        holds the whole ensemble, each member identical to the one a single
        process trains with the same seed. Save it from rank 0 only
        (``if mlipuq.distributed.is_main(): ensemble.save(path)``).

        Parameters
        ----------
        train, val
            Training and validation data (energies in eV, forces in eV/Å).
        seed
            Member k is trained with seed ``seed + k`` (shuffling and
            bootstrap). None: the seeds of the previous fit, else ``0 .. K-1``.
        progress
            Show a progress bar per member.
        **method_options
            ``seeds`` (one distinct seed per member, instead of ``seed``),
            ``bootstrap`` (False: train each member on its own bootstrap
            resample of ``train``), and :func:`mlipuq.train` options
            (``epochs``, ``lr``, ``batch_size``, ``forces_weight``,
            ``patience``...); ``checkpoint`` is not supported (save the
            ensemble instead).

        Returns
        -------
        DeepEnsemble
            ``self``.
        """
        seeds, bootstrap = method_options.pop("seeds", None), method_options.pop("bootstrap", False)
        if "checkpoint" in method_options:
            raise ValueError(
                "DeepEnsemble.fit does not support checkpoint=; save the ensemble after fit"
            )
        seeds = self._fit_seeds(seed, seeds)
        dataset = mdata.as_dataset(train)
        if len(dataset) == 0:
            raise ValueError("the training set holds no structures")
        world, here = mdist.world_size(), mdist.rank()
        histories, indices, failure = [], [], None
        for k, (model, member_seed) in enumerate(zip(self.models, seeds)):
            member_train = dataset
            if bootstrap:
                idx = bootstrap_indices(len(dataset), member_seed)
                indices.append(idx)
                member_train = dataset.subset(idx)
            if k % world != here or failure is not None:
                histories.append(None)  # trained on rank k % world, received below
                continue
            log.info("training deep-ensemble member %d/%d (seed %d)", k + 1, self.n_members,
                     member_seed)
            options = {"desc": f"training DeepEnsemble member {k + 1}/{self.n_members} "
                               f"({type(model).__name__})", **method_options}  # a given desc wins
            if world == 1:
                histories.append(train_model(model, member_train, val, seed=member_seed,
                                             progress=progress, **options))
                continue
            try:  # an error on one rank must reach every rank (or the others wait forever)
                histories.append(train_model(model, member_train, val, seed=member_seed,
                                             progress=progress, **options))
            except Exception as exc:  # noqa: BLE001  (re-raised below, on every rank)
                failure = (k, exc)
                histories.append(None)
        if world > 1:
            histories = mdist.share_trained_models(self.models, histories, failure,
                                                     "deep-ensemble member")
        self.seeds_ = seeds
        self.bootstrap_indices_ = indices if bootstrap else None
        self.histories_ = histories
        self.member_offsets_ = None  # retrained members: recentre again in calibrate
        self.recentring_chosen_ = False
        self.distance_ = None  # fitted to the members before: fitted again below
        self.fitted_ = True
        if self.distance is not None:
            self.fit_distance(train, val, seed=0 if seed is None else seed, progress=progress)
        return self

    def fit_distance(self, train, val=None, *, seed: int = 0, batch_size: int = 16,
                     progress: bool = False) -> "DeepEnsemble":
        """Fit the latent-distance term around the members as they are
        (:mod:`mlipuq.uq.deep_distance`): for members trained elsewhere,
        ``DeepEnsemble(models).fit_distance(train, val).calibrate(val)``.

        ``train``: the members' training structures (the reference the distances are
        measured to); ``val``: held-out structures on which λ, a and b are fitted (None:
        a fifth of ``train`` held out); members neither recentred nor calibrated are
        recentred on them first. Drops an earlier calibration: calibrate again. Returns
        ``self``."""
        if self.distance is None:
            raise ValueError("this DeepEnsemble has distance=None: build it with "
                             "distance='mahalanobis' (the default) or 'knn' for a term")
        self.distance_ = deep_distance.fit_term(self, train, val, seed=seed,
                                                batch_size=batch_size, progress=progress)
        self.recalibrator_ = self.strain_term_ = None
        return self

    # ------------------------------------------------------------ calibration
    # K members estimate the variance from K samples: their force z-scores are
    # Student-t (measured ν ≈ 2 for K = 3; the default t fit of every wrapper)
    # and so are their energy z-scores (ν ≈ 2 on ethanol): committees get a t for both
    default_calibration = dict(COMMITTEE_CALIBRATION)
    #: The members alone's widening beyond the calibration range: their spread grows
    #: more than single models' stds (Cu3Au vacancy clusters: r = 63, theirs 3-24) yet
    #: not as fast as their errors: energies by r ** 1 (Pt₃Ni strained cells: 0.47 with
    #: r ** 0.25), forces by r ** 0.75 since 2026-12-05 (the smallest power that met the
    #: force goal on 11 fits, r ** 0.5 before; docs/shift.md, "The forces widened as the
    #: energies"; mlipuq.calibration.extrapolation)
    default_extrapolation = {"energy": 1.0, "forces": 0.75}

    def default_widening(self) -> dict:
        """With a term its widening powers (the latent distance's), else
        :attr:`default_extrapolation`."""
        if self.distance_ is not None:
            return self.distance_.default_widening()
        return self.default_extrapolation

    def calibrate(self, val, method: Optional[str] = None, *, recentre=True,
                  **options) -> "DeepEnsemble":
        """Recentre the members on ``val``, then recalibrate (see ``UQWrapper.calibrate``;
        ``method`` None: :attr:`default_calibration`, a fitted Student-t predictive
        for the forces and the energies, ``COMMITTEE_CALIBRATION``).

        Independently trained members carry their own constant errors per atom
        of each species (eV): a few meV/atom on EMT Cu, the same on every
        structure. Left in, they dominate the spread, which then hardly changes
        away from the training data (the spread fell from 300 K to 1500 K).
        ``recentre=True`` fits, per member, per-species energy offsets to its
        residuals on ``val`` by least squares (minimum norm) and adds them to
        that member's energies (forces are unchanged), so that the spread
        measures how the members differ between structures.

        The offsets are per atom, and so is the fit (``recentre=True`` or
        ``"per_atom"``): the residuals and composition counts of a structure are
        divided by its atom count, so that every structure weighs the same,
        whatever its size, as in the calibration that follows (one energy z-score
        per structure). ``recentre="total"`` fits them to the residuals of the total
        energies, the only fit until the option existed: a structure then weighs as
        its atom count squared, and a few large cells in ``val`` can set offsets on
        which the members agree on every large cell, whatever its error there
        (docs/shift.md, "Recentring per atom"). With cells of one size the two fits
        agree. ``recentre="members"`` moves every member onto the members' mean (the
        per-atom offsets less their mean over the members) and leaves the mean where
        training put it, so that the calibration sees the mean's own error on ``val``.
        """
        weighting = recentring_weighting(recentre)
        dataset = calibration_data(val)
        deep_distance.warn_without_term(self)
        return self._fit_calibration(dataset, self._recentred_prediction(dataset, weighting),
                                     method, **options)

    def recentre(self, val, recentre=True) -> "DeepEnsemble":
        """Fit the members' per-species energy offsets on ``val`` as :meth:`calibrate`
        does (``recentre``: its option of that name), without recalibrating; returns
        ``self``. For an ensemble whose spread another wrapper uses uncalibrated
        (``LatentDistance(combine=...)``, which recentres one that never was). An
        earlier calibration, fitted with other offsets, is dropped: calibrate again."""
        weighting = recentring_weighting(recentre)
        if weighting is None:  # nothing to fit: no prediction
            self.member_offsets_, self.recentring_chosen_ = None, True
        else:
            self._recentred_prediction(calibration_data(val), weighting)
        self.recalibrator_ = self.strain_term_ = None
        return self

    def _recentred_prediction(self, dataset, weighting: Optional[str]) -> Prediction:
        """The uncalibrated prediction of ``dataset`` (no composition variance), members
        recentred on it by ``weighting`` (None: not); with a term, offsets fitted unstretched."""
        self.member_offsets_, self.recentring_chosen_ = None, True
        if not weighting:
            return self.predict(dataset, calibrated=False, composition=False)
        members = self if self.distance_ is None else deep_distance.without_term(self)
        pred = members.predict(dataset, calibrated=False, composition=False)
        # the offsets; without a term the same prediction moved by them (one pass)
        counts = mdata.composition_matrix(dataset, self.species)
        residuals = dataset.energies[None, :] - pred.energy_members  # (K, B)
        before = self._species_shifts()
        offsets = recentring_offsets(counts, residuals, dataset.n_atoms,
                                     per_atom=weighting != "total")
        self.member_offsets_ = members_only(offsets) if weighting == "members" else offsets
        if self.distance_ is not None:  # the term's prediction with the offsets in
            return self.predict(dataset, calibrated=False, composition=False)
        return shifted_members(pred, counts, self._species_shifts() - before)

    def _composition_drift(self) -> Optional[np.ndarray]:
        """The drift of the ensemble's mean energy (:func:`~mlipuq.uq.recentring.mean_drift`)."""
        return mean_drift(self.models, self.member_offsets_)

    def _fit_seeds(self, seed: Optional[int], seeds: Optional[Sequence[int]]) -> list[int]:
        if seed is not None and seeds is not None:
            raise ValueError("pass seed= (member k gets seed + k) or seeds=[...], not both")
        if seed is not None:
            seeds = [int(seed) + k for k in range(self.n_members)]
        elif seeds is None:
            seeds = self.seeds_ if self.seeds_ is not None else list(range(self.n_members))
        return _resolve_seeds(self.n_members, seeds)

    # ---------------------------------------------------------------- predict
    @property
    def has_consistent_members(self) -> bool:
        """False with a latent-distance term: its members, stretched atom by atom to the
        combined variance, are no longer gradients of their energies."""
        return self.distance_ is None

    def members_hint(self, *, forces: bool = False) -> str:
        if forces and self.distance_ is not None:
            return ("the members alone, DeepEnsemble(models, distance=None): the "
                    "latent-distance term stretches their forces atom by atom")
        return super().members_hint(forces=forces)

    has_stress_uncertainty = True
    # the members' spread grew with the error in cells wider than the calibration cells
    # (108-atom cells, 32-atom calibration; docs/shift.md): no WideCellWarning
    warns_of_wide_cells = False

    def predict(self, structures, *, batch_size: int = 32, calibrated: bool = True,
                progress: bool = False, composition: bool = True,
                distributed: Optional[bool] = None, stress: bool = False) -> Prediction:
        """:meth:`UQWrapper.predict`; with a latent-distance term, its combination with
        the members' spread (:mod:`mlipuq.uq.deep_distance`), then the recalibration."""
        options = dict(batch_size=batch_size, progress=progress, distributed=distributed,
                       stress=stress)
        if self.distance_ is None:
            return super().predict(structures, calibrated=calibrated, composition=composition,
                                   **options)
        self._check_fitted()
        prediction = deep_distance.combined_prediction(self, structures, **options)
        if calibrated:
            prediction = self._apply_calibration(prediction)
        return self._add_composition_variance(prediction) if composition else prediction

    def _predict_batch(self, batch: mdata.Batch, stress: bool = False) -> dict:
        energies, forces, atom_energies, stresses = [], [], [], []
        shifts = self._member_shifts(batch)
        for k, model in enumerate(self.models):
            member_batch = batch.to(device=model.device, dtype=model.dtype)
            if stress:
                out = model(member_batch, forces=True, stress=True)
                stresses.append(out["stress"].detach().to(torch.float64).cpu())
            else:
                out = model(member_batch, forces=True)
            atom = _atom_energies(model, batch, out["per_atom_energy"]) + shifts[k]
            shift = torch.zeros(batch.n_structures, dtype=torch.float64)
            shift.index_add_(0, batch.batch.cpu(), shifts[k])
            energies.append(out["energy"].detach().to(torch.float64).cpu() + shift)
            forces.append(out["forces"].detach().to(torch.float64).cpu())
            atom_energies.append(atom)
        energy_members = torch.stack(energies)
        forces_members = torch.stack(forces)
        energy, energy_var = member_statistics(energy_members)
        force, forces_var = member_statistics(forces_members)
        _, atom_energy_var = member_statistics(torch.stack(atom_energies))
        result = {
            "energy": energy,
            "energy_var": energy_var,
            "forces": force,
            "forces_var": forces_var,
            "energy_members": energy_members,
            "forces_members": forces_members,
            "atom_energy_var": atom_energy_var,
        }
        if stress:
            stress_members = torch.stack(stresses)
            result["stress"], result["stress_var"] = member_statistics(stress_members)
            result["stress_members"] = stress_members
        return result

    def _member_shifts(self, batch: mdata.Batch) -> torch.Tensor:
        """(K, N) float64 per-atom energy shift of each member (:meth:`_species_shifts`)."""
        table = torch.zeros(self.n_members, 119, dtype=torch.float64)
        table[:, torch.as_tensor(self.species)] = torch.as_tensor(self._species_shifts())
        return table[:, batch.numbers.cpu()]

    def _species_shifts(self) -> np.ndarray:
        """(K, S) per-atom energy shift of each member per species (eV): its recentring
        offsets (0 before recentring) and its alignment along the undetermined directions
        (which depends on the offsets)."""
        shifts = member_alignment(self.models, self.member_offsets_)
        return shifts if self.member_offsets_ is None else shifts + self.member_offsets_

    def _mean_stress(self, batch: mdata.Batch) -> torch.Tensor:
        """(B, 3, 3) stress of the ensemble mean (eV/Å^3): the mean of the members'."""
        stresses = [model(batch.to(device=model.device, dtype=model.dtype), forces=False,
                          stress=True)["stress"].detach().to(torch.float64).cpu()
                    for model in self.models]
        return torch.stack(stresses).mean(dim=0)

    # ------------------------------------------------------------ persistence
    def _models(self) -> list[MLIP]:
        return list(self.models)

    def _set_models(self, models: list[MLIP]) -> None:
        self.models = _check_members(list(models))
        if self.distance_ is not None:  # the term reads member 0's features
            self.distance_.model = self.models[0]

    def config(self) -> dict:
        return {} if self.distance is None else {"distance": self.distance}

    @classmethod
    def _from_config(cls, models: list[MLIP], config: dict) -> "DeepEnsemble":
        return cls._adopt(models, config.get("distance"))  # absent: saved without a term

    def _format_version(self) -> int:  # 5: version-4 readers would drop the term
        return 2 if self.distance_ is None else 5

    def _get_state(self) -> dict:
        state = {
            "seeds": self.seeds_,
            "bootstrap_indices": self.bootstrap_indices_,
            "member_offsets": self.member_offsets_,
        }
        if self.distance_ is not None:  # absent without one: files and fingerprints as before
            state["distance"] = deep_distance.save_term(self.distance_)
        return state

    def _set_state(self, state: dict) -> None:
        seeds = state.get("seeds")
        self.seeds_ = None if seeds is None else [int(s) for s in seeds]
        indices = state.get("bootstrap_indices")
        self.bootstrap_indices_ = (
            None if indices is None else [np.asarray(i, dtype=np.int64) for i in indices]
        )
        offsets = state.get("member_offsets")  # absent in files saved before recentring
        self.member_offsets_ = None if offsets is None else np.asarray(offsets, np.float64)
        self.recentring_chosen_ = offsets is not None  # or calibrated (LatentDistance asks)
        self.distance_ = deep_distance.load_term(self.models[0], state.get("distance"))
