"""The ``mlipuq evaluate`` subcommand.

``mlipuq evaluate PRED.extxyz [--reference REF.extxyz] --out DIR`` reads a
prediction file written by :meth:`mlipuq.data.AtomsDataset.write` (predicted
energies, forces and their std as ``mlipuq_*`` columns; references as the
standard ``energy``/``forces`` columns, or from ``--reference``) and writes
into DIR:

* ``report.json`` — every metric, machine-readable (format-versioned);
* ``report.md`` — the same as Markdown tables with units;
* ``summary.png`` — all plots for energies and forces;
* ``<plot>_<target>.png`` — each plot alone, for target ``energy`` and
  ``forces`` and plot ``calibration_curve``, ``rmse_vs_rmv``, ``parity``,
  ``error_vs_std``, ``z_histogram``.

DIR may exist, but if it already holds any of these files the command
refuses (before reading anything) unless ``--overwrite`` is given. Errors are
raised and reported by :func:`mlipuq.cli.main` (one line, exit status 2).

Under ``torchrun`` every rank checks the arguments and the outputs, and rank 0
alone reads the prediction, scores it and writes the files (an error there is
reported on every rank). ``--device`` only chooses the process group's
backend there (``nccl`` for CUDA): scoring runs in NumPy.

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
"""

from __future__ import annotations

import argparse
import os

PLOTS = ("calibration_curve", "rmse_vs_rmv", "parity", "error_vs_std", "z_histogram")
PLOT_TARGETS = ("energy", "forces")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="calibration metrics, report and plots for a prediction extxyz",
        description=(
            "Score predicted energies/forces and their uncertainties against reference "
            "data; write report.json, report.md and PNG plots to --out."
        ),
    )
    parser.add_argument(
        "prediction", metavar="PRED.extxyz",
        help="extxyz with mlipuq_energy(_std) and mlipuq_forces(_std) columns",
    )
    parser.add_argument(
        "--reference", "-r", metavar="REF.extxyz", default=None,
        help="reference energies/forces (default: the energy/forces columns of PRED)",
    )
    parser.add_argument("--out", "-o", metavar="DIR", required=True, help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace report and plot files already in --out",
    )
    parser.add_argument(
        "--num-bins", type=int, default=100,
        help="expected coverages of the calibration curve",
    )
    parser.add_argument(
        "--ence-bins", type=int, default=10,
        help="equal-count σ bins for ENCE and RMSE vs RMV",
    )
    parser.add_argument(
        "--max-points", type=int, default=20000,
        help="most points drawn in scatter plots",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the reports only")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"),
        help="device of the process group under torchrun (scoring itself runs on the CPU)",
    )
    parser.set_defaults(func=run)
    return parser


def _write_plots(report, out: str, max_points: int) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlipuq.calibration import plots

    written = []
    fig = plots.summary_figure(report, max_points=max_points)
    path = os.path.join(out, "summary.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for target in PLOT_TARGETS:
        pred, std, true = report.data[target]
        quantity, unit = plots._PLOT_TITLES[target]
        for name in PLOTS:
            fig, ax = plt.subplots(figsize=(5.5, 5.0))
            kwargs = {"ax": ax, "quantity": quantity}
            if name in ("rmse_vs_rmv", "parity", "error_vs_std"):
                kwargs["unit"] = unit
            if name == "rmse_vs_rmv":
                kwargs["num_bins"] = int(report.settings.get("num_bins_ence", 10))
            if name == "parity":
                kwargs["center"] = target == "energy"
                kwargs["max_points"] = min(max_points, 2000)
            if name == "error_vs_std":
                kwargs["max_points"] = max_points
            getattr(plots, name)(pred, std, true, **kwargs)
            fig.subplots_adjust(left=0.16, right=0.96, bottom=0.11, top=0.93)
            path = os.path.join(out, f"{name}_{target}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def output_files(out: str, plots: bool = True) -> list:
    """Paths ``mlipuq evaluate --out`` writes (reports, then plots if ``plots``)."""
    names = ["report.json", "report.md"]
    if plots:
        names += ["summary.png"] + [f"{p}_{t}.png" for t in PLOT_TARGETS for p in PLOTS]
    return [os.path.join(out, name) for name in names]


def run(args: argparse.Namespace) -> int:
    """Run ``mlipuq evaluate``; returns 0. Bad input raises (``ValueError``,
    ``FileNotFoundError``, ``FileExistsError`` for existing outputs without
    ``--overwrite``); :func:`mlipuq.cli.main` reports it."""
    if args.max_points < 1:
        raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"--out {args.out} exists and is not a folder")
    existing = [p for p in output_files(args.out, not args.no_plots) if os.path.lexists(p)]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more output files" if len(existing) > 1 else ""
        raise FileExistsError(
            f"--out {args.out} already holds {os.path.basename(existing[0])}{more}; "
            "pass --overwrite to replace them"
        )
    from mlipuq import distributed as mdist

    result = mdist.run_local(lambda: _score_and_write(args) if mdist.is_main() else None)
    if result is None:  # another rank's job
        return 0
    report, written = result
    e, f = report.metrics["energy"], report.metrics["forces"]
    print(
        f"{report.n_structures} structures, {report.n_atoms} atoms\n"
        f"energy: RMSE {e['rmse']:.4g} eV, NLL {e['nll']:.4g}, "
        f"miscalibration area {e['miscalibration_area']:.3f}\n"
        f"forces: RMSE {f['rmse']:.4g} eV/Å, NLL {f['nll']:.4g}, "
        f"miscalibration area {f['miscalibration_area']:.3f}\n"
        f"wrote {len(written)} files to {args.out}"
    )
    return 0


def _score_and_write(args: argparse.Namespace):
    """Read, score and write the report and plots; returns ``(report, written paths)``."""
    from mlipuq.calibration.report import evaluate, load_prediction

    prediction, reference = load_prediction(args.prediction, args.reference)
    report = evaluate(
        prediction, reference, num_bins=args.num_bins, num_bins_ence=args.ence_bins
    )
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, text in (("report.json", report.to_json()), ("report.md", report.to_markdown())):
        path = os.path.join(args.out, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + ("\n" if not text.endswith("\n") else ""))
        written.append(path)
    if not args.no_plots:
        written += _write_plots(report, args.out, args.max_points)
    return report, written
