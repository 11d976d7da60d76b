"""The ``mlipuq`` command.

Subcommands: ``demo`` (the main job: built-in data, training, every UQ
wrapper compared), ``train`` (train the built-in MLIP on an extxyz file), and
those registered by other modules: ``fit`` and ``predict``
(:mod:`mlipuq.fit_cli`), ``evaluate`` (:mod:`mlipuq.calibration.cli`) and
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
    return _table(rows)


def _uq_table(rows: list[tuple[str, dict]]) -> str:
    header = (f"  {'wrapper':<26}{'E NLL':>8}{'F NLL':>8}{'F miscal.':>11}"
              f"{'F Spearman':>12}{'F cov. 95%':>12}")
    lines = [header, "  " + "-" * (len(header) - 2)]

    def fmt(value, width, spec):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"

    for name, report in rows:
        e, f = report["energy"], report["forces"]
        lines.append(
            f"  {name:<26}{fmt(e['nll'], 8, '.2f')}{fmt(f['nll'], 8, '.2f')}"
            f"{fmt(f['miscalibration_area'], 11, '.3f')}{fmt(f['spearman'], 12, '.3f')}"
            f"{fmt(f['coverage_95'], 12, '.3f')}"
        )
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    import time

    from mlipuq import datasets
    from mlipuq.calibration import evaluate
    from mlipuq.models import MiniMLIP
    from mlipuq.training import errors, train
    from mlipuq import distributed as mdist
    from mlipuq.devices import resolve_device
    from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

    refuse_existing(args.save, args.overwrite, "--save")
    device = resolve_device(args.device)
    progress = not args.no_progress and mdist.is_main()
    steps = 3 if args.no_uq else 4
    print(f"1/{steps} building built-in EMT Cu data ({args.structures} structures) ...", flush=True)
    data = datasets.emt(("Cu",), n_structures=args.structures, temperatures=(300, 600),
                        seed=args.seed)
    train_set, val_set, test_set = data.split([0.7, 0.1, 0.2], seed=args.seed)
    print(f"    {len(train_set)} train / {len(val_set)} val / {len(test_set)} test structures",
          flush=True)

    def make_model(seed):
        return MiniMLIP(["Cu"], cutoff=4.5, width=32, n_interactions=2, n_rbf=12,
                        seed=seed).to(device=device)

    def fit_model(model, seed, budget):
        return train(model, train_set, val_set, epochs=args.epochs, batch_size=8, lr=2e-3,
                     forces_weight=100.0, seed=seed, patience=30, max_time=budget,
                     progress=progress)

    print(f"2/{steps} training the built-in MLIP (MiniMLIP) ...", flush=True)
    model = make_model(args.seed)
    history = fit_model(model, args.seed, args.max_time)
    print(f"    {len(history)} epochs in {history.wall_time:.0f} s", flush=True)
    print(f"3/{steps} test-set errors of the built-in MLIP:", flush=True)
    print(_format_errors(errors(model, test_set)), flush=True)
    if args.save:
        mdist.run_local(lambda: model.save(args.save, overwrite=args.overwrite)
                        if mdist.is_main() else None)
        print(f"    model saved to {args.save}")
    if args.no_uq:
        return 0

    print(f"4/{steps} fitting, calibrating and comparing the UQ wrappers ...", flush=True)
    start = time.perf_counter()
    wrappers = {
        "LastLayerLaplace": LastLayerLaplace(model).fit(train_set, progress=progress),
        "ShallowEnsemble (8 heads)": ShallowEnsemble(model, n_heads=8).fit(
            train_set, val_set, epochs=15, lr=1e-3, seed=args.seed, progress=progress),
        # a frozen-backbone head learns residuals: fit it on data the MLIP did not see
        "EvidentialHead": EvidentialHead(model).fit(
            *val_set.split([0.5, 0.5], seed=args.seed), epochs=30, lr=1e-2, seed=args.seed,
            progress=progress),
    }
    members = [model]
    for k in range(1, args.members):
        member = make_model(args.seed + k)
        fit_model(member, args.seed + k, args.max_time / 2)
        members.append(member)
    if len(members) > 1:
        wrappers[f"DeepEnsemble ({len(members)})"] = DeepEnsemble(members)
    rows = []
    for name, wrapper in wrappers.items():
        wrapper.calibrate(val_set)
        rows.append((name, evaluate(wrapper.predict(test_set), test_set)))
    print(f"    done in {time.perf_counter() - start:.0f} s; test set after calibrate(val), "
          "NLL per structure (E) and per force component (F):", flush=True)
    print(_uq_table(rows), flush=True)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from mlipuq import data as mdata
    from mlipuq import distributed as mdist

    refuse_existing(args.out, args.overwrite, "--out")
    from mlipuq.devices import resolve_device
    from mlipuq.models import MiniMLIP
    from mlipuq.training import errors, train

    device = resolve_device(args.device)

    dataset = mdata.load(args.data, energy_key=args.energy_key, forces_key=args.forces_key)
    train_set, val_set = dataset.split([1 - args.val_fraction, args.val_fraction], seed=args.seed)
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
    )
    print(f"{len(history)} epochs in {history.wall_time:.0f} s; validation errors:")
    print(_format_errors(errors(model, val_set)))
    mdist.run_local(lambda: model.save(args.out, overwrite=args.overwrite)
                    if mdist.is_main() else None)
    print(f"model saved to {args.out}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except for required options and for flags
    and options whose default is "not given" (``None``/``False``)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlipuq",
        description="Uncertainty quantification for machine-learned interatomic potentials.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument(
        "--debug", action="store_true",
        help="show the full traceback of an error instead of one line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="built-in data, train the built-in MLIP, compare all UQ wrappers"
    )
    demo.add_argument("--structures", type=int, default=200, help="EMT structures to generate")
    demo.add_argument("--epochs", type=int, default=200, help="most training epochs")
    demo.add_argument("--max-time", type=float, default=120.0,
                      help="training time budget of the base model (s)")
    demo.add_argument("--members", type=int, default=3,
                      help="deep-ensemble members (each trained for half of --max-time)")
    demo.add_argument("--no-uq", action="store_true", help="stop after training the base model")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--save", help="save the trained model to this path")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
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
                    help="fraction of structures held out for validation")
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
