"""The ``mlipuq select`` subcommand.

``mlipuq select --model M --pool POOL.extxyz -k 50 --strategy batch_llpr --out selected.extxyz``
loads a saved UQ wrapper (:func:`mlipuq.uq.load`), picks ``k`` pool
structures with :func:`mlipuq.active.select`, writes them to ``--out``
(extxyz; ``info[schema.POOL_INDEX]`` and ``info[schema.SCORE]`` on each;
an existing file is replaced only with ``--overwrite``) and prints the pool
indices and scores in pick order.

``--model`` is needed by every strategy but ``random``; a ``--model`` that is
given must exist and load whatever the strategy. Errors are raised and
reported by :func:`mlipuq.cli.main` (one line, exit status 2).

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
Imports only what ``--help`` needs; torch-heavy modules load in :func:`run`.
"""

from __future__ import annotations

import argparse

from mlipuq.fileio import refuse_existing


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``select`` on an ``argparse`` subparsers object; returns its parser."""
    from mlipuq.active.strategies import STRATEGIES

    parser = subparsers.add_parser(
        "select",
        help="active learning: pick the pool structures to label next",
        description="Score a pool of candidate structures with a saved UQ wrapper and "
        "write the k structures to label next.",
    )
    parser.add_argument(
        "--model", "-m", default=None,
        help="UQ wrapper saved with .save() (needed by every strategy but random)",
    )
    parser.add_argument("--pool", required=True, metavar="POOL.extxyz", help="candidate structures")
    parser.add_argument("-k", type=int, required=True, help="number of structures to select")
    parser.add_argument("--strategy", "-s", choices=STRATEGIES, default="batch_llpr",
                        help="selection strategy")
    parser.add_argument("--out", "-o", required=True, metavar="OUT.extxyz",
                        help="where to write the selected structures")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of random / trust_window / fps")
    parser.add_argument("--lo", type=float, default=None, help="trust_window lower level (eV/Å)")
    parser.add_argument("--hi", type=float, default=None, help="trust_window upper level (eV/Å)")
    parser.add_argument(
        "--calibration", metavar="VAL.extxyz", default=None,
        help="in-distribution structures to derive missing trust levels from",
    )
    parser.add_argument(
        "--labelled", metavar="TRAIN.extxyz", default=None,
        help="already labelled structures (fps starts from their features)",
    )
    parser.add_argument("--label-noise", choices=("none", "fitted"), default="none",
                        help="batch_llpr: condition on noise-free labels (DFT) or on the "
                             "wrapper's fitted energy noise")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per forward pass")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``mlipuq select``; returns 0. Bad input raises (``FileExistsError``
    for an existing ``--out`` without ``--overwrite``, ``FileNotFoundError``,
    ``ValueError``); :func:`mlipuq.cli.main` reports it."""
    import mlipuq
    from mlipuq import schema
    from mlipuq.active.select import select
    from mlipuq.uq import load as load_wrapper

    refuse_existing(args.out, args.overwrite, "--out")  # before any work
    if args.model is None and args.strategy != "random":
        raise ValueError(f"strategy {args.strategy!r} needs --model (a saved UQ wrapper)")
    model = None if args.model is None else load_wrapper(args.model)
    pool = mlipuq.load(args.pool)
    selection = select(
        model, pool, args.k, strategy=args.strategy, seed=args.seed, lo=args.lo,
        hi=args.hi, label_noise=args.label_noise, batch_size=args.batch_size,
        progress=args.progress,
        calibration=None if args.calibration is None else mlipuq.load(args.calibration),
        labelled=None if args.labelled is None else mlipuq.load(args.labelled),
    )
    chosen = []
    for index, score in zip(selection.indices, selection.scores):
        atoms = pool[int(index)].copy()
        if pool[int(index)].calc is not None:
            atoms.calc = pool[int(index)].calc
        atoms.info[schema.POOL_INDEX] = int(index)
        atoms.info[schema.SCORE] = float(score)
        chosen.append(atoms)
    mlipuq.AtomsDataset(chosen).write(args.out, overwrite=args.overwrite)
    unit = f" ({selection.unit})" if selection.unit else ""
    print(f"# {len(selection)} of {len(pool)} structures, strategy {selection.strategy}")
    print(f"# pool_index score{unit}")
    for index, score in zip(selection.indices, selection.scores):
        print(f"{int(index)} {float(score):.6g}")
    print(f"# wrote {args.out}")
    return 0
