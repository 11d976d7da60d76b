"""The ``mlipuq md`` subcommand: molecular dynamics with uncertainties.

``mlipuq md --model W.pt --structure S.xyz --ensemble nvt --temperature 300
--timestep 1 --steps 1000 --out traj.extxyz`` runs MD with the mean potential
of a saved UQ wrapper and writes every ``--log-every``-th frame to an extxyz
file: per frame the step, time (fs), energy and its std (eV), the largest
per-atom force std (eV/Å), committee energies and stress where there are
some; per atom the forces, their std (3 components) and the std's norm
``mlipuq_forces_std_norm`` (eV/Å), columns OVITO reads and colours by.

Engines: ``--engine ase`` (default; ASE's velocity Verlet, Langevin and MTK
barostat, :func:`mlipuq.propagation.run_md`) or ``--engine lammps`` (the same
run in LAMMPS through ``fix external``, :mod:`mlipuq.engines.lammps`).

``--stop-above X`` stops at the first step whose uncertainty
(``--threshold-on``, default the largest per-atom force std, eV/Å) exceeds X,
after logging that frame (for active learning). ``--resume`` continues a run
from the last frame of ``--out`` (refused if the wrapper or any setting
differs); without it an existing ``--out`` is refused unless ``--overwrite``.

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
"""

from __future__ import annotations

import argparse
import os

from mlipuq.devices import add_device_option
from mlipuq.fileio import refuse_existing

ENGINES = ("ase", "lammps")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "md", help="molecular dynamics with a UQ wrapper, uncertainties logged per frame",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--model", "-m", required=True, help="UQ wrapper saved with .save()")
    parser.add_argument("--structure", "-s", required=True,
                        help="starting structure (any file ASE reads; the last frame is used "
                             "unless --frame)")
    parser.add_argument("--frame", type=int, default=-1, help="frame of --structure to start from")
    parser.add_argument("--engine", choices=ENGINES, default="ase", help="MD engine")
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nvt",
                        help="nve: velocity Verlet; nvt: Langevin (ase) / Nosé-Hoover "
                             "(lammps); npt: isotropic barostat (periodic cells)")
    parser.add_argument("--temperature", type=float, required=True,
                        help="target (nvt, npt) or initial (nve) temperature (K)")
    parser.add_argument("--timestep", type=float, required=True, help="time step (fs)")
    parser.add_argument("--steps", type=int, required=True,
                        help="total MD steps (a resumed run counts the earlier ones)")
    parser.add_argument("--out", "-o", required=True, metavar="TRAJ.extxyz",
                        help="trajectory file (extxyz)")
    parser.add_argument("--log-every", type=int, default=10, help="write every N-th step")
    parser.add_argument("--stop-above", type=float, default=None, metavar="X",
                        help="stop once the uncertainty exceeds X (unit of --threshold-on)")
    parser.add_argument("--threshold-on", default="max_force_std",
                        choices=("max_force_std", "energy_std", "energy_std_per_atom"),
                        help="what --stop-above is compared with (eV/Å, eV, eV/atom)")
    parser.add_argument("--pressure", type=float, default=0.0, help="npt pressure (GPa)")
    parser.add_argument("--friction", type=float, default=0.01,
                        help="nvt: Langevin friction (1/fs; LAMMPS damping 1/friction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial velocities")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run stored in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh, replacing an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device_option(parser)
    parser.set_defaults(func=run)
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not args.out.lower().endswith((".extxyz", ".xyz")):
        raise ValueError(f"--out {args.out}: the trajectory is written as extxyz "
                         "(name it .extxyz or .xyz)")
    if args.resume and not os.path.exists(args.out):
        raise FileNotFoundError(f"--resume: no trajectory {args.out} to continue")
    if not args.resume:
        refuse_existing(args.out, args.overwrite, "--out")


def run(args: argparse.Namespace) -> int:
    """Run the MD; raises user errors (reported by :func:`mlipuq.cli.main`)."""
    _check(args)
    import mlipuq
    from mlipuq.devices import resolve_device
    from mlipuq.uq import load as load_wrapper

    wrapper = load_wrapper(args.model).to(device=resolve_device(args.device))
    atoms = mlipuq.load(args.structure, index=args.frame)[0].copy()
    atoms.calc = None
    if args.overwrite and os.path.exists(args.out):
        os.remove(args.out)  # the user asked to replace it; nothing else is touched
    options = dict(ensemble=args.ensemble, temperature_K=args.temperature,
                   timestep_fs=args.timestep, steps=args.steps, seed=args.seed,
                   log_every=args.log_every, trajectory=args.out,
                   uncertainty_threshold=args.stop_above, threshold_on=args.threshold_on,
                   pressure_GPa=args.pressure, friction=args.friction,
                   progress=not args.no_progress)
    if args.engine == "ase":
        from mlipuq.propagation import run_md

        traj = run_md(atoms, wrapper, **options)
    else:
        from mlipuq.engines.lammps_md import run_md as run_lammps

        traj = run_lammps(atoms, wrapper, **options)
    last = traj.frames[-1].info
    print(f"# {len(traj.frames)} frames in {args.out}, last step {int(traj.step[-1])}")
    print(f"# energy std {traj.energy_std[-1]:.4g} eV, largest force std "
          f"{traj.max_force_std[-1]:.4g} eV/Å at the last frame")
    if traj.stopped:
        print(f"# stopped: {args.threshold_on} above {args.stop_above} at step "
              f"{int(last['mlipuq_step'])}")
    return 0
