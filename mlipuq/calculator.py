"""ASE calculator for base MLIPs and UQ wrappers.

>>> atoms.calc = mlipuq.Calculator(model)
>>> atoms.get_potential_energy(), atoms.get_forces()
>>> atoms.calc.results["energy_std"]          # with a UQ wrapper

Results (eV, Å): ``energy``, ``free_energy``, ``forces``, ``stress`` (periodic
cells, Voigt order, eV/Å^3, computed only when asked for); with a UQ wrapper also ``energy_std`` (eV),
``forces_std`` ((N, 3), eV/Å), ``max_force_std`` (eV/Å, the DP-GEN model
deviation) and, where the wrapper has a committee,
``energies`` ((K,), eV) and ``forces_committee`` ((K, N, 3), eV/Å); a calibrated
wrapper adds ``calibration_excess`` (>= 1: above 1 the structure's std lies beyond
the calibration data's and its intervals are widened, not fitted; docs/shift.md)
and, where the calibration fitted a Student-t (the forces, by default),
``forces_dof`` / ``energy_dof``: ν of the t, whose 68 % half-width the std is;
95 % intervals are ``predictive.half_width(std, dof, 0.95)``, wider than 1.96 std.

With the stress, wrappers with a stress uncertainty (``has_stress_uncertainty``:
LastLayerLaplace, ShallowEnsemble, DeepEnsemble) also give ``stress_std``
((6,), Voigt order xx yy zz yz xz xy, eV/Å^3, the std of each element, not
recalibrated) and, with members, ``stress_committee`` ((K, 6), eV/Å^3).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from ase.calculators.calculator import BaseCalculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlipuq import schema
from mlipuq.models.base import MLIP


class Calculator(BaseCalculator):
    """ASE calculator evaluating an mlipuq model (in float64 by default).

    Parameters
    ----------
    model
        A base :class:`~mlipuq.models.MLIP` or a UQ wrapper (anything with a
        ``predict`` method returning a :class:`~mlipuq.Prediction`).
    dtype
        Precision of the evaluation; float64 makes finite differences of the
        energy agree with the forces. The model is copied, never modified.
    stress_uncertainty
        With a wrapper that has one, compute ``stress_std`` (and
        ``stress_committee``) with the stress. Its pass costs about what an
        energy-and-forces prediction does (LastLayerLaplace with
        ``force_variance="exact"``: D backward passes); False computes the
        mean-model stress alone (one backward pass, K for a deep ensemble).
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        schema.RESULT_ENERGY_STD,
        schema.RESULT_FORCES_STD,
        schema.RESULT_MAX_FORCE_STD,
        schema.RESULT_ENERGIES,
        schema.RESULT_FORCES_COMMITTEE,
        schema.RESULT_STRESS_STD,
        schema.RESULT_STRESS_COMMITTEE,
        schema.RESULT_ATOM_ENERGY_STD,
        schema.RESULT_CALIBRATION_EXCESS,
        schema.RESULT_STRAIN_ENERGY_STD,
        schema.RESULT_ENERGY_DOF,
        schema.RESULT_FORCES_DOF,
    ]

    def __init__(self, model, *, dtype: torch.dtype = torch.float64,
                 stress_uncertainty: bool = True):
        super().__init__()
        if isinstance(model, MLIP):
            self.model = copy.deepcopy(model).to(dtype)
            self.model.eval()
            self._uq = False
        elif hasattr(model, "predict"):
            model = copy.deepcopy(model)
            self.model = model.to(dtype) if hasattr(model, "to") else model
            self._uq = True
        else:
            raise TypeError(
                f"Calculator needs an mlipuq MLIP or UQ wrapper, got {type(model).__name__}"
            )
        self.stress_uncertainty = bool(stress_uncertainty)

    @property
    def _stress_with_uncertainty(self) -> bool:
        return (self._uq and self.stress_uncertainty
                and bool(getattr(self.model, "has_stress_uncertainty", False)))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fill ``self.results``: energy and forces (and the uncertainty keys) once
        per structure; the stress only when asked (an extra pass, K passes for a
        deep ensemble), so MD at constant volume never pays for it. With a
        stress uncertainty, a stress asked before the energy comes from one
        ``predict(..., stress=True)`` pass that fills every key (its energies
        and forces equal those of ``predict`` without stress)."""
        if atoms is None:
            atoms = self.atoms
        if atoms is None:
            raise ValueError("Calculator.calculate needs an Atoms object")
        if system_changes:
            self.results = {}
        results = self.results
        stress_keys = ("stress", schema.RESULT_STRESS_STD, schema.RESULT_STRESS_COMMITTEE)
        want_stress = (any(key in properties for key in stress_keys)
                       and "stress" not in results and bool(np.all(atoms.pbc)))
        if want_stress and "energy" not in results and self._stress_with_uncertainty:
            pred = self.model.predict(atoms, stress=True)
            self._fill(results, pred)
            self._fill_stress(results, pred, atoms)
            return
        if "energy" not in results:
            if self._uq:
                self._fill(results, self.model.predict(atoms))
            else:
                out = self.model.compute(atoms)
                results["energy"] = float(out["energy"][0])
                results["forces"] = out["forces"]
                results["free_energy"] = results["energy"]
        if want_stress:
            if self._stress_with_uncertainty:
                self._fill_stress(results, self.model.predict(atoms, stress=True), atoms)
            elif self._uq:
                results["stress"] = full_3x3_to_voigt_6_stress(self.model.compute_stress(atoms))
            else:
                stress = self.model.compute(atoms, stress=True)["stress"][0]
                results["stress"] = full_3x3_to_voigt_6_stress(stress)

    @staticmethod
    def _fill(results: dict, pred) -> None:
        """Energy, forces and their uncertainties from a one-structure prediction."""
        results["energy"] = float(pred.energy[0])
        results["forces"] = pred.forces.copy()
        results[schema.RESULT_ENERGY_STD] = float(pred.energy_std[0])
        results[schema.RESULT_FORCES_STD] = pred.forces_std.copy()
        results[schema.RESULT_MAX_FORCE_STD] = float(pred.max_force_std[0])
        if pred.energy_members is not None:
            results[schema.RESULT_ENERGIES] = pred.energy_members[:, 0].copy()
        if pred.forces_members is not None:
            results[schema.RESULT_FORCES_COMMITTEE] = pred.forces_members.copy()
        if getattr(pred, "atom_energy_var", None) is not None:
            results[schema.RESULT_ATOM_ENERGY_STD] = np.sqrt(pred.atom_energy_var)
        if getattr(pred, "calibration_excess", None) is not None:  # > 1: widened, not fitted
            results[schema.RESULT_CALIBRATION_EXCESS] = float(pred.calibration_excess[0])
        if getattr(pred, "strain_energy_var", None) is not None:  # part of energy_std
            results[schema.RESULT_STRAIN_ENERGY_STD] = float(np.sqrt(pred.strain_energy_var[0]))
        for key, dof in ((schema.RESULT_ENERGY_DOF, pred.energy_dof),
                         (schema.RESULT_FORCES_DOF, pred.forces_dof)):
            if dof is not None:  # a Student-t: intervals need ν besides the std
                results[key] = float(dof)
        results["free_energy"] = results["energy"]

    def _fill_stress(self, results: dict, pred, atoms) -> None:
        """Stress (Voigt) and, where the prediction has them, its std and members."""
        if pred.stress is None:  # a wrapper that drops it: the mean model's
            results["stress"] = full_3x3_to_voigt_6_stress(self.model.compute_stress(atoms))
            return
        results["stress"] = full_3x3_to_voigt_6_stress(pred.stress[0])
        if pred.stress_var is not None:
            results[schema.RESULT_STRESS_STD] = _voigt(pred.stress_std[0])
        if pred.stress_members is not None:
            results[schema.RESULT_STRESS_COMMITTEE] = _voigt(pred.stress_members[:, 0])


def _voigt(matrices: np.ndarray) -> np.ndarray:
    """(..., 6) Voigt elements xx yy zz yz xz xy of symmetric (..., 3, 3) matrices
    (taken, not averaged: the std of an element is not the mean of two stds)."""
    return np.array(matrices[..., [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
