"""Data-parallel training (torch.distributed): the pieces :func:`mlipuq.training.train` uses.

``train(..., data_parallel=True)`` after :func:`mlipuq.distributed.init` is a
collective call: every rank passes the same data and options, and the
optimised module (a head, with any trained backbone tensors) is wrapped in
:class:`torch.nn.parallel.DistributedDataParallel` (:func:`ddp_head`), which
averages the gradients over ranks at every ``backward``.

Per-rank sharding
    Rank ``r`` trains on its contiguous shard of the training set
    (:func:`mlipuq.distributed.shard_bounds`; shards differ in size by at
    most one). Every epoch each shard is shuffled with one generator seeded
    by ``(seed, epoch)`` and drawn in rank order (:func:`_shard_schedule`), so
    every rank knows every rank's batches, hence the global size of every
    step, without communicating. ``batch_size`` is per rank: one optimiser
    step sees up to ``batch_size × world_size`` structures.

Global-batch loss normalisation
    DistributedDataParallel *averages* gradients, i.e. sums them and divides
    by the world size. A loss that accepts ``denominators=`` (see
    :func:`reduce_terms`) therefore divides its sum of terms by the step's
    global number of structures (or force components) divided by the world
    size: the averaged gradient is then exactly the gradient of the mean over
    the whole global batch, whatever the shards' sizes. Other losses (a mean
    over the rank's batch) are rescaled by the rank's share of the step's
    structures, which is exact for per-structure terms. With ``batch_size``
    at least the largest shard (full batch) a run is, up to floating-point
    summation order, the single-process full-batch run.

Why every rank takes the same number of steps
    The gradient all-reduce is collective: a ``backward`` on one rank waits
    for the matching one on every other rank, so a rank that stopped early
    (its shard one structure shorter, hence sometimes one batch fewer) would
    deadlock the others. Such a rank takes zero-weighted steps (its loss
    multiplied by zero on any structure) until the longest shard is done; it
    contributes nothing to the gradient but joins the all-reduce. For the
    same reason a non-finite loss is summed over ranks before anything
    raises, so that every rank raises together.

Same decisions on every rank
    Training and validation totals are gathered in rank order and summed the
    same way everywhere (:func:`_gather_totals`), so every rank sees the same
    bits of the epoch's losses, and the learning-rate scheduler, early
    stopping and best-weights choice agree; validation uses the loss of the
    whole validation set (each rank evaluating its shard).
    :func:`~mlipuq.training.train` broadcasts rank 0's clock for ``max_time``
    and only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist


def reduce_terms(values: torch.Tensor, denominators: Optional[dict], key: str) -> torch.Tensor:
    """Mean of a batch's loss terms, or their sum over ``denominators[key]``.

    ``key`` is ``"structures"`` (one term per structure) or ``"components"``
    (one term per force component). Without ``denominators`` (a single
    process) this is ``values.mean()``. In a data-parallel step
    :func:`~mlipuq.training.train` passes the step's global counts divided by
    the world size, so that the gradients DistributedDataParallel averages
    over ranks are those of the mean over the whole global batch.
    """
    if denominators is None:
        return values.mean()
    return values.sum() / denominators[key]


class _HeadWithBackbone(torch.nn.Module):
    """A head and the backbone tensors trained with it, as one module for
    DistributedDataParallel (the forward is the head's)."""

    def __init__(self, head: torch.nn.Module, backbone: Sequence[torch.nn.Parameter]):
        super().__init__()
        self.head = head
        self.backbone = torch.nn.ParameterList(backbone)

    def forward(self, *args, **kwargs):
        return self.head(*args, **kwargs)


def ddp_head(head: torch.nn.Module, backbone: Sequence[torch.nn.Parameter]
             ) -> torch.nn.parallel.DistributedDataParallel:
    """``head`` (plus the trained ``backbone`` tensors, if any) in DistributedDataParallel.

    The backbone's gradients reach the same reducer (the forward is the
    head's). DistributedDataParallel broadcasts rank 0's parameters at
    construction, so every rank starts from the same head. Collective.
    """
    module = head if not backbone else _HeadWithBackbone(head, backbone)
    device = next(iter(module.parameters())).device
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # fixed statistics (feature centre, scales), equal everywhere
    )


def _batches(graphs, order, batch_size, trainable):
    """``(size, batch)`` of ``graphs[order]`` in chunks of ``batch_size`` (both loops use it)."""
    for start in range(0, len(order), batch_size):
        chunk = [graphs[k] for k in order[start : start + batch_size]]
        yield len(chunk), mdata.collate_graphs(chunk, trainable.dtype).to(device=trainable.device)


def _accepts_denominators(trainable) -> bool:
    try:
        parameters = inspect.signature(trainable.loss).parameters
    except (TypeError, ValueError):
        return False
    return "denominators" in parameters


def _shard_schedule(n: int, batch_size: int, seed: int, epoch: int, world: int) -> list[list]:
    """Every rank's batches (index arrays) of one data-parallel epoch.

    Rank r shuffles its contiguous shard with a generator seeded by
    ``(seed, epoch)`` (drawn in rank order, so every rank knows the whole
    schedule and the global size of each step without communicating).
    """
    generator = np.random.default_rng([int(seed), int(epoch)])
    schedule = []
    for r in range(world):
        start, stop = mdist.shard_bounds(n, r, world)
        order = start + generator.permutation(stop - start)
        schedule.append([order[i : i + batch_size] for i in range(0, len(order), batch_size)])
    return schedule


def _gather_totals(total: float, stats: dict) -> tuple[float, list]:
    """Sum a float and a dict of sums over ranks (rank order: the same bits everywhere)."""
    parts = mdist.all_gather_objects((float(total), dict(stats)))
    total = 0.0
    merged: dict[str, float] = {}
    for part_total, part_stats in parts:
        total += part_total
        for key, value in part_stats.items():
            merged[key] = merged.get(key, 0.0) + value
    return total, ([merged] if merged else [])


def _add_stats(into: dict, stats: dict) -> None:
    for key, value in stats.items():
        into[key] = into.get(key, 0.0) + value


def _train_epoch_sharded(trainable, graphs, atoms, batch_size, optimizer, epoch, seed,
                         exact: bool) -> tuple[float, list]:
    """One data-parallel pass: this rank's shard, the same number of steps on every rank.

    A rank with fewer batches than the others (shards differ by one structure)
    takes zero-weighted steps, so that every rank joins every gradient
    all-reduce. Returns the global mean loss per structure and the global
    statistics (identical on every rank).
    """
    world, here = mdist.world_size(), mdist.rank()
    schedule = _shard_schedule(len(graphs), batch_size, seed, epoch, world)
    n_steps = max(len(batches) for batches in schedule)
    mine = schedule[here]
    trainable.train_mode(True)
    total, stats = 0.0, {}
    for step in range(n_steps):
        parts = [batches[step] for batches in schedule if step < len(batches)]
        n_global = sum(len(p) for p in parts)
        denominators = {"structures": n_global / world,
                        "components": 3.0 * sum(int(atoms[p].sum()) for p in parts) / world}
        real = step < len(mine)
        index = mine[step] if real else [0]  # a zero-weighted step on any structure
        batch = mdata.collate_graphs([graphs[k] for k in index], trainable.dtype)
        batch = batch.to(device=trainable.device)
        optimizer.zero_grad(set_to_none=True)
        if exact:
            loss, s = trainable.loss(batch, create_graph=True, denominators=denominators)
        else:
            loss, s = trainable.loss(batch, create_graph=True)
            loss = loss * (len(index) / denominators["structures"])
        if not real:
            loss = loss * 0.0
        # a non-finite loss anywhere stops every rank (one rank raising alone deadlocks)
        bad = mdist.all_reduce_sum(0.0 if bool(torch.isfinite(loss)) else 1.0)
        if bad > 0:
            raise FloatingPointError(
                f"training loss became non-finite on {int(bad)} rank(s) at epoch {epoch}; lower lr"
            )
        loss.backward()
        optimizer.step()
        if real:
            total += float(loss.detach()) / world * n_global
            _add_stats(stats, s)
    total, merged = _gather_totals(total, stats)
    return total / len(graphs), merged


def _evaluate_sharded(trainable, graphs, atoms, batch_size, exact: bool) -> tuple[float, list]:
    """Loss and statistics of the whole validation set, each rank evaluating its shard.

    With an ``exact`` loss (``denominators=``) this is the loss of the whole
    set as one batch; otherwise the structure-weighted mean of batch losses.
    """
    trainable.train_mode(False)
    start, stop = mdist.shard_bounds(len(graphs))
    denominators = {"structures": float(len(graphs)), "components": 3.0 * float(atoms.sum())}
    total, stats = 0.0, {}
    for n, batch in _batches(graphs, range(start, stop), batch_size, trainable):
        if exact:
            loss, s = trainable.loss(batch, create_graph=False, denominators=denominators)
            total += float(loss.detach())
        else:
            loss, s = trainable.loss(batch, create_graph=False)
            total += float(loss.detach()) * n
        _add_stats(stats, s)
    total, merged = _gather_totals(total, stats)
    return (total if exact else total / len(graphs)), merged
