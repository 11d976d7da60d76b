"""What every trust check shares: the verdicts, the model adapter, the report files.

Verdicts
--------
Every check returns a small dataclass with the numbers it measured, a
``verdict`` (``"pass"``, ``"warn"`` or ``"fail"``) and the ``thresholds`` it
used. A measured value ``x`` graded against ``(pass_max, warn_max)`` is
``pass`` for ``x <= pass_max``, ``warn`` for ``x <= warn_max`` and ``fail``
above (and for NaN). Where each default threshold comes from is written next
to it in the check's module and in ``docs/trust.md``.

Models
------
The checks take a base :class:`~mlipuq.models.MLIP`, a UQ wrapper (anything
with the wrappers' ``predict``; its uncertainties are then reported too), or
an ASE calculator (finite differences instead of autograd where derivatives
are needed). :func:`as_target` turns any of them into a :class:`Target`: a
float64 copy (the user's model is never modified) that evaluates energies
(eV) and forces (eV/Å) of a list of structures.

Report files
------------
:func:`write_report` writes ``trust.json`` (format-versioned, every number),
``trust.md`` (a table and one section per check) and the figures
(:func:`plot_scan`, :func:`plot_rotational_spread`, :func:`plot_stability`,
:func:`plot_nve`; each takes ``ax=None`` and returns the ``Axes``;
matplotlib is imported lazily).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import ase
import numpy as np

PASS, WARN, FAIL = "pass", "warn", "fail"
VERDICTS = (PASS, WARN, FAIL)

FORMAT = "mlipuq.trust"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- verdicts
def grade(value: float, pass_max: float, warn_max: float) -> str:
    """``"pass"`` if ``value <= pass_max``, ``"warn"`` if ``<= warn_max``, else ``"fail"``
    (NaN fails)."""
    value = float(value)
    if not math.isfinite(value):
        return FAIL
    if value <= pass_max:
        return PASS
    return WARN if value <= warn_max else FAIL


def worst(verdicts: Sequence[str]) -> str:
    """The worst of several verdicts (``"pass"`` for none)."""
    return max(verdicts, key=VERDICTS.index, default=PASS)


def _plain(value):
    """JSON-ready copy: arrays to lists, NaN/inf to None, tuples to lists."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class Result:
    """Mixin of the check results (dataclasses with ``name``, ``verdict`` and
    ``thresholds``): :meth:`line` for the console, :meth:`to_dict` for JSON."""

    #: Fields left out of :meth:`to_dict` (large per-atom arrays).
    _skip: tuple = ()

    def summary(self) -> str:  # pragma: no cover - every result overrides it
        return ""

    def line(self) -> str:
        """``PASS name: numbers (threshold ...)``: the one-line console form."""
        return f"{self.verdict.upper()} {self.name}: {self.summary()}"

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name in self._skip:
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = value.to_dict() if isinstance(value, Result) else dataclasses.asdict(value)
            elif isinstance(value, list) and value and isinstance(value[0], Result):
                value = [v.to_dict() for v in value]
            out[f.name] = _plain(value)
        return out


# ------------------------------------------------------------ model adapter
def structures_list(structures) -> list:
    """Copies of the structures (no calculator) from one Atoms, a list or an AtomsDataset."""
    if isinstance(structures, ase.Atoms):
        structures = [structures]
    out = []
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, ase.Atoms):
            raise TypeError(f"structure {k}: expected ase.Atoms, got {type(atoms).__name__}")
        if len(atoms) == 0:
            raise ValueError(f"structure {k}: empty structure (no atoms)")
        atoms = atoms.copy()
        atoms.calc = None
        out.append(atoms)
    if not out:
        raise ValueError("no structures to check")
    return out


@dataclass
class Evaluation:
    """Energies (B,) eV and forces (N, 3) eV/Å of B structures (float64);
    ``energy_var`` (B,) eV² and ``forces_var`` (N, 3) eV²/Å² for UQ wrappers."""

    energy: np.ndarray
    forces: np.ndarray
    n_atoms: np.ndarray
    energy_var: Optional[np.ndarray] = None
    forces_var: Optional[np.ndarray] = None


class Target:
    """A base MLIP, a UQ wrapper or an ASE calculator, evaluated in float64.

    ``kind`` is ``"model"``, ``"wrapper"`` or ``"calculator"``;
    ``has_uncertainty`` is true for wrappers. Models and wrappers are copied
    and cast to float64 once (the original is never modified); an ASE
    calculator is used as it is, in its own precision.
    """

    def __init__(self, model):
        import torch
        from ase.calculators.calculator import BaseCalculator, Calculator as ASECalculator

        from mlipuq.models.base import MLIP

        self.original = model
        if isinstance(model, MLIP):
            self.kind = "model"
            self.model = copy.deepcopy(model).to(torch.float64).eval()
        elif callable(getattr(model, "predict", None)):
            self.kind = "wrapper"
            model = copy.deepcopy(model)
            self.model = model.to(torch.float64) if callable(getattr(model, "to", None)) else model
            if self.model is None:  # a .to() that returns nothing
                self.model = model
        elif isinstance(model, (BaseCalculator, ASECalculator)):
            self.kind = "calculator"
            self.model = model
        else:
            raise TypeError(
                "the trust checks take an mlipuq MLIP, a UQ wrapper (with predict) or an ASE "
                f"calculator; got {type(model).__name__}"
            )

    @property
    def has_uncertainty(self) -> bool:
        return self.kind == "wrapper"

    @property
    def description(self) -> str:
        name = type(self.original).__name__
        return {"model": f"{name} (base MLIP)", "wrapper": f"{name} (UQ wrapper)",
                "calculator": f"{name} (ASE calculator)"}[self.kind]

    def evaluate(self, structures, *, batch_size: int = 32) -> Evaluation:
        """Energies and forces (and their variances for a wrapper) of ``structures``."""
        structures = structures_list(structures)
        n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
        if self.kind == "model":
            out = self.model.compute(structures, batch_size=batch_size)
            return Evaluation(np.asarray(out["energy"], np.float64),
                              np.asarray(out["forces"], np.float64), n_atoms)
        if self.kind == "wrapper":
            pred = self.model.predict(structures, batch_size=batch_size, distributed=False)
            return Evaluation(pred.energy, pred.forces, n_atoms, pred.energy_var,
                              pred.forces_var)
        energies, forces = [], []
        for atoms in structures:
            atoms.calc = self.model
            energies.append(float(atoms.get_potential_energy()))
            forces.append(np.asarray(atoms.get_forces(), np.float64))
            atoms.calc = None
        return Evaluation(np.asarray(energies), np.concatenate(forces), n_atoms)

    def calculator(self):
        """An ASE calculator for MD: :class:`mlipuq.Calculator` (float64) or the calculator."""
        if self.kind == "calculator":
            return self.model
        from mlipuq.calculator import Calculator

        return Calculator(self.model)


def as_target(model) -> Target:
    """``model`` as a :class:`Target` (a Target is returned as it is)."""
    return model if isinstance(model, Target) else Target(model)


# ------------------------------------------------------------------ figures
def _axes(ax, size=(5.5, 4.2)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def plot_scan(result, *, ax=None, n_std: float = 2.0):
    """Energy along a bond or torsion scan (eV, relative to its minimum) with a
    ±``n_std``·σ band for wrappers and the flagged points marked; returns the Axes."""
    ax = _axes(ax)
    x = np.asarray(result.coordinate)
    e = np.asarray(result.energy) - np.min(result.energy)
    ax.plot(x, e, "-", color="C0", lw=1.5, label="energy")
    if result.energy_std is not None:
        s = n_std * np.asarray(result.energy_std)
        ax.fill_between(x, e - s, e + s, color="C0", alpha=0.25, lw=0,
                        label=f"±{n_std:g}σ (wrapper)")
    flagged = list(result.discontinuities)
    if flagged:
        idx = [int(np.argmin(np.abs(x - d))) for d in flagged]
        ax.plot(x[idx], e[idx], "x", color="C3", ms=9, mew=2, label="discontinuity")
    minima = [m for m in result.spurious_minima]
    if minima:
        idx = [int(np.argmin(np.abs(x - m))) for m in minima]
        ax.plot(x[idx], e[idx], "o", mfc="none", color="C1", ms=9, label="spurious minimum")
    ax.set_xlabel(f"{result.coordinate_label} ({result.unit})")
    ax.set_ylabel("energy − min (eV)")
    ax.set_title(f"{result.name} [{result.verdict}]")
    ax.legend(fontsize="small")
    return ax


def plot_rotational_spread(result, *, ax=None, bins: int = 30):
    """Histogram of the per-atom force spread over the rotations (eV/Å, log10
    axis), with the per-structure energy spread (eV/atom) in the legend; returns the Axes."""
    ax = _axes(ax)
    spread = np.asarray(result.forces_spread, np.float64)
    floor = 1e-18
    values = np.log10(np.maximum(spread, floor))
    ax.hist(values, bins=bins, color="C0", alpha=0.8,
            label=f"forces: max {spread.max():.2g} eV/Å")
    e = np.asarray(result.energy_spread, np.float64)
    ax.axvline(np.log10(max(e.max(), floor)), color="C3", ls="--",
               label=f"energy: max {e.max():.2g} eV/atom")
    ax.set_xlabel("log10 rotational spread (eV/Å per atom; eV/atom)")
    ax.set_ylabel("atoms")
    ax.set_title(f"rotational spread over {result.n_rotations} rotations [{result.verdict}]")
    ax.legend(fontsize="small")
    return ax


def plot_nve(result, *, ax=None):
    """Total energy per atom (meV/atom, relative to the start) of the NVE run with
    its linear fit; returns the Axes."""
    ax = _axes(ax)
    t = np.asarray(result.time_fs)
    e = 1000 * (np.asarray(result.total_energy) - result.total_energy[0]) / result.n_atoms
    ax.plot(t, e, "-", color="C0", lw=1, label="total energy")
    if np.all(np.isfinite(e)) and len(t) > 1:
        slope, intercept = np.polyfit(t, e, 1)
        ax.plot(t, slope * t + intercept, "--", color="C3",
                label=f"drift {result.drift:.2g} eV/atom/ps")
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("E_tot − E_tot(0) (meV/atom)")
    ax.set_title(f"NVE energy conservation [{result.verdict}]")
    ax.legend(fontsize="small")
    return ax


def plot_stability(result, *, ax=None):
    """Largest per-atom force std (eV/Å) along each MD run (wrappers), the
    threshold, and the first failure of each run; returns the Axes."""
    ax = _axes(ax)
    for k, run in enumerate(result.runs):
        color = f"C{k}"
        if run.max_force_std is not None:
            ax.plot(run.time_fs, run.max_force_std, "-", color=color,
                    label=f"{run.temperature_K:g} K")
        if run.first_failure_fs is not None:
            ax.axvline(run.first_failure_fs, color=color, ls=":",
                       label=f"{run.temperature_K:g} K: {run.failure}")
    if result.threshold is not None:
        ax.axhline(result.threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("max per-atom force std (eV/Å)")
    ax.set_title(f"MD stability [{result.verdict}]")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


# ---------------------------------------------------------------- report files
REPORT_FILES = ("trust.json", "trust.md")


def figure_name(result) -> Optional[str]:
    """File name of the figure of a result (None for checks without one)."""
    kind = getattr(result, "kind", None)
    if kind == "equivariance":
        return "rotational_spread.png"
    if kind in ("bond_scan", "torsion_scan"):
        return f"{kind}_{'_'.join(str(i) for i in np.ravel(result.indices))}.png"
    if kind == "nve_drift":
        return "nve_drift.png"
    if kind == "stability":
        return "stability.png"
    return None


_PLOTTERS = {"equivariance": plot_rotational_spread, "bond_scan": plot_scan,
             "torsion_scan": plot_scan, "nve_drift": plot_nve, "stability": plot_stability}


def write_figures(results, out: str) -> list:
    """One PNG per result that has a figure, into folder ``out``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for result in results:
        name = figure_name(result)
        if name is None:
            continue
        fig, ax = plt.subplots(figsize=(6.0, 4.5))
        _PLOTTERS[result.kind](result, ax=ax)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report_dict(results, *, model: str = "", structures: str = "") -> dict:
    """The content of ``trust.json``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "structures": structures,
        "verdict": worst([r.verdict for r in results]),
        "checks": [dict(r.to_dict(), line=r.line()) for r in results],
    }


def report_markdown(results, *, model: str = "", structures: str = "",
                    figures: Sequence[str] = ()) -> str:
    """The content of ``trust.md``: an overview table and one section per check."""
    lines = ["# mlipuq trust report", ""]
    if model:
        lines.append(f"- model: {model}")
    if structures:
        lines.append(f"- structures: {structures}")
    lines += [f"- overall verdict: **{worst([r.verdict for r in results]).upper()}**", "",
              ("What each check measures and where its thresholds come from: "
               "docs/trust.md in the mlipuq sources."), "",
              "| check | verdict | measured (threshold) |", "|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.verdict.upper()} | {r.summary()} |")
    figure_names = {os.path.basename(p) for p in figures}
    for r in results:
        lines += ["", f"## {r.name}: {r.verdict.upper()}", "", r.summary(), ""]
        for key, value in r.to_dict().items():
            if key in ("name", "verdict", "kind") or isinstance(value, list) and len(value) > 12:
                continue
            lines.append(f"- `{key}`: {json.dumps(value, ensure_ascii=False)}")
        name = figure_name(r)
        if name in figure_names:
            lines += ["", f"![{r.name}]({name})"]
    return "\n".join(lines) + "\n"


def write_report(results, out: str, *, model: str = "", structures: str = "",
                 figures: bool = True) -> list:
    """Write ``trust.json``, ``trust.md`` and (``figures``) the PNGs into folder
    ``out`` (created if needed); returns the paths written."""
    os.makedirs(out, exist_ok=True)
    written = write_figures(results, out) if figures else []
    json_path, md_path = (os.path.join(out, name) for name in REPORT_FILES)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report_dict(results, model=model, structures=structures), f, indent=1)
        f.write("\n")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(report_markdown(results, model=model, structures=structures, figures=written))
    return [json_path, md_path] + written
