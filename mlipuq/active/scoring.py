"""Scores and the numerics behind the selection strategies.

Plain functions on a fitted wrapper's public protocol (``predict``,
``design_matrix``, ``base_model``) or on NumPy arrays; the strategy classes in
:mod:`mlipuq.active.strategies` call them. Units: eV, Å.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.params import positive
from mlipuq.progress import bar as progress_bar
from mlipuq.progress import batches_with_progress, counting_into

log = logging.getLogger(__name__)


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


QUANTITIES = {"max_force_std": force_deviation, "energy_std_per_atom": energy_std_per_atom}


def positive_int(value, name: str) -> int:
    """``value`` as an int, or ``ValueError`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _chunks(pool, size: int, progress: bool, desc: str) -> Iterator[tuple[int, object]]:
    """Yield ``(start, pool[start:start + size])``; the bar counts their structures,
    one forward-pass batch at a time (the ``predict`` calls of a chunk advance it)."""
    with progress_bar(len(pool), desc, "structure", enabled=progress) as shown:
        for start in range(0, len(pool), size):
            with counting_into(shown):
                yield start, pool[start : start + size]


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
        A fitted UQ wrapper (anything with ``predict``).
    pool
        AtomsDataset, list of Atoms or extxyz path (labels not needed).
    quantity
        ``"max_force_std"`` (eV/Å, :func:`force_deviation`) or
        ``"energy_std_per_atom"`` (eV/atom).
    batch_size, chunk_size
        Structures per forward pass, and per ``predict`` call; only one
        chunk's predictions are held in memory at a time.
    progress
        Show a tqdm bar counting the structures scored (it advances after
        each forward pass of ``batch_size`` structures).

    Returns
    -------
    numpy.ndarray
        (n_pool,) float64 scores.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {tuple(QUANTITIES)}, got {quantity!r}")
    chunk_size = positive_int(chunk_size, "chunk_size")
    pool = mdata.as_dataset(pool)
    out = np.empty(len(pool), dtype=np.float64)
    desc = f"scoring {quantity} ({type(uq_model).__name__})"
    for start, chunk in _chunks(pool, chunk_size, progress, desc):
        pred = uq_model.predict(chunk, batch_size=batch_size)
        out[start : start + len(chunk)] = QUANTITIES[quantity](pred)
    return out


def mean_features(uq_model, pool, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """(n, F) float64 mean last-layer features ``(1/n) sum_i phi_i`` per structure.

    Uses the base model's public ``model(batch, forces=False, features=True)``
    and the wrapper's ``base_model``, ``cutoff``, ``species`` and ``dtype``;
    no forces are computed. Feature units are those of the model's ``phi``.
    """
    pool = mdata.as_dataset(pool)
    pool.validate(uq_model.species)
    model = uq_model.base_model
    batches = batches_with_progress(mdata.iter_batches(
        pool, uq_model.cutoff, batch_size, species=uq_model.species, dtype=uq_model.dtype
    ), len(pool), f"mean features ({type(uq_model).__name__})", progress)
    rows = []
    model.eval()
    with torch.no_grad():
        for _, batch in batches:
            batch = batch.to(device=model.device)
            phi = model(batch, forces=False, features=True)["features"].to(torch.float64)
            f = torch.zeros(batch.n_structures, phi.shape[1], dtype=torch.float64,
                            device=phi.device)
            f = f.index_add_(0, batch.batch, phi) / batch.n_atoms.to(f)[:, None]
            rows.append(f.cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


def pool_features(
    uq_model, pool, kind: str = "mean", *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """Per-structure feature rows (float64).

    ``kind="mean"``: (n, F) mean last-layer features (:func:`mean_features`,
    used by ``fps``); ``kind="llpr"``: (n, D) energy rows ``f`` of the
    wrapper's ``design_matrix`` (energy = θ·f; used by ``batch_llpr``).
    """
    if kind == "mean":
        return mean_features(uq_model, pool, batch_size=batch_size, progress=progress)
    if kind == "llpr":
        return np.asarray(
            uq_model.design_matrix(pool, batch_size=batch_size, progress=progress),
            dtype=np.float64,
        )
    raise ValueError(f"kind must be 'mean' or 'llpr', got {kind!r}")


def _same_rows(feats: np.ndarray, ref: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """(n,) bool: rows equal to the row ``ref`` (copies of one structure)."""
    tol = rtol * max(float(np.linalg.norm(ref)), np.finfo(np.float64).tiny)
    return np.linalg.norm(feats - ref, axis=1) <= tol


def greedy_llpr(
    features: np.ndarray, covariance: np.ndarray, noise_var: float, k: int, *,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy batch selection by posterior variance with rank-one updates.

    With rows ``f_i`` (n, D), posterior covariance ``Σ`` (D, D) and label
    noise variance ``σ²`` (eV²): score ``s_i = f_i^T Σ f_i``; pick
    ``j = argmax s``; labelling ``j`` adds ``f_j f_j^T / σ²`` to the precision,
    i.e. (Sherman-Morrison)

    .. math:: Σ \\leftarrow Σ - \\frac{Σ f_j f_j^T Σ}{σ^2 + f_j^T Σ f_j},
       \\qquad s_i \\leftarrow s_i - \\frac{(f_i^T Σ f_j)^2}{σ^2 + f_j^T Σ f_j}

    (O(nD) per pick, no recomputation). A copy of a picked structure keeps
    ``s σ²/(σ² + s)``: ~0 for noise-free labels (``σ²`` a tiny jitter), and
    it is never picked in any case: rows equal to a picked one are removed.
    Once no candidate carries more than ``σ²`` of variance, picks continue in
    score order without updates. Fewer than ``k`` picks are returned when the
    pool holds fewer than ``k`` distinct rows.

    Distributed (after :func:`mlipuq.distributed.init`, called on every
    rank): ``features`` are this rank's rows, the pool's rows ``offset`` on;
    per pick one global argmax (ties to the lowest index, as one process) and
    one broadcast of the chosen row; Σ is updated identically everywhere.

    Returns
    -------
    indices, scores, initial_scores
        (k,) global picks, (k,) variance at pick time (eV²), and this rank's
        (n,) variances before any pick.
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
    while len(picks) < k:
        j, best = mdist.global_argmax(scores, available, offset)
        if j < 0:
            break
        row = mdist.broadcast_row(feats, j, offset, feats.shape[1])
        picks.append(j)
        picked_scores.append(max(best, 0.0))
        available &= ~_same_rows(feats, row)
        if best <= noise_var:  # nothing left to learn from this row
            continue
        sigma_f = cov @ row  # Σ f_j
        denom = noise_var + float(row @ sigma_f)
        scores -= (feats @ sigma_f) ** 2 / denom
        np.maximum(scores, 0.0, out=scores)
        cov -= np.outer(sigma_f, sigma_f) / denom
    if len(picks) < k:
        log.warning("the pool holds %d distinct structures, fewer than k=%d", len(picks), k)
    return np.array(picks, dtype=np.int64), np.array(picked_scores, dtype=np.float64), initial


def _reference_distances(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype=np.float64)
    dist = np.full(len(x), np.inf)
    for start in range(0, len(ref), 1024):
        d = np.linalg.norm(x[:, None, :] - ref[None, start : start + 1024], axis=2)
        dist = np.minimum(dist, d.min(axis=1))
    return dist


def farthest_points(
    features: np.ndarray, k: int, *, reference: np.ndarray | None = None, seed: int = 0,
    offset: int = 0, n_total: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-point sampling; returns (k,) indices and the min distance at each pick.

    Starts from the distances to ``reference`` rows if given, else from a
    random point (``seed``; its score is ``inf``). Distances are Euclidean,
    in feature units. Distributed as :func:`greedy_llpr`: ``features`` are
    this rank's rows from ``offset`` on, ``n_total`` the pool size.
    """
    x = np.asarray(features, dtype=np.float64)
    n_total = len(x) if n_total is None else int(n_total)
    picks, scores = [], []
    local = np.zeros(len(x), dtype=bool)  # picked rows of this rank
    if reference is not None and len(reference):
        dist = _reference_distances(x, reference)
    else:
        first = int(np.random.default_rng(seed).integers(n_total))
        picks.append(first)
        scores.append(np.inf)
        dist = np.linalg.norm(x - mdist.broadcast_row(x, first, offset, x.shape[1]), axis=1)
        if 0 <= first - offset < len(x):
            local[first - offset] = True
            dist[first - offset] = -np.inf
    while len(picks) < k:
        j, best = mdist.global_argmax(dist, None, offset)
        picks.append(j)
        scores.append(best)
        row = mdist.broadcast_row(x, j, offset, x.shape[1])
        dist = np.minimum(dist, np.linalg.norm(x - row, axis=1))
        if 0 <= j - offset < len(x):
            local[j - offset] = True
        dist[local] = -np.inf
    return np.array(picks, dtype=np.int64), np.array(scores, dtype=np.float64)


def trust_levels(
    uq_model, calibration, *, lo_quantile: float = 0.95, hi_factor: float = 4.0,
    batch_size: int = 32,
) -> tuple[float, float]:
    """Trust levels ``(lo, hi)`` (eV/Å) derived from in-distribution data.

    ``lo`` is the ``lo_quantile`` quantile of the model deviation
    (:func:`force_deviation`, with the wrapper's calibration applied) over
    ``calibration`` (e.g. the validation set): structures like the training
    data fall below it. ``hi = hi_factor * lo``, mirroring DP-GEN's usual
    ratio of its two trust levels.
    """
    if not 0 < lo_quantile < 1:
        raise ValueError(f"lo_quantile must be in (0, 1), got {lo_quantile}")
    if not hi_factor > 1:
        raise ValueError(f"hi_factor must be > 1, got {hi_factor}")
    dev = score_pool(uq_model, calibration, "max_force_std", batch_size=batch_size)
    lo = float(np.quantile(dev, lo_quantile))
    return lo, hi_factor * lo
