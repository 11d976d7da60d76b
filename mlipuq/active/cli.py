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

A pool that is an ASE database (``POOL.db`` or a ``postgresql://`` URL,
narrowed by ``--query``) is streamed (:mod:`mlipuq.streaming`); after
selecting, rank 0 marks the picked rows with ``--mark KEY`` = ``--round N``
and ``selection_score``, and later calls skip rows that carry ``KEY``, so
running it again picks new structures. ``--out`` is optional then.
``--lazy`` streams a large extxyz pool instead of reading it whole.

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
Imports only what ``--help`` needs; torch-heavy modules load in :func:`run`.
"""

from __future__ import annotations

import argparse

from mlipuq.fileio import refuse_existing
from mlipuq.devices import add_device_option


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
    parser.add_argument("--pool", required=True, metavar="POOL.extxyz",
                        help="candidate structures: a structure file, an ASE database "
                             "(.db) or a postgresql://user:password@host:port/dbname URL")
    parser.add_argument("-k", type=int, required=True, help="number of structures to select")
    parser.add_argument("--strategy", "-s", choices=STRATEGIES, default="batch_llpr",
                        help="selection strategy")
    parser.add_argument("--out", "-o", default=None, metavar="OUT.extxyz",
                        help="where to write the selected structures (required unless the "
                             "pool is a database, whose picked rows are marked)")
    parser.add_argument("--query", default=None,
                        help="database pool: ase.db selection of the candidate rows, "
                             "e.g. 'natoms<50,config=md'")
    parser.add_argument("--mark", default="selected", metavar="KEY",
                        help="database pool: key-value pair written to the picked rows; rows "
                             "already carrying it are skipped (resumable)")
    parser.add_argument("--round", type=int, default=1, metavar="N",
                        help="database pool: the value stored under --mark")
    parser.add_argument("--lazy", action="store_true",
                        help="extxyz pool: read frames on demand instead of the whole file")
    add_device_option(parser)
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
    from mlipuq import distributed
    from mlipuq.active.select import select
    from mlipuq.devices import resolve_device
    from mlipuq.streaming import is_database
    from mlipuq.uq import load as load_wrapper

    database = is_database(args.pool)
    if args.out is None and not database:
        raise ValueError("--out is required (where to write the selected structures) "
                         "unless the pool is a database")
    if args.query is not None and not database:
        raise ValueError("--query applies to a database pool (.db or postgresql:// URL)")
    refuse_existing(args.out, args.overwrite, "--out")  # before any work
    if args.model is None and args.strategy != "random":
        raise ValueError(f"strategy {args.strategy!r} needs --model (a saved UQ wrapper)")
    if database:
        _check_mark(args.mark, args.round)
    device = resolve_device(args.device)
    model = None if args.model is None else load_wrapper(args.model).to(device=device)
    if database:
        pool = mlipuq.load(args.pool, query=args.query, exclude_marked=args.mark)
        if len(pool) == 0:
            raise ValueError(f"{pool.url}: no rows left to select from (every row matching "
                             f"the query carries {args.mark!r}, or none matches)")
    else:
        pool = mlipuq.load(args.pool, lazy=args.lazy)
    selection = select(
        model, pool, args.k, strategy=args.strategy, seed=args.seed, lo=args.lo,
        hi=args.hi, label_noise=args.label_noise, batch_size=args.batch_size,
        progress=args.progress,
        calibration=None if args.calibration is None else mlipuq.load(args.calibration),
        labelled=None if args.labelled is None else mlipuq.load(args.labelled),
    )
    rows = pool.ids[selection.indices] if database else None
    error = None
    if distributed.is_main():  # rank 0 writes; a failure there reaches every rank
        try:
            _write_outputs(args, pool, selection, database, rows)
        except Exception as exc:
            error = exc
    distributed.raise_if_any_failed(error)
    return 0


def _write_outputs(args, pool, selection, database: bool, rows) -> None:
    """Mark the picked rows, write ``--out`` and print the table (rank 0)."""
    import mlipuq
    from mlipuq import schema
    from mlipuq.streaming import ROW_ID, SELECTION_SCORE

    if database:
        pool.mark(selection.indices, **{args.mark: int(args.round),
                                        SELECTION_SCORE: selection.scores.astype(float)})
    if args.out is not None:
        chosen = []
        picked = pool[selection.indices]  # a lazy view for a streamed pool: read in blocks
        for j, (original, index, score) in enumerate(
                zip(picked, selection.indices, selection.scores)):
            atoms = original.copy()
            if original.calc is not None:
                atoms.calc = original.calc
            atoms.info[schema.POOL_INDEX] = int(index)
            atoms.info[schema.SCORE] = float(score)
            if database:
                atoms.info[ROW_ID] = int(rows[j])
            chosen.append(atoms)
        mlipuq.AtomsDataset(chosen).write(args.out, overwrite=args.overwrite)
    unit = f" ({selection.unit})" if selection.unit else ""
    print(f"# {len(selection)} of {len(pool)} structures, strategy {selection.strategy}")
    print(f"# pool_index{' row_id' if database else ''} score{unit}")
    for j, (index, score) in enumerate(zip(selection.indices, selection.scores)):
        row = f" {int(rows[j])}" if database else ""
        print(f"{int(index)}{row} {float(score):.6g}")
    if database:
        print(f"# marked {len(selection)} rows of {pool.url} with {args.mark}={args.round}")
    if args.out is not None:
        print(f"# wrote {args.out}")


def _check_mark(key: str, round_: int) -> None:
    """``ValueError`` unless ``--mark KEY`` and ``--round N`` can be stored by ase.db."""
    from ase.db.core import check

    try:
        check({key: int(round_)})
    except ValueError:
        raise ValueError(f"--mark {key!r} cannot be a database key (a name such as "
                         "'selected' that is not a reserved ase.db key)") from None
