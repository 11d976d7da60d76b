"""Uncertainties under distribution shift, on shifts built from data we have.

    python benchmarks/shift.py --threads 1                # all four parts, ~80 min on one thread
    python benchmarks/shift.py --threads 1 --frontier 10 --out benchmarks/results/shift_frontier.json
    python benchmarks/shift.py --from-json benchmarks/results/shift.json \
        benchmarks/results/shift_frontier.json --readme README.md --docs docs/shift.md
    python benchmarks/shift.py --parts copper --quick     # a smoke run in a few minutes
    python benchmarks/shift.py --parts ethanol --update   # rerun one part, keep the other's rows
    python benchmarks/shift.py --wrappers EvidentialHead --update  # rerun some wrappers' rows
    python benchmarks/shift.py --threads 1 --cache /tmp/fits  # keep the fits: reruns skip training

Every wrapper is fitted with its documented defaults, then recalibrated on
in-distribution validation data with each recalibration method; we report,
in distribution and on every shift, the 95 % coverage of force components and
of energies, the force miscalibration area, the force NLL, the Spearman rank
correlation of per-atom |force error| and force std, and the mean std
(sharpness).

Shifts (none of them is in the training or calibration data):

* **EMT Cu** — train and calibrate on 300 K bulk MD; test on 300 K bulk (in
  distribution), 600, 900 and 1500 K bulk, and 300 K vacancies, surfaces and
  strained cells.
* **ethanol (DFT)** — the packaged 2000 frames are split along three
  coordinates the model must extrapolate in: the highest-energy 12 %, the 12 %
  with the largest force on any atom, and the 12 % with the hydroxyl torsion
  H–O–C–C nearest to 0° (cis, the least populated region). One base model is
  trained on frames outside all three tails (train / val / in-distribution
  test drawn from the rest); each tail is a test set.
* **acetylacetone (DFT)** — the packaged 1150 frames (300 K xTB MD geometries),
  split the same way: the highest-energy 12 %, the 12 % with the largest
  force, and the 12 % whose enol proton is most shared between the two
  oxygens (the smallest |d(O–H) − d(O'–H)|, on the way to the proton
  transfer). Added after every method and default had been chosen on the two
  systems above, and run once: shifts the choices were not made on.
* **EMT Cu₃Au** — a random fcc alloy (24 Cu and 8 Au in every cell, so the
  per-species reference energies are undetermined): train and calibrate on
  300 K bulk; test on 900 K bulk, the equiatomic alloy CuAu (another
  stoichiometry and lattice constant), vacancy clusters and surfaces at
  300 K. Added after acetylacetone, run once, like it.
* **EMT AgPd** (``--parts agpd``, not in the default parts) — an equiatomic
  random alloy trained on 300 and 600 K bulk; 1200 K bulk, vacancies,
  surfaces, strained cells and Ag₃Pd. Held out while the widening's powers
  were chosen on the four systems above (``shift_widening.py``), run once
  after; looked at afterwards to understand its vacancy energies (which led
  to the composition drift, chosen on Cu₃Au), so no longer held out.
* **EMT Pt₃Ni** (``--parts ptni``, not in the default parts) — a random alloy
  (24 Pt, 8 Ni per cell) trained on 300 and 900 K bulk; 1500 K bulk,
  vacancies at 900 K, surfaces, strained cells and the equiatomic PtNi. Its
  rules fixed after every default of 2026-12-02 (the composition drift
  included), held out from all of them, run once.
* **EMT Pt** (``--parts platinum``) — one element trained on 300 and 600 K
  bulk; 1200 K bulk, vacancies at 600 K, surfaces and strained cells. Its
  rules fixed on 2026-12-02, held out from the widening's powers chosen
  on six systems (AgPd and Pt₃Ni seen) and run once after that choice (the
  six wrappers, the README's methods).
* **EMT Ni₃Al** (``--parts nial``) — 24 Ni and 8 Al per cell, trained on 300
  and 900 K bulk; 1500 K bulk, vacancies at 900 K, surfaces, strained cells
  and NiAl. Rules fixed after the deep ensemble's alignment (2026-12-02),
  held out from every choice, run once.
* **EMT Cu₃Pd** (``--parts cupd``) — 24 Cu and 8 Pd per cell, trained on 300
  and 900 K bulk; 1500 K bulk, vacancies at 900 K, surfaces, strained cells
  and CuPd. Rules fixed on 2026-12-02 to check a candidate of the round on
  eight systems (``shift_widening.py --round eight``), which did not
  qualify; run once on 2026-12-03 with every default as it stood, no choice
  made on it.
* **EMT Ni₃Cu** (``--parts nicu``) — 24 Ni and 8 Cu per cell, the same kinds
  of shifts and NiCu. Rules fixed on 2026-12-03 before Cu₃Pd's run, to
  replace it; held out from the widening's choice on nine systems and run
  once after it (2026-12-04, every wrapper, the README's methods).
* **EMT Au₃Pd** (``--parts aupd``) — 24 Au and 8 Pd per cell, trained on
  300 K bulk only (as Cu₃Au); 900 K bulk, vacancies, surfaces and strained
  cells at 300 K, and AuPd. Rules fixed on 2026-12-04 after the fit-to-fit
  spread was measured (``shift_seeds.py``); held out from every choice, run
  once on 2026-12-04 on three base models, nothing decided on it.
* **EMT Ag₃Au** (``--parts agau``) — 24 Ag and 8 Au per cell, as Ni₃Cu; held
  out from the round on refitted base models (2026-12-04), run once after it.

Methods: each wrapper's default ``calibrate(val)`` (which fits how stds scale
between structures and widens stds beyond the largest of the calibration
structures, docs/calibration.md); the same without the scaling, without the
widening, without either (as before both existed) and with a stronger
widening; and every explicit ``method=``.

With ``--frontier N`` the first N structures of one shift join the
calibration data only (models and wrappers are fitted as without, and with
``--cache`` are the same fits); until 2026-12-02 they joined the fitting
data too. With ``--unseen`` they are N 108-atom cells of a run of their own.

The shifts are fixed by these rules before any method is run; methods are
chosen on them, and judged elsewhere on shifts not seen here.
``--readme`` replaces the table against the goal (issue #20) between the
``shift-goal`` markers of that file; ``--docs`` every row between its ``shift``
markers, and the tables of the other markers it has.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from typing import Optional

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)

import numpy as np
import torch

import mlipuq
from mlipuq.data import concatenate
from mlipuq.models import MiniMLIP
from mlipuq.uq.base import UQWrapper
from shift_cache import EPOCHS, cache_folder, cached, with_drift, with_refit  # noqa: F401
from shift_data import HELD_OUT, PART_SETS, UNSEEN_SEEDS, unseen_frontier, unseen_shifts
from shift_goal import goal_table, widening_table
from shift_tags import (  # noqa: F401 (the tags are read from here)
    DEFAULTS, EARLIER_DEFAULTS, LATER_DEFAULTS, MOLECULES, STRAIN_TERM, WRAPPER_DEFAULTS, current,
    defaults_of)
from shift_scores import bound_ratios, exponents, scores, validation_slope
from shift_update import kept_notes, merged, previous_results  # noqa: F401 (re-exported)
from shift_wrappers import NotRecentred, fit_wrappers, selected  # noqa: F401 (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
#: The shift table's results (base model 0 of each system).
TABLE_OUT = os.path.join(HERE, "results", "shift.json")
MODEL = {
    "copper": dict(cutoff=4.5, width=32, n_interactions=2, n_rbf=12, n_readout_features=32),
    "ethanol": dict(cutoff=5.0, width=32, n_interactions=2, n_rbf=16, n_readout_features=32),
    "acac": dict(cutoff=5.0, width=32, n_interactions=2, n_rbf=16, n_readout_features=32),
    "alloy": dict(cutoff=4.5, width=32, n_interactions=2, n_rbf=12, n_readout_features=32),
    **dict.fromkeys(("agpd", "ptni", "platinum", "nial", "cupd", "nicu", "aupd", "agau"), dict(
        cutoff=5.0, width=32, n_interactions=2, n_rbf=12, n_readout_features=32)),
}
#: The tables' recipe, the networks cached with the reference energies as fitted before
#: training; ``--refit-references`` (the default) refits them as ``mlipuq.train`` does.
TRAIN = dict(batch_size=8, lr=2e-3, forces_weight=100.0, patience=1000, lr_patience=12,
             progress=False, refit_references=False)
#: "default": ``calibrate(val)`` with the wrapper's own default (every wrapper: a Student-t
#: for the forces; for the energies a Student-t for committees, the evidential head and
#: latent distance, a scalar factor for LLPR; "scalar" was the single models' default
#: before), which scales
#: stds between structures (``structure_scaling``) and widens them beyond the calibration
#: range (``default_extrapolation``) by a factor of at most 10 for forces and 30 for
#: energies (``default_widening_cap``: 10 for both from 2026-12-07, energies 30 since the
#: round on three fits the same day, whose rerun rows keep the cap of 10 as "default,
#: widening cap 10"; rows of the other methods measured before the cap are uncapped, rows
#: since record ``widening_cap``);
#: "no widening cap" is the default with ``widening_cap=None``; "no structure scaling" is
#: that default with
#: ``structure_scaling=False`` (the default before it existed), "no widening" with
#: ``extrapolation=0``, "neither" with both (as the issue measured); "widening 0.5" and
#: "widening 1" use 0.5 and 1 for both targets ("force widening 0.5": r**1 for the energies,
#: r**0.5 for the forces; "energy widening 0.75": r**0.75 and r**0.5, not in the default
#: list); "one force scale" with ``per_species=False``
#: (one Student-t scale for every element, the default before the scale per element);
#: "no atom scaling" scales between structures only (the default before the scaling of
#: force stds between the atoms of one element); "fitted ν" fits the forces' Student-t ν
#: within 1–1000 (the default before ν ≤ 3, ``ROBUST_MAX_DOF``), "ν ≤ 5" and "ν ≤ 2" cap it
#: elsewhere; "scalar energies" gives the energies a scalar factor (the committees'
#: default before their energy Student-t; the single models' default).
METHODS = ("default", "default, scalar energies", "default, fitted ν", "default, ν ≤ 5",
           "default, ν ≤ 2",
           "default, one force scale", "default, no atom scaling",
           "default, no structure scaling",
           "default, no widening", "default, neither",
           "default, widening 0.5", "default, widening 1", "default, force widening 0.5",
           "default, no widening cap", "scalar", "power", "isotonic", "conformal", "student_t")
#: Methods given as per-target mappings (their options in METHOD_OPTIONS): the single
#: models' default calibration, a scalar energy factor, given to every wrapper.
EXPLICIT = {"default, scalar energies": UQWrapper.default_calibration}
#: The shift whose first structures join the calibration data with --frontier.
FRONTIER = {"copper": "bulk 600 K", "ethanol": "largest forces", "acac": "largest forces",
            "alloy": "bulk 900 K", "agpd": "bulk 1200 K", "ptni": "bulk 1500 K",
            "platinum": "bulk 1200 K", "nial": "bulk 1500 K", "cupd": "bulk 1500 K",
            "nicu": "bulk 1500 K", "aupd": "bulk 900 K", "agau": "bulk 1500 K"}
#: Options per recalibration method: conformal intervals are exact at the 95 % we score.
METHOD_OPTIONS = {"conformal": {"coverage": 0.95}, "default, no widening": {"extrapolation": 0},
                  "default, no structure scaling": {"structure_scaling": False},
                  "default, no atom scaling": {"structure_scaling": "structures"},
                  "default, neither": {"extrapolation": 0, "structure_scaling": False},
                  "default, one force scale": {"per_species": False},
                  "default, widening 0.5": {"extrapolation": 0.5},
                  "default, widening 1": {"extrapolation": 1.0},
                  "default, force widening 0.5": {"extrapolation": {"energy": 1.0,
                                                                    "forces": 0.5}},
                  # a milder energy widening for every layer's features (2026-12-06)
                  "default, energy widening 0.75": {"extrapolation": {"energy": 0.75,
                                                                      "forces": 0.5}},
                  # the default before 2026-12-07 (shift_caps.py chose the cap)
                  "default, no widening cap": {"widening_cap": None},
                  # the default before the round on three fits (2026-12-07): 10 for both
                  "default, widening cap 10": {"widening_cap": 10.0},
                  "default, fitted ν": {"dof_bounds": (1.0, 1000.0)},
                  "default, scalar energies": UQWrapper.default_calibration_options,
                  "default, ν ≤ 5": {"dof_bounds": (1.0, 5.0)},
                  "default, ν ≤ 2": {"dof_bounds": (1.0, 2.0)}}


#: Wrappers whose rows only docs/shift.md shows (by a marker in their name, or the
#: whole name): earlier defaults (latent distance's kNN score, the evidential head
#: without its distance term or with distances to its fitting data, the shallow and deep
#: ensembles without theirs, energies as sums of independent atoms), latent distance
#: with the shallow ensemble on both targets (not recommended), and the options LLPR
#: at its posterior mean and the structure covariance chosen on held-out structures.
DOCS_ONLY = ("before", "(kNN)", "(no distance)", "(atom energies)", "(head-data reference)",
             "(heads alone)", "(refit mean", "(held-out structure covariance)", "(alone)",
             "members alone)")
DOCS_ONLY_NAMES = ("LatentDistance + ShallowEnsemble",
                   "LatentDistance + ShallowEnsemble (committee energies)")


def readme_rows(rows: list[dict]) -> list[dict]:
    """The README's rows: current wrappers (not those of ``DOCS_ONLY``), their default,
    the default with ν as fitted, without the scaling between atoms, without the
    structure scaling and without either scaling or the widening, the scalar factor
    (the single models' default before the Student-t), and the frontier rows of the
    default and the scalar factor, and the committees' default with a scalar energy
    factor (docs/shift.md has all)."""
    return [r for r in rows if not any(m in r["wrapper"] for m in DOCS_ONLY)
            and r["wrapper"] not in DOCS_ONLY_NAMES
            and (r["method"].split(" + ")[0] in ("default", "scalar")
                 or (r["method"] == "default, scalar energies" and "Ensemble" in r["wrapper"])
                 or r["method"] in ("default, fitted ν", "default, no atom scaling",
                                    "default, no structure scaling", "default, neither"))]


def marked(rows: list[dict]) -> list[dict]:
    """``rows`` with the wrapper of each row measured with earlier defaults marked †
    (the goal table's rows name the wrapper, not the method)."""
    return [r if current(r) else {**r, "wrapper": r["wrapper"] + " †"} for r in rows]


# ------------------------------------------------------------------ models
def base_models(part: str, train, val, epochs: int, n: int, cache=None,
                refit: bool = False) -> list:
    """Base models 0 to n − 1 of the recipe, trained (or read from ``cache``) with their
    reference energies as fitted before training; ``refit``: then refitted to the
    trained network, as ``mlipuq.train(..., refit_references=True)`` does (the same
    networks: the refit changes nothing else, tests/test_reference_refit.py)."""
    def fit(seed):
        model = MiniMLIP(train.species, seed=seed, **MODEL[part])
        t0 = time.perf_counter()
        mlipuq.train(model, train, val, seed=seed, epochs=epochs, **TRAIN)
        print(f"  base model {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        return model

    models = [cached(cache and os.path.join(cache, f"model{seed}.pt"), lambda: fit(seed),
                     lambda path: with_drift(mlipuq.models.load(path), train))
              for seed in range(n)]
    return [with_refit(m, train) if refit else m for m in models]


def part_models(part: str, train, val, args, n_models: int) -> tuple[list, Optional[str]]:
    """The part's base models 0 to ``n_models`` − 1 (MiniMLIP, or with ``--base-model
    mace`` MACE) and the folder their wrappers' heads are cached in (None: not cached)."""
    mace = args.base_model == "mace"
    refit = args.refit_references
    cache = cache_folder(args.cache, part + "-mace" * mace, args.epochs, args.quick)
    if mace:  # an architecture no default was chosen on (benchmarks/shift_mace.py)
        from shift_mace import mace_models

        models = mace_models(part, train, val, args.epochs, n_models, MODEL[part]["cutoff"],
                             TRAIN, cache)
        # (a MACE wrapper's file reads back with its module only: heads not cached)
        return [with_refit(m, train) for m in models] if refit else models, None
    models = base_models(part, train, val, args.epochs, n_models, cache, refit)
    return models, cache and (os.path.join(cache, "refit") if refit else cache)


def seed_models(part: str, train, val, args, n_models: int) -> tuple[list, Optional[str]]:
    """:func:`part_models`, or with ``args.base_seed`` K > 0 base model K alone (the single
    models on another fit) and its heads' own folder."""
    seed = args.base_seed
    models, heads = part_models(part, train, val, args, max(n_models, seed + 1))
    if not seed:
        return models, heads
    heads = heads and os.path.join(heads, f"seed{seed}")
    if heads:
        os.makedirs(heads, exist_ok=True)
    return [models[seed]], heads


def wants_deep(args) -> bool:
    """Whether ``--wrappers`` and ``--only`` select the deep ensemble (all its members),
    alone or combined with a latent-distance term."""
    if args.only is not None:
        return any("DeepEnsemble" in name for name in args.only)
    return any(selected(name, args.wrappers)
               for name in ("DeepEnsemble", "LatentDistance + DeepEnsemble"))


def part_sets(part: str, args) -> tuple:
    """``(train, val, tests)`` of the part; with ``--unseen`` the tests are the
    in-distribution split, then the shift kinds no round saw."""
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](args.quick)
    if args.unseen:
        first = next(iter(tests))
        tests = {first: tests[first], **unseen_shifts(train, UNSEEN_SEEDS[part], args.quick)}
    return train, val, tests


def run_part(part: str, args) -> list[dict]:
    print(f"{part}:", flush=True)
    train, val, tests = part_sets(part, args)
    suffix, calib = "", val
    if args.frontier:
        # labelled structures from one shift (what active learning or MD harvesting
        # would flag) join the calibration data, not the fitting data (models and
        # wrappers are the same as without); that shift leaves the test sets; with
        # --unseen, 108-atom cells from a run of their own join it (every set stays)
        name, frontier = (unseen_frontier(train, UNSEEN_SEEDS[part], args.frontier)
                          if args.unseen else (FRONTIER[part], tests.pop(FRONTIER[part])))
        calib = concatenate([val, frontier[: args.frontier]])
        suffix = f" + {args.frontier} frontier ({name})"
    # the deep ensemble needs every member, the other wrappers the first base model
    models, heads = seed_models(part, train, val, args, args.members if wants_deep(args) else 1)
    fitted = fit_wrappers(models, train, val, args.wrappers, heads, args.only)
    if args.fit_only:
        return []
    rows, tagged = [], ({"base_model": "mace"} if args.base_model == "mace" else {})
    for wrapper_name, wrapper in fitted.items():
        # what calibrate does besides recalibrating (deep: recentring; the strain term)
        wrapper.calibrate(calib, strain=args.strain_term)
        term = getattr(wrapper, "distance_", None)  # the evidential head's latent-distance term
        if term is not None:
            print(f"  {wrapper_name}: distance term λ forces {term.forces_other_scale_:.3g}, "
                  f"energies {term.energy_other_scale_:.3g}", flush=True)
        raw = {name: wrapper.predict(test, calibrated=False, composition=False)
               for name, test in tests.items()}
        slope = validation_slope(wrapper, calib)
        for method in args.methods:
            base = method.split(",")[0]
            options = dict(METHOD_OPTIONS.get(method, {}))
            if "before" in wrapper_name:  # earlier behaviour: no widening or scaling either
                options.update(extrapolation=0, structure_scaling=False)
                for key in ("per_species", "dof_bounds"):  # (their scalar factor has neither)
                    options.pop(key, None)
            chosen = EXPLICIT.get(method, None if base == "default" else base)
            if "before" in wrapper_name and base == "default":
                chosen = "scalar"  # every wrapper's default before the Student-t one
            try:
                wrapper.calibrate(calib, method=chosen, strain=args.strain_term, **options)
            except ValueError as exc:  # e.g. a method not available in this version
                print(f"  {wrapper_name} / {method}: skipped ({exc})", flush=True)
                continue
            for split, test in tests.items():
                pred = wrapper.recalibrator_.transform(raw[split])
                # as predict() does: the strain term (stress-labelled calibration data) and
                # the variance of the reference energies the training compositions left
                # undetermined are added after the recalibration (unbounded)
                full = wrapper._add_composition_variance(
                    wrapper._add_strain_variance(pred, raw[split]))
                row = {"system": part, "wrapper": wrapper_name, "method": method + suffix,
                       "split": split, "defaults": (defaults_of(wrapper_name, part)
                                                    if args.strain_term else "no strain term"),
                       "base_seed": args.base_seed, **tagged,
                       "refit_references": args.refit_references,
                       "widening_cap": {key: None if np.isinf(cap) else cap for key, cap
                                        in wrapper.recalibrator_.widening_cap.items()},
                       **scores(full, test),
                       **exponents(wrapper), **slope, **bound_ratios(pred, wrapper.recalibrator_)}
                rows.append(row)
            shifted = [r for r in rows[-len(tests):] if not r["split"].startswith("in dist")]
            print(f"  {wrapper_name:<18} {method:<20} in-dist F cov {rows[-len(tests)]['force_cov95']:.3f}"
                  f" | shifts F cov {np.mean([r['force_cov95'] for r in shifted]):.3f}"
                  f" E cov {np.mean([r['energy_cov95'] for r in shifted]):.3f}", flush=True)
    return rows


# ------------------------------------------------------------------ report
def _method_order(method: str) -> tuple:
    base = method.split(" + ")[0]
    return (" + " in method, METHODS.index(base) if base in METHODS else len(METHODS), method)


def table(rows: list[dict], methods=None) -> str:
    """Markdown table, one row per system × wrapper × method (only ``methods``'
    base methods if given)."""
    if methods is not None:
        rows = [r for r in rows if r["method"].split(" + ")[0] in methods]
    lines = [
        "| system | wrapper | recalibration | in-dist F cover / miscal. / F NLL | shifts: F cover (min–mean) | shifts: E cover (min–mean) | shift Spearman (mean) | in-dist mean F std (eV/Å) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted({r["method"] for r in rows}, key=_method_order)
    for system, wrapper, method, ind, sh in _groups(rows, ordered, before=True):
        fc = [r["force_cov95"] for r in sh]
        ec = [r["energy_cov95"] for r in sh]
        mark = "" if current(ind) else " †"  # measured with earlier defaults
        lines.append(
            f"| {system} | {wrapper} | {method}{mark} | {ind['force_cov95']:.3f} / "
            f"{ind['force_miscal']:.3f} / {ind['force_nll']:.2f} | {min(fc):.2f}–{np.mean(fc):.2f} | "
            f"{min(ec):.2f}–{np.mean(ec):.2f} | {np.mean([r['spearman'] for r in sh]):.2f} | "
            f"{ind['force_std']:.4f} |"
        )
    return "\n".join(lines)


#: The rows of the comparison of caps on the forces' ν (docs/shift.md, ``shift-dof`` markers).
DOF_METHODS = ("default, fitted ν", "default, ν ≤ 5", "default", "default, ν ≤ 2")


def _groups(rows: list[dict], methods, wrappers=None, before: bool = False):
    """Per system, wrapper (the "before" ones only with ``before``; only ``wrappers`` if
    given) and method of ``methods`` in that order: the in-distribution row and the
    shifted rows."""
    chosen = [r for r in rows if r["method"] in methods
              and (before or "before" not in r["wrapper"])
              and (wrappers is None or r["wrapper"] in wrappers)]
    order = list(PART_SETS)  # the systems in the order they were added (acac: held out)
    for system, wrapper in sorted({(r["system"], r["wrapper"]) for r in chosen},
                                  key=lambda k: (order.index(k[0]) if k[0] in order
                                                 else len(order), k)):
        for method in methods:
            group = [r for r in chosen if (r["system"], r["wrapper"], r["method"])
                     == (system, wrapper, method)]
            if group:
                ind = next(r for r in group if r["split"].startswith("in dist"))
                yield (system, wrapper, method, ind,
                       [r for r in group if not r["split"].startswith("in dist")])


def dof_table(rows: list[dict]) -> str:
    """Per system and wrapper, the forces' ν as fitted and capped at 5, 3 (the default)
    and 2: in distribution ν, 95 % coverage, miscalibration area, NLL and mean std;
    over the shifts the force coverage (min–mean) and the mean force NLL."""
    lines = ["| system | wrapper | force ν | in-dist F cover / miscal. / F NLL | in-dist mean F std "
             "(eV/Å) | shifts: F cover (min–mean) | shifts: F NLL (mean) |",
             "|---|---|---|---|---|---|---|"]
    for system, wrapper, method, ind, shifted in _groups(rows, DOF_METHODS):
        fc = [r["force_cov95"] for r in shifted]
        nll = [r["force_nll"] for r in shifted]
        label = method.replace("default, ", "").replace("default", "ν ≤ 3 (default)")
        lines.append(f"| {system} | {wrapper} | {label}: {ind['force_dof']:.1f} | "
                     f"{ind['force_cov95']:.3f} / {ind['force_miscal']:.3f} / "
                     f"{ind['force_nll']:.3f} | {ind['force_std']:.4f} | "
                     f"{min(fc):.3f}–{np.mean(fc):.3f} | {np.mean(nll):.2f} |")
    return "\n".join(lines)


def energy_table(rows: list[dict]) -> str:
    """Per system and committee, the energies' default Student-t against a scalar factor:
    in distribution ν, 95 % coverage and NLL of the energies; over the shifts the energy
    coverage (min–mean) and the mean energy NLL."""
    lines = ["| system | wrapper | energies | in-dist E cover / E NLL | shifts: E cover "
             "(min–mean) | shifts: E NLL (mean) |", "|---|---|---|---|---|---|"]
    committees = {r["wrapper"] for r in rows if "Ensemble" in r["wrapper"]}
    for system, wrapper, method, ind, shifted in _groups(
            rows, ("default, scalar energies", "default"), committees):
        ec = [r["energy_cov95"] for r in shifted]
        dof = ind["energy_dof"]
        label = ("scalar factor" if dof is None else f"Student-t, ν {dof:.1f}") + (
            " (default)" if method == "default" else "")
        lines.append(f"| {system} | {wrapper} | {label} | {ind['energy_cov95']:.3f} / "
                     f"{ind['energy_nll']:.3f} | {min(ec):.2f}–{np.mean(ec):.2f} | "
                     f"{np.mean([r['energy_nll'] for r in shifted]):.2f} |")
    return "\n".join(lines)


def growth(rows: list[dict], method: str = "default") -> str:
    """Per wrapper and shift: how much the mean calibrated force std and the force
    RMSE of each element grow relative to in distribution (the std must keep pace
    with the error for the intervals to keep their coverage)."""
    lines = []
    chosen = [r for r in rows if "force_std_by_element" in r]
    for system, wrapper, _, ref, shifted in _groups(chosen, (method,), before=True):
        for r in shifted:
            std, err = r["force_std_by_element"], r["force_rmse_by_element"]
            parts = [f"{el} std ×{std[el] / ref['force_std_by_element'][el]:.2f}"
                     f" error ×{err[el] / ref['force_rmse_by_element'][el]:.2f}" for el in std]
            lines.append(f"{system:8s} {wrapper:<24.24s} {r['split']:<22.22s} " + "; ".join(parts))
    return "\n".join(lines)


def write_between_markers(path: str, text: str, name: str = "shift") -> None:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    with open(path) as fh:
        content = fh.read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(f"({re.escape(start)}\n).*?({re.escape(end)})", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no {start} / {end} markers")
    with open(path, "w") as fh:
        fh.write(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), content))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PART_SETS),
                        choices=list(PART_SETS) + list(HELD_OUT),
                        help="systems to run (default: all but the held-out " +
                        ", ".join(HELD_OUT) + ")")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help="base-model epochs (default %(default)s)")
    parser.add_argument("--members", type=int, default=3, help="deep-ensemble size (default 3)")
    parser.add_argument("--quick", action="store_true", help="smaller data sets (smoke run)")
    parser.add_argument("--frontier", type=int, default=0,
                        help="calibrate also on this many structures of one shift, which "
                        "then leaves the tests (--unseen: 108-atom cells of their own run; "
                        "default 0: in-distribution calibration only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None,
                        help="folder for the fitted base models and heads: read when there, "
                        "saved when not (a rerun of other methods then skips the training)")
    parser.add_argument("--fit-only", action="store_true",
                        help="fit (and with --cache save) the models, score nothing")
    parser.add_argument("--out", default=TABLE_OUT)
    parser.add_argument("--readme", default=None,
                        help="write the table against the goal (the wrappers' default "
                        "calibration against the scalar factor) between the shift-goal "
                        "markers of this file")
    parser.add_argument("--docs", default=None,
                        help="write every row between the shift markers of this file")
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="rebuild the tables from saved result files (no run)")
    parser.add_argument("--wrappers", nargs="+", default=None,
                        help="run only the wrappers whose names start with one of these "
                        "(default: all); with --update the other wrappers' rows are kept")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only the wrappers of exactly these names")
    parser.add_argument("--update", action="store_true",
                        help="replace in --out only the rows run now (same system, wrapper, "
                        "method, split and base model), keeping the others and their run "
                        "settings")
    parser.add_argument("--base-seed", type=int, default=0,
                        help="fit the single-model wrappers on base model K (seed K of the "
                        "same recipe; default 0, the table's), their heads cached in "
                        "CACHE/PART-EPOCHS/seedK; not for the deep ensemble")
    parser.add_argument("--refit-references", action=argparse.BooleanOptionalAction,
                        default=True, help="refit the base models' reference energies to "
                        "the trained networks (mlipuq.train's default since 2026-12-04; "
                        "the cache keeps the networks unrefitted), heads cached in "
                        "CACHE/PART-EPOCHS/refit; --no-refit-references: as before")
    parser.add_argument("--strain-term", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate with the strain term (the default since 2026-12-05); "
                        "--no-strain-term: without, rows tagged so (to their own --out)")
    parser.add_argument("--unseen", action="store_true",
                        help="test on the shift kinds no round saw (EMT systems; "
                        "docs/shift.md) instead of the system's own shifts (to their own --out)")
    parser.add_argument("--base-model", choices=("minimlip", "mace"), default="minimlip",
                        help="the base models: MiniMLIP (the tables') or a small MACE "
                        "(benchmarks/shift_mace.py; needs the mace extra; rows to their own "
                        "--out, fits in CACHE/PART-mace-EPOCHS)")
    args = parser.parse_args(argv)
    if args.base_model != "minimlip" and os.path.abspath(args.out) == TABLE_OUT:
        parser.error("--base-model mace rows go to their own --out: the shift table's base "
                     "models are MiniMLIPs")
    if args.unseen and (os.path.abspath(args.out) == TABLE_OUT
                        or set(args.parts) - set(UNSEEN_SEEDS)):
        parser.error("--unseen: EMT systems only (" + ", ".join(UNSEEN_SEEDS) + "), rows "
                     "to their own --out")
    if not args.strain_term and os.path.abspath(args.out) == TABLE_OUT:
        parser.error("--no-strain-term rows go to their own --out")
    if args.base_seed < 0:
        parser.error("--base-seed must be 0 or more")
    if args.base_seed and wants_deep(args):
        parser.error("--base-seed is for the single-model wrappers: the deep ensemble's "
                     "members are base models 0 to --members − 1 (choose --wrappers)")
    if not args.refit_references and os.path.abspath(args.out) == TABLE_OUT:
        parser.error("--no-refit-references rows go to their own --out: the shift table's "
                     "base models are refitted, mlipuq.train's default")
    if args.base_seed and os.path.abspath(args.out) == TABLE_OUT:
        parser.error("--base-seed rows go to their own --out: the shift table's are base "
                     "model 0's (benchmarks/shift_seeds.py writes results/shift_seeds.json)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.fit_only:
        for part in args.parts:
            run_part(part, args)
        print(f"fitted in {time.perf_counter() - t0:.0f} s")
        return
    if args.from_json:
        rows = [r for path in args.from_json for r in json.load(open(path))["rows"]]
    else:
        rows = [row for part in args.parts for row in run_part(part, args)]
        old = previous_results(args)
        rows, runs = merged(args, rows, old)
        notes = kept_notes(old)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "runs": runs, "rows": rows, **notes}, fh, indent=1)
    print(table(rows))
    print(dof_table(rows))
    if any(r["method"] == "default, scalar energies" for r in rows):
        print(energy_table(rows))
    print(growth(rows))
    systems = [s for s in (*PART_SETS, *HELD_OUT) if any(r["system"] == s for r in rows)]
    print(goal_table(marked(readme_rows(rows)), systems))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.readme:
        write_between_markers(args.readme, goal_table(marked(readme_rows(rows)), systems),
                              name="shift-goal")
    if args.docs:
        write_between_markers(args.docs, table(rows))
        if any(r["method"] in DOF_METHODS[1:] for r in rows):
            write_between_markers(args.docs, dof_table(rows), name="shift-dof")
        if any(r["method"] == "default, scalar energies" for r in rows):
            write_between_markers(args.docs, energy_table(rows), name="shift-energies")
        if {"alloy", "copper"} <= {r["system"] for r in rows}:
            wrappers = sorted({r["wrapper"] for r in readme_rows(rows)})
            write_between_markers(args.docs, widening_table(rows, list(PART_SETS), wrappers),
                                  name="shift-widening")


if __name__ == "__main__":
    main()
