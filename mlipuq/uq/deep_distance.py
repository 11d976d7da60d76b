"""The deep ensemble's latent-distance term: fitted around its members and applied.

:class:`~mlipuq.uq.DeepEnsemble` (``distance=``, default ``"mahalanobis"``) holds one
:class:`~mlipuq.uq.LatentDistance` term (``distance_``) in member 0's features. It is the
combination ``LatentDistance(models[0], combine=ensemble)`` built in, per target

.. math:: \\sigma^2 = \\lambda\\,\\sigma^2_{\\rm members} + a + b\\,u^2,

:math:`u` the latent distance of an atom (forces) or structure (energies, coherent over
its atoms) to the training data, :math:`\\lambda, a, b \\ge 0` fitted by Gaussian NLL on
held-out data against the members' spread, recentred on those data first
(:meth:`~mlipuq.uq.DeepEnsemble.recentre`). The members are stretched to the combined
variances. Three members of one recipe share their extrapolation error at a
temperature none of them saw (Pt₃Ni at 1500 K: a mean error of -1.54 against an MAE of
1.59 meV/atom, the spread shrinking), so that no recalibration of their spread widens
it there; the distance grows there (docs/shift.md, "a bias its members share").

The term needs the training structures, which members trained elsewhere do not bring:
:meth:`~mlipuq.uq.DeepEnsemble.fit` fits it after training the members, and
:meth:`~mlipuq.uq.DeepEnsemble.fit_distance` fits it around members as they are.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

from mlipuq.uq.latent_distance import LatentDistance
from mlipuq.prediction import Prediction

__all__ = ["NoDistanceTermWarning", "combined_prediction", "fit_term", "load_term",
           "save_term", "warn_without_term", "without_term"]


class NoDistanceTermWarning(UserWarning):
    """A deep ensemble with a latent-distance term configured (``distance``, the default)
    but none fitted is calibrated: the members alone, whose spread can miss an error
    they share under shift."""


def warn_without_term(ensemble) -> None:
    """Warn when ``ensemble`` configures a term (``distance`` not None) it has not fitted
    (built from trained members, :meth:`~mlipuq.uq.DeepEnsemble.fit_distance` not called)."""
    if ensemble.distance is None or ensemble.distance_ is not None:
        return
    warnings.warn(
        "DeepEnsemble.calibrate: no latent-distance term fitted, so the members alone are "
        "calibrated; under shift their spread can miss an error all members share "
        "(docs/shift.md). Call fit_distance(train, val) first, or build "
        "DeepEnsemble(models, distance=None) to calibrate the members alone without this "
        "warning.", NoDistanceTermWarning, stacklevel=3)


def without_term(ensemble):
    """A view of ``ensemble`` without its term or calibration (it shares the members
    and their offsets as they are now): the spread the term is combined with."""
    alone = copy.copy(ensemble)
    alone.distance_ = None
    alone.recalibrator_ = alone.strain_term_ = None
    return alone


def fit_term(ensemble, train, val=None, *, seed: int = 0, batch_size: int = 16,
             progress: bool = False) -> LatentDistance:
    """The term of ``ensemble`` fitted as ``LatentDistance(models[0], score=ensemble.distance,
    combine=ensemble).fit(train, val)`` fits it (reference atoms and structures from
    ``train``; λ, a and b on ``val``, None: a held-out fifth of ``train``). Members that
    were neither recentred nor calibrated are recentred on the held-out data first; those
    offsets are the ensemble's afterwards. Returns the term (without ``combine``)."""
    alone = without_term(ensemble)
    term = LatentDistance(ensemble.models[0], score=ensemble.distance, combine=alone)
    term.fit(train, val, seed=seed, batch_size=batch_size, progress=progress)
    ensemble.member_offsets_ = alone.member_offsets_
    ensemble.recentring_chosen_ = alone.recentring_chosen_
    term.combine = None  # its scales λ are kept; the ensemble supplies its spread
    return term


def combined_prediction(ensemble, structures, **options) -> Prediction:
    """The uncalibrated prediction of ``structures`` with the term (no composition
    variance): the members' mean, their spread scaled by λ plus the term's variance,
    the members stretched to it; ``options``: :meth:`UQWrapper.predict`'s."""
    composed = copy.copy(ensemble.distance_)
    composed.combine = without_term(ensemble)
    composed.strain_term_ = getattr(ensemble, "strain_term_", None)  # the ensemble's own
    return composed.predict(structures, calibrated=False, composition=False, **options)


def save_term(term: Optional[LatentDistance]) -> Optional[dict]:
    """The term as plain data (its settings and fitted state), None without one."""
    if term is None:
        return None
    config = term.config()
    config.pop("combine", None)
    return {"config": config, "state": term._own_state()}


def load_term(model, saved: Optional[dict]) -> Optional[LatentDistance]:
    """A term saved by :func:`save_term` around ``model`` (member 0)."""
    if saved is None:
        return None
    term = LatentDistance._from_config([model], dict(saved["config"]))
    term._set_own_state(saved["state"])
    term.fitted_ = True
    return term
