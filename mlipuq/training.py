"""Energy + force training loop shared by base models, ensembles and heads.

The loss is

.. math:: L = w_E \\langle ((E - E^{ref}) / n)^2 \\rangle
            + w_F \\langle (F - F^{ref})^2 \\rangle

(per-atom energy MSE in eV^2/atom^2 plus force-component MSE in eV^2/Å^2).
Adam, learning rate halved on validation plateaus, early stopping, best
weights restored at the end.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from mlipuq import data as mdata
from mlipuq.errors import MissingReferenceError
from mlipuq.models.base import MLIP
from mlipuq.params import non_negative, positive

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch record of a training run (energies per atom in eV/atom, forces in eV/Å)."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    wall_time: float = 0.0

    def __getitem__(self, key: str) -> list:
        return [row.get(key) for row in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)


def prepare_graphs(dataset: mdata.AtomsDataset, model: MLIP, *, need_forces: bool):
    """Validate ``dataset`` for training and build its neighbour lists once."""
    dataset.validate(model.species, require_energy=True, require_forces=need_forces)
    return [mdata.to_graph(a, model.cutoff, k, model.species) for k, a in enumerate(dataset)]


def fit_scales(model: MLIP, train: mdata.AtomsDataset, graphs: Sequence[mdata.Graph]) -> None:
    """Give the model what it needs from the data before training starts:
    species reference energies (least squares) and the mean neighbour count."""
    if not model.atomic_energies_set:
        model.set_atomic_energies(mdata.fit_atomic_energies(train, model.species))
        log.info("fitted atomic energies %s", model.atomic_energies)
    if hasattr(model, "avg_num_neighbors") and model.avg_num_neighbors is None:
        edges = sum(g.edge_index.shape[1] for g in graphs)
        atoms = sum(len(g.numbers) for g in graphs)
        model.avg_num_neighbors = max(edges / max(atoms, 1), 1.0)


def batch_loss(
    model: MLIP,
    batch: mdata.Batch,
    energy_weight: float,
    forces_weight: float,
    *,
    create_graph: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss of one batch and its error sums (for epoch metrics)."""
    out = model(batch, forces=forces_weight > 0, create_graph=create_graph)
    n = batch.n_atoms.to(torch.float64)
    de = (out["energy"] - batch.energy.to(torch.float64)) / n
    loss = energy_weight * (de**2).mean()
    stats = {
        "n_structures": float(len(n)),
        "energy_abs": float(de.detach().abs().sum()),
        "energy_sq": float((de.detach() ** 2).sum()),
    }
    if forces_weight > 0:
        df = out["forces"] - batch.forces.to(out["forces"].dtype)
        loss = loss + forces_weight * (df.to(torch.float64) ** 2).mean()
        stats.update(
            n_components=float(df.numel()),
            forces_abs=float(df.detach().abs().sum()),
            forces_sq=float((df.detach() ** 2).sum()),
        )
    return loss, stats


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


def train(
    model: MLIP,
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
) -> History:
    """Train ``model`` on energies and forces; returns a :class:`History`.

    Parameters
    ----------
    model
        Any :class:`~mlipuq.models.MLIP` (trained in its own dtype, float32 for
        speed). Species reference energies and, for MiniMLIP, the neighbour
        normalisation are set from ``train`` if they are not set yet.
    train, val
        Datasets with reference energies and forces. Without ``val`` the
        training loss drives the scheduler, early stopping and best weights.
    epochs, batch_size, lr
        Maximum number of epochs, structures per batch, initial learning rate.
    energy_weight, forces_weight
        Weights of the per-atom energy MSE (eV^2) and force MSE (eV^2/Å^2).
        ``forces_weight=0`` trains on energies alone (no reference forces needed).
    seed
        Seeds the shuffling and torch's RNG: a run is reproducible on CPU.
    patience
        Stop after this many epochs without validation improvement.
    checkpoint
        Path where the best model is saved whenever validation improves
        (an existing file is refused unless ``overwrite=True``).
    lr_factor, lr_patience, min_lr
        Learning-rate decay on plateau (``lr_patience`` defaults to
        ``max(patience // 4, 1)``).
    max_time
        Stop after this many seconds of wall time (the best weights are kept).
    parameters
        Train only these parameters (default: all); used by the UQ heads.
    loss_fn
        ``loss_fn(model, batch, create_graph) -> (loss, stats)`` replacing the
        default energy+force MSE (used by the UQ heads); stats needs the keys
        of :func:`batch_loss`.
    progress
        Show a tqdm progress bar with running metrics.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    lr = positive("lr", lr)
    energy_weight = non_negative("energy_weight", energy_weight)
    forces_weight = non_negative("forces_weight", forces_weight)
    if checkpoint is not None and os.path.exists(checkpoint) and not overwrite:
        raise FileExistsError(f"{checkpoint} exists; pass overwrite=True to replace it")
    train = mdata.as_dataset(train)
    need_forces = forces_weight > 0
    train_graphs = prepare_graphs(train, model, need_forces=need_forces)
    val_graphs = None
    if val is not None:
        val = mdata.as_dataset(val)
        val_graphs = prepare_graphs(val, model, need_forces=need_forces)
    fit_scales(model, train, train_graphs)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = list(parameters) if parameters is not None else [
        p for p in model.parameters() if p.requires_grad
    ]
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        factor=lr_factor,
        patience=lr_patience if lr_patience is not None else max(patience // 4, 1),
        min_lr=min_lr,
    )
    dtype = model.dtype
    device = model.device

    def compute(b, create_graph):
        if loss_fn is not None:
            return loss_fn(model, b, create_graph)
        return batch_loss(model, b, energy_weight, forces_weight, create_graph=create_graph)

    def evaluate(graphs) -> tuple[float, list[dict]]:
        model.eval()
        total, stats = 0.0, []
        for start in range(0, len(graphs), batch_size):
            b = mdata.collate_graphs(graphs[start : start + batch_size], dtype).to(device=device)
            loss, s = compute(b, False)
            total += float(loss.detach()) * len(b.n_atoms)
            stats.append(s)
        return total / len(graphs), stats

    history = History()
    best_state = copy.deepcopy(model.state_dict())
    epochs_since_best = 0
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="training", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        order = rng.permutation(len(train_graphs))
        train_stats, train_total = [], 0.0
        for start in range(0, len(order), batch_size):
            chunk = [train_graphs[k] for k in order[start : start + batch_size]]
            b = mdata.collate_graphs(chunk, dtype).to(device=device)
            optimizer.zero_grad(set_to_none=True)
            loss, s = compute(b, True)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}; lower lr"
                )
            loss.backward()
            optimizer.step()
            train_total += float(loss.detach()) * len(chunk)
            train_stats.append(s)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row["train_loss"] = train_total / len(train_graphs)
        row.update(_summarise(train_stats, "train"))
        if val_graphs is not None:
            row["val_loss"], vstats = evaluate(val_graphs)
            row.update(_summarise(vstats, "val"))
            monitor = row["val_loss"]
        else:
            monitor = row["train_loss"]
        row["time"] = time.perf_counter() - t0
        history.epochs.append(row)
        scheduler.step(monitor)
        if monitor < history.best_val_loss:
            history.best_val_loss = monitor
            history.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            epochs_since_best = 0
            if checkpoint is not None:
                model.save(checkpoint, overwrite=True)
        else:
            epochs_since_best += 1
        shown = {"loss": f"{monitor:.3g}"}
        for key in ("val_energy_mae", "val_forces_mae", "train_forces_mae"):
            if key in row:
                shown[key.replace("_mae", "")] = f"{row[key]:.3g}"
        bar.set_postfix(shown)
        if epochs_since_best >= patience:
            history.stopped_early = True
            log.info("early stopping at epoch %d", epoch)
            break
        if max_time is not None and row["time"] > max_time:
            log.info("time budget of %.0f s reached at epoch %d", max_time, epoch)
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.wall_time = time.perf_counter() - t0
    return history


def errors(model: MLIP, dataset, *, batch_size: int = 32) -> dict[str, float]:
    """MAE and RMSE of energies (eV/atom) and forces (eV/Å) on ``dataset``."""
    dataset = mdata.as_dataset(dataset)
    if not dataset.has_reference.all():
        raise MissingReferenceError("every structure needs a reference energy to compute errors")
    out = model.compute(dataset, batch_size=batch_size)
    de = (out["energy"] - dataset.energies) / dataset.n_atoms
    result = {
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
    }
    if dataset.has_forces.all():
        df = out["forces"] - dataset.forces
        result["forces_mae"] = float(np.mean(np.abs(df)))
        result["forces_rmse"] = float(np.sqrt(np.mean(df**2)))
    return result
