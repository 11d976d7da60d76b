"""Scores of one calibrated prediction on one split, for ``benchmarks/shift.py``.

Coverage, miscalibration, NLL (Student-t where the calibration gives one),
per-element force stds and errors, Spearman; the fitted between-structure
exponents; the validation slope; and how close the calibrated stds come to
the bound every calibrated std stays under (``mlipuq.calibration.extrapolation``).
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols
from scipy.stats import spearmanr

from mlipuq.calibration import metrics
from mlipuq.calibration.extrapolation import prediction_scales, structure_scales


def scores(pred, ref) -> dict:
    f_ref, e_ref = ref.forces, ref.energies
    err = np.linalg.norm(pred.forces - f_ref, axis=1)
    std = np.linalg.norm(pred.forces_std, axis=1)
    fd, ed = pred.forces_dof, pred.energy_dof  # Student-t predictive (None: Gaussian)
    elements = {chemical_symbols[z]: pred.numbers == z for z in np.unique(pred.numbers)}
    cov = lambda y, s, t, d: float(metrics.coverage(y, s, t, levels=[0.95], dof=d)[0])  # noqa: E731
    return {
        "force_cov95": cov(pred.forces, pred.forces_std, f_ref, fd),
        "energy_cov95": cov(pred.energy, pred.energy_std, e_ref, ed),
        "force_miscal": float(metrics.miscalibration_area(pred.forces, pred.forces_std, f_ref,
                                                          dof=fd)),
        "force_nll": float(metrics.nll(pred.forces, pred.forces_std, f_ref, dof=fd)),
        "energy_nll": float(metrics.nll(pred.energy, pred.energy_std, e_ref, dof=ed)),
        "force_dof": fd, "energy_dof": ed,
        "force_cov95_by_element": {  # element symbol -> coverage of its force components
            el: cov(pred.forces[m], pred.forces_std[m], f_ref[m], fd)
            for el, m in elements.items()},
        # per element: mean force std and force RMSE, to compare how each grows under shift
        "force_std_by_element": {el: float(np.mean(pred.forces_std[m]))
                                 for el, m in elements.items()},
        "force_rmse_by_element": {el: float(np.sqrt(np.mean((pred.forces - f_ref)[m] ** 2)))
                                  for el, m in elements.items()},
        "spearman": float(spearmanr(err, std).statistic),
        "force_std": float(np.mean(pred.forces_std)),
        "energy_std_per_atom": float(np.mean(pred.energy_std / pred.n_atoms)),
        "force_mae": float(np.mean(np.abs(pred.forces - f_ref))),
        "energy_mae_per_atom": float(np.mean(np.abs(pred.energy - e_ref) / pred.n_atoms)),
    }


def validation_slope(wrapper, val) -> dict:
    """Least-squares slope of the log RMS force error of the calibration structures on
    the log of their RMS raw force std (1: errors grow like the stds between structures;
    what ``structure_scaling`` fits, as a plain regression)."""
    pred = wrapper.predict(val, calibrated=False, composition=False)
    std = structure_scales(pred.energy_std, pred.n_atoms, pred.forces_std, pred.batch)
    err = structure_scales(pred.energy_std, pred.n_atoms, pred.forces - val.forces, pred.batch)
    return {"val_force_slope": float(np.polyfit(np.log(std["forces"]),
                                                np.log(err["forces"]), 1)[0])}


def exponents(wrapper) -> dict:
    """The fitted between-structure exponents c of the wrapper's calibration."""
    fitted = getattr(wrapper.recalibrator_, "structure_scaling_", None) or {}
    return {f"{key}_exponent": fitted[key]["exponent"] for key in fitted}


def bound_ratios(pred, recalibrator) -> dict:
    """Largest calibrated std over its bound (10 x the plausible error): forces per
    component, energies per atom; None for a calibration without a recorded range."""
    limits = getattr(recalibrator, "std_range_", None)
    if not limits:
        return {"force_std_bound_ratio": None, "energy_std_bound_ratio": None}
    per_atom = prediction_scales(pred)["energy"]
    return {"force_std_bound_ratio": float(np.max(pred.forces_std) / limits["forces_bound"]),
            "energy_std_bound_ratio": float(np.max(per_atom) / limits["energy_bound"])}
