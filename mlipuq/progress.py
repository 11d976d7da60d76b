"""Progress bars that name what they run and count in real units.

Every tqdm bar of the package comes from :func:`bar`: integer counts of a
named unit (``"structure"``, ``"epoch"``, ``"step"``, ``"round"``) and a
description naming the work, e.g. ``"predict (ShallowEnsemble)"``.
:func:`batches_with_progress` advances a bar by the structures of each batch
of :func:`mlipuq.data.iter_batches`, so that the count never jumps by a
batch's worth of "items" of unknown size.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str = "structure", *, enabled: bool = True,
        initial: int = 0) -> tqdm:
    """A tqdm bar over ``total`` counts of ``unit`` (hidden unless ``enabled``).

    Parameters
    ----------
    total
        Number of ``unit`` the work holds (structures, epochs, steps...).
    desc
        What runs, e.g. ``"LLPR fit (LastLayerLaplace)"``.
    unit
        Singular name of what is counted; the count is an integer (no
        ``unit_scale``).
    enabled
        False: a disabled bar (updates are no-ops, nothing is written).
    initial
        Count already done (a resumed run), at most ``total``.

    Returns
    -------
    tqdm.auto.tqdm
        The bar; close it when done.
    """
    total = int(total)
    return tqdm(total=total, initial=min(int(initial), total), desc=desc, unit=unit,
                disable=not enabled)


#: A bar that an outer loop owns (:func:`counting_into`): inner batch loops
#: advance it instead of opening bars of their own.
_OUTER: contextvars.ContextVar[Optional[tqdm]] = contextvars.ContextVar("mlipuq_outer_bar",
                                                                       default=None)


@contextlib.contextmanager
def counting_into(outer: tqdm):
    """Within the block, :func:`batches_with_progress` advances ``outer`` per batch
    (and opens no bar), so that e.g. pool scoring, which calls ``predict`` per
    chunk, moves one batch of structures at a time rather than a chunk."""
    token = _OUTER.set(outer)
    try:
        yield outer
    finally:
        _OUTER.reset(token)


def batches_with_progress(batches: Iterable[tuple[int, Any]], n_structures: int, desc: str,
                          enabled: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``batches`` (``(start, Batch)`` pairs) while counting their structures.

    The bar advances by ``batch.n_structures`` after each batch is consumed
    (unit ``"structure"``) and is closed when the iteration ends, also when
    the caller stops early or raises. Inside :func:`counting_into` it advances
    the outer bar instead, whatever ``enabled``.

    Parameters
    ----------
    batches
        Pairs from :func:`mlipuq.data.iter_batches`.
    n_structures
        Structures in all the batches (the bar's total).
    desc, enabled
        As in :func:`bar`.
    """
    outer = _OUTER.get()
    if outer is not None:  # an outer loop counts these structures on its own bar
        for start, batch in batches:
            yield start, batch
            outer.update(batch.n_structures)
        return
    if not enabled:  # no bar object at all: predict runs once per MD step
        yield from batches
        return
    progress = bar(n_structures, desc, "structure")
    try:
        for start, batch in batches:
            yield start, batch
            progress.update(batch.n_structures)
    finally:
        progress.close()


def _mev(value: float, unit: str) -> str:
    """``value`` (eV-based) in meV, three significant digits, with ``unit``."""
    value = 1e3 * value
    return f"{value:.3g} {unit}" if abs(value) < 1e3 else f"{value:.0f} {unit}"


def training_postfix(row: dict, monitor: float) -> dict:
    """The training bar's metrics (``mlipuq.train``): the monitored loss, and the
    rows' MAEs (eV/atom, eV/Å) in meV/atom and meV/Å; the training energy MAE only
    when there is no ``val``."""
    shown = {"loss": f"{monitor:.3g}"}
    energy = "val_energy_mae" if "val_energy_mae" in row else "train_energy_mae"
    labels = {energy: ("E MAE", "meV/atom"), "val_forces_mae": ("F MAE", "meV/Å"),
              "train_forces_mae": ("F MAE", "meV/Å")}
    for key, (label, unit) in labels.items():
        if key in row:
            shown[f"{key.split('_')[0]} {label}"] = _mev(row[key], unit)
    return shown


def trained_name(trainable) -> str:
    """What the training bar says is trained: ``trainable.description`` (e.g.
    "EvidentialHead"), else its class."""
    return str(getattr(trainable, "description", None) or type(trainable).__name__)
