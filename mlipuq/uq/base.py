"""What every UQ wrapper shares: batched ``predict``, ``calibrate``, save/load.

A wrapper subclasses :class:`UQWrapper` and implements

* ``fit(train, ...)`` (returns ``self`` and sets ``fitted_ = True``),
* ``_predict_batch(batch) -> dict`` with torch or NumPy arrays for the
  :class:`~mlipuq.prediction.Prediction` fields (``energy``, ``energy_var``,
  ``forces``, ``forces_var`` and optionally members / evidential parts);
  wrappers with a stress uncertainty set ``has_stress_uncertainty = True``
  and take ``_predict_batch(batch, stress=True)`` to add ``stress``,
  ``stress_var`` (and ``stress_members``); for the others ``predict(...,
  stress=True)`` adds the mean model's stress (``_mean_stress``,
  :mod:`mlipuq.uq.mean_stress`) without a variance,
* ``config()`` (constructor keyword arguments) and ``_get_state()`` /
  ``_set_state(state)`` (fitted tensors; plain Python, NumPy or torch values),
* ``_models()`` listing the base models it holds (one for most wrappers,
  K for a deep ensemble), so that save/load and dtype changes work generically.

Recalibration (``calibrate``) is applied on top of the raw prediction by a
:class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator` (one
recalibrator for energies, one for forces). There is no stress recalibrator:
``stress``, ``stress_var`` and ``stress_members`` are passed through unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Optional, Union

import ase
import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.calibration.strain import atom_fractions
from mlipuq.calibration.strain import measure as measure_strain
from mlipuq.errors import FileFormatError, MissingReferenceError, NotFittedError
from mlipuq.fileio import check_plain, check_weights_only, read_payload, save_payload
from mlipuq.models.base import MLIP, model_class, model_from_payload
from mlipuq.prediction import Prediction
from mlipuq.predictive import ROBUST_MAX_DOF
from mlipuq.progress import batches_with_progress
from mlipuq.uq.mean_stress import MeanStress
from mlipuq.uq.wide_cells import calibration_width, warn_wide_cells
from mlipuq.uq.state_codec import (  # noqa: F401  (importable from here as before)
    _decode, _decode_calibration_width, _decode_recalibrator, _decode_strain_term, _encode,
    _encode_calibration_width, _encode_recalibrator, _encode_strain_term)

log = logging.getLogger(__name__)

FORMAT = "mlipuq.uq"
#: The newest wrapper format (2: checksum, base models at model format 2; 3: a part
#: version-2 readers would drop without a word, the shallow ensemble's shared energy
#: term; 4: one version-3 readers would drop, LLPR's energy term fitted apart; 5: the deep
#: ensemble's latent-distance term). Each file is written at the lowest version that holds
#: it (:meth:`UQWrapper._format_version`), so older readers refuse only what they misread.
FORMAT_VERSION = 5
_REGISTRY: dict[str, type] = {}

#: The default calibration of committees (deep and shallow ensembles): a Student-t for
#: the energies as for the forces, ν fitted with the default options' bound
#: (``ROBUST_MAX_DOF``): their variances are estimates from a few members (the deep
#: ensemble's energy ν fitted 2–6), and the bound holds up under shift
#: (docs/shift.md#committee-energies). The evidential head and latent distance use it
#: too since 2026-12-05 (their rounds in docs/shift.md); LLPR keeps a scalar energy factor.
COMMITTEE_CALIBRATION = {"energy": "student_t", "forces": "student_t"}


def register(cls: type) -> type:
    """Make a wrapper class loadable by :func:`load` (by class name)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def wrapper_class(name: str) -> Optional[type]:
    """The registered wrapper class called ``name`` (None if there is none)."""
    if name not in _REGISTRY:
        import mlipuq.uq  # noqa: F401  (registers the built-in wrappers)
    return _REGISTRY.get(name)


def _to_numpy(x) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _check_model(model) -> MLIP:
    if not isinstance(model, MLIP):
        raise TypeError("expected an mlipuq MLIP (MiniMLIP or mlipuq.models.wrap(...)), "
                        f"got {type(model).__name__}")
    return model


def calibration_data(val) -> mdata.AtomsDataset:
    """``val`` as a dataset, checked to have reference energies and forces
    (lone atoms may lack forces: they are zero); the error names the structure."""
    from mlipuq.calibration.targets import lone_atoms

    dataset = mdata.as_dataset(val)
    missing = ~dataset.has_reference | ~(dataset.has_forces | lone_atoms(dataset))
    if missing.any():
        raise MissingReferenceError(
            f"structure {int(np.flatnonzero(missing)[0])}: calibrate() needs reference "
            f"energies and forces for every validation structure ({int(missing.sum())} "
            "lack them)")
    return dataset


class UQWrapper(MeanStress):
    """Base class of the UQ wrappers (see the module docstring)."""

    fitted_: bool = False

    #: Whether ``predict(..., stress=True)`` gives a stress variance (``stress_var``):
    #: True for wrappers whose ``_predict_batch`` takes ``stress=`` (committee
    #: members or a last-layer posterior); the others give the mean stress only.
    has_stress_uncertainty: bool = False

    # ------------------------------------------------------------- subclass API
    def _models(self) -> list[MLIP]:
        return [self.model]

    def _set_models(self, models: list[MLIP]) -> None:
        (self.model,) = models

    def config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def _from_config(cls, models: list[MLIP], config: dict) -> "UQWrapper":
        return cls(models[0], **config)

    def _get_state(self) -> dict:
        return {}

    def _set_state(self, state: dict) -> None:
        pass

    def _predict_batch(self, batch: mdata.Batch) -> dict:
        raise NotImplementedError

    # --------------------------------------------------------------- properties
    @property
    def base_model(self) -> MLIP:
        """The first (or only) base model; defines species, cutoff and dtype."""
        return self._models()[0]

    @property
    def species(self) -> list[int]:
        return self.base_model.species

    @property
    def cutoff(self) -> float:
        return self.base_model.cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit() before predict()"
            )

    # ------------------------------------------------- committee protocol
    @property
    def n_members(self) -> int:
        """Committee size K of ``predict``'s ``energy_members``; 0 for no members."""
        return 0

    @property
    def has_consistent_members(self) -> bool:
        """Whether each member's forces are minus the gradient of its energy
        (needed for member-wise relaxations and MD)."""
        return True

    def members_hint(self, *, forces: bool = False) -> str:
        """What to configure for committee members (used in error messages)."""
        return ("a committee wrapper (DeepEnsemble, ShallowEnsemble) or LastLayerLaplace with "
                "force_variance='samples'")

    def members(self, structures, *, forces: bool = True, calibrated: bool = True,
                batch_size: int = 32) -> Prediction:
        """A prediction with committee members, checked to be usable member-wise.

        Raises ``ValueError`` (saying what to configure) when the wrapper has
        no energy members, no force members (``forces=True``), or member
        forces that are not gradients of the member energies.
        """
        pred = self.predict(structures, calibrated=calibrated, batch_size=batch_size)
        self.check_members(pred, forces=forces)
        return pred

    def check_members(self, prediction: Prediction, *, forces: bool) -> None:
        """``ValueError`` unless ``prediction`` (of this wrapper) has energy members
        and, with ``forces``, force members that are gradients of the energies."""
        name, pred = type(self).__name__, prediction
        if pred.energy_members is None or pred.n_members < 1:
            raise ValueError(f"{name} predictions carry no committee energies (energy_members): "
                             f"member-wise propagation needs {self.members_hint()}")
        if forces and pred.forces_members is None:
            raise ValueError(f"{name} predictions carry no committee forces (forces_members): "
                             f"member-wise propagation needs {self.members_hint(forces=True)}")
        if forces and not self.has_consistent_members:
            raise ValueError(
                f"{name}: its member forces are not the gradients of its member energies; "
                f"relaxing or running MD with members needs {self.members_hint(forces=True)}"
            )

    def to(self, dtype: Optional[torch.dtype] = None, *, device=None) -> "UQWrapper":
        """Cast the base model(s) to ``dtype`` and/or move them, and every other
        torch module the wrapper holds (e.g. an evidential head), to ``device``.

        Fitted NumPy state stays float64 on the host; it meets the model's
        outputs batch by batch. Returns ``self``.
        """
        for m in self._models():
            if dtype is not None:
                m.to(dtype)
            if device is not None:
                m.to(device=device)
        if device is not None:
            for value in vars(self).values():
                if isinstance(value, torch.nn.Module) and value not in self._models():
                    value.to(device=device)
        return self

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        structures,
        *,
        batch_size: int = 32,
        calibrated: bool = True,
        progress: bool = False,
        composition: bool = True,
        distributed: Optional[bool] = None,
        stress: bool = False,
    ) -> Prediction:
        """Energies and forces with uncertainties for structures.

        Parameters
        ----------
        structures
            An :class:`~mlipuq.data.AtomsDataset`, a list of ``ase.Atoms`` or one
            ``Atoms``.
        batch_size
            Structures evaluated together.
        calibrated
            Apply the recalibration fitted by :meth:`calibrate` (if any).
        composition
            Add the variance of the per-species reference energies that the
            training compositions left undetermined
            (:meth:`~mlipuq.models.MLIP.composition_variance`; 0 for every
            composition the training data spans). It is added after the
            recalibration, to ``energy_var`` only (committee members keep
            their spread).
        distributed
            After :func:`mlipuq.distributed.init` with two or more processes
            (None: then, and for anything but a single ``Atoms``), the call is
            collective: every rank passes the same structures, predicts its
            contiguous shard, and gets the whole prediction, equal to one
            process's. False: predict everything here (e.g. each rank its own
            MD structure).
        stress
            Also predict the stress (eV/Å^3, ASE sign convention
            :math:`\\sigma = V^{-1} \\partial E / \\partial \\varepsilon`): every
            structure must be periodic in all three directions (else an
            :class:`~mlipuq.errors.InvalidStructureError`, a ``ValueError``,
            naming it). Wrappers with ``has_stress_uncertainty`` add
            ``stress_var`` (eV^2/Å^6, per element) and, with members,
            ``stress_members``; the others give the mean model's stress with
            ``stress_var`` None. The recalibration is not applied to stresses.

        Returns
        -------
        Prediction
            Energies (eV), forces (eV/Å) and their variances, float64.
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        if distributed is None:
            distributed = mdist.active() and not isinstance(structures, ase.Atoms)
        prediction = mdist.run_sharded(self._predict_raw, dataset, batch_size, progress,
                                       distributed, Prediction.concatenate, stress=stress)
        if calibrated:
            prediction = self._apply_calibration(prediction)
            self._warn_wide_cells(dataset)
        if composition:
            prediction = self._add_composition_variance(prediction)
        return prediction

    def _predict_raw(self, dataset, batch_size: int, progress: bool,
                     allow_empty: bool = False, *, stress: bool = False,
                     offset: int = 0) -> Optional[Prediction]:
        """The uncalibrated prediction of ``dataset`` in this process (None: empty shard).

        ``offset``: index of ``dataset``'s first structure in the caller's
        structures (a shard's start), for error messages."""
        if allow_empty and len(dataset) == 0:
            return None
        parts = []
        for start, batch in self._batches(dataset, batch_size, progress, "predict"):
            if not stress:
                raw = self._predict_batch(batch)
            else:
                self._check_periodic(batch, offset + start)
                if self.has_stress_uncertainty:
                    raw = self._predict_batch(batch, stress=True)
                else:
                    raw = {**self._predict_batch(batch), "stress": self._mean_stress(batch)}
            fields = {k: _to_numpy(v) for k, v in raw.items()}
            fields["n_atoms"] = batch.n_atoms.cpu().numpy()
            fields["batch"] = batch.batch.cpu().numpy()
            fields["numbers"] = batch.numbers.cpu().numpy()
            if getattr(self, "strain_term_", None) is not None:
                fields["strain_energy_var"] = self._strain_variance(batch)
            prediction = Prediction(**fields)
            self._check_finite(prediction)
            parts.append(prediction)
        return Prediction.concatenate(parts)

    def _batches(self, dataset, batch_size: int, progress: bool, task: str):
        """``(start, batch)`` pairs of ``dataset``, validated for this wrapper's species
        now, each batch on the base model's device; a progress bar named ``task``."""
        dataset.validate(self.species)
        batches = batches_with_progress(mdata.iter_batches(
            dataset, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        ), len(dataset), f"{task} ({type(self).__name__})", progress)
        device = self.base_model.device
        return ((start, batch.to(device=device)) for start, batch in batches)

    def _strain_variance(self, batch: mdata.Batch) -> np.ndarray:
        """``strain_energy_var`` (B,) of ``batch`` (eV², :mod:`mlipuq.calibration.strain`)."""
        counts = mdata.composition_counts(batch.numbers.cpu().numpy(), batch.batch.cpu().numpy(),
                                          batch.n_structures, self.species)
        return self.strain_term_.variance(batch.cell.detach().cpu().numpy(),
                                          batch.pbc.cpu().numpy(), atom_fractions(counts))

    def _add_composition_variance(self, prediction: Prediction) -> Prediction:
        counts = mdata.composition_counts(prediction.numbers, prediction.batch,
                                          prediction.n_structures, self.species)
        extra = self.base_model.composition_variance(counts, drift=self._composition_drift())
        if not np.any(extra):
            return prediction
        return dataclasses.replace(prediction, energy_var=prediction.energy_var + extra)

    def _composition_drift(self) -> Optional[np.ndarray]:
        """The offset drift of this wrapper's mean energy (None: the base model's)."""
        return None

    def _check_finite(self, prediction: Prediction) -> None:
        for name in ("energy", "energy_var", "forces", "forces_var", "stress", "stress_var",
                     "stress_members"):
            value = getattr(prediction, name)
            if value is not None and not np.all(np.isfinite(value)):
                raise FloatingPointError(
                    f"{type(self).__name__} produced non-finite {name}; the model or its "
                    "fitted state is broken"
                )

    # -------------------------------------------------------------- calibration
    #: ``calibrate``'s default: forces a Student-t, a scale per element, ν ≤ ROBUST_MAX_DOF
    #: (docs/shift.md); energies scalar (committees: a t, deep_ensemble.COMMITTEE_CALIBRATION)
    default_calibration = {"energy": "scalar", "forces": "student_t"}
    default_calibration_options = {"per_species": True, "dof_bounds": (1.0, ROBUST_MAX_DOF)}
    default_extrapolation = {"energy": 0.5, "forces": 0.75}  #: widening powers (extrapolation.py)
    #: the widening's largest factor per target (``widening_cap``; docs/shift.md, 2 rounds)
    default_widening_cap = {"energy": 30.0, "forces": 10.0}

    def default_widening(self) -> dict:
        """``calibrate``'s widening powers: :attr:`default_extrapolation` (a wrapper whose
        stds grow faster far out in some setting overrides this)."""
        return self.default_extrapolation

    def calibrate(self, val, method=None, **options) -> "UQWrapper":
        """Fit recalibrators of the energy and force std on validation data.

        ``method`` (None: :attr:`default_calibration` with :attr:`default_calibration_options`;
        or one per target, ``{"energy": ..., "forces": ...}``) is ``"scalar"`` (NLL-optimal
        factor), ``"power"`` (σ' = aσ^b), ``"isotonic"`` (Kuleshov et al. 2018), ``"conformal"``
        (split-conformal; ``coverage=0.9``, ``per_species=False``) or ``"student_t"``
        (``per_species=False``, ``dof_bounds=(1, 1000)``: ν fitted within them, the default
        calibration's ν ≤ 3; predictions carry ``energy_dof`` and ``forces_dof``); energies
        and forces get separate recalibrators (a :class:`~mlipuq.calibration.recalibrate.
        PredictionRecalibrator`, ``recalibrator_``) that later ``predict`` calls apply,
        committee members stretched to match; first, how stds scale between atoms and
        structures is fitted (``structure_scaling=True``, :mod:`mlipuq.calibration.
        structure_scaling`). Stds beyond the largest of ``val`` are widened (``extrapolation``,
        default :meth:`default_widening`, 0: not; :mod:`mlipuq.calibration.extrapolation`) by a
        factor of at most ``widening_cap`` (default :attr:`default_widening_cap`: energies
        30, forces 10; None: no cap); stresses are not recalibrated.

        Where ``val`` holds structures periodic in all three directions with stress
        labels (``strain=True``), the mean model's stress error on them is measured, and
        calibrated energy variances of cells strained from theirs gain the first-order
        term ``strain_energy_var`` (:mod:`mlipuq.calibration.strain`; ``strain_term_``,
        None without labels)."""
        dataset = calibration_data(val)
        pred = self.predict(dataset, calibrated=False, composition=False)
        return self._fit_calibration(dataset, pred, method, **options)

    def _fit_calibration(self, dataset, pred: Prediction, method=None,
                         **options) -> "UQWrapper":
        """:meth:`calibrate`'s fits on ``dataset`` and ``pred``, its uncalibrated
        prediction without the composition variance, as :meth:`predict` gives it now."""
        from mlipuq.calibration.recalibrate import PredictionRecalibrator

        strain = options.pop("strain", True)
        options.setdefault("extrapolation", copy.deepcopy(self.default_widening()))
        options.setdefault("widening_cap", copy.deepcopy(self.default_widening_cap))
        if method is None:  # the default method with its options (copies: never the class's)
            method = self.default_calibration
            options = {**self.default_calibration_options, **options}
        method = copy.deepcopy(method)
        recalibrator = PredictionRecalibrator(method, **options).fit(pred, dataset)
        term = measure_strain(self, dataset, self.species) if strain else None
        self.recalibrator_, self.strain_term_ = recalibrator, term  # both or neither
        self.calibration_width_ = calibration_width(dataset)
        return self

    #: Whether calibrated predictions warn of cells at least twice the cutoff wide when
    #: every calibration cell was narrower (:mod:`mlipuq.uq.wide_cells`): False where
    #: the variance was measured to cover them (the deep ensemble's).
    warns_of_wide_cells: bool = True

    def _warn_wide_cells(self, dataset) -> None:
        """:class:`~mlipuq.uq.wide_cells.WideCellWarning` for the structures of
        ``dataset`` (calibrated predictions) wider than the calibration cells allow."""
        widest = getattr(self, "calibration_width_", None)
        if self.calibrated_ and self.warns_of_wide_cells and widest is not None:
            warn_wide_cells(dataset, self.cutoff, widest, type(self).__name__)

    @property
    def calibrated_(self) -> bool:
        return getattr(self, "recalibrator_", None) is not None

    def _apply_calibration(self, prediction: Prediction) -> Prediction:
        if not self.calibrated_:
            return prediction
        calibrated = self._add_strain_variance(self.recalibrator_.transform(prediction),
                                               prediction)
        if prediction.stress is None:
            return calibrated
        # no stress recalibrator: the stress and its uncertainty pass through unchanged
        return dataclasses.replace(calibrated, stress=prediction.stress,
                                   stress_var=prediction.stress_var,
                                   stress_members=prediction.stress_members)

    @staticmethod
    def _add_strain_variance(calibrated: Prediction, raw: Prediction) -> Prediction:
        """``calibrated`` (the recalibration of ``raw``) with ``raw``'s strain term added to
        its energy variance (after the recalibration; unchanged without one)."""
        if raw.strain_energy_var is None:
            return calibrated
        return dataclasses.replace(calibrated,
                                   energy_var=calibrated.energy_var + raw.strain_energy_var,
                                   strain_energy_var=raw.strain_energy_var)

    # ---------------------------------------------------------- persistence
    def save(self, path: Union[str, os.PathLike], *, overwrite: bool = False) -> None:
        """Save the wrapper (base models, fitted state, recalibrators): plain data and
        weights with a format version and a checksum, written atomically.

        Refuses to replace an existing file unless ``overwrite=True``; a symbolic
        link at ``path`` is replaced, never written through. Base models made by
        :func:`~mlipuq.models.wrap` are saved as weights, not code: load the file
        with ``mlipuq.uq.load(path, module=...)``.
        """
        save_payload(self.payload(), path, overwrite=overwrite)

    def payload(self) -> dict:
        """The plain-data dictionary :meth:`save` writes (tensors, numbers, strings),
        without the checksum :meth:`save` adds."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "format_version": self._format_version(),
            "class": type(self).__name__,
            "config": self.config(),
            "models": [m._payload() for m in self._models()],
            "state": _encode(self._get_state()),
            "recalibrator": _encode_recalibrator(getattr(self, "recalibrator_", None)),
            "strain_term": _encode_strain_term(getattr(self, "strain_term_", None)),
            # only where there is one: files and fingerprints as before otherwise
            **_encode_calibration_width(getattr(self, "calibration_width_", None)),
        }

    def _format_version(self) -> int:
        """The lowest format version whose readers read this wrapper right: 2, unless a
        subclass holds a part that only later readers know."""
        return 2

    def fingerprint(self) -> str:
        """SHA-256 of the saved payload: the wrapper's identity (e.g. in MD trajectories).

        Equal for a wrapper and its ``save`` → ``load`` copy; changes when any
        weight, fitted state or recalibration changes.
        """
        from mlipuq.fileio import payload_digest

        return payload_digest(self.payload())

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, module=None,
             weights_only: Optional[bool] = None) -> "UQWrapper":
        """Load a wrapper saved by :meth:`save` (any wrapper class; see :func:`load`)."""
        check_weights_only(weights_only, f"{cls.__name__}.load")
        return load(path, module=module)

    def copy(self) -> "UQWrapper":
        return copy.deepcopy(self)


def load(
    path: Union[str, os.PathLike],
    *,
    module=None,
    weights_only: Optional[bool] = None,
) -> UQWrapper:
    """Load any UQ wrapper saved with ``save``.

    Files hold plain data and weights only and are read with torch's
    ``weights_only=True``: loading never executes code, nor reads another file
    that the saved file names (a file that would make a model adapter do so is
    refused). The checksum is verified: a damaged file raises
    :class:`~mlipuq.errors.FileFormatError` naming it. Format-1 files (older
    mlipuq) carry no checksum: they are accepted unchecked and upgraded.

    Parameters
    ----------
    path
        The saved file.
    module
        Only for wrappers around models made by :func:`~mlipuq.models.wrap`
        (or MACE models): the network built in code with the saved
        architecture, e.g. ``MyNetwork(...)``. One module serves every such
        base model (each gets its own copy); a list gives one per base model
        that needs it, in order. The saved weights are loaded into them.
    weights_only
        Deprecated, kept for old calls: ``True`` is what always happens;
        ``False`` (which used to unpickle code) raises a ``ValueError``.
    """
    check_weights_only(weights_only, "mlipuq.uq.load")
    path = os.fspath(path)
    payload = read_payload(path, format=FORMAT, what="UQ-wrapper")
    name = payload.get("class")
    cls = wrapper_class(name)
    if cls is None:
        raise FileFormatError(f"{path}: unknown UQ wrapper class {name!r}")
    config, model_payloads = payload.get("config"), payload.get("models")
    if not isinstance(config, dict) or not isinstance(model_payloads, list) or not model_payloads:
        raise FileFormatError(f"{path}: UQ-wrapper file without config or models")
    check_plain(config, path)
    modules = _modules_for(model_payloads, module, path)
    models = [model_from_payload(p, path, module=m) for p, m in zip(model_payloads, modules)]
    try:
        wrapper = cls._from_config(models, config)
        wrapper._set_state(_decode(payload.get("state", {}), path))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(f"{path}: cannot rebuild the {name} ({type(exc).__name__}: {exc})") from None
    wrapper.recalibrator_ = _decode_recalibrator(payload.get("recalibrator"), path)
    wrapper.strain_term_ = _decode_strain_term(payload.get("strain_term"), path)
    wrapper.calibration_width_ = _decode_calibration_width(payload.get("calibration_width"),
                                                           path)
    wrapper.fitted_ = True
    return wrapper


def _modules_for(model_payloads: list, module, path: str) -> list:
    """The ``module`` argument of :func:`load` spread over the base models needing one."""
    needs = [
        isinstance(p, dict) and getattr(model_class(p.get("class")), "needs_module", False)
        for p in model_payloads
    ]
    if module is None:
        return [None] * len(model_payloads)
    if isinstance(module, torch.nn.Module):
        given = [copy.deepcopy(module) for _ in range(sum(needs))]
    elif isinstance(module, (list, tuple)):
        given = list(module)
        if len(given) != sum(needs):
            raise ValueError(
                f"{path}: {sum(needs)} base model(s) need a module built in code; "
                f"{len(given)} given"
            )
    else:
        raise TypeError(f"module must be a torch.nn.Module or a list of them, got {type(module).__name__}")
    it = iter(given)
    return [next(it) if need else None for need in needs]
