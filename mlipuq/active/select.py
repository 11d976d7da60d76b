"""Choose which candidate structures to label next: :func:`select`.

:func:`select` looks the strategy up in
:data:`mlipuq.active.strategies.REGISTRY`, checks that the wrapper offers what
the strategy requires, and returns a :class:`Selection` (pool indices in pick
order and the score of each pick).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlipuq import data as mdata
from mlipuq.active import strategies as _strategies
from mlipuq.active.scoring import score_pool

__all__ = ["Selection", "score_pool", "select"]


@dataclasses.dataclass
class Selection:
    """The structures chosen by :func:`select`.

    Attributes
    ----------
    indices
        (k,) int64 pool indices, in pick order.
    scores
        (k,) float64 score of each pick at pick time, in :attr:`unit`.
    strategy
        The strategy name.
    pool_scores
        (n_pool,) float64 score of every pool structure before any pick
        (None for ``"random"`` and ``"fps"``).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    pool_scores: np.ndarray | None = None

    @property
    def unit(self) -> str:
        """Unit of :attr:`scores` (``""`` for ``"random"``)."""
        return _strategies.get(self.strategy).unit

    def __len__(self) -> int:
        return len(self.indices)


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the pool size), got {k!r}")
    return int(k)


def select(
    uq_model,
    pool,
    k: int,
    *,
    strategy: str = "batch_llpr",
    seed: int = 0,
    lo: float | None = None,
    hi: float | None = None,
    calibration=None,
    labelled=None,
    label_noise: str = "none",
    batch_size: int = 32,
    chunk_size: int = 512,
    progress: bool = False,
) -> Selection:
    """Choose ``k`` structures of ``pool`` to label next.

    Parameters
    ----------
    uq_model
        A fitted UQ wrapper offering what the strategy requires
        (``Strategy.requires``; ``batch_llpr`` needs ``design_matrix`` and
        ``energy_posterior_covariance``, e.g. :class:`~mlipuq.uq.LastLayerLaplace`).
        Not used by ``"random"`` (may be None).
    pool
        AtomsDataset, list of Atoms or extxyz path; labels are not needed.
    k
        Number of structures, ``1 <= k <= len(pool)``.
    strategy
        ``"random"``, ``"max_energy_std"`` (eV/atom), ``"max_force_std"``
        (DP-GEN model deviation, eV/Å), ``"trust_window"`` (eV/Å), ``"fps"``
        (feature units) or ``"batch_llpr"`` (eV); see
        :mod:`mlipuq.active.strategies`.
    seed
        Seed of ``"random"``, of the draw inside the trust window and of the
        first ``"fps"`` point.
    lo, hi
        Trust levels (eV/Å) of ``"trust_window"``; missing ones are derived
        from ``calibration``.
    calibration
        In-distribution structures (e.g. validation data) for the trust levels.
    labelled
        Already labelled structures: ``"fps"`` starts from the distances to them.
    label_noise
        ``"batch_llpr"``: ``"none"`` (labels are deterministic, as DFT's are;
        copies of a picked structure drop to ~0 variance) or ``"fitted"``
        (condition on labels with the wrapper's fitted energy noise).
    batch_size, chunk_size, progress
        Structures per forward pass and per ``predict`` call, and a tqdm bar.

    Returns
    -------
    Selection
        ``trust_window`` may return fewer than ``k`` structures when fewer lie
        in the window, ``batch_llpr`` when the pool holds fewer than ``k``
        distinct structures (both logged as a warning).
    """
    strat = _strategies.get(strategy)
    if label_noise not in ("none", "fitted"):
        raise ValueError(f"label_noise must be 'none' or 'fitted', got {label_noise!r}")
    pool = mdata.as_dataset(pool)
    if len(pool) == 0:
        raise ValueError("the pool holds no structures")
    k = _check_k(k, len(pool))
    strat.check(uq_model)
    options = {"lo": lo, "hi": hi, "calibration": calibration, "labelled": labelled,
               "label_noise": _strategies.LabelNoise(label_noise)}
    stream = {"batch_size": batch_size, "chunk_size": chunk_size, "progress": progress}
    picks = strat.pick(uq_model, pool, k, rng=np.random.default_rng(seed), seed=seed,
                       stream=stream, options=options)
    return Selection(picks.indices, picks.scores, strategy, picks.pool_scores)

