"""A self-contained HTML calibration report (``report.html`` of ``mlipuq evaluate``).

:func:`render` returns one HTML page for one or several labelled
:class:`~mlipuq.calibration.report.CalibrationReport` objects; :func:`write`
saves it. The page needs nothing else: figures are embedded as PNG ``data:``
URIs, the style sheet is inline, and there are no scripts, web fonts or
links to other files. It holds, in order:

* the inputs: one row per prediction with its label, the wrapper recorded in
  the file (if any), the prediction and reference file names, the number of
  structures and atoms and how many targets were excluded as exact;
* side-by-side tables for energies and forces, one row per prediction, of the
  :data:`~mlipuq.calibration.report.KEY_METRICS` (the best value of each
  column in bold when there are several predictions);
* the figures (comparison figures first, then each prediction's);
* every metric of every target, one column per prediction, with units, ideal
  values and descriptions;
* the settings of the evaluation.
"""

from __future__ import annotations

import base64
import html
import os
from typing import Any, Mapping, Optional, Sequence

from mlipuq.calibration.report import (
    KEY_METRICS,
    METRIC_INFO,
    TITLES,
    CalibrationReport,
    _fmt,
    metric_unit,
)

#: Column headings of the side-by-side tables (other metrics: their name).
SHORT_NAMES = {
    "n": "n", "mae": "MAE", "rmse": "RMSE", "sharpness": "sharpness", "nll": "NLL",
    "crps": "CRPS", "miscalibration_area": "miscal. area", "ence": "ENCE", "z_rms": "z RMS",
    "coverage_90": "cov. 90 %", "coverage_95": "cov. 95 %", "spearman": "Spearman",
    "auroc": "AUROC",
}

#: Targets of the side-by-side tables at the top (all targets are in the full tables).
MAIN_TARGETS = ("energy", "forces")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px auto; max-width: 1400px; padding: 0 16px; color: #1d1d1f;
       background: #ffffff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #d0d0d5;
     padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
p.sub { color: #555; margin-top: 0.2em; }
div.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d5; padding: 3px 8px; }
th { background: #f2f2f5; text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #eaf5ea; }
th .unit, td .unit { color: #666; font-weight: normal; font-size: 0.85em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
           gap: 14px; margin: 0.6em 0 1.2em; }
figure { margin: 0; border: 1px solid #e2e2e6; border-radius: 4px; padding: 6px;
         background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8em; color: #555; margin-top: 4px; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 2px 16px;
              font-size: 0.9em; }
dl.settings dt { font-weight: 600; }
dl.settings dd { margin: 0; }
code { font-size: 0.95em; }
footer { margin-top: 2em; color: #777; font-size: 0.8em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("figure data are not a PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _ideal_distance(name: str, value: float) -> Optional[float]:
    """How far ``value`` is from ideal (smaller is better); None if no ideal."""
    if name.startswith("coverage_"):
        return abs(value - float(name.split("_", 1)[1]) / 100.0)
    ideal = METRIC_INFO.get(name, ("", "", ""))[2]
    if ideal == "lower":
        return value
    if ideal == "higher":
        return -value
    if ideal.startswith("0"):
        return abs(value)
    if ideal.startswith("1"):
        return abs(value - 1.0)
    return None


def _best(name: str, values: Sequence[Optional[float]]) -> set:
    """Indices of the best values of metric ``name`` (empty if no ideal or < 2 values)."""
    scored = [(k, _ideal_distance(name, v)) for k, v in enumerate(values)
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    scored = [(k, d) for k, d in scored if d is not None]
    if len(scored) < 2:
        return set()
    top = min(d for _, d in scored)
    return {k for k, d in scored if d == top}


def wrapper_name(label: str, settings: Mapping[str, Any]) -> str:
    """The wrapper as the report names it: the label (``--labels``, or the file
    stem); prediction files record no wrapper name (MD frames record its
    fingerprint, ``mlipuq_wrapper``, shown next to it)."""
    return label


def _predictive(report: CalibrationReport) -> str:
    """"Gaussian", or the Student-t degrees of freedom the report scored with."""
    dof = report.settings.get("dof") or {}
    if not dof:
        return "Gaussian"
    return "Student-t: " + ", ".join(f"{_e(t)} ν = {v:.3g}" for t, v in dof.items()
                                     if t in ("energy", "forces"))


def _inputs_table(reports: Mapping[str, CalibrationReport]) -> str:
    rows = []
    for label, r in reports.items():
        inputs = r.settings.get("inputs", {})
        recorded = inputs.get("recorded", {})
        ident = recorded.get("mlipuq_wrapper")
        wrapper = _e(wrapper_name(label, r.settings))
        if ident:
            wrapper += f' <span class="unit">({_e(ident)})</span>'
        elif wrapper == _e(label):
            wrapper += ' <span class="unit">(not recorded in the file; the label)</span>'
        reference = inputs.get("reference_file")
        reference = _e(reference) if reference else "the prediction file's own columns"
        excluded = r.settings.get("excluded", {})
        excluded_text = ", ".join(f"{n} {t}" for t, n in excluded.items() if n) or "none"
        extra = ", ".join(f"{_e(k)} = {_e(v)}" for k, v in recorded.items()
                          if k != "mlipuq_wrapper") or "–"
        rows.append(
            f'<tr class="prediction"><td>{_e(label)}</td><td>{wrapper}</td>'
            f"<td><code>{_e(inputs.get('prediction_file', '?'))}</code></td>"
            f"<td>{reference}</td><td class=\"num\">{r.n_structures}</td>"
            f"<td class=\"num\">{r.n_atoms}</td><td>{_predictive(r)}</td>"
            f"<td>{excluded_text}</td><td>{extra}</td></tr>"
        )
    head = ("<tr><th>label</th><th>wrapper</th><th>prediction file</th><th>reference</th>"
            "<th>structures</th><th>atoms</th><th>predictive</th><th>excluded as exact</th>"
            "<th>recorded in file</th></tr>")
    return f'<table class="inputs">{head}{"".join(rows)}</table>'


def _key_table(reports: Mapping[str, CalibrationReport], target: str) -> str:
    first = next(iter(reports.values()))
    unit = first.units.get(target, "")
    names = [m for m in KEY_METRICS if any(m in r.metrics.get(target, {})
                                           for r in reports.values())]
    head = "<tr><th>prediction</th>" + "".join(
        f'<th title="{_e(_describe(m))}">{_e(SHORT_NAMES.get(m, m))}'
        + (f' <span class="unit">({_e(metric_unit(m, unit))})</span>'
           if metric_unit(m, unit) else "") + "</th>" for m in names) + "</tr>"
    columns = {m: [r.metrics.get(target, {}).get(m) for r in reports.values()] for m in names}
    best = {m: _best(m, columns[m]) if m != "n" else set() for m in names}
    rows = []
    for k, label in enumerate(reports):
        cells = "".join(
            f'<td class="num{" best" if k in best[m] else ""}">{_e(_fmt(columns[m][k]))}</td>'
            for m in names)
        rows.append(f'<tr class="prediction"><td>{_e(label)}</td>{cells}</tr>')
    return (f"<h3>{_e(TITLES.get(target, target))} ({_e(unit)})</h3>"
            f'<div class="wide"><table class="metrics" data-target="{_e(target)}">'
            f'{head}{"".join(rows)}</table></div>')


def _describe(name: str) -> str:
    if name.startswith("coverage_"):
        return f"coverage of the {name[9:]}% central interval (ideal {float(name[9:]) / 100:g})"
    desc, _, ideal = METRIC_INFO.get(name, ("", "", ""))
    return f"{desc} (ideal: {ideal})" if ideal else desc


def _full_table(reports: Mapping[str, CalibrationReport], target: str) -> str:
    labels = [label for label, r in reports.items() if target in r.metrics]
    if not labels:
        return ""
    unit = reports[labels[0]].units.get(target, "")
    names = []
    for label in labels:
        names += [m for m in reports[label].metrics[target] if m not in names]
    head = ("<tr><th>metric</th>" + "".join(f"<th>{_e(label)}</th>" for label in labels)
            + "<th>unit</th><th>ideal</th><th>description</th></tr>")
    rows = []
    for m in names:
        values = [reports[label].metrics[target].get(m) for label in labels]
        best = _best(m, values) if m != "n" else set()
        if m.startswith("coverage_"):
            desc, ideal = f"coverage of the {m[9:]}% central interval", f"{float(m[9:]) / 100:g}"
        else:
            desc, _, ideal = METRIC_INFO.get(m, ("", "", ""))
        cells = "".join(f'<td class="num{" best" if k in best else ""}">{_e(_fmt(v))}</td>'
                        for k, v in enumerate(values))
        rows.append(f"<tr><td>{_e(m)}</td>{cells}<td>{_e(metric_unit(m, unit))}</td>"
                    f"<td>{_e(ideal)}</td><td>{_e(desc)}</td></tr>")
    return (f"<h3>{_e(TITLES.get(target, target))} ({_e(unit)})</h3>"
            f'<div class="wide"><table class="all-metrics">{head}{"".join(rows)}</table></div>')


def _figures(figures: Sequence[Mapping[str, Any]]) -> str:
    parts, section = [], None
    for fig in figures:
        if fig.get("section") != section:
            if section is not None:
                parts.append("</div>")
            section = fig.get("section")
            if section:
                parts.append(f"<h3>{_e(section)}</h3>")
            parts.append('<div class="figures">')
        caption = _e(fig.get("caption", ""))
        parts.append(f'<figure><img src="{png_uri(fig["png"])}" alt="{caption}">'
                     f"<figcaption>{caption}</figcaption></figure>")
    if section is not None or figures:
        parts.append("</div>")
    return "".join(parts)


def _settings(reports: Mapping[str, CalibrationReport], extra: Mapping[str, Any]) -> str:
    first = next(iter(reports.values())).settings
    recorded = {k for r in reports.values()
                for k in r.settings.get("inputs", {}).get("recorded", {})}
    calibration_keys = sorted(k for k in recorded if "calib" in k)
    recalibration = (
        "none applied by mlipuq evaluate: the uncertainties are scored as the files hold "
        "them. " + ("The files record " + ", ".join(calibration_keys) + "." if calibration_keys
                    else "Whether the wrapper's own calibration was applied when predicting "
                    "is not recorded in the files (mlipuq predict applies it unless "
                    "--no-calibration).")
    )
    items = [
        ("recalibration", recalibration),
        ("calibration-curve coverages", first.get("num_bins")),
        ("σ bins (ENCE, RMSE vs RMV)", first.get("num_bins_ence")),
        ("coverage levels", ", ".join(f"{v:g}" for v in first.get("levels", []))),
        ("AUROC/AUPRC threshold", f"{first.get('detection_quantile', 0.9):g} quantile of "
                                   "|error|"),
        ("size", "; ".join(f"{label}: {r.n_structures} structures, {r.n_atoms} atoms"
                           for label, r in reports.items())),
        ("excluded as exact (zero σ, zero error)", "; ".join(
            f"{label}: " + (", ".join(f"{n} {t}" for t, n in
                                      r.settings.get("excluded", {}).items() if n) or "none")
            for label, r in reports.items())),
    ]
    items += list(extra.items())
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<dl class="settings">{body}</dl>'


def render(
    reports: Mapping[str, CalibrationReport],
    figures: Sequence[Mapping[str, Any]] = (),
    *,
    title: Optional[str] = None,
    settings: Optional[Mapping[str, Any]] = None,
) -> str:
    """The HTML page (a string) for ``{label: report}``.

    Parameters
    ----------
    reports
        One or more labelled reports, in display order. Their ``settings`` may
        hold ``"inputs"`` as :func:`mlipuq.calibration.report.load_labelled`
        returns it (file names, recorded entries).
    figures
        ``{"png": bytes, "caption": str, "section": str}`` in display order;
        consecutive figures of one section share a heading and a grid.
    title
        Page heading (default: ``Calibration report: <labels>``).
    settings
        Further settings to list (name -> value), e.g. the figure options.
    """
    if not reports:
        raise ValueError("no reports to render")
    labels = list(reports)
    title = title or ("Calibration report: " + ", ".join(labels) if len(labels) > 1
                      else f"Calibration report: {labels[0]}")
    data = sorted({os.path.basename(str(r.settings.get("inputs", {}).get(key)))
                   for r in reports.values() for key in ("prediction_file", "reference_file")
                   if r.settings.get("inputs", {}).get(key)})
    subtitle = ", ".join(f"{wrapper_name(label, r.settings)}" for label, r in reports.items())
    if data:
        subtitle += " on " + ", ".join(data)
    from mlipuq import __version__

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(subtitle)}. z = (reference − prediction)/σ; coverage: observed '
        "fraction of references inside the central interval of the nominal coverage. Bold: "
        "the best value of a column.</p>" if len(labels) > 1 else
        f'<p class="sub">{_e(subtitle)}. z = (reference − prediction)/σ; coverage: observed '
        "fraction of references inside the central interval of the nominal coverage.</p>",
        "<h2>Inputs</h2>",
        _inputs_table(reports),
        "<h2>Key metrics</h2>",
    ]
    first = next(iter(reports.values()))
    parts += [_key_table(reports, t) for t in MAIN_TARGETS if t in first.metrics]
    if figures:
        parts += ["<h2>Figures</h2>", _figures(figures)]
    parts.append("<h2>All metrics</h2>")
    parts += [_full_table(reports, t) for t in first.metrics]
    parts += ["<h2>Settings</h2>", _settings(reports, settings or {}),
              f"<footer>Written by mlipuq {_e(__version__)} (mlipuq evaluate).</footer>",
              "</body></html>", ""]
    return "\n".join(parts)


def write(path, reports: Mapping[str, CalibrationReport],
          figures: Sequence[Mapping[str, Any]] = (), **kwargs) -> None:
    """Write :func:`render`'s page to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(reports, figures, **kwargs))
