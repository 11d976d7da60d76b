"""The ``mlipuq`` command.

Subcommands: ``demo`` (the main job, :mod:`mlipuq.demo`: pretrained models,
every UQ wrapper fitted, calibrated and compared, a report folder), ``train`` (train the built-in MLIP on an extxyz file), and
those registered by other modules: ``fit`` and ``predict``
(:mod:`mlipuq.fit_cli`, :mod:`mlipuq.predict_cli`), ``evaluate``
(:mod:`mlipuq.calibration.cli`) and
``select`` (:mod:`mlipuq.active.cli`), ``md`` (:mod:`mlipuq.md_cli`) and
``ipi-driver`` (:mod:`mlipuq.engines.ipi_cli`) and ``check`` (the trust checks,
:mod:`mlipuq.trust.cli`). ``python -m mlipuq`` is the same command.

One convention for every subcommand, applied here in :func:`main`:

* a user error (:data:`USER_ERRORS`: any :class:`~mlipuq.errors.MLIPUQError`,
  ``ValueError``, or a missing, existing or unreadable file) prints one line
  ``mlipuq: error: <message>`` on stderr and exits with status 2, argparse's
  status for bad usage; ``mlipuq --debug ...`` (or ``--debug`` after the
  subcommand) re-raises it with its traceback instead;
* a subcommand that writes refuses an existing output unless ``--overwrite``;
* every option's help shows its default.

Several processes (``torchrun --nproc-per-node N -m mlipuq ...``): when the
environment says ``WORLD_SIZE`` > 1, :func:`main` joins the process group
(:func:`mlipuq.distributed.init` with the subcommand's ``--device``) before
running the subcommand and leaves it afterwards. Every rank runs the same
subcommand; only rank 0 prints to stdout and writes files. A user error
is printed by rank 0 and by any other rank where it arose (tagged with the
rank); ranks that only learnt of another rank's failure
(:class:`~mlipuq.errors.RankFailedError`) stay quiet. Errors in the shared
(collective) steps and in rank 0's writing reach every rank, so all exit with 2.

Subcommand functions (``args.func``) therefore just raise; they do not print
errors or choose exit statuses themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Optional, Sequence

from mlipuq.errors import MLIPUQError, RankFailedError
from mlipuq.fileio import refuse_existing
from mlipuq.devices import add_device_option


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _format_errors(errors: dict[str, float]) -> str:
    rows = [
        ("energy MAE", f"{1000 * errors['energy_mae']:.2f} meV/atom"),
        ("energy RMSE", f"{1000 * errors['energy_rmse']:.2f} meV/atom"),
    ]
    if "forces_mae" in errors:
        rows += [
            ("forces MAE", f"{1000 * errors['forces_mae']:.1f} meV/Å"),
            ("forces RMSE", f"{1000 * errors['forces_rmse']:.1f} meV/Å"),
        ]
    if "stress_mae" in errors:  # eV/Å³ to GPa
        from ase import units

        rows += [("stress MAE", f"{errors['stress_mae'] / units.GPa:.3f} GPa"),
                 ("stress RMSE", f"{errors['stress_rmse'] / units.GPa:.3f} GPa"),
                 ("pressure error", f"{errors['pressure_error'] / units.GPa:+.3f} GPa "
                  "(model − label, mean; to first order a cell whose volume differs "
                  "by ΔV from a training cell's has its energy error moved by −error × ΔV)")]
    return _table(rows)


def run_demo(args: argparse.Namespace) -> int:
    """``mlipuq demo``: :func:`mlipuq.demo.run`."""
    from mlipuq import demo

    return demo.run(args)


def run_train(args: argparse.Namespace) -> int:
    from mlipuq import data as mdata
    from mlipuq import distributed as mdist

    refuse_existing(args.out, args.overwrite, "--out")
    split_file = args.out + ".split.json"
    refuse_existing(split_file, args.overwrite, "the split file")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got "
                         f"{args.val_fraction}")
    from mlipuq.atoms_dataset import split_indices
    from mlipuq.devices import resolve_device
    from mlipuq.models import MiniMLIP
    from mlipuq.training import errors, train

    device = resolve_device(args.device)

    dataset = mdata.load(args.data, energy_key=args.energy_key, forces_key=args.forces_key)
    test_set = None if args.test is None else mdata.load(
        args.test, energy_key=args.energy_key, forces_key=args.forces_key)
    parts = split_indices(len(dataset), [1 - args.val_fraction, args.val_fraction], args.seed)
    if min(len(p) for p in parts) == 0:
        raise ValueError(f"--val-fraction {args.val_fraction} of the {len(dataset)} structures "
                         f"of {args.data} leaves {len(parts[0])} for training and "
                         f"{len(parts[1])} for validation: both need at least one")
    train_set, val_set = (dataset.subset(p) for p in parts)
    model = MiniMLIP(
        dataset.species,
        cutoff=args.cutoff,
        width=args.features,
        n_interactions=args.interactions,
        seed=args.seed,
    ).to(device=device)
    if args.atomic_energies:
        model.set_atomic_energies(mdata.atomic_energies_from(args.atomic_energies))
    history = train(
        model,
        train_set,
        val_set,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        forces_weight=args.forces_weight,
        seed=args.seed,
        patience=args.patience,
        max_time=args.max_time,
        progress=mdist.is_main(),
        refit_references=args.refit_references,
    )
    print(f"{len(history)} epochs in {history.wall_time:.0f} s; validation errors:")
    print(_format_errors(errors(model, val_set)))
    if test_set is not None:
        print(f"test errors ({args.test}, {len(test_set)} structures):")
        print(_format_errors(errors(model, test_set)))
    record = {"data": args.data, "seed": args.seed, "val_fraction": args.val_fraction,
              "train": parts[0].tolist(), "val": parts[1].tolist(), "test": args.test}
    mdist.run_local(lambda: _save_model_and_split(model, args, split_file, record)
                    if mdist.is_main() else None)
    print(f"model saved to {args.out}; train/validation indices in {split_file}")
    return 0


def _save_model_and_split(model, args, split_file: str, record: dict) -> None:
    import json

    from mlipuq.fileio import atomic_write

    model.save(args.out, overwrite=args.overwrite)
    text = json.dumps(record, indent=1).encode("utf-8")
    atomic_write(split_file, lambda fh: fh.write(text))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except for required options, for flags
    (``--x`` storing True, ``--no-x`` storing False: "default: True" would read as
    "on") and for options whose default is "not given" (``None``/``False``)."""

    def _get_help_string(self, action):
        if (action.required or action.default is None or action.default is False
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return action.help
        return super()._get_help_string(action)


#: Exceptions that are the user's doing (bad input, a missing, existing or
#: unreadable file): :func:`main` prints them as one line and exits with 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    MLIPUQError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def _version() -> str:
    from mlipuq import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlipuq",
        description="Uncertainty quantification for machine-learned interatomic potentials.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"mlipuq {_version()}")
    parser.add_argument(
        "--debug", action="store_true",
        help="show the full traceback of an error instead of one line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="pretrained built-in MLIP on built-in data: every UQ wrapper fitted, "
        "calibrated and compared, reports in a folder",
        description="Start from the packaged pretrained MiniMLIPs (EMT Cu), fit LLPR, a "
        "shallow ensemble, an evidential head and a deep ensemble with fixed epoch counts, "
        "calibrate them on the validation split, print the test-set comparison and write "
        "the calibration reports to --out. Without --train nothing depends on time: the "
        "table is the same on every run. --train trains from scratch instead (minutes).",
    )
    demo.add_argument("--out", default="mlipuq-demo",
                      help="folder for the reports, plots and predictions (refused if it "
                           "exists, unless --overwrite)")
    demo.add_argument("--overwrite", action="store_true",
                      help="write into an existing --out folder and replace a --save file")
    demo.add_argument("--train", action="store_true",
                      help="train the base model and the deep-ensemble members from scratch "
                           "within --max-time instead of loading the pretrained ones")
    demo.add_argument("--structures", type=int, default=None,
                      help="EMT structures to generate (implies --train; default 200)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="most training epochs (implies --train; default 200)")
    demo.add_argument("--max-time", type=float, default=None,
                      help="training time budget of the base model in s, each further "
                           "member gets half (implies --train; default 120)")
    demo.add_argument("--seed", type=int, default=None,
                      help="seed of the data, split and training (implies --train; default 0)")
    demo.add_argument("--members", type=int, default=3,
                      help="deep-ensemble members (1: none): the pretrained ones, at most 3, "
                           "or trained with --train")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (1: the same numbers on any machine, and no "
                           "slowdown on a busy one)")
    demo.add_argument("--no-uq", action="store_true",
                      help="stop after the base model's test errors (writes no --out)")
    demo.add_argument("--no-plots", action="store_true", help="write the reports without plots")
    demo.add_argument("--save", help="save the base model to this path")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_option(demo)
    demo.set_defaults(func=run_demo)

    tr = sub.add_parser("train", help="train the built-in MLIP on an extxyz file")
    tr.add_argument("data", help="training structures with reference energies and forces")
    tr.add_argument("--out", required=True, help="where to save the model")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.add_argument("--energy-key", default="energy", help="extxyz key of reference energies (eV)")
    tr.add_argument("--forces-key", default="forces",
                    help="extxyz key of reference forces (eV/Å)")
    tr.add_argument("--atomic-energies", help="extxyz of isolated atoms (species offsets)")
    tr.add_argument("--val-fraction", type=float, default=0.1,
                    help="fraction of structures held out for validation (the indices of "
                         "both parts go to OUT.split.json)")
    tr.add_argument("--test", default=None, metavar="TEST.extxyz",
                    help="held-out structures: their errors are reported after training")
    tr.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius (Å)")
    tr.add_argument("--features", type=int, default=64, help="features per atom")
    tr.add_argument("--interactions", type=int, default=3, help="message-passing layers")
    tr.add_argument("--epochs", type=int, default=500, help="most training epochs")
    tr.add_argument("--batch-size", type=int, default=16, help="structures per batch")
    tr.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    tr.add_argument("--forces-weight", type=float, default=100.0,
                    help="weight of the force loss relative to the energy loss")
    tr.add_argument("--patience", type=int, default=50,
                    help="stop after this many epochs without validation improvement")
    tr.add_argument("--max-time", type=float, default=None, help="time budget (s)")
    tr.add_argument("--refit-references", action=argparse.BooleanOptionalAction, default=None,
                    help="when training ends, refit the species reference energies to the "
                         "trained model (removes the constant energy offset training leaves; "
                         "default: when training fitted them; unrefitted, a warning says when "
                         "that offset is large)")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    add_device_option(tr)
    tr.set_defaults(func=run_train)

    from mlipuq import fit_cli, md_cli
    from mlipuq.active import cli as active_cli
    from mlipuq.calibration import cli as calibration_cli
    from mlipuq.engines import ipi_cli
    from mlipuq.trust import cli as trust_cli

    fit_cli.add_parsers(sub)
    calibration_cli.add_parser(sub)
    active_cli.add_parser(sub)
    md_cli.add_parser(sub)
    ipi_cli.add_parser(sub)
    trust_cli.add_parser(sub)
    for subparser in sub.choices.values():  # the same conventions for every subcommand
        subparser.formatter_class = HelpFormatter
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS,
            help="show the full traceback of an error instead of one line",
        )
        if not any("--threads" in a.option_strings for a in subparser._actions):
            subparser.add_argument(
                "--threads", type=fit_cli._positive_int, default=None,
                help="CPU threads of torch (default: torch's own choice)",
            )
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _world_size() -> int:
    """``WORLD_SIZE`` of the environment (torchrun sets it); 1 when absent."""
    value = os.environ.get("WORLD_SIZE", "").strip()
    try:
        return int(value) if value else 1
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE={value!r} is not an integer") from None


def _start_distributed(args: argparse.Namespace) -> bool:
    """Join the process group when launched with WORLD_SIZE > 1; True if joined."""
    if _world_size() <= 1:
        return False
    from mlipuq import distributed as mdist

    return mdist.init(device=getattr(args, "device", "cpu"))


def _rank() -> int:
    from mlipuq import distributed as mdist

    return mdist.rank()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mlipuq`` command; returns the exit status.

    0 on success; 2 on a user error (:data:`USER_ERRORS`), printed as one line
    ``mlipuq: error: <message>`` on stderr (with ``--debug`` the error is
    re-raised with its traceback); 130 on Ctrl-C. Usage errors are argparse's
    (status 2, its usage message). Under torchrun (``WORLD_SIZE`` > 1) it
    joins the process group first; only rank 0 prints to stdout.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    joined = False
    if getattr(args, "threads", None) and args.command not in ("demo", "evaluate"):
        import torch  # demo and evaluate apply their own --threads

        torch.set_num_threads(args.threads)
    try:
        joined = _start_distributed(args)
        rank = _rank() if joined else 0
        with contextlib.ExitStack() as stack:
            if rank != 0:  # only rank 0 prints
                stack.enter_context(contextlib.redirect_stdout(
                    stack.enter_context(open(os.devnull, "w", encoding="utf-8"))))
            return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        rank = _rank() if joined else 0
        if rank == 0:
            print(f"mlipuq: error: {_one_line(exc)}", file=sys.stderr)
        elif not isinstance(exc, RankFailedError):
            print(f"mlipuq: error: rank {rank}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("mlipuq: interrupted", file=sys.stderr)
        return 130
    finally:
        if joined:
            from mlipuq import distributed as mdist

            mdist.finalize()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
