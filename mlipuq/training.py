"""One training loop for anything :class:`Trainable`: base models, ensemble heads, evidential heads.

:func:`train` optimises a :class:`Trainable` with Adam, halves the learning
rate on validation plateaus, stops early and restores the best weights. A
plain :class:`~mlipuq.models.MLIP` is trained through :class:`EnergyForceMSE`,
whose loss is

.. math:: L = w_E \\langle ((E - E^{ref}) / n)^2 \\rangle
            + w_F \\langle (F - F^{ref})^2 \\rangle

(per-atom energy MSE in eV^2/atom^2 plus force-component MSE in eV^2/Å^2).
The UQ heads (:class:`~mlipuq.uq.ShallowEnsemble`, :class:`~mlipuq.uq.EvidentialHead`)
subclass :class:`HeadTrainable` and only supply their loss.

Data parallel (``train(..., data_parallel=True)`` after
:func:`mlipuq.distributed.init`; the heads' ``fit`` switch it on by
themselves): every rank trains on its contiguous shard of ``train`` with
gradients averaged over ranks, ``batch_size`` structures per rank and step;
the sharding, the global-batch loss normalisation and the lock-step schedule
are in :mod:`mlipuq.training_parallel`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.models.base import MLIP
from mlipuq.params import non_negative, positive
from mlipuq.progress import bar as progress_bar, trained_name as _describe
from mlipuq.progress import training_postfix as _postfix
from mlipuq.training_budget import TimeBudgetWarning as TimeBudgetWarning  # re-exported
from mlipuq.training_budget import _EpochProgress, _train_epoch, warn_budget
from mlipuq.training_parallel import (
    _accepts_denominators,
    _batches,
    _evaluate_sharded,
    _train_epoch_sharded,
    ddp_head,
)
from mlipuq.training_parallel import _shard_schedule, reduce_terms  # noqa: F401  (re-exported)
from mlipuq.training_errors import error_statistics, errors  # noqa: F401  (re-exported)
from mlipuq.training_setup import (  # noqa: F401  (re-exported)
    EnergyOffsetWarning,
    ForeignReferenceWarning,
    SingleCellWarning,
    SmallCellWarning,
    UndeterminedReferenceWarning,
    check_energy_offset, check_reference_energies,
    fit_offset_drift,
    fit_reference_energies,
    fit_scales,
    prepare_graphs,
    reference_energy_shift,
    refit_reference_energies,
    settle_references,
)

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch record of a training run (energies per atom in eV/atom, forces in eV/Å)."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    wall_time: float = 0.0
    #: True when ``max_time`` ended training (a :class:`TimeBudgetWarning` said so)
    stopped_by_time: bool = False
    #: eV per atomic number the refit (:func:`refit_reference_energies`) shifts the reference
    #: energies by: applied when ``references_refit``, else what it would have applied
    reference_shift: dict = field(default_factory=dict)
    references_refit: bool = False

    def __getitem__(self, key: str) -> list:
        return [row.get(key) for row in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)



def batch_loss(
    model: MLIP,
    batch: mdata.Batch,
    energy_weight: float,
    forces_weight: float,
    *,
    create_graph: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted energy + force MSE of one batch and its :func:`error_statistics`."""
    out = model(batch, forces=forces_weight > 0, create_graph=create_graph)
    n = batch.n_atoms.to(torch.float64)
    de = (out["energy"] - batch.energy.to(torch.float64)) / n
    loss = energy_weight * (de**2).mean()
    if forces_weight <= 0:
        return loss, error_statistics(de)
    df = out["forces"] - batch.forces.to(out["forces"].dtype)
    loss = loss + forces_weight * (df.to(torch.float64) ** 2).mean()
    return loss, error_statistics(de, df)


def _summarise(stats: list[dict], prefix: str) -> dict[str, float]:
    tot = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0]}
    out = {
        f"{prefix}_energy_mae": tot["energy_abs"] / tot["n_structures"],
        f"{prefix}_energy_rmse": math.sqrt(tot["energy_sq"] / tot["n_structures"]),
    }
    if "n_components" in tot:
        out[f"{prefix}_forces_mae"] = tot["forces_abs"] / tot["n_components"]
        out[f"{prefix}_forces_rmse"] = math.sqrt(tot["forces_sq"] / tot["n_components"])
    return out


# ------------------------------------------------------------------ protocol
@runtime_checkable
class Trainable(Protocol):
    """What :func:`train` optimises.

    ``dtype`` and ``device`` are those batches are built in. Optionally, a
    ``save(path, *, overwrite)`` method enables ``train(..., checkpoint=...)``,
    and a ``data_parallel()`` context manager (the optimised module's forward
    goes through a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper
    while it is open, see :meth:`HeadTrainable.data_parallel`) enables
    ``train(..., data_parallel=True)``. A ``loss`` that accepts
    ``denominators=`` (see :func:`reduce_terms`) is normalised exactly over
    a data-parallel step; other losses are rescaled by their share of the
    step's structures.
    """

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def prepare(
        self, train: mdata.AtomsDataset, val: Optional[mdata.AtomsDataset]
    ) -> tuple[list, Optional[list]]:
        """Validate the data, set anything fitted from it, return the graphs of both sets."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The tensors the optimiser updates (called once, after :meth:`prepare`)."""

    def loss(self, batch: mdata.Batch, *, create_graph: bool) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one batch and its :func:`error_statistics`.

        May accept ``denominators=None`` (see :func:`reduce_terms`).
        """

    def train_mode(self, mode: bool) -> None:
        """Switch the modules to training (True) or evaluation (False) mode."""

    def snapshot(self) -> Any:
        """A copy of the trained state (the best epoch's is kept)."""

    def restore(self, state: Any) -> None:
        """Load a :meth:`snapshot`."""


class EnergyForceMSE:
    """A base :class:`~mlipuq.models.MLIP` as a :class:`Trainable`: energy + force MSE.

    :meth:`prepare` also fits what the model needs from the training data
    (species reference energies, MiniMLIP's neighbour normalisation), see
    :func:`fit_scales`. ``parameters`` restricts training to those tensors;
    ``loss_fn(model, batch, create_graph) -> (loss, stats)`` replaces the MSE.
    """

    def __init__(self, model: MLIP, *, energy_weight: float = 1.0, forces_weight: float = 100.0,
                 parameters: Optional[Iterable[torch.nn.Parameter]] = None,
                 loss_fn: Optional[Callable] = None):
        self.model = model
        self.energy_weight = non_negative("energy_weight", energy_weight)
        self.forces_weight = non_negative("forces_weight", forces_weight)
        self.parameters = None if parameters is None else list(parameters)
        self.loss_fn = loss_fn

    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)
    #: What is trained, for the progress bar: the model's class name.
    description = property(lambda self: type(self.model).__name__)

    def prepare(self, train, val):
        need_forces = self.forces_weight > 0
        train_graphs = prepare_graphs(train, self.model, need_forces=need_forces)
        val_graphs = None
        if val is not None:
            val_graphs = prepare_graphs(val, self.model, need_forces=need_forces)
        fit_scales(self.model, train, train_graphs)
        return train_graphs, val_graphs

    def trainable_parameters(self):
        if self.parameters is not None:
            return list(self.parameters)
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch, *, create_graph):
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch, create_graph)
        return batch_loss(self.model, batch, self.energy_weight, self.forces_weight,
                          create_graph=create_graph)

    def train_mode(self, mode: bool) -> None:
        self.model.train(mode)

    def snapshot(self):
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state) -> None:
        self.model.load_state_dict(state)

    def save(self, path, *, overwrite: bool = False) -> None:
        self.model.save(path, overwrite=overwrite)


class HeadTrainable:
    """A head (``torch.nn.Module``) on a backbone MLIP, as a :class:`Trainable`.

    Subclasses define :meth:`loss`, which calls the head through
    :meth:`run_head` (the DistributedDataParallel wrapper while training data
    parallel). ``backbone`` lists backbone tensors trained with the head
    (empty: frozen backbone); ``frozen`` lists tensors whose ``requires_grad``
    is off while :meth:`fit` runs (restored afterwards). The backbone is
    snapshotted with the head only when it is trained.
    """

    def __init__(self, model: MLIP, head: torch.nn.Module, *, need_forces: bool,
                 backbone: Iterable[torch.nn.Parameter] = (),
                 frozen: Iterable[torch.nn.Parameter] = ()):
        self.model = model
        self.head = head
        self.need_forces = bool(need_forces)
        self.backbone = list(backbone)
        self.frozen = list(frozen)
        self._ddp: Optional[torch.nn.Module] = None
        self._training = False

    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    def prepare(self, train, val):
        graphs = prepare_graphs(train, self.model, need_forces=self.need_forces)
        if val is None:
            return graphs, None
        return graphs, prepare_graphs(val, self.model, need_forces=self.need_forces)

    def trainable_parameters(self):
        return list(self.head.parameters()) + self.backbone

    def loss(self, batch, *, create_graph):
        raise NotImplementedError

    def train_mode(self, mode: bool) -> None:
        self.model.train(mode)
        self.head.train(mode)
        self._training = bool(mode)

    def run_head(self, *args, **kwargs):
        """The head's forward: through the DistributedDataParallel wrapper while
        training data parallel (evaluation calls the head itself: the ranks
        hold the same weights)."""
        if self._ddp is not None and self._training:
            return self._ddp(*args, **kwargs)
        return self.head(*args, **kwargs)

    @contextlib.contextmanager
    def data_parallel(self):
        """Wrap the optimised module in DistributedDataParallel while open.

        The module is the head, or, with a trained ``backbone``, the head plus
        those tensors (their forward is the head's; the backbone's gradients
        reach the same reducer). DistributedDataParallel broadcasts rank 0's
        parameters at construction, so every rank starts from the same head.
        Collective: every rank enters it.
        """
        ddp = ddp_head(self.head, self.backbone)
        self._ddp = ddp
        try:
            yield ddp
        finally:
            self._ddp = None

    def snapshot(self):
        state = {"head": copy.deepcopy(self.head.state_dict())}
        if self.backbone:
            state["model"] = copy.deepcopy(self.model.state_dict())
        return state

    def restore(self, state) -> None:
        self.head.load_state_dict(state["head"])
        if "model" in state:
            self.model.load_state_dict(state["model"])

    def fit(self, train_set, val_set, *, seed: int, progress: bool,
            data_parallel: Optional[bool] = None, **trainer_options) -> History:
        """:func:`train` with the ``frozen`` tensors frozen; returns the :class:`History`.

        ``data_parallel`` (default: :func:`mlipuq.distributed.active`) trains
        on this rank's shard with gradients averaged over ranks.
        """
        if data_parallel is None:
            data_parallel = mdist.active()
        with _frozen(self.frozen):
            return train(self, train_set, val_set, seed=seed, progress=progress,
                         data_parallel=data_parallel, **trainer_options)


@contextlib.contextmanager
def _frozen(params: Sequence[torch.nn.Parameter]):
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


#: The :func:`train` options a UQ head's ``fit(**method_options)`` passes on.
TRAINER_OPTIONS = ("epochs", "lr", "batch_size", "patience", "lr_factor", "lr_patience",
                   "min_lr", "max_time", "weight_decay")


def split_fit_options(owner: str, defaults: dict, options: dict) -> tuple[dict, dict]:
    """``(method_options, trainer_options)`` of a head's ``fit``: ``options`` over ``defaults``.

    Rejects :func:`train` options a wrapper sets itself (``ValueError``) and
    unknown names (``TypeError``); checks ``energy_weight``/``forces_weight``.
    """
    for name in ("checkpoint", "overwrite", "parameters", "loss_fn"):
        if name in options:
            raise ValueError(f"{owner}.fit does not accept {name}=")
    unknown = sorted(set(options) - set(defaults) - set(TRAINER_OPTIONS))
    if unknown:
        valid = ", ".join(sorted(set(defaults) | set(TRAINER_OPTIONS)))
        raise TypeError(f"{owner}.fit got unexpected option(s) {unknown}; valid: {valid}")
    merged = {**defaults, **options}
    method = {k: v for k, v in merged.items() if k not in TRAINER_OPTIONS}
    trainer = {k: v for k, v in merged.items() if k in TRAINER_OPTIONS}
    if "energy_weight" in method:
        for name in ("energy_weight", "forces_weight"):
            method[name] = non_negative(name, method[name])
        if method["energy_weight"] == 0 and method["forces_weight"] == 0:
            raise ValueError("energy_weight and forces_weight cannot both be 0")
    return method, trainer


# ---------------------------------------------------------------------- loop
def _as_trainable(model, energy_weight, forces_weight, parameters, loss_fn) -> Trainable:
    if isinstance(model, MLIP):
        if loss_fn is not None:
            warnings.warn("train(loss_fn=...) is deprecated and will be removed in the next "
                          "release: pass a mlipuq.training.Trainable with its own loss()",
                          DeprecationWarning, stacklevel=3)
        return EnergyForceMSE(model, energy_weight=energy_weight, forces_weight=forces_weight,
                              parameters=parameters, loss_fn=loss_fn)
    if not isinstance(model, Trainable):
        raise TypeError(f"train() needs an MLIP or a Trainable, got {type(model).__name__}")
    if (energy_weight, forces_weight, parameters, loss_fn) != (1.0, 100.0, None, None):
        raise ValueError("energy_weight, forces_weight, parameters and loss_fn apply to MLIPs "
                         f"only; {type(model).__name__} defines its own loss and parameters")
    return model


def _evaluate(trainable, graphs, batch_size) -> tuple[float, list]:
    trainable.train_mode(False)
    total, stats = 0.0, []
    for n, batch in _batches(graphs, range(len(graphs)), batch_size, trainable):
        loss, s = trainable.loss(batch, create_graph=False)
        total += float(loss.detach()) * n
        stats.append(s)
    return total / len(graphs), stats


def train(
    model: Union[MLIP, Trainable],
    train: Union[mdata.AtomsDataset, Sequence],
    val: Optional[Union[mdata.AtomsDataset, Sequence]] = None,
    *,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    energy_weight: float = 1.0,
    forces_weight: float = 100.0,
    seed: int = 0,
    patience: int = 50,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    overwrite: bool = False,
    lr_factor: float = 0.5,
    lr_patience: Optional[int] = None,
    min_lr: float = 1e-6,
    max_time: Optional[float] = None,
    weight_decay: float = 0.0,
    parameters: Optional[Sequence[torch.nn.Parameter]] = None,
    loss_fn: Optional[Callable] = None,
    progress: bool = True,
    data_parallel: bool = False,
    desc: Optional[str] = None,
    refit_references: Optional[bool] = None,
) -> History:
    """Train ``model`` on energies and forces; returns a :class:`History`.

    Parameters
    ----------
    model
        Any :class:`~mlipuq.models.MLIP` (trained in its own dtype, float32 for
        speed; species reference energies and, for MiniMLIP, the neighbour
        normalisation are set from ``train`` if not set yet; when training ends,
        its :func:`fit_offset_drift` on ``train``), or any
        :class:`Trainable`, which brings its own loss and parameters.
    train, val
        Datasets with reference energies and forces. Without ``val`` the
        training loss drives the scheduler, early stopping and best weights.
    epochs, batch_size, lr
        Maximum number of epochs, structures per batch, initial learning rate.
    energy_weight, forces_weight
        Weights of the per-atom energy MSE (eV^2) and force MSE (eV^2/Å^2).
        ``forces_weight=0`` trains on energies alone (no reference forces needed).
        MLIPs only.
    seed
        Seeds the shuffling and torch's RNG: a run is reproducible on CPU.
    patience
        Stop after this many epochs without validation improvement.
    checkpoint
        Path where the best model is saved whenever validation improves
        (an existing file is refused unless ``overwrite=True``); needs a
        ``save`` method on a :class:`Trainable`.
    lr_factor, lr_patience, min_lr
        Learning-rate decay on plateau (``lr_patience`` defaults to
        ``max(patience // 4, 1)``).
    max_time
        Time budget (s of wall time, from the start of training): training
        stops after the first batch that ends past it, validates the weights
        it reached (a row with ``"partial": True`` and the ``"batches"`` done
        when it stopped within an epoch) and keeps the best weights. When the
        budget, not ``epochs`` or early stopping, ends training a
        :class:`TimeBudgetWarning` names the epochs done and the budget. The
        number of epochs then depends on the machine and its load; give
        ``epochs`` alone for reproducible training. Data parallel: checked at
        epoch ends, on rank 0's clock.
    parameters
        Train only these parameters of an MLIP (default: all that require grad).
    loss_fn
        Deprecated: ``loss_fn(model, batch, create_graph) -> (loss, stats)``
        replacing the MSE of an MLIP; implement a :class:`Trainable` instead.
    progress
        Show a tqdm progress bar with running metrics (rank 0 only when data parallel).
    data_parallel
        After :func:`mlipuq.distributed.init` with two or more processes:
        a collective call (every rank passes the same data and options); each
        rank trains on its contiguous shard of ``train`` with gradients
        averaged by DistributedDataParallel and ``batch_size`` structures per
        rank and step (global batch ``batch_size × world_size``); the
        validation loss is that of the whole ``val``; the checkpoint is written
        by rank 0. Every rank ends with the same weights. Needs a
        :class:`Trainable` with ``data_parallel()`` (the UQ heads; not yet a
        plain MLIP). Ignored in a single process.
    desc
        What the progress bar says is trained (default: ``"training "`` and
        the model's class name, or the Trainable's ``description``, e.g.
        ``"training ShallowEnsemble heads"``).
    refit_references
        When training ends, shift the species reference energies by the least
        squares fit of the trained model's energy error on ``train``
        (:func:`refit_reference_energies`: the small energy weight leaves an offset of
        up to tens of meV/atom; nothing else changes). None (default, 2026-12-04): True
        for an MLIP whose references this training fits, False for given ones (isolated
        atoms, an earlier training) and Trainables (True raises). Unrefitted, an
        :class:`EnergyOffsetWarning` says when that offset is most of the energy error.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    lr = positive("lr", lr)
    fitted_here = not getattr(model, "atomic_energies_set", True)  # before _as_trainable
    trainable = _as_trainable(model, energy_weight, forces_weight, parameters, loss_fn)
    if refit_references is None:
        refit_references = fitted_here and isinstance(trainable, EnergyForceMSE)
    elif refit_references and not isinstance(trainable, EnergyForceMSE):
        raise ValueError(f"refit_references applies to MLIPs, not to a {type(trainable).__name__}")
    parallel = bool(data_parallel) and mdist.active()
    if parallel and not callable(getattr(trainable, "data_parallel", None)):
        raise TypeError(f"train(data_parallel=True) needs a Trainable with data_parallel(); "
                        f"{type(trainable).__name__} has none")
    main = mdist.is_main() if parallel else True
    if checkpoint is not None:
        if not callable(getattr(trainable, "save", None)):
            raise ValueError(f"{type(trainable).__name__} has no save(); checkpoint= needs one")
        exists = os.path.exists(checkpoint)
        if parallel:  # rank 0 writes it: its answer holds for every rank
            exists = mdist.broadcast_object(exists)
        if exists and not overwrite:
            raise FileExistsError(f"{checkpoint} exists; pass overwrite=True to replace it")
    train_graphs, val_graphs = trainable.prepare(
        mdata.as_dataset(train), None if val is None else mdata.as_dataset(val)
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = list(trainable.trainable_parameters())
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        factor=lr_factor,
        patience=lr_patience if lr_patience is not None else max(patience // 4, 1),
        min_lr=min_lr,
    )
    history = History()
    best_state = trainable.snapshot()
    epochs_since_best = 0
    if parallel:
        exact = _accepts_denominators(trainable)
        train_atoms = np.array([len(g.numbers) for g in train_graphs])
        val_atoms = None if val_graphs is None else np.array([len(g.numbers) for g in val_graphs])
    t0 = time.perf_counter()
    deadline = None if max_time is None else t0 + max_time
    budget_hit = False
    done = _EpochProgress()
    desc = f"training {_describe(trainable)}" if desc is None else desc
    bar = progress_bar(epochs, desc, "epoch", enabled=progress and main)
    sharding = trainable.data_parallel() if parallel else contextlib.nullcontext()
    with sharding:
        for epoch in range(epochs):
            if parallel:  # the budget is checked at epoch ends, on rank 0's clock
                loss, stats = _train_epoch_sharded(trainable, train_graphs, train_atoms,
                                                   batch_size, optimizer, epoch, seed, exact)
                done.batches = done.n_batches = 1
            else:
                order = rng.permutation(len(train_graphs))
                loss, stats = _train_epoch(trainable, train_graphs, order, batch_size,
                                           optimizer, epoch, deadline=deadline, progress=done)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss}
            if not done.complete:
                row.update(partial=True, batches=done.batches)
            row.update(_summarise(stats, "train"))
            monitor = row["train_loss"]
            if val_graphs is not None:
                if parallel:
                    row["val_loss"], vstats = _evaluate_sharded(trainable, val_graphs, val_atoms,
                                                                batch_size, exact)
                else:
                    row["val_loss"], vstats = _evaluate(trainable, val_graphs, batch_size)
                row.update(_summarise(vstats, "val"))
                monitor = row["val_loss"]
            row["time"] = time.perf_counter() - t0
            if parallel:  # rank 0's clock decides max_time for everyone
                row["time"] = mdist.broadcast_object(row["time"])
            history.epochs.append(row)
            if done.complete:
                scheduler.step(monitor)
            if monitor < history.best_val_loss:
                history.best_val_loss, history.best_epoch = monitor, epoch
                best_state = trainable.snapshot()
                epochs_since_best = 0
                if checkpoint is not None and main:
                    trainable.save(checkpoint, overwrite=True)
            else:
                epochs_since_best += 1
            bar.set_postfix(_postfix(row, monitor), refresh=False)
            bar.update(1)
            if not done.complete:  # the budget ended this epoch early
                budget_hit = True
                break
            if epochs_since_best >= patience:
                history.stopped_early = True
                log.info("early stopping at epoch %d", epoch)
                break
            if max_time is not None and row["time"] > max_time and epoch + 1 < epochs:
                budget_hit = True
                break
    bar.close()
    history.stopped_by_time = budget_hit
    if budget_hit and main:
        warn_budget(max_time, history, done, epochs)
    trainable.restore(best_state)
    trainable.train_mode(False)
    if isinstance(trainable, EnergyForceMSE):  # the reference energies, as training left them
        history.reference_shift = settle_references(trainable.model, train, refit_references)
        history.references_refit = refit_references
        if checkpoint is not None and main:  # the best weights again, now with it
            trainable.save(checkpoint, overwrite=True)
    history.wall_time = time.perf_counter() - t0
    return history
