"""Turn uncertain MD frames into active-learning candidates: :func:`harvest`."""

from __future__ import annotations

import logging
import os

import numpy as np

from mlipuq import data as mdata
from mlipuq import schema
from mlipuq.active.scoring import score_pool

log = logging.getLogger(__name__)

#: ``atoms.info`` keys of the per-frame uncertainties ``run_md`` writes, by quantity
#: (an alias of :data:`mlipuq.schema.FRAME_UNCERTAINTY`).
INFO_KEYS = schema.FRAME_UNCERTAINTY


def _read_frames(frames) -> list:
    if isinstance(frames, (str, os.PathLike)):
        frames = mdata.read_structures(frames)  # bad files name the file and frame
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to harvest from")
    return frames


def harvest(
    frames,
    uq_model,
    threshold: float,
    *,
    quantity: str = "max_force_std",
    info_key: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> mdata.AtomsDataset:
    """MD frames whose uncertainty exceeds ``threshold`` become AL candidates.

    Parameters
    ----------
    frames
        A list of Atoms, an AtomsDataset or an extxyz path (e.g. the frames
        or trajectory file of :func:`mlipuq.propagation.run_md`).
    uq_model
        Fitted UQ wrapper used to score frames that carry no stored score
        (may be None when every frame carries one).
    threshold
        In eV/Å for ``"max_force_std"``, eV/atom for ``"energy_std_per_atom"``.
    quantity
        ``"max_force_std"`` (DP-GEN model deviation) or ``"energy_std_per_atom"``.
    info_key
        ``atoms.info`` key of a stored per-frame score; default
        :data:`INFO_KEYS` ``[quantity]`` (what ``run_md`` writes). Used only
        if every frame has it.
    batch_size, progress
        Structures per forward pass when scoring, and a tqdm bar.

    Returns
    -------
    AtomsDataset
        Copies of the frames above the threshold, without calculators (their
        energies are predictions, not references), in frame order, with
        ``info[schema.HARVEST_FRAME]`` (frame index) and
        ``info[schema.HARVEST_SCORE]`` (the score, in the unit of ``quantity``).
    """
    if quantity not in INFO_KEYS:
        raise ValueError(f"quantity must be one of {tuple(INFO_KEYS)}, got {quantity!r}")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold!r}")
    frames = _read_frames(frames)
    key = info_key or INFO_KEYS[quantity]
    if all(key in a.info for a in frames):
        scores = np.array([float(a.info[key]) for a in frames], dtype=np.float64)
    else:
        if uq_model is None:
            raise ValueError(f"frames carry no {key!r} in atoms.info; pass a fitted uq_model")
        scores = score_pool(uq_model, frames, quantity, batch_size=batch_size, progress=progress)
    out = []
    for i in np.flatnonzero(scores > threshold):
        a = frames[int(i)].copy()
        a.calc = None
        a.info[schema.HARVEST_FRAME] = int(i)
        a.info[schema.HARVEST_SCORE] = float(scores[i])
        out.append(a)
    log.info("harvested %d of %d frames above %.4g", len(out), len(frames), threshold)
    return mdata.AtomsDataset(out)
