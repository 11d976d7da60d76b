"""The ``mlipuq evaluate`` subcommand.

``mlipuq evaluate PRED.extxyz [PRED2.extxyz ...] [--labels L1 L2 ...]
[--reference REF.extxyz] --out DIR`` reads prediction files written by
``mlipuq predict`` or :meth:`mlipuq.data.AtomsDataset.write` (predicted
energies, forces and their std as ``mlipuq_*`` columns; references as the
standard ``energy``/``forces`` columns, or from ``--reference`` for every
prediction) and writes into DIR. With one prediction:

* ``report.html`` — a self-contained page (figures embedded, no external
  files): inputs, metric tables, figures, settings
  (:mod:`mlipuq.calibration.html`);
* ``report.json`` — every metric, machine-readable (format-versioned);
* ``report.md`` — the same as Markdown tables with units;
* ``summary.<fmt>`` — all plots for energies and forces;
* ``<plot>_<target>.<fmt>`` — each plot alone (single-column width), for
  target ``energy`` and ``forces`` and plot ``calibration_curve``,
  ``rmse_vs_rmv``, ``parity``, ``error_vs_std``, ``z_histogram``;

``<fmt>`` is each of ``--format`` (default ``png``; e.g. ``png,pdf,svg``). With
several predictions, DIR holds ``report.html`` comparing them, ``report.json``
(format ``mlipuq-calibration-comparison``: every report by label),
``report.md`` (side-by-side tables) and ``compare_<plot>_<target>.<fmt>`` for
``calibration_curve`` and ``rmse_vs_rmv`` (all predictions overlaid); each
prediction's own report.json, report.md and plots go to the subfolder
``DIR/<label>/`` (the label with characters other than letters, digits and
``._+-`` replaced by ``_``). Labels are ``--labels`` or the file stems; they
name the wrapper in titles and tables, as prediction files record no wrapper
name.

DIR may exist, but if it already holds any of the files the command would
write it refuses (before reading anything) unless ``--overwrite`` is given.
Errors are raised and reported by :func:`mlipuq.cli.main` (one line, exit
status 2).

Under ``torchrun`` every rank checks the arguments and the outputs, and rank 0
alone reads the predictions, scores them and writes the files (an error there
is reported on every rank). ``--device`` only chooses the process group's
backend there (``nccl`` for CUDA): scoring runs in NumPy.

``mlipuq/cli.py`` calls :func:`add_parser` to register the subcommand.
"""

from __future__ import annotations

import argparse
import os
import re

from mlipuq.fileio import refuse_existing

PLOTS = ("calibration_curve", "rmse_vs_rmv", "parity", "error_vs_std", "z_histogram")
PLOT_TARGETS = ("energy", "forces")
#: Overlaid plots of a comparison (``compare_<plot>_<target>``).
COMPARE_PLOTS = ("calibration_curve", "rmse_vs_rmv")
FORMATS = ("png", "pdf", "svg")
REPORT_FILES = ("report.json", "report.md", "report.html")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="calibration metrics, report and plots for one or several prediction files",
        description=(
            "Score predicted energies/forces and their uncertainties against reference "
            "data; write report.html, report.json, report.md and plots to --out. Several "
            "prediction files (of the same structures) are compared side by side."
        ),
    )
    parser.add_argument(
        "prediction", metavar="PRED.extxyz", nargs="+",
        help="extxyz with mlipuq_energy(_std) and mlipuq_forces(_std) columns; several "
             "files (predictions of the same structures) are compared",
    )
    parser.add_argument(
        "--labels", nargs="+", metavar="LABEL", default=None,
        help="one name per prediction file (e.g. the wrapper: LLPR Shallow); "
             "default: the file stems",
    )
    parser.add_argument(
        "--reference", "-r", metavar="REF.extxyz", default=None,
        help="reference energies/forces for every prediction "
             "(default: the energy/forces columns of each prediction file)",
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
        "--max-points", type=int, default=2000,
        help="most points drawn one by one in the parity and |error| vs σ plots; "
             "larger sets are drawn as a density of all points",
    )
    parser.add_argument(
        "--format", default="png", metavar="FMT[,FMT...]",
        help="figure file formats, a comma list of png, pdf, svg",
    )
    parser.add_argument("--dpi", type=float, default=150.0,
                        help="resolution of PNG figures")
    parser.add_argument("--no-plots", action="store_true",
                        help="write the reports only (report.html without figures)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (torch.set_num_threads)")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"),
        help="device of the process group under torchrun (scoring itself runs on the CPU)",
    )
    parser.set_defaults(func=run)
    return parser


def parse_formats(text: str) -> tuple:
    """``"png,pdf"`` -> ``("png", "pdf")``; raises ``ValueError`` for others."""
    formats = []
    for item in str(text).split(","):
        fmt = item.strip().lower().lstrip(".")
        if not fmt:
            continue
        if fmt not in FORMATS:
            raise ValueError(f"--format {item.strip()!r} is not one of {', '.join(FORMATS)}")
        if fmt not in formats:
            formats.append(fmt)
    if not formats:
        raise ValueError("--format names no format")
    return tuple(formats)


def folder_name(label: str) -> str:
    """Subfolder of ``label`` in a comparison: characters other than letters,
    digits and ``._+-`` become ``_``."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("._")
    return name or "prediction"


def resolve_labels(predictions, labels=None) -> list:
    """``--labels`` checked against the prediction files, or the file stems."""
    if labels is None:
        labels = [os.path.basename(os.fspath(p)).split(".")[0] or os.fspath(p)
                  for p in predictions]
        hint = "; pass --labels"
    else:
        hint = ""
        if len(labels) != len(predictions):
            raise ValueError(f"--labels gives {len(labels)} names for "
                             f"{len(predictions)} prediction files")
    if len({folder_name(label) for label in labels}) != len(labels):
        raise ValueError(f"labels {labels} are not distinct (as folder names){hint}")
    if len(labels) > 1:
        taken = set(REPORT_FILES) | {n.rsplit(".", 1)[0] for n in plot_names(True, ("x",), True)}
        for label in labels:
            if folder_name(label) in taken:
                raise ValueError(f"label {label!r} would name a folder like a report file")
    return list(labels)


def plot_names(plots: bool = True, formats=("png",), compare: bool = False) -> list:
    """File names of the figures of one report (or of a comparison's top folder)."""
    if not plots:
        return []
    if compare:
        stems = [f"compare_{p}_{t}" for t in PLOT_TARGETS for p in COMPARE_PLOTS]
    else:
        stems = ["summary"] + [f"{p}_{t}" for t in PLOT_TARGETS for p in PLOTS]
    return [f"{stem}.{fmt}" for stem in stems for fmt in formats]


def output_files(out: str, plots: bool = True, formats=("png",), labels=None) -> list:
    """Paths ``mlipuq evaluate --out`` writes: reports, then plots if ``plots``.
    ``labels`` of several predictions give the comparison layout."""
    names = list(REPORT_FILES)
    if labels is None or len(labels) < 2:
        return [os.path.join(out, n) for n in names + plot_names(plots, formats)]
    paths = [os.path.join(out, n) for n in names + plot_names(plots, formats, compare=True)]
    for label in labels:
        paths += [os.path.join(out, folder_name(label), n)
                  for n in ["report.json", "report.md"] + plot_names(plots, formats)]
    return paths


def run(args: argparse.Namespace) -> int:
    """Run ``mlipuq evaluate``; returns 0. Bad input raises (``ValueError``,
    ``FileNotFoundError``, ``FileExistsError`` for existing outputs without
    ``--overwrite``); :func:`mlipuq.cli.main` reports it."""
    predictions = [args.prediction] if isinstance(args.prediction, str) else args.prediction
    if args.max_points < 1:
        raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
    if not args.dpi > 0:
        raise ValueError(f"--dpi must be positive, got {args.dpi}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    formats = parse_formats(getattr(args, "format", "png"))
    labels = resolve_labels(predictions, getattr(args, "labels", None))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FileExistsError(f"--out {args.out} exists and is not a folder")
    for path in output_files(args.out, not args.no_plots, formats, labels):
        refuse_existing(path, args.overwrite, "--out")  # the first existing file
    for path in predictions + ([args.reference] if args.reference else []):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from mlipuq import distributed as mdist

    job = (predictions, labels, formats)
    result = mdist.run_local(lambda: _score_and_write(args, *job) if mdist.is_main() else None)
    if result is None:  # another rank's job
        return 0
    reports, written = result
    for label, report in reports.items():
        e, f = report.metrics["energy"], report.metrics["forces"]
        name = f"{label}: " if len(reports) > 1 else ""
        print(
            f"{name}{report.n_structures} structures, {report.n_atoms} atoms\n"
            f"{name}energy: RMSE {e['rmse']:.4g} eV, NLL {e['nll']:.4g}, "
            f"miscalibration area {e['miscalibration_area']:.3f}\n"
            f"{name}forces: RMSE {f['rmse']:.4g} eV/Å, NLL {f['nll']:.4g}, "
            f"miscalibration area {f['miscalibration_area']:.3f}"
        )
    print(f"wrote {len(written)} files to {args.out} "
          f"(open {os.path.join(args.out, 'report.html')})")
    return 0


# ------------------------------------------------------------------ writing
def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2):]


def _data_name(report) -> str:
    inputs = report.settings.get("inputs", {})
    name = os.path.basename(str(inputs.get("prediction_file", "")))
    if inputs.get("reference_file"):
        name += " vs " + os.path.basename(str(inputs["reference_file"]))
    return name


def _write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` atomically (:func:`mlipuq.fileio.atomic_write`): a reader never
    sees a partial file, and a link at ``path`` is replaced, not written through."""
    from mlipuq.fileio import atomic_write

    return atomic_write(path, lambda fh: fh.write(data))


def _write_text(path: str, text: str) -> str:
    return _write_bytes(path, (text + ("\n" if not text.endswith("\n") else "")).encode("utf-8"))


class _FigureWriter:
    """Saves figures in every format and keeps the PNG bytes for the HTML page."""

    def __init__(self, formats, dpi: float):
        self.formats, self.dpi = formats, float(dpi)
        self.written, self.html = [], []

    def save(self, fig, stem: str, caption: str, section: str) -> None:
        import io

        import matplotlib.pyplot as plt

        def render(fmt: str) -> bytes:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=self.dpi)
            return buffer.getvalue()

        png = render("png")
        for fmt in self.formats:
            self.written.append(_write_bytes(f"{stem}.{fmt}", png if fmt == "png" else render(fmt)))
        plt.close(fig)
        self.html.append({"png": png, "caption": caption, "section": section})


def _report_figures(report, label: str, folder: str, writer: _FigureWriter,
                    max_points: int, section: str) -> None:
    """summary.<fmt> and one file per plot and target, titled with wrapper and data."""
    from mlipuq.calibration import plots

    title = _shorten(f"{label} on {_data_name(report)}")
    html_before = len(writer.html)
    with plots.style():
        fig = plots.summary_figure(report, max_points=max_points, title=title)
        writer.save(fig, os.path.join(folder, "summary"), "summary", section)
        del writer.html[html_before:]  # the page shows the single plots instead
        for target in PLOT_TARGETS:
            pred, std, true = report.data[target]
            for name in PLOTS:
                fig, ax = plots.panel_figure()
                plots.draw(name, pred, std, true, ax=ax, target=target,
                           unit=report.units.get(target, ""), max_points=max_points,
                           num_bins_ence=int(report.settings.get("num_bins_ence", 10)),
                           dof=plots.report_dof(report, target))
                fig.suptitle(title)
                heading = {"energy": "Energy", "forces": "Forces"}[target]
                writer.save(fig, os.path.join(folder, f"{name}_{target}"),
                            f"{label}: {ax.get_title()}",
                            f"{section} — {heading}" if section else heading)


def _comparison_figures(reports, out: str, writer: _FigureWriter) -> None:
    from mlipuq.calibration import plots

    data = sorted({_data_name(r) for r in reports.values()})
    title = _shorten(" vs ".join(reports) + " on " + ", ".join(data))
    with plots.style():
        for target in PLOT_TARGETS:
            quantity, unit = plots._PLOT_TITLES[target]
            curves = {label: (*r.data[target], plots.report_dof(r, target))
                      for label, r in reports.items()}
            for name in COMPARE_PLOTS:
                fig, ax = plots.panel_figure()
                if name == "calibration_curve":
                    plots.compare_calibration(
                        curves, ax=ax, quantity=quantity,
                        num_bins=int(next(iter(reports.values())).settings.get("num_bins", 100)))
                else:
                    plots.compare_rmse_vs_rmv(
                        curves, ax=ax, quantity=quantity, unit=unit,
                        num_bins=int(next(iter(reports.values())).settings.get(
                            "num_bins_ence", 10)))
                fig.suptitle(title)
                writer.save(fig, os.path.join(out, f"compare_{name}_{target}"),
                            ax.get_title(), "Comparison")


def _score_and_write(args: argparse.Namespace, predictions, labels, formats):
    """Read, score and write the reports and plots; returns ``({label: report}, paths)``."""
    from mlipuq.calibration import html
    from mlipuq.calibration.report import (
        comparison_dict,
        comparison_markdown,
        evaluate,
        load_labelled,
    )

    reports = {}
    for label, path in zip(labels, predictions):
        prediction, reference, inputs = load_labelled(path, args.reference)
        report = evaluate(
            prediction, reference, num_bins=args.num_bins, num_bins_ence=args.ence_bins
        )
        report.settings["label"] = label
        report.settings["inputs"] = inputs
        reports[label] = report
    several = len(reports) > 1
    writer = _FigureWriter(formats, args.dpi)
    written = []
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
    os.makedirs(args.out, exist_ok=True)
    for label, report in reports.items():
        folder = os.path.join(args.out, folder_name(label)) if several else args.out
        os.makedirs(folder, exist_ok=True)
        written.append(_write_text(os.path.join(folder, "report.json"), report.to_json()))
        written.append(_write_text(os.path.join(folder, "report.md"), report.to_markdown()))
        if not args.no_plots:
            _report_figures(report, label, folder, writer, args.max_points,
                            section=label if several else "")
    if several:
        import json

        written.append(_write_text(os.path.join(args.out, "report.json"),
                                   json.dumps(comparison_dict(reports), indent=2,
                                              ensure_ascii=False)))
        written.append(_write_text(os.path.join(args.out, "report.md"),
                                   comparison_markdown(reports)))
        if not args.no_plots:
            figures_before = len(writer.html)
            _comparison_figures(reports, args.out, writer)
            # comparison figures first on the page
            writer.html = writer.html[figures_before:] + writer.html[:figures_before]
    shown = {
        "figures": (f"{', '.join(formats)} at {args.dpi:g} dpi; point panels draw at most "
                    f"{args.max_points} points one by one, a density of all points above"
                    if not args.no_plots else "none (--no-plots)"),
        "prediction files": ", ".join(predictions),
        "reference": args.reference or "each prediction file's own energy/forces columns",
    }
    page = html.render(reports, writer.html, settings=shown)
    written.append(_write_text(os.path.join(args.out, "report.html"), page))
    return reports, written + writer.written
