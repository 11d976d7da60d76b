"""Committee members of any UQ wrapper as ASE calculators.

Static properties are propagated by evaluating them once per member
(relaxations, equations of state, finite differences). Every wrapper whose
:class:`~mlipuq.prediction.Prediction` carries ``energy_members`` (and,
where forces are needed, ``forces_members``) exposes its members through
``predict``; this module turns member k into an ordinary ASE calculator.

* :class:`DeepEnsemble <mlipuq.uq.DeepEnsemble>` and
  :class:`ShallowEnsemble <mlipuq.uq.ShallowEnsemble>`: members are the models / heads.
* :class:`LastLayerLaplace <mlipuq.uq.LastLayerLaplace>`: members are the
  posterior samples drawn once at fit time (held fixed); forces of the
  members need ``force_variance="samples"``.

Members are evaluated through ``wrapper.predict`` (the recalibration, if the
wrapper was calibrated, stretches the members about their mean). One
:class:`CommitteeEvaluator` is shared by the K calculators and caches the last
structure, so evaluating all members on the same structure costs one
``predict`` call.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import all_changes

from mlipuq.prediction import Prediction


def check_members(prediction: Prediction, wrapper, *, forces: bool) -> None:
    """ValueError unless ``prediction`` has energy (and force) members usable
    member-wise (the wrapper's :meth:`~mlipuq.uq.base.UQWrapper.check_members`)."""
    wrapper.check_members(prediction, forces=forces)


class CommitteeEvaluator:
    """Member energies and forces of a UQ wrapper for one structure at a time (cached).

    Parameters
    ----------
    wrapper
        A fitted UQ wrapper whose predictions carry ``energy_members``.
    forces
        Members' forces are needed (``forces_members`` must be present).
    calibrated
        Use the wrapper's recalibrated members (default).
    """

    def __init__(self, wrapper, *, forces: bool = True, calibrated: bool = True):
        if not hasattr(wrapper, "predict"):
            raise TypeError(f"expected a UQ wrapper, got {type(wrapper).__name__}")
        self.wrapper = wrapper
        self.forces = bool(forces)
        self.calibrated = bool(calibrated)
        self._key = None
        self._prediction = None

    @staticmethod
    def _state(atoms) -> tuple:
        return (
            atoms.numbers.tobytes(),
            np.asarray(atoms.positions, dtype=np.float64).tobytes(),
            np.asarray(atoms.cell, dtype=np.float64).tobytes(),
            np.asarray(atoms.pbc).tobytes(),
        )

    def predict(self, atoms) -> Prediction:
        """The wrapper's prediction for one structure (reused if unchanged)."""
        key = self._state(atoms)
        if key != self._key:
            pred = self.wrapper.predict(atoms, calibrated=self.calibrated)
            check_members(pred, self.wrapper, forces=self.forces)
            self._key, self._prediction = key, pred
        return self._prediction

    def energies(self, structures) -> np.ndarray:
        """(K, B) member energies (eV) for several structures, in one batched call."""
        pred = self.wrapper.predict(list(structures), calibrated=self.calibrated)
        check_members(pred, self.wrapper, forces=False)
        return pred.energy_members

    def members_of(self, structures) -> Prediction:
        """Batched prediction with members checked (energies and, if required, forces)."""
        pred = self.wrapper.predict(list(structures), calibrated=self.calibrated)
        check_members(pred, self.wrapper, forces=self.forces)
        return pred


class MemberCalculator(_ASECalculator):
    """ASE calculator for committee member ``k`` (energy in eV, forces in eV/Å)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, evaluator: CommitteeEvaluator, k: int):
        super().__init__()
        self.evaluator = evaluator
        self.k = int(k)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pred = self.evaluator.predict(self.atoms)
        if not -pred.n_members <= self.k < pred.n_members:
            raise ValueError(f"member {self.k} does not exist: the committee has {pred.n_members}")
        energy = float(pred.energy_members[self.k, 0])
        self.results = {"energy": energy, "free_energy": energy}
        if pred.forces_members is not None:
            self.results["forces"] = pred.forces_members[self.k].copy()


def n_members(wrapper, atoms) -> int:
    """Number of committee members of ``wrapper`` (ValueError if it has none)."""
    pred = wrapper.predict(atoms)
    check_members(pred, wrapper, forces=False)
    return pred.n_members


def member_calculators(wrapper, *, forces: bool = True, calibrated: bool = True, atoms=None):
    """One ASE calculator per committee member of ``wrapper``.

    Parameters
    ----------
    wrapper
        A fitted UQ wrapper with committee members (see the module docstring).
    forces
        Require member forces (relaxations, MD, finite differences). A wrapper
        without ``forces_members`` raises ValueError saying what to use.
    calibrated
        Use recalibrated members.
    atoms
        A structure evaluated once to check that the members exist
        (recommended; without it the count is the wrapper's ``n_members``).

    Returns
    -------
    list of MemberCalculator
        K calculators sharing one cached :class:`CommitteeEvaluator`.
    """
    evaluator = CommitteeEvaluator(wrapper, forces=forces, calibrated=calibrated)
    if atoms is not None:
        k = evaluator.predict(atoms).n_members
    else:
        k = int(wrapper.n_members)
        if k < 1:
            raise ValueError(f"{type(wrapper).__name__} has no committee members: member-wise "
                             f"propagation needs {wrapper.members_hint(forces=forces)}")
    return [MemberCalculator(evaluator, i) for i in range(k)]
