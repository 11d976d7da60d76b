"""The ``mlipuq check`` subcommand: run the trust checks on a saved model.

``mlipuq check --model W --structures S --out DIR`` loads W (a saved UQ
wrapper, else a saved base model), takes the first ``--max-structures`` of S
and runs the checks that apply: rotational equivariance (with the rotational
spread), the force-Jacobian asymmetry, the energy drift of a short NVE run,
bond and torsion scans of the first structure and, with ``--md-steps N``,
short NVT stability runs. It writes into DIR ``trust.json`` (every number,
format-versioned), ``trust.md`` (a table and a section per check) and the
figures (scans with uncertainty bands, a histogram of the rotational spread,
the NVE energy, the stability runs), and prints one line per check::

    PASS equivariance: energy 2.1e-13 eV/atom, forces 4.0e-12 eV/Å (... threshold ...)

``--quick`` shortens the cheap checks (fewer structures, rotations and NVE
steps). An existing DIR is refused unless ``--overwrite`` (then the report
files in it are replaced; nothing else is touched). ``--strict`` makes the
exit status 1 when a check fails. Errors are raised and reported by
:func:`mlipuq.cli.main` (one line, exit status 2).

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from mlipuq.fileio import refuse_existing

#: (default, --quick) settings of the cheap checks.
MAX_STRUCTURES = (4, 1)
ROTATIONS = (16, 4)
JACOBIAN_STRUCTURES = (2, 1)
NVE_STEPS = (200, 100)
BONDS = (2, 1)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``check`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "check", help="physics trust checks of a model: symmetry, conservation, "
                      "smoothness, MD stability",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--model", "-m", required=True,
                        help="a saved UQ wrapper (mlipuq.uq.load) or base model "
                             "(mlipuq.models.load)")
    parser.add_argument("--structures", "-s", required=True,
                        help="structures to check (extxyz or any file ASE reads)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing DIR, replacing its report files")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer structures ({MAX_STRUCTURES[1]}), rotations "
                             f"({ROTATIONS[1]}) and NVE steps ({NVE_STEPS[1]})")
    parser.add_argument("--max-structures", type=int, default=None,
                        help=f"structures checked (default {MAX_STRUCTURES[0]}; "
                             "scans and MD use the first)")
    parser.add_argument("--rotations", type=int, default=None,
                        help=f"random rotations of the equivariance check (default "
                             f"{ROTATIONS[0]})")
    parser.add_argument("--bond", nargs=2, type=int, action="append", metavar=("I", "J"),
                        help="bond to scan (repeatable; default: up to two picked from the "
                             "covalent bonds)")
    parser.add_argument("--torsion", nargs=4, type=int, action="append",
                        metavar=("I", "J", "K", "L"),
                        help="dihedral to scan (repeatable; default: one picked about a "
                             "bond outside rings)")
    parser.add_argument("--nve-steps", type=int, default=None,
                        help=f"velocity-Verlet steps of the drift check (default "
                             f"{NVE_STEPS[0]}; 0 skips it)")
    parser.add_argument("--timestep", type=float, default=0.5, help="MD time step (fs)")
    parser.add_argument("--md-steps", type=int, default=0,
                        help="NVT steps per temperature of the stability check (0 skips it)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0],
                        help="stability temperatures (K); the first also starts the NVE run")
    parser.add_argument("--uncertainty-threshold", type=float, default=None,
                        help="largest per-atom force std of a trusted MD frame (eV/Å; "
                             "default 0.3, DP-GEN's upper trust level)")
    parser.add_argument("--seed", type=int, default=0, help="seed of rotations and velocities")
    parser.add_argument("--no-plots", action="store_true", help="write the reports only")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a check fails")
    parser.set_defaults(func=run)
    return parser


def load_model(path: str):
    """A saved UQ wrapper, else a saved base model; one clear error when neither."""
    from mlipuq.errors import FileFormatError
    from mlipuq.models import load as load_base
    from mlipuq.uq import load as load_wrapper

    try:
        return load_wrapper(path)
    except FileFormatError as first:
        try:
            return load_base(path)
        except FileFormatError as second:
            raise FileFormatError(
                f"--model {path}: neither a saved UQ wrapper ({_reason(first, path)}) nor a "
                f"saved base model ({_reason(second, path)})"
            ) from None


def _reason(exc: Exception, path: str) -> str:
    text = " ".join(str(exc).split())
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def _pick(value: Optional[int], defaults: tuple, quick: bool, name: str) -> int:
    if value is None:
        return defaults[1] if quick else defaults[0]
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def run_checks(
    model,
    structures,
    *,
    quick: bool = False,
    max_structures: Optional[int] = None,
    n_rotations: Optional[int] = None,
    bonds: Optional[Sequence] = None,
    torsions: Optional[Sequence] = None,
    nve_steps: Optional[int] = None,
    timestep_fs: float = 0.5,
    md_steps: int = 0,
    temperatures: Sequence[float] = (300.0, 600.0),
    uncertainty_threshold: Optional[float] = None,
    seed: int = 0,
    log=print,
) -> list:
    """Run every check that applies and return their results (in report order).

    ``log`` receives each result's one-line summary as it is done (None: quiet).
    Bond and torsion scans, NVE and stability use the first structure.
    """
    from mlipuq.trust import conservation, smoothness, symmetry
    from mlipuq.trust.report import as_target, structures_list
    from mlipuq.trust.stability import FORCE_STD_THRESHOLD, stability

    target = as_target(model)
    structures = structures_list(structures)
    n = _pick(max_structures, MAX_STRUCTURES, quick, "--max-structures")
    structures = structures[:max(n, 1)]
    first = structures[0]
    results = []

    def done(result):
        results.append(result)
        if log is not None:
            log(result.line())

    rotations = _pick(n_rotations, ROTATIONS, quick, "--rotations")
    done(symmetry.equivariance_error(target, structures, max(rotations, 1), seed=seed))
    done(conservation.jacobian_asymmetry(
        target, structures[:JACOBIAN_STRUCTURES[1] if quick else JACOBIAN_STRUCTURES[0]]))
    steps = _pick(nve_steps, NVE_STEPS, quick, "--nve-steps")
    if steps >= 2 and len(first) > 1:
        done(conservation.nve_drift(target, first, steps=steps, timestep_fs=timestep_fs,
                                    temperature_K=temperatures[0], seed=seed))
    if bonds is None:
        bonds = smoothness.pick_bonds(first, BONDS[1] if quick else BONDS[0])
    for bond in bonds:
        done(smoothness.bond_scan(target, first, [tuple(bond)]))
    if torsions is None:
        found = smoothness.pick_torsion(first)
        torsions = [] if found is None else [found]
    for dihedral in torsions:
        done(smoothness.torsion_scan(target, first, tuple(dihedral)))
    if md_steps and md_steps > 0:
        threshold = (FORCE_STD_THRESHOLD if uncertainty_threshold is None
                     else float(uncertainty_threshold))
        done(stability(target, first, temperatures, int(md_steps),
                                 timestep_fs=timestep_fs, threshold=threshold, seed=seed))
    return results


def output_files(out: str) -> list:
    """The report files ``mlipuq check --out`` always writes."""
    from mlipuq.trust.report import REPORT_FILES

    return [os.path.join(out, name) for name in REPORT_FILES]


def run(args: argparse.Namespace) -> int:
    """Run the checks; raises user errors (reported by :func:`mlipuq.cli.main`)."""
    refuse_existing(args.out, args.overwrite, "--out")
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise NotADirectoryError(f"--out {args.out} exists and is not a folder")
    if args.md_steps < 0:
        raise ValueError(f"--md-steps must be >= 0, got {args.md_steps}")
    if not args.timestep > 0:
        raise ValueError(f"--timestep must be positive, got {args.timestep}")
    import mlipuq
    from mlipuq.trust.report import as_target, worst, write_report

    model = load_model(args.model)
    dataset = mlipuq.load(args.structures)
    if len(dataset) == 0:
        raise ValueError(f"--structures {args.structures}: no structures")
    n = _pick(args.max_structures, MAX_STRUCTURES, args.quick, "--max-structures")
    structures = [dataset[k] for k in range(min(max(n, 1), len(dataset)))]
    target = as_target(model)
    results = run_checks(
        target, structures, quick=args.quick, max_structures=n, n_rotations=args.rotations,
        bonds=args.bond, torsions=args.torsion, nve_steps=args.nve_steps,
        timestep_fs=args.timestep, md_steps=args.md_steps, temperatures=args.temperatures,
        uncertainty_threshold=args.uncertainty_threshold, seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    written = write_report(results, args.out, model=f"{args.model}: {target.description}",
                           structures=f"{args.structures} ({len(structures)} of "
                                      f"{len(dataset)})", figures=not args.no_plots)
    verdict = worst([r.verdict for r in results])
    print(f"# {verdict.upper()} overall; {len(written)} files in {args.out} "
          f"(trust.json, trust.md{', figures' if not args.no_plots else ''})")
    return 1 if args.strict and verdict == "fail" else 0
