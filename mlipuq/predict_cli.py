"""The ``mlipuq predict`` subcommand.

``mlipuq predict --model W.pt --data D --out P.extxyz`` loads a saved wrapper
(:func:`mlipuq.uq.load`), predicts ``D`` chunk by chunk and writes the
structures with their predictions in the columns of
:meth:`mlipuq.data.AtomsDataset.write` (``mlipuq_energy``,
``mlipuq_energy_std``, ``mlipuq_forces``, ``mlipuq_forces_std``, committee
energies). The chunks go to a temporary file in the folder of ``P`` that is
renamed to ``P`` at the end (``os.replace``): an interrupted run never leaves a
partial file under the final name.

It refuses an existing ``--out`` (before any work) unless ``--overwrite``.
Under ``torchrun`` every rank runs the same command: ``predict`` shares the
structures between the ranks, and only rank 0 writes the file. :func:`add_parser`
registers it (called by :func:`mlipuq.fit_cli.add_parsers`); torch-heavy modules
load in :func:`run_predict`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import shutil

from mlipuq.devices import add_device_option, resolve_device
from mlipuq.fileio import refuse_existing

LAZY_SUFFIXES = (".extxyz", ".xyz", ".db")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_parser(subparsers) -> None:
    """Register ``predict`` on an ``argparse`` subparsers object."""
    pr = subparsers.add_parser(
        "predict", help="predict energies, forces and their uncertainties with a saved wrapper",
        description="Predict every structure of --data with a saved UQ wrapper and write them "
        "with mlipuq_energy(_std) and mlipuq_forces(_std) columns to an extxyz file.",
    )
    pr.add_argument("--model", "-m", required=True, metavar="W.pt",
                    help="UQ wrapper saved by `mlipuq fit` (or .save())")
    pr.add_argument("--data", "-d", required=True, metavar="D",
                    help="structures to predict (extxyz, or anything mlipuq.load reads)")
    pr.add_argument("--out", "-o", required=True, metavar="P.extxyz",
                    help="where to write the structures with their predictions")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    pr.add_argument("--batch-size", type=_positive_int, default=32,
                    help="structures per forward pass")
    pr.add_argument("--chunk-size", type=_positive_int, default=1000,
                    help="structures predicted and written at a time: bounds the memory")
    pr.add_argument("--no-calibration", action="store_true",
                    help="write the raw uncertainties, without the wrapper's recalibration")
    pr.add_argument("--progress", action="store_true", help="show a progress bar per chunk")
    add_device_option(pr)
    pr.set_defaults(func=run_predict)


# ------------------------------------------------------------------- predict
def open_data(path: str):
    """``mlipuq.load(path)``, lazily (``lazy=True``) for extxyz and ``.db`` files
    when this mlipuq's ``load`` can."""
    import mlipuq

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    lazy = "lazy" in inspect.signature(mlipuq.load).parameters
    if lazy and os.path.splitext(path)[1].lower() in LAZY_SUFFIXES:
        return mlipuq.load(path, lazy=True)
    return mlipuq.load(path)


def _chunk(data, start: int, stop: int):
    """Structures ``start:stop`` in memory (a lazy source is read once per chunk,
    for both the prediction and the output)."""
    from mlipuq.data import AtomsDataset

    return AtomsDataset(list(data[start:stop]))


def _new_temporary(folder: str, name: str) -> str:
    """A new empty file in ``folder`` (created exclusively), with the
    permissions ``open()`` would give; returns its path."""
    from mlipuq.fileio import new_temporary

    fd, path = new_temporary(folder, name)
    os.close(fd)
    return path


def _copy_with_calc(atoms):
    copy = atoms.copy()
    copy.calc = atoms.calc  # the reference energy and forces travel with it
    return copy


class _PredictionFile:
    """The output of ``predict``, built in a temporary file next to it (rank 0)."""

    def __init__(self, path: str, overwrite: bool):
        self.path, self.overwrite = os.fspath(path), overwrite
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.name = os.path.basename(self.path)
        os.makedirs(self.folder, exist_ok=True)
        self.tmp = _new_temporary(self.folder, self.name)

    def append(self, chunk, prediction, labels: dict) -> None:
        """Append ``chunk`` with its predictions (:meth:`AtomsDataset.write`'s columns)
        and, per structure, ``labels`` (which wrapper predicted, how calibrated)."""
        from mlipuq.data import AtomsDataset

        part = _new_temporary(self.folder, self.name + ".chunk")
        labelled = []
        for atoms in chunk:
            atoms = atoms.copy() if atoms.calc is None else _copy_with_calc(atoms)
            atoms.info.update(labels)
            labelled.append(atoms)
        try:
            AtomsDataset(labelled).write(part, prediction, overwrite=True)
            with open(part, "rb") as src, open(self.tmp, "ab") as dst:
                shutil.copyfileobj(src, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)

    def commit(self) -> None:
        """Move the finished file to its name (atomically; an existing file is
        replaced only with ``overwrite``)."""
        from mlipuq.fileio import _link_new

        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if self.overwrite:
            os.replace(self.tmp, self.path)
        else:
            _link_new(self.tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _wrapper_labels(wrapper, *, calibrated: bool) -> dict:
    """Per-structure keys naming the wrapper (class, fingerprint) and its calibration."""
    from mlipuq import schema

    recalibrator = getattr(wrapper, "recalibrator_", None)
    # e.g. "energy scalar, forces student_t" (the default), or one method for both
    method = getattr(recalibrator, "description", None) if calibrated else None
    return {schema.WRAPPER_CLASS: type(wrapper).__name__,
            schema.WRAPPER: "sha256:" + str(wrapper.fingerprint()),
            schema.CALIBRATION: method or "raw"}


def run_predict(args: argparse.Namespace) -> int:
    """Run ``mlipuq predict``; returns 0. Bad input raises; :func:`mlipuq.cli.main` reports it."""
    from mlipuq import distributed as mdist
    from mlipuq.uq import load as load_wrapper

    refuse_existing(args.out, args.overwrite, "--out")  # before any work
    if os.path.isdir(args.out):
        raise IsADirectoryError(f"--out {args.out} is a folder, not a file")
    device = resolve_device(args.device)
    wrapper = load_wrapper(args.model).to(device=device)
    data = open_data(args.data)
    n = len(data)
    if n == 0:
        raise ValueError(f"{args.data} holds no structures")
    out = mdist.run_local(lambda: _PredictionFile(args.out, args.overwrite)
                          if mdist.is_main() else None)
    labels = _wrapper_labels(wrapper, calibrated=not args.no_calibration)
    try:
        for start in range(0, n, args.chunk_size):
            chunk = _chunk(data, start, min(start + args.chunk_size, n))
            prediction = wrapper.predict(chunk, batch_size=args.batch_size,
                                         calibrated=not args.no_calibration,
                                         progress=args.progress and mdist.is_main())
            mdist.run_local(lambda: out.append(chunk, prediction, labels) if out else None)
        mdist.run_local(lambda: out.commit() if out else None)
    finally:
        if out is not None:
            out.discard()
    calibration = "raw" if args.no_calibration or not wrapper.calibrated_ else "calibrated"
    print(f"{n} structures predicted with {type(wrapper).__name__} ({calibration} "
          f"uncertainties); wrote {args.out}")
    return 0
