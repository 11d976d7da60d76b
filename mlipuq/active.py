"""Active learning: choose which candidate structures to label next.

:func:`select` ranks a pool of unlabelled structures with a fitted UQ wrapper
and returns a :class:`Selection` (indices in pick order and the score of each
pick). Strategies (``strategy=``):

``"random"``
    Uniform without replacement (``seed=``); scores are 0.
``"max_energy_std"``
    Largest predicted energy std per atom (eV/atom).
``"max_force_std"``
    Largest DP-GEN model deviation (eV/Å), see :func:`force_deviation`.
``"trust_window"``
    DP-GEN's trust levels: keep structures whose model deviation lies in
    ``[lo, hi)`` (eV/Å) and draw ``k`` of them at random (``seed=``). Below
    ``lo`` the model already knows the structure; above ``hi`` it is probably
    unphysical (exploded MD, overlapping atoms). See :func:`trust_levels`.
``"fps"``
    Farthest-point sampling in the space of mean last-layer features
    ``(1/n) sum_i phi_i``; score = Euclidean distance (feature units) to the
    nearest already chosen (or ``labelled=``) structure at pick time.
``"batch_llpr"``
    Greedy batch selection with a :class:`~mlipuq.uq.LastLayerLaplace`:
    pick the largest posterior energy variance ``f^T Σ f``, update Σ as if
    that structure's energy were labelled, repeat (see :func:`greedy_llpr`).
    Score = posterior energy std (eV) at pick time.

Pool scoring streams the pool in chunks (``chunk_size`` structures at a time,
each predicted in batches of ``batch_size``) and keeps only one float per
structure (or one (D,) feature row for ``fps`` / ``batch_llpr``), so memory is
bounded by the chunk, not the pool. :func:`harvest` turns MD frames whose
uncertainty exceeds a threshold into candidates. :class:`Loop` and
:func:`plot_learning_curves` (in :mod:`mlipuq.active_loop`) run whole
active-learning campaigns.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch

from mlipuq.params import positive
from mlipuq import data as mdata

log = logging.getLogger(__name__)

STRATEGIES = ("random", "max_energy_std", "max_force_std", "trust_window", "fps", "batch_llpr")

#: Units of :attr:`Selection.scores` per strategy.
SCORE_UNITS = {
    "random": "",
    "max_energy_std": "eV/atom",
    "max_force_std": "eV/Å",
    "trust_window": "eV/Å",
    "fps": "feature units",
    "batch_llpr": "eV",
}

#: ``atoms.info`` keys under which MD frames may carry a stored per-frame uncertainty
#: (``harvest`` uses them instead of re-scoring when every frame has one).
INFO_KEYS = {
    "max_force_std": "mlipuq_max_force_std",
    "energy_std_per_atom": "mlipuq_energy_std_per_atom",
}


@dataclasses.dataclass
class Selection:
    """The structures chosen by :func:`select`.

    Attributes
    ----------
    indices
        (k,) int64 pool indices, in pick order.
    scores
        (k,) float64 score of each pick at pick time, in :attr:`unit`
        (see :data:`SCORE_UNITS`).
    strategy
        The strategy name.
    pool_scores
        (n_pool,) float64 score of every pool structure before any pick
        (None for ``"random"``).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    pool_scores: np.ndarray | None = None

    @property
    def unit(self) -> str:
        return SCORE_UNITS[self.strategy]

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------- scoring
def force_deviation(prediction) -> np.ndarray:
    """DP-GEN model deviation of the forces per structure (eV/Å).

    .. math:: \\epsilon_F = \\max_i \\sqrt{\\sum_{c} \\mathrm{Var}(F_{ic})}
       = \\max_i \\sqrt{\\langle \\lVert F_i - \\langle F_i \\rangle \\rVert^2 \\rangle}

    the largest over atoms of the norm of the force std vector (population
    variance over committee members for ensembles; the wrapper's, possibly
    recalibrated, ``forces_var`` in general).

    Returns
    -------
    numpy.ndarray
        (B,) float64 in eV/Å.
    """
    return prediction.max_force_std


def energy_std_per_atom(prediction) -> np.ndarray:
    """(B,) predicted energy std per atom (eV/atom), float64."""
    return prediction.energy_per_atom_std


_QUANTITIES = {"max_force_std": force_deviation, "energy_std_per_atom": energy_std_per_atom}


def _chunks(n: int, size: int, progress: bool, desc: str) -> Iterator[int]:
    starts = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-n // size), desc=desc, unit="chunk")
    return iter(starts)


def score_pool(
    uq_model,
    pool,
    quantity: str = "max_force_std",
    *,
    batch_size: int = 32,
    chunk_size: int = 512,
    progress: bool = False,
) -> np.ndarray:
    """One uncertainty score per pool structure, streamed in chunks.

    Parameters
    ----------
    uq_model
        A fitted UQ wrapper.
    pool
        AtomsDataset, list of Atoms or extxyz path (labels not needed).
    quantity
        ``"max_force_std"`` (eV/Å, :func:`force_deviation`) or
        ``"energy_std_per_atom"`` (eV/atom).
    batch_size, chunk_size
        Structures per forward pass, and per :meth:`predict` call; only one
        chunk's predictions are held in memory at a time.

    Returns
    -------
    numpy.ndarray
        (n_pool,) float64 scores.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {tuple(_QUANTITIES)}, got {quantity!r}")
    chunk_size = _positive_int(chunk_size, "chunk_size")
    pool = mdata.as_dataset(pool)
    out = np.empty(len(pool), dtype=np.float64)
    for start in _chunks(len(pool), chunk_size, progress, f"scoring ({quantity})"):
        chunk = pool[start : start + chunk_size]
        pred = uq_model.predict(chunk, batch_size=batch_size)
        out[start : start + len(chunk)] = _QUANTITIES[quantity](pred)
    return out


def pool_features(
    uq_model,
    pool,
    kind: str = "mean",
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Per-structure last-layer feature rows, streamed in batches (no forces).

    ``kind="mean"``: (n, F) mean per-atom features ``(1/n) sum_i phi_i``
    (used by ``fps``); ``kind="llpr"``: (n, D) rows ``f = (sum_i phi_i, n)``
    of a :class:`~mlipuq.uq.LastLayerLaplace` (energy = θ·f; used by
    ``batch_llpr``). Returns float64.
    """
    if kind not in ("mean", "llpr"):
        raise ValueError(f"kind must be 'mean' or 'llpr', got {kind!r}")
    pool = mdata.as_dataset(pool)
    pool.validate(uq_model.species)
    model = uq_model.base_model
    rows = []
    batches = mdata.iter_batches(
        pool, uq_model.cutoff, batch_size, species=uq_model.species, dtype=uq_model.dtype
    )
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(pool) // batch_size), desc="features")
    model.eval()
    with torch.no_grad():
        for _, batch in batches:
            batch = batch.to(device=model.device)
            phi = model(batch, forces=False, features=True)["features"].to(torch.float64)
            if kind == "llpr":
                f = uq_model._structure_features(phi, batch)
            else:
                f = torch.zeros(batch.n_structures, phi.shape[1], dtype=torch.float64)
                f = f.index_add_(0, batch.batch, phi) / batch.n_atoms.to(torch.float64)[:, None]
            rows.append(f.cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


# ------------------------------------------------------------------ strategies
def greedy_llpr(
    features: np.ndarray, covariance: np.ndarray, noise_var: float, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy batch selection by posterior variance with rank-one updates.

    With rows ``f_i`` (n, D), posterior covariance ``Σ`` (D, D) and energy
    noise variance ``σ²`` (eV²): score ``s_i = f_i^T Σ f_i``; pick
    ``j = argmax s``; labelling ``j`` adds ``f_j f_j^T / σ²`` to the precision,
    i.e. (Sherman-Morrison)

    .. math:: Σ \\leftarrow Σ - \\frac{Σ f_j f_j^T Σ}{σ^2 + f_j^T Σ f_j},
       \\qquad s_i \\leftarrow s_i - \\frac{(f_i^T Σ f_j)^2}{σ^2 + f_j^T Σ f_j}

    (O(nD) per pick, no recomputation). A picked structure is never picked
    again; an exact duplicate of a picked one keeps only ``s σ²/(σ² + s)``.

    Returns
    -------
    indices, scores, initial_scores
        (k,) picks, (k,) variance at pick time (eV²), (n,) variances before any pick.
    """
    feats = np.asarray(features, dtype=np.float64)
    cov = np.array(covariance, dtype=np.float64)
    if feats.ndim != 2 or cov.shape != (feats.shape[1], feats.shape[1]):
        raise ValueError(f"features {feats.shape} and covariance {cov.shape} do not match")
    noise_var = positive("noise_var", noise_var)
    scores = np.einsum("ij,jk,ik->i", feats, cov, feats)
    initial = scores.copy()
    available = np.ones(len(feats), dtype=bool)
    picks, picked_scores = [], []
    for _ in range(k):
        masked = np.where(available, scores, -np.inf)
        j = int(np.argmax(masked))
        picks.append(j)
        picked_scores.append(max(float(scores[j]), 0.0))
        available[j] = False
        sigma_f = cov @ feats[j]  # Σ f_j
        denom = noise_var + float(feats[j] @ sigma_f)
        u = feats @ sigma_f  # f_i^T Σ f_j
        scores -= u**2 / denom
        np.maximum(scores, 0.0, out=scores)
        cov -= np.outer(sigma_f, sigma_f) / denom
    return np.array(picks, dtype=np.int64), np.array(picked_scores), initial


def farthest_points(
    features: np.ndarray, k: int, *, reference: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-point sampling; returns (k,) indices and the min distance at each pick.

    Starts from the distances to ``reference`` rows if given, else from a
    random point (``seed``; its score is ``inf``).
    """
    x = np.asarray(features, dtype=np.float64)
    picks, scores = [], []
    if reference is not None and len(reference):
        ref = np.asarray(reference, dtype=np.float64)
        dist = np.full(len(x), np.inf)
        for start in range(0, len(ref), 1024):
            d = np.linalg.norm(x[:, None, :] - ref[None, start : start + 1024], axis=2)
            dist = np.minimum(dist, d.min(axis=1))
    else:
        first = int(np.random.default_rng(seed).integers(len(x)))
        picks.append(first)
        scores.append(np.inf)
        dist = np.linalg.norm(x - x[first], axis=1)
        dist[first] = -np.inf
    while len(picks) < k:
        j = int(np.argmax(dist))
        picks.append(j)
        scores.append(float(dist[j]))
        dist = np.minimum(dist, np.linalg.norm(x - x[j], axis=1))
        dist[picks] = -np.inf
    return np.array(picks, dtype=np.int64), np.array(scores, dtype=np.float64)


def trust_levels(
    uq_model, calibration, *, lo_quantile: float = 0.95, hi_factor: float = 4.0, batch_size: int = 32
) -> tuple[float, float]:
    """Trust levels ``(lo, hi)`` (eV/Å) derived from in-distribution data.

    ``lo`` is the ``lo_quantile`` quantile of the model deviation
    (:func:`force_deviation`, with the wrapper's calibration applied) over
    ``calibration`` (e.g. the validation set): structures like the training
    data fall below it. ``hi = hi_factor * lo``, mirroring DP-GEN's usual
    ratio of trust levels (e.g. 0.05-0.15 / 0.2-0.35 eV/Å).
    """
    if not 0 < lo_quantile < 1:
        raise ValueError(f"lo_quantile must be in (0, 1), got {lo_quantile}")
    if not hi_factor > 1:
        raise ValueError(f"hi_factor must be > 1, got {hi_factor}")
    dev = score_pool(uq_model, calibration, "max_force_std", batch_size=batch_size)
    lo = float(np.quantile(dev, lo_quantile))
    return lo, hi_factor * lo


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
    batch_size: int = 32,
    chunk_size: int = 512,
    progress: bool = False,
) -> Selection:
    """Choose ``k`` structures of ``pool`` to label next.

    Parameters
    ----------
    uq_model
        A fitted UQ wrapper (``batch_llpr`` needs a
        :class:`~mlipuq.uq.LastLayerLaplace`; for another wrapper fit one on
        its base model first: ``LastLayerLaplace(w.base_model).fit(train)``).
        Not used by ``"random"`` (may be None).
    pool
        AtomsDataset, list of Atoms or extxyz path; labels are not needed.
    k
        Number of structures, ``1 <= k <= len(pool)``.
    strategy
        One of :data:`STRATEGIES` (see the module docstring).
    seed
        Seed of ``"random"``, of the draw inside the trust window and of the
        first ``"fps"`` point.
    lo, hi
        Trust levels (eV/Å) of ``"trust_window"``; missing ones are derived
        from ``calibration`` by :func:`trust_levels`.
    calibration
        In-distribution structures (e.g. validation data) for the trust levels.
    labelled
        Already labelled structures: ``"fps"`` starts from the distances to them.
    batch_size, chunk_size, progress
        Streaming of the pool (see :func:`score_pool`) and a tqdm bar.

    Returns
    -------
    Selection
        ``trust_window`` may return fewer than ``k`` structures when fewer lie
        in the window (logged as a warning).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    pool = mdata.as_dataset(pool)
    if len(pool) == 0:
        raise ValueError("the pool holds no structures")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(pool):
        raise ValueError(f"k must be an integer in [1, {len(pool)}] (the pool size), got {k!r}")
    k = int(k)
    if strategy != "random" and uq_model is None:
        raise ValueError(f"strategy {strategy!r} needs a fitted UQ wrapper, got None")
    if strategy != "random" and not getattr(uq_model, "fitted_", False):
        raise ValueError(f"strategy {strategy!r} needs a fitted UQ wrapper; call fit() first")
    rng = np.random.default_rng(seed)
    stream = dict(batch_size=batch_size, chunk_size=chunk_size, progress=progress)

    if strategy == "random":
        idx = rng.choice(len(pool), size=k, replace=False).astype(np.int64)
        return Selection(idx, np.zeros(k), strategy)

    if strategy in ("max_energy_std", "max_force_std"):
        quantity = "energy_std_per_atom" if strategy == "max_energy_std" else "max_force_std"
        scores = score_pool(uq_model, pool, quantity, **stream)
        idx = np.argsort(-scores, kind="stable")[:k].astype(np.int64)
        return Selection(idx, scores[idx], strategy, scores)

    if strategy == "trust_window":
        if lo is None or hi is None:
            if calibration is None:
                raise ValueError(
                    "trust_window needs lo and hi (eV/Å), or calibration= structures "
                    "(e.g. validation data) to derive them from"
                )
            d_lo, d_hi = trust_levels(uq_model, calibration, batch_size=batch_size)
            lo = d_lo if lo is None else lo
            hi = d_hi if hi is None else hi
        lo, hi = float(lo), float(hi)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(f"trust levels must satisfy 0 <= lo < hi, got lo={lo}, hi={hi}")
        scores = score_pool(uq_model, pool, "max_force_std", **stream)
        candidates = np.where((scores >= lo) & (scores < hi))[0]
        if len(candidates) < k:
            log.warning(
                "trust window [%.4g, %.4g) eV/Å holds %d structures, fewer than k=%d",
                lo, hi, len(candidates), k,
            )
        idx = rng.permutation(candidates)[:k].astype(np.int64)
        return Selection(idx, scores[idx], strategy, scores)

    if strategy == "fps":
        feats = pool_features(uq_model, pool, "mean", batch_size=batch_size, progress=progress)
        reference = None
        if labelled is not None and len(mdata.as_dataset(labelled)):
            reference = pool_features(uq_model, labelled, "mean", batch_size=batch_size)
        idx, scores = farthest_points(feats, k, reference=reference, seed=seed)
        return Selection(idx, scores, strategy)

    # batch_llpr
    from mlipuq.uq.llpr import LastLayerLaplace

    if not isinstance(uq_model, LastLayerLaplace):
        raise ValueError(
            f"batch_llpr needs a LastLayerLaplace wrapper, got {type(uq_model).__name__}; "
            "fit one on its base model: LastLayerLaplace(w.base_model).fit(train)"
        )
    feats = pool_features(uq_model, pool, "llpr", batch_size=batch_size, progress=progress)
    # the posterior of the energy variances that predict() reports (energy rows only by
    # default): labelling a structure adds its energy row f f^T / sigma_E^2
    noise_var = uq_model.energy_posterior_["energy_noise"] ** 2
    idx, var, initial = greedy_llpr(feats, uq_model.energy_covariance_, noise_var, k)
    return Selection(idx, np.sqrt(var), strategy, np.sqrt(initial))


# ---------------------------------------------------------------- harvesting
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
        A list of Atoms, an AtomsDataset or an extxyz path (e.g. written by
        ``run_md``).
    uq_model
        Fitted UQ wrapper used to score frames that carry no stored score
        (may be None when every frame carries one).
    threshold
        In eV/Å for ``"max_force_std"``, eV/atom for ``"energy_std_per_atom"``.
    quantity
        ``"max_force_std"`` (:func:`force_deviation`) or ``"energy_std_per_atom"``.
    info_key
        ``atoms.info`` key of a stored per-frame score; default
        :data:`INFO_KEYS` ``[quantity]``. Used only if every frame has it.

    Returns
    -------
    AtomsDataset
        Copies of the frames above the threshold, without calculators (their
        energies are predictions, not references), in frame order, with
        ``info["mlipuq_frame"]`` (frame index) and ``info["mlipuq_harvest_score"]``.
    """
    if quantity not in INFO_KEYS:
        raise ValueError(f"quantity must be one of {tuple(INFO_KEYS)}, got {quantity!r}")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold!r}")
    if isinstance(frames, (str, os.PathLike)):
        import ase.io

        frames = ase.io.read(os.fspath(frames), index=":")
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to harvest from")
    key = info_key or INFO_KEYS[quantity]
    if all(key in a.info for a in frames):
        scores = np.array([float(a.info[key]) for a in frames], dtype=np.float64)
    else:
        if uq_model is None:
            raise ValueError(f"frames carry no {key!r} in atoms.info; pass a fitted uq_model")
        scores = score_pool(uq_model, frames, quantity, batch_size=batch_size, progress=progress)
    out = []
    for i in np.where(scores > threshold)[0]:
        a = frames[int(i)].copy()
        a.calc = None
        a.info["mlipuq_frame"] = int(i)
        a.info["mlipuq_harvest_score"] = float(scores[i])
        out.append(a)
    log.info("harvested %d of %d frames above %.4g", len(out), len(frames), threshold)
    return mdata.AtomsDataset(out)


def __getattr__(name):
    # the loop imports this module; import it lazily to avoid a cycle
    if name in ("Loop", "LearningCurve", "LabelledPoolOracle", "plot_learning_curves", "label"):
        from mlipuq import active_loop

        return getattr(active_loop, name)
    raise AttributeError(f"module 'mlipuq.active' has no attribute {name!r}")


__all__ = [
    "INFO_KEYS",
    "STRATEGIES",
    "LabelledPoolOracle",  # noqa: F822 (lazy, see __getattr__)
    "LearningCurve",  # noqa: F822 (lazy, see __getattr__)
    "Loop",  # noqa: F822 (lazy, see __getattr__)
    "Selection",
    "energy_std_per_atom",
    "farthest_points",
    "force_deviation",
    "greedy_llpr",
    "harvest",
    "label",  # noqa: F822 (lazy, see __getattr__)
    "plot_learning_curves",  # noqa: F822 (lazy, see __getattr__)
    "pool_features",
    "score_pool",
    "select",
    "trust_levels",
]
