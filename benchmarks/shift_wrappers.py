"""How ``benchmarks/shift.py`` fits each wrapper it scores (and the docs-only
variants beside them): as each wrapper's docs prescribe, with the heads it
trains read from and saved to the ``--cache`` folder."""

from __future__ import annotations

import functools
import os

import numpy as np

import mlipuq
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble)
from mlipuq.uq.base import UQWrapper
from mlipuq.uq.deep_ensemble import COMMITTEE_CALIBRATION
from mlipuq.uq.evidential_shift import fit_distance_term
from mlipuq.uq.shallow_distance import fit_terms
from shift_cache import cached, with_drift


#: The shallow ensemble's term settings its cached heads' terms are refitted with (today's).
TERM_SETTINGS = ("energy_combination", "distance_ridge_scale", "distance_features")
#: Validation structures of the rows with a few (the demo's twenty): the term and the
#: calibration both on them.
FEW_VAL = 20
#: Latent distance in the readout's features alone, its default until 2026-12-06: the
#: rows of the rounds before every layer's features became the default keep them.
READOUT = {"features": "readout"}


def term_refitted(head, train, val, covariance="held-out", share=None, combination="sum",
                  every_half=False, map_every_half=False, ridge_scale="all_atoms",
                  features="readout"):
    """A copy of the evidential ``head`` (fitted on one half of ``val``) with its term
    fitted again on the other half, distances measured to ``train``, with the structure
    covariance ``covariance``, the share floor ``share`` and the ``combination`` (the
    head's ``structure_covariance``, ``min_distance_share``, ``distance_combination``);
    ``every_half``: the held-out covariance chosen on both halves (all of ``val``, every
    structure the head's ``fit`` saw, all held out from ``train``), not the term's alone;
    ``map_every_half``: its a and b fitted on both halves too (λ on the term's half);
    ``ridge_scale`` and ``features``: the head's ``distance_ridge_scale`` and
    ``distance_features``."""
    head = head.copy()
    head.distance_ridge_scale, head.distance_features = ridge_scale, features
    head.structure_covariance, head.min_distance_share = covariance, share
    head.distance_combination = combination
    halves = val.split([0.5, 0.5], seed=0)
    both = mlipuq.data.concatenate(list(halves))
    head.distance_ = fit_distance_term(head, *halves,
                                       reference=train, score=head.distance, seed=0,
                                       batch_size=16, structure_covariance=covariance,
                                       min_share=share, combination=combination,
                                       covariance_data=both if every_half else None,
                                       map_data=both if map_every_half else None,
                                       ridge_scale=ridge_scale, features=features)
    return head


def calibrated_with(wrapper, **fixed):
    """A copy of ``wrapper`` (the factories' cached wrappers are shared between rows),
    its ``calibrate`` always given the recalibration options ``fixed`` (over those of
    the call; the rest as given)."""
    wrapper = wrapper.copy()
    calibrate = wrapper.calibrate

    def with_fixed(val, method=None, **options):
        return calibrate(val, method, **{**options, **fixed})

    wrapper.calibrate = with_fixed
    return wrapper


def forces_widened(wrapper, power: float):
    """A copy of ``wrapper`` (see :func:`calibrated_with`) whose forces are widened by
    r ** ``power`` beyond the calibration range, its energies by r ** 1 (the force
    rounds of 2026-12-05: r ** 1 the candidate, the other powers the baselines)."""
    return calibrated_with(wrapper, extrapolation={"energy": 1.0, "forces": power})


def calibrated_on(wrapper, data):
    """``wrapper`` (fitted for it alone), its ``calibrate`` always given ``data`` whatever
    the call's (the few validation structures it was fitted on)."""
    calibrate = wrapper.calibrate

    def on_data(val, method=None, **options):
        return calibrate(data, method, **options)

    wrapper.calibrate = on_data
    return wrapper


def few(val, n: int = FEW_VAL):
    """``n`` structures of ``val`` drawn at random (seed 0), or all of it if fewer."""
    return val.subset(np.random.default_rng(0).permutation(len(val))[:n])


def default_method(wrapper, method: dict):
    """A copy of ``wrapper`` (see :func:`calibrated_with`), its default calibration
    method ``method`` (per target):
    ``COMMITTEE_CALIBRATION``, a Student-t for the energies too, or
    ``UQWrapper.default_calibration``, a scalar energy factor (the evidential head's
    before 2026-12-05)."""
    wrapper = wrapper.copy()
    wrapper.default_calibration = dict(method)
    return wrapper


def selected(wrapper: str, prefixes) -> bool:
    """Whether ``--wrappers`` (name prefixes; None: every wrapper) selects ``wrapper``."""
    return prefixes is None or any(wrapper.startswith(p) for p in prefixes)


def fit_wrappers(models, train, val, prefixes=None, cache=None, only=None) -> dict:
    """Each wrapper (those ``prefixes`` select; ``only``: these names alone) fitted
    as its docs prescribe (the evidential head on held-out halves of val);
    calibration happens per method afterwards. The trained heads (shallow ensemble,
    evidential head) are read from and saved to the folder ``cache`` (None: none)."""
    base = models[0]

    def path(name):
        return cache and os.path.join(cache, f"{name}.pt")

    @functools.cache
    def llpr():  # LLPR's posterior alone: what the latent combinations extend
        return LastLayerLaplace(base, distance=None).fit(train)

    @functools.cache
    def refitted(t_energies: bool):
        """LLPR at its posterior mean (``refit_mean``); with ``t_energies`` its energies
        calibrated as a committee's (a Student-t, ν ≤ 3) rather than by a scalar factor."""
        if not t_energies:
            return LastLayerLaplace(base, refit_mean=True, distance=None).fit(train)
        return default_method(refitted(False), COMMITTEE_CALIBRATION)

    @functools.cache
    def trained_shallow():
        return cached(path("shallow"), lambda: ShallowEnsemble(base, n_heads=8).fit(
            train, val, epochs=30, lr=1e-3, batch_size=16, seed=0, patience=8,
            progress=False), lambda p: with_drift(mlipuq.uq.load(p), train))

    @functools.cache
    def shallow(energy_combination="today"):
        """The cached heads with the energy term ``energy_combination`` ("today": the
        default's) and today's ridge and features, both terms fitted as ``fit`` fits them
        when the cached ensemble's settings differ (heads saved before 2026-12-06 load
        with the all-atoms ridge and the readout features)."""
        wanted = shallow_defaults()
        if energy_combination != "today":
            wanted = {**wanted, "energy_combination": energy_combination}
        ensemble = trained_shallow()
        if all(getattr(ensemble, name) == value for name, value in wanted.items()):
            return ensemble
        return terms_refitted(**wanted)

    @functools.cache
    def shallow_defaults():
        """Today's ShallowEnsemble term settings (``TERM_SETTINGS``), read from an
        unfitted one."""
        today = ShallowEnsemble(base)
        return {name: getattr(today, name) for name in TERM_SETTINGS}

    def terms_refitted(**settings):
        """Today's ensemble (its energy combination, ridge and features) with the
        attributes ``settings`` (``force_combination="max"``: the force term fitted apart
        and the larger of the two force variances taken; ``distance_ridge_scale``: the
        terms' covariance ridge; ``distance_features``), both terms fitted again as
        ``fit`` fits them on the cached heads."""
        ensemble = trained_shallow().copy()
        for name, value in {**shallow_defaults(), **settings}.items():
            setattr(ensemble, name, value)
        fit_terms(ensemble, train, val, seed=0, progress=False, need_forces=True,
                  batch_size=16)
        return ensemble

    def heads_alone():
        """The default shallow ensemble without its latent-distance terms (the
        default before them): the same heads, their variance alone."""
        ensemble = trained_shallow().copy()
        ensemble.distance, ensemble.distance_ = None, None
        ensemble.energy_combination, ensemble.energy_distance_ = None, None
        return ensemble

    @functools.cache
    def trained():  # its distance term measured to the base model's training set
        return cached(path("evidential"), lambda: EvidentialHead(base).fit(
            *val.split([0.5, 0.5], seed=0), reference=train, epochs=60, lr=1e-2,
            batch_size=16, seed=0, patience=10, progress=False),
            lambda p: with_drift(mlipuq.uq.load(p), train))

    def evidential():
        """The head with today's defaults, its term fitted again as they say (the head
        itself is the cached one: the covariance's choice on both halves of val, since
        2026-12-05, is not recorded in a saved head)."""
        return evidential_term()

    def evidential_term(ridge_scale=None, features=None):
        """Today's head, its term's covariance ridge relative to ``ridge_scale`` and its
        distances measured in ``features`` (None: today's defaults, resolved by the
        constructor)."""
        today = EvidentialHead(base, distance_ridge_scale=ridge_scale,
                               distance_features=features)
        return term_refitted(trained(), train, val, today.structure_covariance,
                             today.min_distance_share, today.distance_combination,
                             every_half=True, ridge_scale=today.distance_ridge_scale,
                             features=today.distance_features)

    def earlier(unbounded: bool):
        head = trained().copy()
        head.distance_ = None  # the head alone: its default before the latent-distance term
        if unbounded:
            head.std_cap_ = None  # as before the bound: the raw NIG variance
        return head

    def held_out_term(covariance="held-out", share=None, combination="sum"):
        """The default head with its term fitted again on the held-out half of val
        (``term_refitted``; the cached head unchanged)."""
        return term_refitted(trained(), train, val, covariance, share, combination)

    def refitted_term(energy_distance="structure"):
        """The default head with its distance term measured to the head's own fitting
        half of val (the default before ``reference=``)."""
        head = trained().copy()
        head.distance_ = fit_distance_term(head, *val.split([0.5, 0.5], seed=0),
                                           score=head.distance, seed=0, batch_size=16,
                                           energy_distance=energy_distance)
        return head

    def latent(**options):
        return LatentDistance(base, **options).fit(train, val)

    def alone():  # the deep ensemble's members alone, without its latent-distance term
        return DeepEnsemble(models, distance=None)

    factories = {
        # with its latent-distance term fitted on val (the default since 2026-12-06)
        "LastLayerLaplace": lambda: LastLayerLaplace(base).fit(train, val),
        "LastLayerLaplace (alone)": llpr,  # Bigi et al.'s LLPR, the default before
        # the readout moved to the posterior mean first: a candidate against a constant offset
        "LastLayerLaplace (refit mean)": lambda: refitted(False),
        "LastLayerLaplace (refit mean; t energies)": lambda: refitted(True),
        "LatentDistance": lambda: latent(),
        # LLPR with its own latent-distance term (a round, 2026-12-06, then the default):
        # fitted on val as the docs prescribe, and on a held-out fifth of train
        # (its energies fitted jointly, as then)
        "LastLayerLaplace (latent term)": lambda: LastLayerLaplace(
            base, energy_combination="sum").fit(train, val),
        "LastLayerLaplace (latent term, fit(train))": lambda: LastLayerLaplace(
            base, energy_combination="sum").fit(train),
        # its energy term fitted apart, the larger taken (a round, 2026-12-07,
        # benchmarks/llpr_energy_apart.py), and both with twenty validation structures
        "LastLayerLaplace (energy term apart)": lambda: LastLayerLaplace(
            base, energy_combination="max").fit(train, val),
        # its force term fitted apart, the larger taken (a round, 2026-12-07,
        # benchmarks/forces_apart.py)
        "LastLayerLaplace (force term apart)": lambda: LastLayerLaplace(
            base, force_combination="max").fit(train, val),
        f"LastLayerLaplace ({FEW_VAL} val)": lambda: calibrated_on(
            LastLayerLaplace(base, energy_combination="sum").fit(train, few(val)), few(val)),
        f"LastLayerLaplace (energy term apart; {FEW_VAL} val)": lambda: calibrated_on(
            LastLayerLaplace(base, energy_combination="max").fit(train, few(val)), few(val)),
        # distances in the readout's features alone (the default before, to 2026-12-06;
        # every layer's since, a round on twelve systems, docs/shift.md); the rows of the
        # rounds before it keep them
        "LatentDistance (readout features)": lambda: latent(**READOUT),
        "LatentDistance + LLPR (readout features)": lambda: latent(combine=llpr(), **READOUT),
        # its energies calibrated as a committee's, a Student-t (ν ≤ 3) (a round, 2026-12-05)
        "LatentDistance (t energies)": lambda: default_method(latent(**READOUT),
                                                              COMMITTEE_CALIBRATION),
        # and with the scalar energy factor (the default before, to 2026-12-05)
        "LatentDistance (scalar energies)": lambda: default_method(
            latent(**READOUT), UQWrapper.default_calibration),
        "LatentDistance + LLPR": lambda: latent(combine=llpr()),
        # distances in the features of every message-passing layer (an option, 2026-12-05)
        # (with the all-atoms ridge, the default when these rows were added)
        "LatentDistance (all layers)": lambda: latent(features="all_layers",
                                                      ridge_scale="all_atoms"),
        "LatentDistance + LLPR (all layers)": lambda: latent(
            combine=llpr(), features="all_layers", ridge_scale="all_atoms"),
        # the covariance ridge relative to each element's spread (an option on 2026-12-06,
        # then the default: the plain rows above; before it every atom's, these two)
        "LatentDistance (all-atoms ridge)": lambda: latent(ridge_scale="all_atoms", **READOUT),
        "LatentDistance + LLPR (all-atoms ridge)": lambda: latent(
            combine=llpr(), ridge_scale="all_atoms", **READOUT),
        "LatentDistance (per-species ridge)": lambda: latent(ridge_scale="per_species",
                                                             **READOUT),
        # the candidates of the round that made every layer's features the default
        "LatentDistance (all layers, per-species ridge)": lambda: latent(
            features="all_layers", ridge_scale="per_species"),
        "LatentDistance + LLPR (per-species ridge)": lambda: latent(
            combine=llpr(), ridge_scale="per_species", **READOUT),
        "LatentDistance + LLPR (all layers, per-species ridge)": lambda: latent(
            combine=llpr(), features="all_layers", ridge_scale="per_species"),
        "LatentDistance + LLPR (refit mean)": lambda: latent(combine=refitted(False), **READOUT),
        "LatentDistance + LLPR (refit mean; t energies)": lambda: latent(
            combine=refitted(True), **READOUT),
        # the structure distance's covariance chosen on val (an option; a round on eight)
        "LatentDistance (held-out structure covariance)": lambda: latent(
            structure_covariance="held-out", **READOUT),
        "LatentDistance + LLPR (held-out structure covariance)": lambda: latent(
            combine=llpr(), structure_covariance="held-out", **READOUT),
        # energies as sums of independent atoms, the default before the structure distance
        "LatentDistance (atom energies)": lambda: latent(energy_distance="atoms", **READOUT),
        "LatentDistance + LLPR (atom energies)": lambda: latent(
            combine=llpr(), energy_distance="atoms", **READOUT),
        # the kNN score, LatentDistance's default before the Mahalanobis distance
        "LatentDistance (kNN)": lambda: latent(score="knn", energy_distance="atoms", **READOUT),
        "LatentDistance + LLPR (kNN)": lambda: latent(
            score="knn", combine=llpr(), energy_distance="atoms", **READOUT),
        "ShallowEnsemble": shallow,  # with its latent-distance force and energy terms
        # the force term alone, the energies the heads' (the default before 2026-12-05)
        "ShallowEnsemble (heads' energy variance)": lambda: shallow(None),
        "ShallowEnsemble (heads alone)": heads_alone,
        # the terms' covariance ridge relative to each element's spread (2026-12-06)
        "ShallowEnsemble (per-species ridge)": lambda: terms_refitted(
            distance_ridge_scale="per_species"),
        "ShallowEnsemble (all-atoms ridge)": lambda: terms_refitted(  # the default before
            distance_ridge_scale="all_atoms"),
        # the terms' distances in every layer's features (an option on 2026-12-06, then
        # with the milder widening the default) and in the readout's (the default before)
        "ShallowEnsemble (all-layers features)": lambda: terms_refitted(
            distance_features="all_layers"),
        "ShallowEnsemble (all-layers features, widening 1)": lambda: calibrated_with(
            terms_refitted(distance_features="all_layers"),
            extrapolation=dict(ShallowEnsemble.default_extrapolation)),
        "ShallowEnsemble (readout features)": lambda: terms_refitted(
            distance_features="readout"),
        # the larger of the heads' and a latent-distance energy variance (a round, 2026-12-05)
        "ShallowEnsemble (larger energy variance)": lambda: shallow("max"),
        # the force term fitted apart, the larger of two force variances (a round, 2026-12-05)
        "ShallowEnsemble (forces: larger of two variances)": lambda: terms_refitted(
            force_combination="max"),
        # its forces widened with the energies' power, r ** 1 (a round, 2026-12-05)
        "ShallowEnsemble (forces widened r¹)": lambda: forces_widened(shallow(), 1.0),
        # and by r ** 0.75 (the default before, to 2026-12-05)
        "ShallowEnsemble (forces widened r^0.75)": lambda: forces_widened(shallow(), 0.75),
        "LatentDistance + ShallowEnsemble": lambda: latent(combine=heads_alone()),
        # the latent term for the forces only, the heads' energy variance alone: what the
        # shallow ensemble's own term does (rows equal to the default's, to 2e-6 since
        # both energy widenings are r ** 1; between the two raises only the forces were)
        "LatentDistance + ShallowEnsemble (committee energies)": lambda: latent(
            combine=heads_alone(), energy_distance=None),
        "EvidentialHead": evidential,
        "EvidentialHead (held-out structure covariance)": held_out_term,
        # its term's covariance ridge relative to each element's spread (2026-12-06)
        "EvidentialHead (per-species ridge)": lambda: evidential_term("per_species"),
        "EvidentialHead (all-atoms ridge)": lambda: evidential_term("all_atoms"),
        # the term's distances in every layer's features (an option on 2026-12-06, then
        # with the forces widened by r ** 0.5 the default) and in the readout's (before)
        "EvidentialHead (all-layers features)": lambda: evidential_term(features="all_layers"),
        "EvidentialHead (all-layers features, widening 1)": lambda: calibrated_with(
            evidential_term(features="all_layers"),
            extrapolation=dict(EvidentialHead.default_extrapolation)),
        "EvidentialHead (readout features)": lambda: evidential_term(features="readout"),
        # the term kept at a tenth of the held-out variance at least (a round, docs/shift.md)
        "EvidentialHead (distance share 0.1)": lambda: held_out_term("ledoit-wolf", 0.1),
        "EvidentialHead (held-out structure covariance, distance share 0.1)":
            lambda: held_out_term("held-out", 0.1),
        # the larger of the NIG's and the term's variances, fitted apart (a round, docs/shift.md)
        "EvidentialHead (larger of two variances)": lambda: held_out_term(
            "held-out", None, "max"),
        # the structure covariance chosen on every structure held out from the reference
        # (both halves of val), not the term's half alone (a round, 2026-12-05)
        "EvidentialHead (covariance on both halves)": lambda: term_refitted(
            trained(), train, val, "held-out", None, "max", every_half=True),
        # and on the term's half alone (the default before, 2026-12-04 to 2026-12-05)
        "EvidentialHead (covariance on the term's half)": lambda: held_out_term(
            "held-out", None, "max"),
        # the widening's range recorded for the term's own energy std too (a round, 2026-12-05)
        "EvidentialHead (term's own range)": lambda: calibrated_with(
            evidential(), distance_range=True),
        # and for the totals alone (the default before, to 2026-12-05)
        "EvidentialHead (totals' range)": lambda: calibrated_with(
            evidential(), distance_range=False),
        # the term's a and b fitted on both halves of val as well (a round, 2026-12-05)
        "EvidentialHead (term fitted on both halves)": lambda: term_refitted(
            trained(), train, val, "held-out", None, "max", every_half=True,
            map_every_half=True),
        # its energies calibrated as a committee's, a Student-t (ν ≤ 3) (a round, 2026-12-05)
        "EvidentialHead (t energies)": lambda: default_method(evidential(),
                                                              COMMITTEE_CALIBRATION),
        # and with the scalar energy factor (the default before, to 2026-12-05)
        "EvidentialHead (scalar energies)": lambda: default_method(
            evidential(), UQWrapper.default_calibration),
        # its forces widened with the energies' power, r ** 1 (a round, 2026-12-05)
        "EvidentialHead (forces widened r¹)": lambda: forces_widened(evidential(), 1.0),
        # and by r ** 0.75 (the default before, to 2026-12-05)
        "EvidentialHead (forces widened r^0.75)": lambda: forces_widened(evidential(), 0.75),
        # distances to the head's own fitting half of val (the default before `reference`)
        "EvidentialHead (head-data reference)": refitted_term,
        # and the term's energies as sums of independent atoms (the default before that)
        "EvidentialHead (atom energies)": lambda: refitted_term("atoms"),
        "EvidentialHead (no distance)": lambda: earlier(False),
        "EvidentialHead (unbounded, before)": lambda: earlier(True),
        # with its latent-distance term fitted on train and val (the default since
        # 2026-12-07: what fit does after training the members), and the members alone
        # with today's calibration (the default before; the forces-widened rounds below
        # are of the members alone; not "before": shift.py calibrates those as then)
        f"DeepEnsemble ({len(models)})": lambda: DeepEnsemble(models).fit_distance(train, val),
        f"DeepEnsemble ({len(models)}, members alone)": alone,
        # its forces widened with the energies' power, r ** 1 (a round, 2026-12-05)
        f"DeepEnsemble ({len(models)}) (forces widened r¹)": lambda: forces_widened(
            alone(), 1.0),
        # and with the widening grid's next step above its default (the round's addendum)
        f"DeepEnsemble ({len(models)}) (forces widened r^0.75)": lambda: forces_widened(
            alone(), 0.75),
        # and by r ** 0.5 (the default before, to 2026-12-05)
        f"DeepEnsemble ({len(models)}) (forces widened r^0.5)": lambda: forces_widened(
            alone(), 0.5),
        f"DeepEnsemble ({len(models)}, not recentred, before)": lambda: NotRecentred(
            models, distance=None),
        # the members moved onto their mean, the mean kept (an option since 2026-12-05)
        f"DeepEnsemble ({len(models)}, members recentred)": lambda: calibrated_with(
            alone(), recentre="members"),
        # a latent-distance term on the deep ensemble, its members recentred on val first
        # (LatentDistance.fit's since 2026-12-05) and as they were combined before: raw
        f"LatentDistance + DeepEnsemble ({len(models)})": lambda: latent(
            combine=DeepEnsemble(models)),
        f"LatentDistance + DeepEnsemble ({len(models)}, raw members, before)":
            lambda: latent(combine=DeepEnsemble(models).recentre(val, recentre=False),
                           **READOUT),
    }
    return {name: make() for name, make in factories.items()
            if selected(name, prefixes) and (only is None or name in only)}


class NotRecentred(DeepEnsemble):
    """The deep ensemble as calibrated before recentring existed."""

    def calibrate(self, val, method=None, **options):
        return super().calibrate(val, method, recentre=False, **options)
