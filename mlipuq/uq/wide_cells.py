"""Cells wider than every calibration cell, where those were all narrower than 2 × cutoff.

Responsibility: recognise, at ``predict``, the one shift kind that no single-model
wrapper's variance sees, and say so (:class:`WideCellWarning`).

Why. In a cell narrower than twice the model's cutoff some neighbours enter an
atom's environment through two periodic images, which move together. A model
trained and calibrated on such cells has never seen an environment without that
constraint, and in a cell at least 2 × cutoff wide there is none. On the shift
benchmark's EMT metals (docs/shift.md, "Shift kinds no round saw"; 32-atom training
and calibration cells 7.1–8.1 Å wide, cutoffs 4.5–5 Å) forces in 108-atom cells at
the training temperature were 1.4–2.7 times less accurate, the last-layer features
hardly moved, and the 95 % force intervals of LLPR, latent distance, the shallow
ensemble and the evidential head covered 0.64–0.71 on the worst system; the deep
ensemble, whose members disagree more there, covered ≥ 0.90 on all ten systems.
Trained on 108-atom cells, the error was the same in every cell size
(``benchmarks/cell_size.py``).

No variance term is added: the calibration data hold no such cell, so nothing in them
measures how much wider the intervals must be, and a factor read off the benchmark
would be tuned to it. Five labelled wide cells added to the calibration data did not
suffice either (worst force coverage 0.81–0.86, and the in-distribution calibration
lost its goal; docs/shift.md). The warning names the structures, the width and the
remedies (wide cells in the training data; a deep ensemble). Training warns
of the same cause (:class:`mlipuq.training.SmallCellWarning`).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from mlipuq.checks import periodic_widths, structure_widths
from mlipuq.errors import user_stacklevel


class WideCellWarning(UserWarning):
    """Calibrated uncertainties for cells at least twice the cutoff wide, when every
    calibration cell was narrower: the stds may be several times too small."""


def calibration_width(dataset) -> Optional[float]:
    """The widest of the calibration structures' smallest perpendicular widths (Å),
    over those periodic in all three directions; None when there is none."""
    widths = periodic_widths(dataset)
    return float(widths.max()) if widths.size else None


def wide_structures(structures, cutoff: float, widest: Optional[float]) -> np.ndarray:
    """Indices of ``structures`` at least 2 × ``cutoff`` wide, when ``widest`` (the
    calibration cells') is below that; empty when it is not, or None (no periodic
    calibration cell: nothing to compare), without reading the cells."""
    if widest is None or widest >= 2.0 * cutoff:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.nan_to_num(structure_widths(structures), nan=0.0) >= 2.0 * cutoff)


def warn_wide_cells(dataset, cutoff: float, widest: float, wrapper: str) -> None:
    """:class:`WideCellWarning` naming the first structure of ``dataset`` that
    :func:`wide_structures` finds, and counting the others (the message does not
    change with the cell, so an MD run warns once)."""
    indices = wide_structures(dataset, cutoff, widest)
    if not len(indices):
        return
    more = f" and {len(indices) - 1} more" if len(indices) > 1 else ""
    warnings.warn(
        f"{wrapper}: structure {int(indices[0])}{more} is at least twice the cutoff "
        f"({cutoff:g} Å) wide, but every periodic calibration cell was narrower "
        f"(widest {widest:.3g} Å): neighbours entered those environments through two "
        "periodic images that move together, so these environments were never seen, "
        "and on the shift benchmark single-model stds did not grow there while force "
        "errors did, 1.4-2.9 times (docs/shift.md, 'Shift kinds no round saw'); add "
        "such cells to the training data (in the calibration data alone they did not "
        "suffice), or use a DeepEnsemble, which covered them",
        WideCellWarning, stacklevel=user_stacklevel(),
    )
