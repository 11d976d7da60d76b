"""Choose the next data: active-learning selection, MD harvesting and the loop.

* :func:`select` (:mod:`mlipuq.active.select`) — rank a pool with a fitted UQ
  wrapper and return a :class:`Selection`;
* :mod:`mlipuq.active.strategies` — one class per strategy in a registry
  (``random``, ``max_energy_std``, ``max_force_std``, ``trust_window``,
  ``fps``, ``batch_llpr``), each declaring its score unit and what it
  requires of the wrapper;
* :mod:`mlipuq.active.scoring` — pool scores and the numerics behind the
  strategies (:func:`score_pool`, :func:`greedy_llpr`, :func:`farthest_points`);
* :func:`harvest` (:mod:`mlipuq.active.harvest`) — uncertain MD frames as candidates;
* :class:`Loop` (:mod:`mlipuq.active.loop`) — select → label → refit →
  calibrate → evaluate campaigns and their :class:`LearningCurve`;
* :mod:`mlipuq.active.cli` — the ``mlipuq select`` subcommand.

Modules import downwards only: scoring ← strategies ← select ← loop;
harvest uses scoring. Units: eV, Å.
"""

from mlipuq.active.harvest import INFO_KEYS, harvest
from mlipuq.active.loop import (
    LabelledPoolOracle,
    LearningCurve,
    Loop,
    label,
    plot_learning_curves,
)
from mlipuq.active.scoring import (
    energy_std_per_atom,
    farthest_points,
    force_deviation,
    greedy_llpr,
    pool_features,
    score_pool,
    trust_levels,
)
from mlipuq.active.select import Selection, select
from mlipuq.active.strategies import SCORE_UNITS, STRATEGIES, LabelNoise, Strategy

__all__ = [
    "INFO_KEYS",
    "SCORE_UNITS",
    "STRATEGIES",
    "LabelNoise",
    "LabelledPoolOracle",
    "LearningCurve",
    "Loop",
    "Selection",
    "Strategy",
    "energy_std_per_atom",
    "farthest_points",
    "force_deviation",
    "greedy_llpr",
    "harvest",
    "label",
    "plot_learning_curves",
    "pool_features",
    "score_pool",
    "select",
    "trust_levels",
]
