"""``evaluate(prediction, reference)``: every calibration metric in one report.

Four targets are scored:

==================  ==========  ==============================================
target              unit        what is scored
==================  ==========  ==============================================
``energy``          eV          total energy per structure
``energy_per_atom`` eV/atom     energy / n_atoms (σ / n_atoms)
``forces``          eV/Å        every Cartesian force component
``forces_norm``     eV/Å        per-atom force magnitude, σ propagated to the
                                norm to first order (``reduce="norm"``)
==================  ==========  ==============================================

:class:`CalibrationReport` serialises to a dict, JSON (with a format version)
and Markdown; it also keeps the arrays it was computed from so that
:func:`mlipuq.calibration.plots.summary_figure` can draw them.
:func:`load_prediction` turns an extxyz written by
:meth:`mlipuq.data.AtomsDataset.write` back into ``(Prediction, reference)``;
:func:`load_labelled` also returns the file names and the ``mlipuq_*`` entries
the file records (:func:`file_metadata`). :func:`comparison_dict` and
:func:`comparison_markdown` put several labelled reports side by side
(``mlipuq evaluate A B --labels ...``; the HTML report is
:mod:`mlipuq.calibration.html`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from mlipuq.calibration.targets import reference_arrays, scored_mask
from mlipuq.calibration.metrics import DEFAULT_LEVELS, all_metrics, coverage_key, rmse_rmv_bins
from mlipuq.calibration.metrics_common import reduce_norm
from mlipuq.errors import FileFormatError

FORMAT = "mlipuq-calibration-report"
FORMAT_VERSION = 1

TARGETS = ("energy", "energy_per_atom", "forces", "forces_norm")
UNITS = {"energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/Å", "forces_norm": "eV/Å"}
TITLES = {
    "energy": "Energy (total, per structure)",
    "energy_per_atom": "Energy per atom",
    "forces": "Forces (per Cartesian component)",
    "forces_norm": "Forces (per-atom norm)",
}

# metric -> (description, unit kind: "y" = unit of the target, "nats", "" = none, target)
METRIC_INFO: Dict[str, Tuple[str, str, str]] = {
    "n": ("predictions scored", "", ""),
    "mae": ("mean absolute error", "y", "lower"),
    "rmse": ("root mean squared error", "y", "lower"),
    "sharpness": ("root mean predicted variance", "y", "lower, = RMSE if calibrated (Gaussian)"),
    "nll": ("negative log-likelihood (Gaussian; Student-t with ν)", "nats", "lower"),
    "crps": ("continuous ranked probability score", "y", "lower"),
    "check_score": ("check (pinball) score, 99 quantiles (Student-t's with ν)", "y", "lower"),
    "interval_score": ("interval score, 99 central intervals (Student-t's with ν)", "y",
                       "lower"),
    "miscalibration_area": ("area between calibration curve and diagonal", "", "0"),
    "rms_calibration_error": ("RMS calibration error", "", "0"),
    "mean_absolute_calibration_error": ("mean absolute calibration error", "", "0"),
    "ence": ("expected normalised calibration error (σ bins; with ν the t's variance, "
             "none for ν ≤ 2)", "", "0"),
    "z_mean": ("mean of z = (ref - pred)/σ (with ν: the Gaussian z at the t's level)", "", "0"),
    "z_std": ("standard deviation of z", "", "1"),
    "z_rms": ("RMS of z (> 1: over-confident)", "", "1"),
    "spearman": ("Spearman rank correlation of |error| and σ", "", "higher"),
    "auroc": ("AUROC of σ flagging |error| > threshold", "", "1 (0.5 = chance)"),
    "auprc": ("AUPRC of σ flagging |error| > threshold", "", "1"),
    "detection_threshold": ("|error| threshold for AUROC/AUPRC", "y", ""),
    "detection_positive_fraction": ("fraction above threshold (chance AUPRC)", "", ""),
}


# ------------------------------------------------------------------ inputs
def target_arrays(prediction, reference) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(y_pred, y_std, y_true)`` for each of :data:`TARGETS` (units in :data:`UNITS`)."""
    arrays, _ = scored_targets(prediction, reference)
    return arrays


def scored_targets(prediction, reference):
    """``(arrays, excluded)``: the :func:`target_arrays` left after dropping exact
    targets (zero std and zero error, e.g. a lone atom's forces; see
    :mod:`mlipuq.calibration.targets`) and how many each target lost."""
    energy, forces = reference_arrays(prediction, reference)
    n = prediction.n_atoms.astype(np.float64)
    structures = np.arange(prediction.n_structures)
    full = {
        "energy": (prediction.energy, prediction.energy_std, energy, structures),
        "energy_per_atom": (prediction.energy / n, prediction.energy_std / n, energy / n,
                            structures),
        "forces": (prediction.forces, prediction.forces_std, forces, prediction.batch),
        "forces_norm": (*reduce_norm(prediction.forces, prediction.forces_std, forces),
                        prediction.batch),
    }
    arrays, excluded = {}, {}
    for target, (pred, std, true, owner) in full.items():
        keep = scored_mask(pred, std, true, owner, target)
        excluded[target] = int(keep.size - np.count_nonzero(keep))
        arrays[target] = (pred, std, true) if keep.all() else (pred[keep], std[keep], true[keep])
    return arrays, excluded


def target_dofs(prediction) -> Dict[str, Optional[float]]:
    """Student-t degrees of freedom of each scored target (None: Gaussian). Force
    norms are not t-distributed: they are always scored as Gaussian norms."""
    energy = getattr(prediction, "energy_dof", None)
    return {"energy": energy, "energy_per_atom": energy,
            "forces": getattr(prediction, "forces_dof", None), "forces_norm": None}


# ------------------------------------------------------------------ report
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.4g}"


@dataclass
class CalibrationReport:
    """Calibration metrics for energies and forces.

    Attributes
    ----------
    metrics : dict
        ``metrics[target][name]``; targets in :data:`TARGETS`, names as
        returned by :func:`mlipuq.calibration.metrics.all_metrics`. Values
        in the unit of the target (:attr:`units`), nats (``nll``) or
        dimensionless; None where undefined for the data.
    binned : dict
        ``binned[target]`` = ``{"rmv", "rmse", "count"}`` lists of the
        equal-count σ bins (unit of the target); absent for targets with
        fewer predictions than bins.
    units : dict
        Unit of each target.
    n_structures, n_atoms : int
        Size of the evaluated set.
    settings : dict
        Options used (bins, coverage levels, detection quantile).
    data : dict or None
        ``data[target] = (y_pred, y_std, y_true)`` arrays, for plotting; not
        serialised (None for a report read from JSON).
    """

    metrics: Dict[str, Dict[str, Optional[float]]]
    binned: Dict[str, Dict[str, list]]
    units: Dict[str, str]
    n_structures: int
    n_atoms: int
    settings: Dict[str, Any] = field(default_factory=dict)
    data: Optional[Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(
        default=None, repr=False, compare=False
    )

    # ------------------------------------------------------------ access
    def __getitem__(self, target: str) -> Dict[str, Optional[float]]:
        return self.metrics[target]

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python dict (JSON-ready) with a format tag and version."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_structures": int(self.n_structures),
            "n_atoms": int(self.n_atoms),
            "units": dict(self.units),
            "settings": json.loads(json.dumps(self.settings)),
            "metrics": {t: dict(m) for t, m in self.metrics.items()},
            "binned": {t: {k: list(v) for k, v in b.items()} for t, b in self.binned.items()},
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        """The :meth:`to_dict` content as JSON text (``None`` for undefined metrics)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CalibrationReport":
        """Rebuild a report (without :attr:`data`) from :meth:`to_dict` output."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FileFormatError("not an mlipuq calibration report")
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise FileFormatError(
                f"calibration report format version {version!r} is not supported "
                f"(this mlipuq reads version {FORMAT_VERSION})"
            )
        return cls(
            metrics={t: dict(m) for t, m in d["metrics"].items()},
            binned={t: dict(b) for t, b in d.get("binned", {}).items()},
            units=dict(d["units"]),
            n_structures=int(d["n_structures"]),
            n_atoms=int(d["n_atoms"]),
            settings=dict(d.get("settings", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> "CalibrationReport":
        """Rebuild a report from :meth:`to_json` text."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"calibration report is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def to_markdown(self) -> str:
        """A Markdown summary: one table per target with units and ideal values."""
        lines = [
            "# Calibration report",
            "",
            f"{self.n_structures} structures, {self.n_atoms} atoms. "
            "z = (reference - prediction) / σ. Coverage: observed fraction of "
            "references inside the central interval of the given nominal coverage.",
        ]
        if "label" in self.settings or "inputs" in self.settings:
            label = self.settings.get("label")
            lines += ["", f"Prediction: {label + ' — ' if label else ''}"
                          f"{_describe_inputs(self.settings)}."]
        excluded = {t: n for t, n in self.settings.get("excluded", {}).items() if n}
        if excluded:
            counts = ", ".join(f"{n} {t}" for t, n in excluded.items())
            lines += ["", f"Excluded as exact (zero std and zero error, e.g. lone atoms): {counts}."]
        beyond = self.settings.get("beyond_calibration")
        if beyond and beyond["n"]:
            lines += ["", f"Beyond the calibration range: {beyond['n']} of {self.n_structures} "
                          f"structures (std up to {beyond['max']:.3g}x the largest in the "
                          "calibration data); their intervals are widened, not fitted."]
        from mlipuq.calibration.bias import offset_message

        for target, stats in self.settings.get("offsets", {}).items():
            message = offset_message(target, stats["z_mean"], stats["z_std"], stats["n"])
            if message:
                lines += ["", f"**Warning.** {message}."]
        for target, metrics in self.metrics.items():
            unit = self.units.get(target, "")
            lines += [
                "",
                f"## {TITLES.get(target, target)} ({unit})",
                "",
                "| metric | value | unit | ideal | description |",
                "|---|---:|---|---|---|",
            ]
            for name, value in metrics.items():
                if name.startswith("coverage_"):
                    level = float(name.split("_", 1)[1]) / 100.0
                    desc, kind, ideal = (f"coverage of the {name[9:]}% interval", "", f"{level:g}")
                else:
                    desc, kind, ideal = METRIC_INFO.get(name, ("", "", ""))
                unit_text = {"y": unit, "nats": "nats", "": ""}[kind]
                desc = desc.replace("|", "\\|")  # keep the table intact
                lines.append(f"| {name} | {_fmt(value)} | {unit_text} | {ideal} | {desc} |")
        lines.append("")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def evaluate(
    prediction,
    reference,
    *,
    num_bins: int = 100,
    levels: Sequence[float] = DEFAULT_LEVELS,
    num_bins_ence: int = 10,
    detection_quantile: float = 0.9,
    keep_data: bool = True,
) -> CalibrationReport:
    """Score a prediction against reference energies and forces.

    Parameters
    ----------
    prediction : Prediction
        What a UQ wrapper's ``predict()`` returned (eV, eV/Å).
    reference
        ``AtomsDataset`` (or anything ``mlipuq.data.as_dataset`` accepts)
        with reference energies and forces for the same structures, in the
        same order.
    num_bins, levels, num_bins_ence, detection_quantile
        Passed to :func:`mlipuq.calibration.metrics.all_metrics`.
    keep_data
        Keep the arrays in the report (needed for plotting).

    Returns
    -------
    CalibrationReport

    Raises
    ------
    ValueError
        Mismatched counts, missing reference energies/forces, non-finite
        values, or zero std (the message names the target).
    """
    from mlipuq.calibration.bias import offsets_of, warn_offsets

    arrays, excluded = scored_targets(prediction, reference)
    offsets = offsets_of({t: arrays[t] for t in ("energy", "forces") if t in arrays})
    warn_offsets(offsets, where="evaluate")
    metrics: Dict[str, Dict[str, Optional[float]]] = {}
    binned: Dict[str, Dict[str, list]] = {}
    dofs = target_dofs(prediction)
    for target, (pred, std, true) in arrays.items():
        try:
            metrics[target] = all_metrics(
                pred,
                std,
                true,
                num_bins=num_bins,
                levels=levels,
                num_bins_ence=num_bins_ence,
                detection_quantile=detection_quantile,
                dof=dofs.get(target),
            )
        except ValueError as exc:
            raise ValueError(f"{target}: {exc}") from exc
        if np.size(pred) >= num_bins_ence and metrics[target]["ence"] is not None:
            bins = rmse_rmv_bins(pred, std, true, num_bins=num_bins_ence, dof=dofs.get(target))
            binned[target] = {
                "rmv": bins.rmv.tolist(),
                "rmse": bins.rmse.tolist(),
                "count": bins.count.tolist(),
            }
    return CalibrationReport(
        metrics=metrics,
        binned=binned,
        units={t: UNITS[t] for t in arrays},
        n_structures=prediction.n_structures,
        n_atoms=int(prediction.n_atoms.sum()),
        settings={
            "num_bins": int(num_bins),
            "levels": [float(v) for v in np.asarray(levels).reshape(-1)],
            "coverage_keys": [coverage_key(v) for v in np.asarray(levels).reshape(-1)],
            "num_bins_ence": int(num_bins_ence),
            "detection_quantile": float(detection_quantile),
            "excluded": excluded,
            "offsets": offsets,
            "dof": {t: v for t, v in dofs.items() if v is not None},
            "beyond_calibration": _beyond(prediction),
        },
        data=arrays if keep_data else None,
    )


def _beyond(prediction) -> Optional[dict]:
    """How many structures lie beyond the calibration range, and how far at most."""
    excess = getattr(prediction, "calibration_excess", None)
    if excess is None:
        return None
    return {"n": int(np.count_nonzero(excess > 1.0)), "max": float(np.max(excess, initial=1.0))}


# ------------------------------------------------------------ comparison
COMPARISON_FORMAT = "mlipuq-calibration-comparison"
COMPARISON_VERSION = 1

#: Metrics of the side-by-side tables (:func:`comparison_markdown`, the HTML report).
KEY_METRICS = (
    "n", "mae", "rmse", "sharpness", "nll", "crps", "miscalibration_area", "ence", "z_rms",
    "coverage_90", "coverage_95", "spearman", "auroc",
)


def comparison_dict(reports: Dict[str, CalibrationReport]) -> Dict[str, Any]:
    """JSON-ready dict of several reports by label (``mlipuq evaluate`` with
    several predictions writes it as the top-level ``report.json``):
    ``{"format", "version", "labels": [...], "reports": {label: to_dict()}}``."""
    return {
        "format": COMPARISON_FORMAT,
        "version": COMPARISON_VERSION,
        "labels": list(reports),
        "reports": {label: r.to_dict() for label, r in reports.items()},
    }


def comparison_markdown(reports: Dict[str, CalibrationReport]) -> str:
    """Markdown with one table per target, one row per labelled report, columns
    :data:`KEY_METRICS` (every metric of each is in its own report)."""
    labels = list(reports)
    lines = ["# Calibration comparison", "", "Predictions: " + ", ".join(
        f"{label} ({_describe_inputs(r.settings)})" for label, r in reports.items()) + "."]
    first = reports[labels[0]]
    for target in first.metrics:
        unit = first.units.get(target, "")
        names = [m for m in KEY_METRICS if any(m in r.metrics.get(target, {})
                                               for r in reports.values())]
        lines += ["", f"## {TITLES.get(target, target)} ({unit})", "",
                  "| prediction | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for label, r in reports.items():
            values = r.metrics.get(target, {})
            lines.append(f"| {label.replace('|', '/')} | "
                         + " | ".join(_fmt(values.get(m)) for m in names) + " |")
    lines += ["", "mae, rmse, sharpness and crps are in the unit of the target (in its heading), "
              "nll in nats, the others dimensionless. Every metric of a prediction is in its "
              "own report.", ""]
    return "\n".join(lines)


def _describe_inputs(settings: Dict[str, Any]) -> str:
    inputs = settings.get("inputs", {})
    text = os.path.basename(str(inputs.get("prediction_file", "?")))
    if inputs.get("reference_file"):
        text += f" vs {os.path.basename(str(inputs['reference_file']))}"
    return text


def metric_unit(name: str, unit: str) -> str:
    """Unit of metric ``name`` for a target in ``unit`` ("" if dimensionless)."""
    kind = "" if name.startswith("coverage_") else METRIC_INFO.get(name, ("", "", ""))[1]
    return {"y": unit, "nats": "nats", "": ""}[kind]


# ------------------------------------------------------------ extxyz input
def file_metadata(structures) -> Dict[str, Any]:
    """``mlipuq_*`` info entries that are the same scalar (string, number, bool) in
    every structure of a prediction file and are not prediction columns, e.g.
    ``mlipuq_wrapper`` (the wrapper's fingerprint) in MD frames. Empty for files
    written by ``mlipuq predict`` today, which record no wrapper."""
    from mlipuq import schema

    columns = {schema.ENERGY, schema.ENERGY_STD, schema.ENERGY_MEMBERS, schema.STRESS,
               schema.STRESS_STD, schema.ENERGIES, schema.STEP, schema.TIME_FS}
    found: Dict[str, Any] = {}
    for k, atoms in enumerate(structures):
        for key, value in atoms.info.items():
            if k == 0 and key.startswith(schema.PREFIX) and key not in columns:
                if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
                    found[key] = value.item() if isinstance(value, np.generic) else value
        for key in list(found):
            if k and atoms.info.get(key) != found[key]:
                del found[key]
        if not found:
            break
    return found


def load_labelled(
    path: Union[str, os.PathLike], reference: Optional[Any] = None
) -> Tuple[Any, Any, Dict[str, Any]]:
    """:func:`load_prediction` plus what the files say about themselves:
    ``(Prediction, reference dataset, inputs)`` with ``inputs`` =
    ``{"prediction_file", "reference_file" (None: the prediction file's own
    columns), "recorded": file_metadata(...)}``."""
    prediction, structures, ref = _load(path, reference)
    inputs = {
        "prediction_file": os.fspath(path),
        "reference_file": os.fspath(reference) if isinstance(reference, (str, os.PathLike))
        else None,
        "recorded": file_metadata(structures),
    }
    return prediction, ref, inputs


# ------------------------------------------------------------ extxyz input
def load_prediction(
    path: Union[str, os.PathLike], reference: Optional[Any] = None
) -> Tuple[Any, Any]:
    """Read ``(Prediction, reference dataset)`` from a prediction extxyz.

    The file is what :meth:`mlipuq.data.AtomsDataset.write` writes with a
    prediction: ``mlipuq_energy`` and ``mlipuq_energy_std`` (eV) in
    ``atoms.info``, ``mlipuq_forces`` and ``mlipuq_forces_std`` (eV/Å) in
    ``atoms.arrays``, optional ``mlipuq_energy_members``.

    Parameters
    ----------
    path
        The prediction file.
    reference
        Reference data (path, ``AtomsDataset``, list of Atoms). Default: the
        reference ``energy``/``forces`` columns of the prediction file.

    Returns
    -------
    (Prediction, AtomsDataset)

    Raises
    ------
    ValueError
        A structure lacks prediction columns, or the reference does not
        match the predicted structures (counts, elements) or lacks energies
        or forces.
    """
    prediction, _, ref = _load(path, reference)
    return prediction, ref


def _load(path, reference):
    """``(Prediction, structures of the prediction file, reference dataset)``."""
    from mlipuq.data import as_dataset
    from mlipuq.prediction import read_prediction

    prediction, structures = read_prediction(path)
    if reference is None:
        ref = structures
    else:
        ref = as_dataset(reference)
        if len(ref) != len(structures):
            raise ValueError(
                f"the prediction file holds {len(structures)} structures, the reference {len(ref)}"
            )
        for k, (a, b) in enumerate(zip(structures, ref)):
            if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
                raise ValueError(
                    f"structure {k}: the reference holds {b.get_chemical_formula()}, "
                    f"the prediction file {a.get_chemical_formula()} (same order needed)"
                )
    reference_arrays(prediction, ref)  # raise early if energies/forces are missing
    return prediction, structures, ref
