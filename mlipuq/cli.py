"""The ``mlipuq`` command.

Subcommands: ``demo`` (the main job: built-in data, training, test errors),
``train`` (train the built-in MLIP on an extxyz file), and those registered by
other modules (``evaluate`` from :mod:`mlipuq.calibration`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


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


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from mlipuq import datasets
    from mlipuq.models import MiniMLIP
    from mlipuq.training import errors, train

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print(f"1/3 building built-in EMT Cu data ({args.structures} structures) ...", flush=True)
    data = datasets.emt(
        ("Cu",),
        n_structures=args.structures,
        temperatures=(300, 600),
        seed=args.seed,
    )
    train_set, val_set, test_set = data.split([0.8, 0.1, 0.1], seed=args.seed)
    print(
        f"    {len(train_set)} train / {len(val_set)} val / {len(test_set)} test structures",
        flush=True,
    )
    print("2/3 training the built-in MLIP (MiniMLIP) ...", flush=True)
    model = MiniMLIP(["Cu"], cutoff=4.5, n_features=32, n_interactions=2, seed=args.seed)
    history = train(
        model,
        train_set,
        val_set,
        epochs=args.epochs,
        batch_size=8,
        lr=2e-3,
        forces_weight=100.0,
        seed=args.seed,
        patience=30,
        max_time=args.max_time,
        progress=not args.no_progress,
    )
    print(f"    {len(history)} epochs in {history.wall_time:.0f} s", flush=True)
    print("3/3 test-set errors of the built-in MLIP (evaluated in float64):", flush=True)
    model.double()
    print(_format_errors(errors(model, test_set)), flush=True)
    if args.save:
        model.save(args.save, overwrite=args.overwrite)
        print(f"model saved to {args.save}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import os

    from mlipuq import data as mdata

    if os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    from mlipuq.models import MiniMLIP
    from mlipuq.training import errors, train

    dataset = mdata.load(args.data, energy_key=args.energy_key, forces_key=args.forces_key)
    train_set, val_set = dataset.split([1 - args.val_fraction, args.val_fraction], seed=args.seed)
    model = MiniMLIP(
        dataset.species,
        cutoff=args.cutoff,
        n_features=args.features,
        n_interactions=args.interactions,
        seed=args.seed,
    )
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
    )
    print(f"{len(history)} epochs in {history.wall_time:.0f} s; validation errors:")
    print(_format_errors(errors(model, val_set)))
    model.save(args.out, overwrite=args.overwrite)
    print(f"model saved to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlipuq",
        description="Uncertainty quantification for machine-learned interatomic potentials.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="build built-in data, train the built-in MLIP, report")
    demo.add_argument("--structures", type=int, default=200, help="EMT structures to generate")
    demo.add_argument("--epochs", type=int, default=200)
    demo.add_argument("--max-time", type=float, default=180.0, help="training time budget (s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--save", help="save the trained model to this path")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=run_demo)

    tr = sub.add_parser("train", help="train the built-in MLIP on an extxyz file")
    tr.add_argument("data", help="training structures with reference energies and forces")
    tr.add_argument("--out", required=True, help="where to save the model")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.add_argument("--energy-key", default="energy")
    tr.add_argument("--forces-key", default="forces")
    tr.add_argument("--atomic-energies", help="extxyz of isolated atoms (species offsets)")
    tr.add_argument("--val-fraction", type=float, default=0.1)
    tr.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius (Å)")
    tr.add_argument("--features", type=int, default=64)
    tr.add_argument("--interactions", type=int, default=3)
    tr.add_argument("--epochs", type=int, default=500)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--forces-weight", type=float, default=100.0)
    tr.add_argument("--patience", type=int, default=50)
    tr.add_argument("--max-time", type=float, default=None, help="time budget (s)")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=run_train)

    try:
        from mlipuq.calibration import cli as calibration_cli
    except ImportError:  # the calibration package is optional at this stage
        calibration_cli = None
    if calibration_cli is not None and hasattr(calibration_cli, "add_parser"):
        calibration_cli.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"mlipuq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
