"""The ``train(..., max_time=...)`` time budget: the deadline-bounded epoch and its warning.

Split out of :mod:`mlipuq.training`, which re-exports every name here.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from mlipuq.errors import user_stacklevel
from mlipuq.training_parallel import _batches


class TimeBudgetWarning(UserWarning):
    """``train(..., max_time=...)`` stopped training before its epochs or early stopping did."""


@dataclass
class _EpochProgress:
    """How far an epoch got: batches done of ``n_batches`` (fewer when the time budget hit)."""

    batches: int = 0
    n_batches: int = 0

    @property
    def complete(self) -> bool:
        return self.batches >= self.n_batches


def _train_epoch(trainable, graphs, order, batch_size, optimizer, epoch, *,
                 deadline: Optional[float] = None,
                 progress: Optional[_EpochProgress] = None) -> tuple[float, list]:
    """One pass of optimiser steps; mean loss per structure and the batches' statistics.

    With ``deadline`` (a :func:`time.perf_counter` value) the pass stops after the
    first batch that ends past it; ``progress`` (if given) records how many of
    the epoch's batches were done. The mean loss is over the structures seen.
    """
    trainable.train_mode(True)
    total, seen, stats = 0.0, 0, []
    n_batches = -(-len(order) // batch_size)
    if progress is not None:
        progress.batches, progress.n_batches = 0, n_batches
    for k, (n, batch) in enumerate(_batches(graphs, order, batch_size, trainable)):
        optimizer.zero_grad(set_to_none=True)
        loss, s = trainable.loss(batch, create_graph=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {float(loss)} at epoch {epoch}; lower lr"
            )
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * n
        seen += n
        stats.append(s)
        if progress is not None:
            progress.batches = k + 1
        if deadline is not None and k + 1 < n_batches and time.perf_counter() >= deadline:
            break
    return total / max(seen, 1), stats


def _budget_message(max_time: float, history: Any, progress: _EpochProgress,
                    epochs: int) -> str:
    done = len(history) - (0 if progress.complete else 1)
    what = f"{done} of {epochs} epochs"
    if not progress.complete:
        what += f" and {progress.batches} of the {progress.n_batches} batches of the next"
    return (f"training stopped by the time budget (max_time={max_time:g} s) after {what}, "
            f"at {history.epochs[-1]['time']:.1f} s; the best weights (History.best_epoch "
            f"{history.best_epoch}) are kept. The epochs a budget allows depend on the machine "
            "and its load: give epochs alone for reproducible training")


def warn_budget(max_time: float, history: Any, progress: _EpochProgress, epochs: int) -> None:
    """The :class:`TimeBudgetWarning` of a training the budget stopped, at the user's call."""
    warnings.warn(_budget_message(max_time, history, progress, epochs), TimeBudgetWarning,
                  stacklevel=user_stacklevel())
