"""ASE calculator for base MLIPs and UQ wrappers.

>>> atoms.calc = mlipuq.Calculator(model)
>>> atoms.get_potential_energy(), atoms.get_forces()
>>> atoms.calc.results["energy_std"]          # with a UQ wrapper

Results (eV, Å): ``energy``, ``free_energy``, ``forces``, ``stress`` (periodic
cells, Voigt order, eV/Å^3, computed only when asked for); with a UQ wrapper also ``energy_std`` (eV),
``forces_std`` ((N, 3), eV/Å), ``max_force_std`` (eV/Å, the DP-GEN model
deviation) and, where the wrapper has a committee,
``energies`` ((K,), eV) and ``forces_committee`` ((K, N, 3), eV/Å).
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
    ]

    def __init__(self, model, *, dtype: torch.dtype = torch.float64):
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

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fill ``self.results``: energy and forces (and the uncertainty keys) once
        per structure; the stress only when asked (an extra pass, K passes for a
        deep ensemble), so MD at constant volume never pays for it."""
        if atoms is None:
            atoms = self.atoms
        if atoms is None:
            raise ValueError("Calculator.calculate needs an Atoms object")
        if system_changes:
            self.results = {}
        results = self.results
        if "energy" not in results:
            if self._uq:
                pred = self.model.predict(atoms)
                results["energy"] = float(pred.energy[0])
                results["forces"] = pred.forces.copy()
                results[schema.RESULT_ENERGY_STD] = float(pred.energy_std[0])
                results[schema.RESULT_FORCES_STD] = pred.forces_std.copy()
                results[schema.RESULT_MAX_FORCE_STD] = float(pred.max_force_std[0])
                if pred.energy_members is not None:
                    results[schema.RESULT_ENERGIES] = pred.energy_members[:, 0].copy()
                if pred.forces_members is not None:
                    results[schema.RESULT_FORCES_COMMITTEE] = pred.forces_members.copy()
            else:
                out = self.model.compute(atoms)
                results["energy"] = float(out["energy"][0])
                results["forces"] = out["forces"]
            results["free_energy"] = results["energy"]
        if "stress" in properties and "stress" not in results and np.all(atoms.pbc):
            if self._uq:
                stress = self.model.compute_stress(atoms)
            else:
                stress = self.model.compute(atoms, stress=True)["stress"][0]
            results["stress"] = full_3x3_to_voigt_6_stress(stress)
