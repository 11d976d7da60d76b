"""Selection strategies: one small class each, in a registry.

A strategy declares its ``name``, the ``unit`` of its scores, what it
``requires`` of the UQ wrapper (public methods or attributes) and implements
``pick``. :func:`mlipuq.active.select` looks it up by name, checks the
wrapper with :meth:`Strategy.check` and wraps the result in a
:class:`~mlipuq.active.Selection`. A new strategy is a new class decorated
with :func:`register`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import numpy as np

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.active import scoring

log = logging.getLogger(__name__)

#: Relative jitter (of the largest pool variance) standing in for the noise of
#: deterministic (e.g. DFT) labels in ``batch_llpr``: keeps the rank-one updates stable.
LABEL_JITTER = 1e-8


class LabelNoise(str, enum.Enum):
    """What ``batch_llpr`` assumes about a label when it conditions on it."""

    NONE = "none"  #: deterministic labels: a labelled structure's copies keep ~0 variance
    FITTED = "fitted"  #: labels carry the wrapper's fitted energy noise σ²


@dataclasses.dataclass
class Picks:
    """What :meth:`Strategy.pick` returns: (k,) indices, (k,) scores, (n,) pool scores."""

    indices: np.ndarray
    scores: np.ndarray
    pool_scores: np.ndarray | None = None


class Strategy:
    """Base class of the selection strategies.

    Attributes
    ----------
    name
        Registry key, e.g. ``"batch_llpr"``.
    unit
        Unit of the scores (``""`` when they have none).
    requires
        Names of the wrapper methods/attributes ``pick`` uses.
    needs_model
        False when ``pick`` works without a wrapper (``random``).
    """

    name = ""
    unit = ""
    requires: tuple[str, ...] = ()
    needs_model = True
    hint = ""

    def check(self, uq_model) -> None:
        """Raise ``ValueError`` naming what the wrapper lacks for this strategy."""
        if not self.needs_model:
            return
        if uq_model is None:
            raise ValueError(f"strategy {self.name!r} needs a fitted UQ wrapper, got None")
        if not getattr(uq_model, "fitted_", False):
            raise ValueError(f"strategy {self.name!r} needs a fitted UQ wrapper; call fit() first")
        missing = [r for r in self.requires if not hasattr(uq_model, r)]
        if missing:
            raise ValueError(
                f"strategy {self.name!r} needs a wrapper with {', '.join(missing)}; "
                f"{type(uq_model).__name__} has none. {self.hint}".rstrip()
            )

    def pick(self, uq_model, pool, k: int, *, rng, seed: int, stream: dict,
             options: dict) -> Picks:
        """Choose ``k`` of ``pool``; ``options`` holds :func:`select`'s keywords."""
        raise NotImplementedError


REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add an instance of ``cls`` to :data:`REGISTRY`."""
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Strategy:
    """The registered strategy ``name``; ``ValueError`` for an unknown one."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {tuple(REGISTRY)}")
    return REGISTRY[name]


@register
class Random(Strategy):
    """Uniform without replacement (``seed``); scores are 0."""

    name, unit, needs_model = "random", "", False

    def pick(self, uq_model, pool, k, *, rng, seed, stream, options):
        idx = rng.choice(len(pool), size=k, replace=False).astype(np.int64)
        return Picks(idx, np.zeros(k))


class _TopScore(Strategy):
    requires = ("predict",)
    quantity = ""

    def pick(self, uq_model, pool, k, *, rng, seed, stream, options):
        scores = scoring.score_pool(uq_model, pool, self.quantity, **stream)
        idx = np.argsort(-scores, kind="stable")[:k].astype(np.int64)
        return Picks(idx, scores[idx], scores)


@register
class MaxEnergyStd(_TopScore):
    """The ``k`` largest predicted energy std per atom (eV/atom)."""

    name, unit, quantity = "max_energy_std", "eV/atom", "energy_std_per_atom"


@register
class MaxForceStd(_TopScore):
    """The ``k`` largest DP-GEN model deviations (eV/Å), :func:`~scoring.force_deviation`."""

    name, unit, quantity = "max_force_std", "eV/Å", "max_force_std"


@register
class TrustWindow(Strategy):
    """DP-GEN trust levels: ``k`` random structures with deviation in ``[lo, hi)`` (eV/Å).

    Below ``lo`` the model already knows the structure; above ``hi`` it is
    probably unphysical. Missing levels come from ``calibration`` structures
    (:func:`~mlipuq.active.scoring.trust_levels`). Fewer than ``k`` picks
    when fewer lie in the window (logged as a warning).
    """

    name, unit, requires = "trust_window", "eV/Å", ("predict",)

    def _levels(self, uq_model, options, batch_size) -> tuple[float, float]:
        lo, hi = options.get("lo"), options.get("hi")
        if lo is None or hi is None:
            if options.get("calibration") is None:
                raise ValueError(
                    "trust_window needs lo and hi (eV/Å), or calibration= structures "
                    "(e.g. validation data) to derive them from"
                )
            d_lo, d_hi = scoring.trust_levels(uq_model, options["calibration"],
                                              batch_size=batch_size)
            lo = d_lo if lo is None else lo
            hi = d_hi if hi is None else hi
        lo, hi = float(lo), float(hi)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(f"trust levels must satisfy 0 <= lo < hi, got lo={lo}, hi={hi}")
        return lo, hi

    def pick(self, uq_model, pool, k, *, rng, seed, stream, options):
        lo, hi = self._levels(uq_model, options, stream["batch_size"])
        scores = scoring.score_pool(uq_model, pool, "max_force_std", **stream)
        candidates = np.where((scores >= lo) & (scores < hi))[0]
        if len(candidates) < k:
            log.warning("trust window [%.4g, %.4g) eV/Å holds %d structures, fewer than k=%d",
                        lo, hi, len(candidates), k)
        idx = rng.permutation(candidates)[:k].astype(np.int64)
        return Picks(idx, scores[idx], scores)


@register
class FarthestPoints(Strategy):
    """Farthest-point sampling in mean last-layer feature space.

    Score = Euclidean distance (feature units) to the nearest already chosen
    (or ``labelled``) structure at pick time.
    """

    name, unit = "fps", "feature units"
    requires = ("base_model", "cutoff", "species", "dtype")
    hint = "fps reads the base model's last-layer features (model(batch, features=True))."

    def pick(self, uq_model, pool, k, *, rng, seed, stream, options):
        bs, progress = stream["batch_size"], stream["progress"]
        start, stop = mdist.shard_bounds(len(pool))
        width = uq_model.base_model.n_features
        feats = _local_rows(lambda shard: scoring.mean_features(
            uq_model, shard, batch_size=bs, progress=progress and mdist.is_main()),
            pool[start:stop], width)
        labelled, reference = options.get("labelled"), None
        if labelled is not None and len(mdata.as_dataset(labelled)):
            reference = scoring.mean_features(uq_model, labelled, batch_size=bs)
        idx, scores = scoring.farthest_points(feats, k, reference=reference, seed=seed,
                                              offset=start, n_total=len(pool))
        return Picks(idx, scores)


@register
class BatchLLPR(Strategy):
    """Greedy batch selection on a linearised (LLPR) energy posterior.

    Pick the largest posterior energy variance ``f^T Σ f``, condition Σ on
    that structure's energy label, repeat (:func:`~scoring.greedy_llpr`).
    ``label_noise="none"`` (default) treats labels as deterministic (DFT):
    the conditioning noise is a jitter of :data:`LABEL_JITTER` times the
    largest pool variance, so a labelled structure's copies drop to ~0;
    ``"fitted"`` uses the wrapper's fitted energy noise σ². Scores are the
    posterior energy std (eV) at pick time.
    """

    name, unit = "batch_llpr", "eV"
    requires = ("design_matrix", "energy_posterior_covariance")
    hint = ("Fit a LastLayerLaplace on its base model first: "
            "LastLayerLaplace(w.base_model).fit(train).")

    def pick(self, uq_model, pool, k, *, rng, seed, stream, options):
        noise = LabelNoise(options.get("label_noise") or LabelNoise.NONE)
        cov, fitted_noise = uq_model.energy_posterior_covariance()
        cov = np.asarray(cov, dtype=np.float64)
        start, stop = mdist.shard_bounds(len(pool))
        feats = _local_rows(lambda shard: uq_model.design_matrix(
            shard, batch_size=stream["batch_size"],
            progress=stream["progress"] and mdist.is_main()), pool[start:stop], len(cov))
        initial = np.einsum("ij,jk,ik->i", feats, cov, feats)
        if noise is LabelNoise.FITTED:
            noise_var = float(fitted_noise)
        else:
            largest = mdist.global_argmax(initial, offset=start)[1]
            noise_var = LABEL_JITTER * max(largest, np.finfo(np.float64).tiny)
        idx, var, initial = scoring.greedy_llpr(feats, cov, noise_var, k, offset=start)
        initial = np.concatenate(mdist.all_gather_objects(initial))
        return Picks(idx, np.sqrt(var), np.sqrt(np.maximum(initial, 0.0)))


def _local_rows(rows_of, shard, width: int) -> np.ndarray:
    """This rank's (n_shard, width) float64 feature rows; collective error check."""
    if len(shard) == 0:  # more ranks than structures
        return mdist.run_local(lambda: np.zeros((0, width)))
    return np.asarray(mdist.run_local(rows_of, shard), dtype=np.float64)


#: Names of the registered strategies, in registration order.
STRATEGIES = tuple(REGISTRY)

#: Units of :attr:`~mlipuq.active.Selection.scores` per strategy.
SCORE_UNITS = {name: s.unit for name, s in REGISTRY.items()}
