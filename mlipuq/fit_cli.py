"""The ``mlipuq fit`` subcommand (and the registration of ``mlipuq predict``,
:mod:`mlipuq.predict_cli`).

``mlipuq fit {llpr,shallow,evidential,deep,latent} --model M.pt --train T.extxyz
[--val V.extxyz] --out W.pt`` wraps a base model saved by ``mlipuq train``
(:func:`mlipuq.models.load`) in a UQ wrapper, fits it on ``--train``,
calibrates it on ``--val`` when given, and saves it (:meth:`UQWrapper.save`):

* ``llpr``: :class:`~mlipuq.uq.LastLayerLaplace` (one pass over the data; ``--score``
  adds its latent-distance term, fitted on ``--val``, ``none`` leaves LLPR alone;
  ``--energy-combination max`` / ``--force-combination max`` fit the term's energies /
  forces apart, the larger taken);
* ``shallow``: :class:`~mlipuq.uq.ShallowEnsemble` (``--heads`` heads trained
  by Gaussian NLL on a frozen backbone, and its latent-distance force and energy
  terms, fitted on ``--val``: ``--score`` picks the distance, ``none`` leaves the
  heads alone; ``--energy-combination none`` keeps the heads' energy variance,
  ``--force-combination max`` takes the larger of the heads' and the term's force
  variances);
* ``evidential``: :class:`~mlipuq.uq.EvidentialHead` (fit it on data the base
  model was not trained on: a frozen backbone learns residuals; ``--score``
  picks its latent-distance term, ``none`` leaves the head alone; the term
  measures its distances to ``--reference``, the base model's training
  structures, else to ``--train``);
* ``deep``: :class:`~mlipuq.uq.DeepEnsemble`. With one ``--model``,
  ``--members`` new models of the same architecture (class and config, each
  initialised from its own seed) are trained on ``--train`` as ``mlipuq train``
  does; with ``--model`` given two or more times, the ensemble is made of
  those (already trained) models and nothing is retrained; either way its
  latent-distance term is fitted to ``--train`` and ``--val`` (``--score``,
  ``none`` leaves the members' spread alone);
* ``latent``: :class:`~mlipuq.uq.LatentDistance` (``--score``, default the
  Mahalanobis distance of each atom's features to its element's training mean,
  measured, as for the ``shallow`` and ``evidential`` terms, in every
  message-passing layer's features and the readout's where the model names its
  layers (MiniMLIP), ``--features readout`` in the readout's alone (the default
  before 2026-12-06);
  its covariance ridge is relative to each element's spread,
  as the ``shallow`` and ``evidential`` terms' is, ``--ridge-scale all_atoms`` to
  every atom's, the default before 2026-12-06; ``--energy-distance atoms`` sums
  independent atoms' energy variances instead of the structure's coherent one; its
  variance map is fitted on ``--val``, which then also calibrates it, or on a fifth
  of ``--train`` held out when there is no ``--val``).

``--latent forces`` (or ``both``) with ``llpr``, ``shallow`` or ``deep`` wraps the
fitted wrapper in ``LatentDistance(model, combine=wrapper)``: a latent-distance
variance added to its forces' (and energies') variance, fitted on ``--val`` (the
shallow ensemble inside then without its own term: ``--latent forces`` is its
default, ``both`` adds the energies).

It refuses an existing ``--out`` (before any work) unless ``--overwrite``.
Under ``torchrun`` (:func:`mlipuq.cli.main` joins the process group) every
rank runs the same command: the collective parts share the work
(``LastLayerLaplace.fit``, ``predict`` and ``calibrate``; the heads of
``ShallowEnsemble.fit`` and ``EvidentialHead.fit`` train data parallel; deep
members are spread over the ranks), and only rank 0 writes files and prints. A file
error on rank 0 is reported on every rank (no rank is left waiting).

``mlipuq/cli.py`` calls :func:`add_parsers` to register ``fit`` and ``predict``
(:mod:`mlipuq.predict_cli`, whose names are re-exported here). Imports only
what ``--help`` needs; torch-heavy modules load in :func:`run_fit`.
"""

from __future__ import annotations

import argparse
import inspect

from mlipuq.devices import add_device_option, resolve_device  # noqa: F401  (re-exported)
from mlipuq.fileio import refuse_existing
from mlipuq.fit_checks import check_fit_args
from mlipuq.predict_cli import (  # noqa: F401  (re-exported: their first home)
    LAZY_SUFFIXES,
    _positive_int,
    open_data,
    run_predict,
)
from mlipuq.predict_cli import add_parser as add_predict_parser

KINDS = ("llpr", "shallow", "evidential", "deep", "latent")
SCORES = ("mahalanobis", "knn", "gmm")  # LatentDistance's (its module imports torch)
CALIBRATIONS = ("scalar", "power", "isotonic", "conformal", "student_t")
#: Training defaults of the deep-ensemble members: those of ``mlipuq train``.
DEEP_DEFAULTS = {"epochs": 500, "lr": 2e-3, "patience": 50}
DEFAULT_MEMBERS = 4


# ------------------------------------------------------------------- parsers
def add_parsers(subparsers) -> None:
    """Register ``fit`` and ``predict`` on an ``argparse`` subparsers object."""
    fit = subparsers.add_parser(
        "fit", help="wrap a trained model in a UQ method, fit, calibrate and save it",
        description="Fit a UQ wrapper (llpr, shallow, evidential, deep, latent) around a "
        "model saved by `mlipuq train`, calibrate it on --val and save it to --out.",
    )
    fit.add_argument("method", choices=KINDS, help="UQ method")
    fit.add_argument(
        "--model", "-m", required=True, action="append", metavar="M.pt",
        help="base model saved by `mlipuq train`, or an external one: sevennet:7net-0, "
             "chgnet:, mace:FILE; for deep, give it two or more times to "
             "ensemble trained models instead of training --members new ones",
    )
    fit.add_argument("--train", required=True, metavar="T.extxyz",
                     help="training structures with reference energies and forces")
    fit.add_argument("--val", metavar="V.extxyz", default=None,
                     help="validation structures: early stopping and calibration "
                          "(without it the wrapper is not calibrated)")
    fit.add_argument("--reference", metavar="R.extxyz", default=None,
                     help="evidential: the structures the base model was trained on, to "
                          "which its latent-distance term measures distances (default: "
                          "--train; docs/evidential.md)")
    fit.add_argument("--out", "-o", required=True, metavar="W.pt", help="where to save the wrapper")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument("--calibration", choices=CALIBRATIONS, default=None,
                     help="recalibration fitted on --val (default: the wrapper's, "
                          "student_t for forces with one scale per element; for energies "
                          "student_t for deep and shallow, scalar for the others)")
    fit.add_argument("--per-species", action=argparse.BooleanOptionalAction, default=None,
                     help="student_t or conformal forces: one scale (quantile) per element "
                          "(default: yes for the wrapper's default calibration, no for an "
                          "explicit --calibration)")
    fit.add_argument("--max-dof", type=float, default=None,
                     help="student_t: the largest degrees of freedom ν the fit may choose, "
                          "for every Student-t target (default: 3 for the wrapper's default "
                          "calibration, heavy tails "
                          "that hold up under shift; 1000 for --calibration student_t, "
                          "ν as the validation data say; docs/shift.md)")
    fit.add_argument("--coverage", type=float, default=None,
                     help="conformal: target coverage of the intervals (0.9 if not given)")
    fit.add_argument("--extrapolation", type=float, default=None,
                     help="a structure whose energy or force std exceeds the largest of "
                          "the --val structures by a ratio r gets its calibrated stds "
                          "widened by r to this power (0: do not widen; default: the "
                          "wrapper's default_widening(): forces 0.75 (evidential, shallow 1), "
                          "energies 1; with every layer's features, their default, the "
                          "shallow ensemble's 0.5 for both, latent's and the evidential "
                          "head's forces 0.5; docs/calibration.md)")
    fit.add_argument("--widening-cap", type=widening_cap, default=None,
                     help="the largest factor of that widening (>= 1, or 'none' for no cap; "
                          "default: the wrapper's default_widening_cap, energies 30 and "
                          "forces 10): far out the raw "
                          "stds of some base models already outgrow their errors "
                          "(docs/shift.md, 'The widening capped')")
    fit.add_argument("--no-structure-scaling", dest="structure_scaling", action="store_false",
                     help="do not fit how stds scale between atoms and structures on --val "
                          "(default: fit one exponent per target and one between the atoms "
                          "of an element, docs/calibration.md)")
    fit.add_argument("--no-atom-scaling", dest="atom_scaling", action="store_false",
                     help="fit how stds scale between structures only, not between atoms")
    fit.add_argument("--no-strain-term", dest="strain", action="store_false",
                     help="do not measure the stress error on --val structures with stress "
                          "labels (default: cells strained from theirs gain its first-order "
                          "energy variance, docs/calibration.md)")
    fit.add_argument("--seed", type=int, default=0, help="random seed")
    fit.add_argument("--batch-size", type=_positive_int, default=16,
                     help="structures per batch")
    fit.add_argument("--epochs", type=_positive_int, default=None,
                     help="most training epochs (default: shallow 50, evidential 100, "
                          "deep 500 per member; llpr and latent do not train)")
    fit.add_argument("--lr", type=float, default=None,
                     help="learning rate (default: shallow 1e-3, evidential 1e-2, deep 2e-3)")
    fit.add_argument("--patience", type=_positive_int, default=None,
                     help="stop after this many epochs without validation improvement "
                          "(default: shallow and evidential 20, deep 50)")
    fit.add_argument("--max-time", type=float, default=None,
                     help="training time budget in s (deep: per member)")
    fit.add_argument("--refit-mean", action="store_true",
                     help="llpr: predict with the Bayesian posterior mean of the readout "
                          "instead of the trained weights (docs/llpr.md)")
    fit.add_argument("--heads", type=int, default=None,
                     help="shallow: number of heads (default 8)")
    fit.add_argument("--score", choices=SCORES + ("none",), default=None,
                     help="latent: the distance of an atom's features to its "
                          "element's training atoms (default: mahalanobis; docs/latent.md); "
                          "evidential, shallow, llpr, deep: that of its latent-distance term, "
                          "none for the head(s), LLPR or members alone (default: mahalanobis, "
                          "llpr the class's; docs/evidential.md, docs/ensembles.md, "
                          "docs/llpr.md); "
                          "with --latent: that of the added term")
    fit.add_argument("--energy-distance", choices=("structure", "atoms"), default=None,
                     help="latent: energy variances from the structure's latent distance, "
                          "coherent over its atoms (default: structure), or summed over "
                          "independent atoms (docs/latent.md)")
    fit.add_argument("--features", choices=("readout", "all_layers"), default=None,
                     help="latent, --latent, shallow, evidential, llpr: the features latent "
                          "distances are measured in: the readout's input or the invariant "
                          "features of every message-passing layer too (all_layers, MiniMLIP; "
                          "docs/latent.md); default all_layers where the model names its "
                          "layers, else readout")
    fit.add_argument("--ridge-scale", choices=("all_atoms", "per_species"), default=None,
                     help="latent, --latent, shallow, evidential, llpr: whose spread the latent "
                          "distance's covariance ridge is relative to: each element's "
                          "(per_species, the default since 2026-12-06) or every training "
                          "atom's (all_atoms, the default before; docs/latent.md)")
    fit.add_argument("--structure-covariance", choices=("ledoit-wolf", "held-out"),
                     default=None,
                     help="latent, evidential, --latent both: the covariance the "
                          "structures' energy "
                          "distance is measured in: the one under which --val's "
                          "structures are most likely (held-out, the default) or shrunk "
                          "(ledoit-wolf, the default before 2026-12-04; docs/latent.md)")
    fit.add_argument("--distance-combination", choices=("max", "sum"), default=None,
                     help="evidential: the larger of the head's and its latent-distance "
                          "term's variances, each fitted on --val (max, the default), or "
                          "their sum fitted jointly (sum, the default before 2026-12-04; "
                          "docs/evidential.md)")
    fit.add_argument("--energy-combination", choices=("max", "none", "sum"), default=None,
                     help="shallow: the energy variance is the larger of the heads' and a "
                          "latent-distance energy term's, each fitted on --val (max, the "
                          "default), or the heads' alone (none, the default before "
                          "2026-12-05; docs/ensembles.md); llpr: LLPR's and its term's "
                          "energy variances fitted jointly on --val (sum, the default) or "
                          "apart, the larger taken (max; docs/llpr.md)")
    fit.add_argument("--force-combination", choices=("sum", "max"), default=None,
                     help="shallow: the force variance is the heads' plus a latent-distance "
                          "force term fitted jointly on --val (sum, the default), or the "
                          "larger of the two, each fitted apart (max; docs/ensembles.md); "
                          "llpr: the same with LLPR's force variance (docs/llpr.md)")
    fit.add_argument("--latent", choices=("forces", "both"), default=None,
                     help="llpr, shallow, deep: add a latent-distance variance to the fitted "
                          "wrapper's (LatentDistance(model, combine=wrapper)), its map fitted "
                          "on --val; forces: for the forces only, the wrapper's energies "
                          "kept (the shallow ensemble's option under shift); both: energies "
                          "too (docs/latent.md; deep: the class's own term, its default, "
                          "is this combination built in, docs/ensembles.md)")
    fit.add_argument("--members", type=int, default=None,
                     help=f"deep: number of members trained from --model's architecture "
                          f"(default {DEFAULT_MEMBERS}; with several --model: their number)")
    fit.add_argument("--recentre", choices=("per_atom", "total", "members", "none"),
                     default=None,
                     help="deep: how the members' per-species energy offsets are fitted on "
                          "--val before calibrating (default per_atom; members: onto their "
                          "mean, which stays; none: not; docs/ensembles.md)")
    fit.add_argument("--progress", action="store_true", help="show progress bars")
    add_device_option(fit)
    fit.set_defaults(func=run_fit)

    add_predict_parser(subparsers)


# ----------------------------------------------------------------------- fit
def _member_factory(base):
    """``make_model(seed)``: a new, untrained model of ``base``'s class and config."""
    cls = type(base)
    if "seed" not in inspect.signature(cls).parameters:
        raise ValueError(
            f"fit deep: a {cls.__name__} cannot be re-initialised from a seed; train the "
            "members yourself and give --model once per member"
        )
    config = base.config()
    exact_offsets = base.atomic_energies_set and base.offset_prior_std is None

    def make_model(seed: int):
        model = cls(**config, seed=seed).to(dtype=base.dtype, device=base.device)
        if exact_offsets:  # e.g. isolated-atom energies given to `mlipuq train`
            model.set_atomic_energies(base.atomic_energies)
        return model

    return make_model


def _trainer_options(args, defaults: dict) -> dict:
    options = dict(defaults)
    for name in ("epochs", "lr", "patience", "max_time"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    options["batch_size"] = args.batch_size
    return options


def build_wrapper(args, models, train, val, progress: bool, reference=None):
    """The fitted (not yet calibrated) wrapper of ``args.method`` (``reference``: the
    evidential head's ``--reference`` structures), with ``--latent`` wrapped in a
    :class:`~mlipuq.uq.LatentDistance` combined with it."""
    from mlipuq.uq import LatentDistance

    wrapper = _method_wrapper(args, models, train, val, progress, reference)
    if args.latent is None:
        return wrapper
    if args.recentre is not None:  # before the combination's map
        wrapper.recentre(val, recentre=_recentring(args.recentre))
    options = _latent_options(args)
    return LatentDistance(models[0], combine=wrapper, **options,
                          energy_distance=None if args.latent == "forces" else "structure"
                          ).fit(train, val, batch_size=args.batch_size, seed=args.seed,
                                progress=progress)


def _latent_options(args) -> dict:
    """:class:`~mlipuq.uq.LatentDistance` options the flags give (score, structure
    covariance, features, ridge scale), for ``fit latent`` and ``--latent``."""
    return {key: value for key, value in (
        ("score", args.score), ("structure_covariance", args.structure_covariance),
        ("features", args.features), ("ridge_scale", args.ridge_scale))
        if value is not None}


def _method_wrapper(args, models, train, val, progress: bool, reference=None):
    from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                           ShallowEnsemble)

    model = models[0]
    common = {"seed": args.seed, "progress": progress}
    distance = {None: "mahalanobis", "none": None}.get(args.score, args.score)
    if args.method == "llpr":  # with --latent, the combination supplies the term
        options = {} if args.latent else {key: value for key, value in (
            ("distance_ridge_scale", args.ridge_scale), ("distance_features", args.features))
            if value is not None}
        if args.latent or args.score is not None:  # else the class's default term
            options["distance"] = None if args.latent else distance
        for key in ("energy_combination", "force_combination"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        return LastLayerLaplace(model, refit_mean=args.refit_mean, **options).fit(
            train, val, batch_size=args.batch_size, **common)
    if args.method == "shallow":  # with --latent, the combination supplies the term
        energy = {} if args.energy_combination is None else {
            "energy_combination": {"none": None}.get(args.energy_combination, "max")}
        if args.force_combination is not None:
            energy["force_combination"] = args.force_combination
        for key, value in (("distance_ridge_scale", args.ridge_scale),
                           ("distance_features", args.features)):
            if value is not None and not args.latent:
                energy[key] = value
        return ShallowEnsemble(model, n_heads=8 if args.heads is None else args.heads,
                               distance=None if args.latent else distance, **energy).fit(
            train, val, **common, **_trainer_options(args, {}))
    if args.method == "evidential":
        options = {key: value for key, value in (
            ("structure_covariance", args.structure_covariance),
            ("distance_combination", args.distance_combination),
            ("distance_ridge_scale", args.ridge_scale),
            ("distance_features", args.features)) if value is not None}
        return EvidentialHead(model, distance=distance, **options).fit(
            train, val, reference=reference, **common, **_trainer_options(args, {}))
    if args.method == "latent":
        options = _latent_options(args)
        if args.energy_distance is not None:
            options["energy_distance"] = args.energy_distance
        return LatentDistance(model, **options).fit(
            train, val, batch_size=args.batch_size, **common)
    distance = None if args.latent else distance  # with --latent, the combination's term
    if len(models) > 1:  # trained members: the term fitted around them as they are
        ensemble = DeepEnsemble(models, distance=distance)
        return ensemble if distance is None else ensemble.fit_distance(train, val, **common)
    return DeepEnsemble.train(
        _member_factory(model), train, val, distance=distance,
        n_members=args.members or DEFAULT_MEMBERS, **common,
        **_trainer_options(args, DEEP_DEFAULTS),
    )


def _method_rows(wrapper, method: str) -> list:
    """The summary rows of what ``fit`` fitted: hyperparameters or training (with
    ``--latent``, the combined wrapper's, then the latent term's)."""
    if method != "latent" and getattr(wrapper, "combine", None) is not None:
        targets = "forces only" if wrapper.energy_distance is None else "both"
        term = [("latent term", f"{wrapper.score} distance; λ forces "
                 f"{wrapper.forces_other_scale_:.3g}, energy {wrapper.energy_other_scale_:.3g}"
                 f" (λσ² + latent; {targets})")]
        return _method_rows(wrapper.combine, method) + term
    if method == "llpr":
        rows = [("prior precision", f"{wrapper.prior_precision_:.4g}"),
                ("energy noise", f"{wrapper.energy_noise_:.4g} eV")]
        if wrapper.forces_noise_ is not None:
            rows.append(("forces noise", f"{wrapper.forces_noise_:.4g} eV/Å"))
        term = wrapper.distance_
        larger = [t for t in ("energy", "forces")
                  if getattr(wrapper, f"{t.rstrip('s')}_combination") == "max"]
        apart = f" ({' and '.join(larger)}: the larger)" if larger else ""
        return rows + [("distance", "none (LLPR alone)" if term is None else (
            f"{wrapper.distance}: λσ²_LLPR + a + b u²{apart}; "
            f"λ forces {term.forces_other_scale_:.3g}, "
            f"energy {wrapper._energy_term().energy_other_scale_:.3g}"))]
    if method == "latent":
        n_elements = len(wrapper.species_)
        energy = (f"n² ({wrapper.energy_a_:.3g} + {wrapper.energy_b_:.3g} U²)"
                  if wrapper.energy_distance == "structure" else
                  f"{wrapper.energy_a_:.3g} n + {wrapper.energy_b_:.3g} Σu²")
        return [("distance", f"{wrapper.score} (per element, {n_elements} elements)"),
                ("variance map", (f"forces {wrapper.forces_a_:.3g} + {wrapper.forces_b_:.3g}"
                                  f" u² eV²/Å², energy {energy} eV²"))]
    if method in ("shallow", "evidential"):
        rows = [("heads", str(wrapper.n_heads))] if method == "shallow" else []
        rows.append(("distance", _distance_row(wrapper, method == "shallow")))
        history = wrapper.history_
        return rows + [("training", f"{len(history)} epochs in {history.wall_time:.1f} s")]
    offsets = wrapper.member_offsets_
    rows = [("members", str(wrapper.n_members)),
            ("recentring", "none" if offsets is None else "per-species offsets up to "
             f"{1e3 * float(abs(offsets).max()):.3g} meV/atom")]
    term = wrapper.distance_
    rows.append(("distance", "none (the members' spread alone)" if term is None else (
        f"{wrapper.distance}: λσ²_members + a + b u²; λ forces {term.forces_other_scale_:.3g}, "
        f"energy {term.energy_other_scale_:.3g}, to {term.n_train_} reference structures")))
    if wrapper.histories_ is None:
        return rows + [("training", "none (trained --model files)")]
    epochs = ", ".join(str(len(h)) for h in wrapper.histories_)
    seconds = sum(h.wall_time for h in wrapper.histories_)
    return rows + [("training", f"{epochs} epochs (seeds {wrapper.seeds_}) in {seconds:.1f} s")]


def _distance_row(wrapper, shallow: bool) -> str:
    """The summary row of a shallow ensemble's or evidential head's latent-distance term."""
    term = wrapper.distance_
    if term is None:
        return f"none (the head{'s' if shallow else ''} alone)"
    own = "σ²_heads" if shallow else "σ²_NIG"
    energy_term = wrapper.energy_distance_ if shallow else term
    if energy_term is None:
        energy = "energies: the heads' variance"
    else:
        energy = f"energy {energy_term.energy_other_scale_:.3g}"
    if not shallow:  # one term for both targets, summed or the larger taken
        form = (f"λ{own} + a + b u²" if wrapper.distance_combination == "sum"
                else f"max(λ{own}, a + b u²)")
    else:  # a force term, and an energy term when energy_combination is set
        form = (f"forces λ{own} + a + b u²" if wrapper.force_combination == "sum"
                else f"forces max(λ{own}, a + b u²)") + (
            "" if energy_term is None else f", energies max(λ{own}, n²(a + b U²))")
    return (f"{wrapper.distance}: λ forces {term.forces_other_scale_:.3g}, {energy} "
            f"({form}), to {term.n_train_} reference structures")


def _summary(wrapper, args, n_train: int, n_val: int) -> str:
    combined = getattr(wrapper, "combine", None)
    name = type(wrapper).__name__ + ("" if combined is None or args.method == "latent"
                                     else f" + {type(combined).__name__}")
    rows = [("method", f"{name} ({args.method})"),
            ("training set", f"{n_train} structures ({args.train})")]
    rows += _method_rows(wrapper, args.method)
    recalibrator = getattr(wrapper, "recalibrator_", None)
    if recalibrator is None:
        rows.append(("calibration", "none (no --val)"))
    else:
        text = f"{recalibrator.description} on {n_val} structures"
        scales = [f"{key} std x {_multipliers(getattr(recalibrator, key + '_'))}"
                  for key in ("energy", "forces")
                  if hasattr(getattr(recalibrator, key + "_", None), "scale_")]
        parts = {key: getattr(recalibrator, key + "_", None) for key in ("energy", "forces")}
        scales += [f"{key} Student-t ν {part.dof_:.3g}"  # at its upper bound: the cap
                   + (" (the cap, --max-dof)" if part.dof_ >= (1 - 1e-6) * part.dof_bounds[1]
                      else "")
                   for key, part in parts.items() if hasattr(part, "dof_")]
        rows.append(("calibration", text + (": " + ", ".join(scales) if scales else "")))
        scaling = getattr(recalibrator, "structure_scaling_", None)
        if scaling:
            rows.append(("between structures", "stds x (S / S_ref)^c, c = " + ", ".join(
                f"{scaling[key]['exponent']:.2f} ({key})" for key in ("energy", "forces"))))
        if scaling is not None and recalibrator._scales_atoms():
            c_atoms = scaling.get("atoms", {}).get("exponent", 0.0)
            rows.append(("between atoms", "force stds x (s / s_ref)^c per element, c = "
                         f"{c_atoms:.2f} (before the above)"))
        limits, power = getattr(recalibrator, "std_range_", None), recalibrator.extrapolation
        if limits:
            rows.append(("beyond calibration", "stds widened by (std / largest)^p beyond "
                         f"{limits['energy'] * 1000:.3g} meV/atom (energy, p = "
                         f"{power['energy']:g}), {limits['forces'] * 1000:.3g} meV/Å "
                         f"(RMS force, p = {power['forces']:g})"
                         + "".join(f", {key} factor at most {cap:g}" for key, cap
                                   in recalibrator.widening_cap.items() if cap < float("inf"))
                         + (f", {limits['energy_distance'] * 1000:.3g} meV/atom (the "
                            "latent-distance term's own energy std)"
                            if "energy_distance" in limits else "")))
    rows += _strain_rows(wrapper)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _strain_rows(wrapper) -> list[tuple[str, str]]:
    """The strain term's line: the pressure error measured on the labelled --val cells."""
    term = getattr(wrapper, "strain_term_", None)
    if term is None:
        return []
    gpa = ", ".join(f"{p * 160.21766:+.3g} GPa" for p in term.pressure_error_)
    return [("strain term", f"pressure error {gpa} on {int(term.n_structures_.sum())} "
             "stress-labelled --val cells: strained cells' energy stds include "
             "V0 (stress error : strain)")]


def widening_cap(text: str):
    """``--widening-cap``'s value: a number, or ``"none"`` (no cap)."""
    return "none" if text.strip().lower() == "none" else float(text)


def run_fit(args: argparse.Namespace) -> int:
    """Run ``mlipuq fit``; returns 0. Bad input raises; :func:`mlipuq.cli.main` reports it."""
    import mlipuq
    from mlipuq import distributed as mdist
    from mlipuq.models.spec import load_model_spec as load_model
    from mlipuq.training_setup import measure_missing_drift

    refuse_existing(args.out, args.overwrite, "--out")  # before any work
    check_fit_args(args)
    device = resolve_device(args.device)
    models = [load_model(path).to(device=device) for path in args.model]
    train = mlipuq.load(args.train)
    val = None if args.val is None else mlipuq.load(args.val)
    reference = None if args.reference is None else mlipuq.load(args.reference)
    progress = args.progress and mdist.is_main()
    for model in models:  # older model files: their offset drift, as training measures it
        measure_missing_drift(model, train if reference is None else reference)
    wrapper = build_wrapper(args, models, train, val, progress, reference)
    if val is not None:
        options = {key: value for key, value in (("extrapolation", args.extrapolation),
                                                 ("widening_cap", args.widening_cap),
                                                 ("coverage", args.coverage))
                   if value is not None}
        if args.widening_cap == "none":
            options["widening_cap"] = None  # no cap
        options["structure_scaling"] = (args.structure_scaling and
                                        (True if args.atom_scaling else "structures"))
        if args.per_species is not None:
            options["per_species"] = args.per_species
        if args.max_dof is not None:
            options["dof_bounds"] = (1.0, args.max_dof)
        if args.recentre is not None and args.latent is None:  # combined: recentred above
            options["recentre"] = _recentring(args.recentre)
        wrapper.calibrate(val, method=args.calibration, strain=args.strain, **options)

    def save():
        if mdist.is_main():
            wrapper.save(args.out, overwrite=args.overwrite)

    mdist.run_local(save)
    print(_summary(wrapper, args, len(train), 0 if val is None else len(val)))
    print(f"wrapper saved to {args.out}")
    return 0


def _recentring(choice: str):
    """``DeepEnsemble.calibrate``'s ``recentre`` from ``--recentre``."""
    return False if choice == "none" else choice


def _multipliers(part) -> str:
    """A recalibrator's std multiplier, or one per element (``"1.2 (H), 1.4 (O)"``)."""
    import numpy as np
    from ase.data import chemical_symbols

    species = getattr(part, "species_", None)
    if species is None or not len(species) or not hasattr(part, "multiplier"):
        return f"{part.scale_:.4g}"
    factors = part.multiplier(np.ones(len(species)), numbers=species)
    return ", ".join(f"{f:.4g} ({chemical_symbols[int(z)]})" for z, f in zip(species, factors))

