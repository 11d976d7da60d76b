"""Rotational symmetry: how far a model is from invariant energies and equivariant forces.

:func:`equivariance_error` evaluates every structure and its rotated copies
(periodic cells rotate with their atoms) and reports

.. math:: \\delta E = \\max_{R, b} |E(R x_b) - E(x_b)| / N_b \\quad (\\text{eV/atom}),
          \\qquad \\delta F = \\max_{R, i} |F_i(R x) - R F_i(x)| \\quad (\\text{eV/Å}),

with their RMS, the rotational spread of each structure's energy and each
atom's force (the std over the rotated copies, forces rotated back), and for a
UQ wrapper the same errors of its energy std and of each atom's force-std norm
:math:`\\sqrt{\\sum_c \\sigma^2_{F,ic}}` (invariant for every wrapper that keeps
the package invariants).

:class:`RotationalAverage` turns any wrapper (or base model) into one that
predicts the average over a rotation design and adds the rotational spread to
the variances as its own component.

Rotation designs (:func:`rotation_design`): ``"random"``, Haar-uniform
rotations from a fixed seed (scipy); ``"group"``, the rotation group of the
tetrahedron (12), octahedron (24) or icosahedron (60), turned by a fixed
random rotation so that its axes do not line up with the coordinate axes.
A group average removes the angular components of a non-invariant model
exactly up to a degree (2 for T, 3 for O, 5 for I), a random design only
statistically.

Thresholds (eV/atom for energies, eV/Å for forces), ``(pass_max, warn_max)``:

* ``pass`` up to :data:`ENERGY_THRESHOLDS` ``[0]`` = 1e-8 eV/atom and
  :data:`FORCE_THRESHOLDS` ``[0]`` = 1e-6 eV/Å: round-off. A model that is
  equivariant by construction, evaluated in float64 (the checks cast a copy),
  sits at 1e-12 to 1e-15; the margin covers sums over many atoms and
  neighbours.
* ``fail`` above 1e-3 eV/atom and 1e-2 eV/Å: the size of the test errors of
  good MLIPs (about 1 meV/atom and 10-50 meV/Å); symmetry breaking that large
  is comparable to the model's accuracy.
* ``warn`` between: approximately equivariant (e.g. learnt from augmented
  data), below the accuracy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mlipuq.trust.report import Result, as_target, grade, structures_list, worst

#: (pass_max, warn_max) of the energy invariance error (eV/atom).
ENERGY_THRESHOLDS = (1e-8, 1e-3)
#: (pass_max, warn_max) of the force equivariance error (eV/Å).
FORCE_THRESHOLDS = (1e-6, 1e-2)

_GROUPS = {12: "T", 24: "O", 60: "I"}
DESIGNS = ("random", "group")


def rotation_design(n_rotations: int = 16, *, design: str = "random", seed: int = 0) -> np.ndarray:
    """(n, 3, 3) rotation matrices: ``"random"`` (Haar-uniform, seeded) or ``"group"``
    (T, O or I for n = 12, 24, 60, turned by a seeded random rotation)."""
    from scipy.spatial.transform import Rotation

    n = int(n_rotations)
    if isinstance(n_rotations, bool) or n != n_rotations or n < 1:
        raise ValueError(f"n_rotations must be a positive integer, got {n_rotations!r}")
    if design == "random":
        return Rotation.random(n, random_state=int(seed)).as_matrix()
    if design == "group":
        if n not in _GROUPS:
            raise ValueError(f"design='group' needs n_rotations in {sorted(_GROUPS)} "
                             f"(T, O, I), got {n}")
        turn = Rotation.random(random_state=int(seed) + 1)
        group = Rotation.create_group(_GROUPS[n])
        return (turn * group * turn.inv()).as_matrix()
    raise ValueError(f"unknown rotation design {design!r}; choose from {DESIGNS}")


def rotate(atoms, rotation: np.ndarray):
    """A copy of ``atoms`` rotated by the 3x3 matrix ``rotation`` (positions, cell, momenta)."""
    r = np.asarray(rotation, np.float64)
    out = atoms.copy()
    out.calc = None
    out.positions = atoms.positions @ r.T
    if atoms.cell.rank > 0:
        out.set_cell(np.asarray(atoms.cell) @ r.T, scale_atoms=False)
    if atoms.has("momenta"):
        out.set_momenta(atoms.get_momenta() @ r.T)
    return out


@dataclass
class EquivarianceResult(Result):
    """Outcome of :func:`equivariance_error` (eV/atom, eV/Å).

    ``energy_spread`` (B,) is the std of E/N over the original and rotated copies
    of each structure (eV/atom); ``forces_spread`` (N,) the RMS length of each
    atom's force deviation from its rotation average (eV/Å). The ``*_std_*``
    fields are for UQ wrappers only (None otherwise).
    """

    n_structures: int
    n_rotations: int
    design: str
    energy_max: float
    energy_rms: float
    forces_max: float
    forces_rms: float
    energy_spread: np.ndarray
    forces_spread: np.ndarray
    energy_std_max: Optional[float] = None
    forces_std_max: Optional[float] = None
    thresholds: dict = field(default_factory=dict)
    verdict: str = "pass"
    name: str = "equivariance"
    kind: str = "equivariance"

    _skip = ("forces_spread",)

    def summary(self) -> str:
        text = (f"energy {self.energy_max:.1e} eV/atom, forces {self.forces_max:.1e} eV/Å")
        if self.energy_std_max is not None:
            text += (f"; uncertainty: energy std {self.energy_std_max:.1e} eV/atom, "
                     f"force std {self.forces_std_max:.1e} eV/Å")
        e, f = self.thresholds["energy"], self.thresholds["forces"]
        return (f"{text} (max over {self.n_rotations} rotations x {self.n_structures} "
                f"structures; threshold pass <= {e[0]:g} eV/atom, {f[0]:g} eV/Å; "
                f"fail > {e[1]:g} eV/atom, {f[1]:g} eV/Å)")


def _rotated_back(forces: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """R^T F for row vectors: forces of a rotated copy in the original frame."""
    return forces @ rotation


def equivariance_error(
    model,
    structures,
    n_rotations: int = 16,
    *,
    design: str = "random",
    seed: int = 0,
    energy_thresholds: tuple = ENERGY_THRESHOLDS,
    force_thresholds: tuple = FORCE_THRESHOLDS,
    batch_size: int = 32,
) -> EquivarianceResult:
    """Energy invariance and force equivariance errors over a rotation design.

    Parameters
    ----------
    model
        A base MLIP, a UQ wrapper (its uncertainties are checked too) or an
        ASE calculator; evaluated on a float64 copy.
    structures
        One ``ase.Atoms``, a list or an :class:`~mlipuq.AtomsDataset`.
    n_rotations, design, seed
        The rotation design (:func:`rotation_design`).
    energy_thresholds, force_thresholds
        ``(pass_max, warn_max)`` in eV/atom and eV/Å (module docstring).

    Returns
    -------
    EquivarianceResult
        Max and RMS errors (eV/atom, eV/Å), rotational spreads, the verdict.
    """
    target = as_target(model)
    structures = structures_list(structures)
    rotations = rotation_design(n_rotations, design=design, seed=seed)
    base = target.evaluate(structures, batch_size=batch_size)
    n_atoms = base.n_atoms.astype(np.float64)
    n_rot = len(rotations)
    energies = np.empty((n_rot + 1, len(structures)))
    energies[0] = base.energy
    forces = np.empty((n_rot + 1,) + base.forces.shape)
    forces[0] = base.forces
    e_std_err = f_std_err = None
    if target.has_uncertainty:
        e_std0 = np.sqrt(base.energy_var)
        f_norm0 = np.sqrt(base.forces_var.sum(axis=1))
        e_std_err, f_std_err = np.zeros(len(structures)), np.zeros(len(base.forces))
    for r, rotation in enumerate(rotations, start=1):
        out = target.evaluate([rotate(a, rotation) for a in structures], batch_size=batch_size)
        energies[r] = out.energy
        forces[r] = _rotated_back(out.forces, rotation)
        if target.has_uncertainty:
            e_std_err = np.maximum(e_std_err, np.abs(np.sqrt(out.energy_var) - e_std0))
            f_std_err = np.maximum(f_std_err, np.abs(np.sqrt(out.forces_var.sum(axis=1))
                                                    - f_norm0))
    e_err = np.abs(energies[1:] - energies[0]) / n_atoms  # (R, B)
    f_err = np.linalg.norm(forces[1:] - forces[0], axis=-1)  # (R, N)
    energy_spread = (energies / n_atoms).std(axis=0)
    deviation = forces - forces.mean(axis=0)
    forces_spread = np.sqrt((deviation**2).sum(axis=-1).mean(axis=0))
    result = EquivarianceResult(
        n_structures=len(structures), n_rotations=n_rot, design=design,
        energy_max=float(e_err.max()), energy_rms=float(np.sqrt((e_err**2).mean())),
        forces_max=float(f_err.max()), forces_rms=float(np.sqrt((f_err**2).mean())),
        energy_spread=energy_spread, forces_spread=forces_spread,
        thresholds={"energy": tuple(energy_thresholds), "forces": tuple(force_thresholds),
                    "unit": "eV/atom, eV/Å"},
    )
    verdicts = [grade(result.energy_max, *energy_thresholds),
                grade(result.forces_max, *force_thresholds)]
    if target.has_uncertainty:
        result.energy_std_max = float((e_std_err / n_atoms).max())
        result.forces_std_max = float(f_std_err.max())
        verdicts += [grade(result.energy_std_max, *energy_thresholds),
                     grade(result.forces_std_max, *force_thresholds)]
    result.verdict = worst(verdicts)
    return result


# ------------------------------------------------------------ rotational average
@dataclass
class RotationalPrediction:
    """:meth:`RotationalAverage.predict_components`: the averaged
    :class:`~mlipuq.prediction.Prediction` (its variances include the rotational
    spread) and that spread alone: ``energy_rotational_var`` (B,) eV² and
    ``forces_rotational_var`` (N, 3) eV²/Å²."""

    prediction: object
    energy_rotational_var: np.ndarray
    forces_rotational_var: np.ndarray


class RotationalAverage:
    """Average a UQ wrapper (or base MLIP) over rotated copies of each structure.

    ``predict`` returns a :class:`~mlipuq.prediction.Prediction` whose energy is
    the mean of :math:`E(R_r x)` over the design and whose forces are the mean of
    :math:`R_r^T F(R_r x)`; committee members are averaged member by member (so
    a member's forces stay the gradient of its energy). The variances are the
    averaged wrapper variances (force variances rotated back as
    :math:`\\mathrm{diag}(R^T \\mathrm{diag}(v) R)`, exact for uncorrelated
    components) plus the rotational spread (population variance over the design),
    which :meth:`predict_components` also returns on its own. For an
    equivariant model the spread is round-off and the average equals the model.

    It only calls the wrapped object's ``predict`` (``compute`` for a base
    MLIP), so it works for every wrapper, and it has what
    :class:`mlipuq.Calculator` and :func:`mlipuq.propagation.run_md` use
    (``predict``, ``to``, ``compute_stress``, ``fingerprint``, ``species``,
    ``cutoff``). Each prediction costs ``n_rotations`` evaluations.

    Parameters
    ----------
    wrapper
        A fitted UQ wrapper (anything with the wrappers' ``predict``) or a
        base :class:`~mlipuq.models.MLIP` (then the rotational spread is the
        only variance).
    n_rotations, design, seed
        The rotation design (:func:`rotation_design`); the default is the
        octahedral group (24 rotations).
    """

    def __init__(self, wrapper, n_rotations: int = 24, *, design: str = "group", seed: int = 0):
        from mlipuq.models.base import MLIP

        if not (isinstance(wrapper, MLIP) or callable(getattr(wrapper, "predict", None))):
            raise TypeError("RotationalAverage needs a UQ wrapper (with predict) or an mlipuq "
                            f"MLIP, got {type(wrapper).__name__}")
        self.wrapper = wrapper
        self.n_rotations = int(n_rotations)
        self.design = design
        self.seed = int(seed)
        self.rotations = rotation_design(n_rotations, design=design, seed=seed)

    # ------------------------------------------------------- wrapper protocol
    @property
    def _is_model(self) -> bool:
        from mlipuq.models.base import MLIP

        return isinstance(self.wrapper, MLIP)

    @property
    def species(self):
        return self.wrapper.species

    @property
    def cutoff(self) -> float:
        return self.wrapper.cutoff

    @property
    def dtype(self):
        return self.wrapper.dtype

    @property
    def base_model(self):
        return self.wrapper if self._is_model else self.wrapper.base_model

    @property
    def n_members(self) -> int:
        return 0 if self._is_model else int(getattr(self.wrapper, "n_members", 0))

    @property
    def has_consistent_members(self) -> bool:
        return bool(getattr(self.wrapper, "has_consistent_members", True))

    def to(self, dtype=None, *, device=None) -> "RotationalAverage":
        """Cast/move the wrapped object (as the wrappers' ``to``); returns ``self``."""
        if self._is_model:
            self.wrapper.to(dtype=dtype, device=device)
        elif callable(getattr(self.wrapper, "to", None)):
            self.wrapper.to(dtype, device=device)
        return self

    def fingerprint(self) -> str:
        """SHA-256 identity: the wrapped object's and the rotation design's."""
        from mlipuq.fileio import payload_digest

        inner = getattr(self.wrapper, "fingerprint", None)
        if callable(inner):
            inner_id = str(inner())
        else:
            inner_id = payload_digest({"class": type(self.wrapper).__name__,
                                       "state": dict(self.wrapper.state_dict())})
        return payload_digest({"class": "RotationalAverage", "inner": inner_id,
                               "rotations": np.ascontiguousarray(self.rotations)})

    def members_hint(self, *, forces: bool = False) -> str:
        hint = getattr(self.wrapper, "members_hint", None)
        return hint(forces=forces) if callable(hint) else "a committee wrapper"

    def members(self, structures, *, forces: bool = True, calibrated: bool = True,
                batch_size: int = 32):
        """A prediction with committee members (each averaged over the rotations),
        checked like :meth:`mlipuq.uq.UQWrapper.members`."""
        pred = self.predict(structures, calibrated=calibrated, batch_size=batch_size)
        self.check_members(pred, forces=forces)
        return pred

    def check_members(self, prediction, *, forces: bool) -> None:
        if self._is_model:
            raise ValueError("a RotationalAverage of a base model has no committee members")
        self.wrapper.check_members(prediction, forces=forces)

    # ----------------------------------------------------------------- predict
    def _inner(self, structures, batch_size, calibrated, composition, distributed):
        from mlipuq.prediction import Prediction

        if self._is_model:
            out = self.wrapper.compute(structures, batch_size=batch_size)
            n_atoms = np.asarray(out["n_atoms"], np.int64)
            zeros_e, zeros_f = np.zeros(len(n_atoms)), np.zeros_like(out["forces"])
            return Prediction(energy=out["energy"], energy_var=zeros_e, forces=out["forces"],
                              forces_var=zeros_f, n_atoms=n_atoms,
                              batch=np.repeat(np.arange(len(n_atoms)), n_atoms),
                              numbers=np.concatenate([a.numbers for a in structures]))
        return self.wrapper.predict(structures, batch_size=batch_size, calibrated=calibrated,
                                    composition=composition, distributed=distributed)

    def predict(self, structures, *, batch_size: int = 32, calibrated: bool = True,
                progress: bool = False, composition: bool = True,
                distributed: Optional[bool] = None):
        """The rotation-averaged :class:`~mlipuq.prediction.Prediction` (eV, eV/Å),
        variances including the rotational spread. Arguments as the wrappers' ``predict``."""
        return self.predict_components(structures, batch_size=batch_size, calibrated=calibrated,
                                       progress=progress, composition=composition,
                                       distributed=distributed).prediction

    def predict_components(self, structures, *, batch_size: int = 32, calibrated: bool = True,
                           progress: bool = False, composition: bool = True,
                           distributed: Optional[bool] = None) -> RotationalPrediction:
        """:meth:`predict` plus the rotational variances on their own."""
        import ase

        from mlipuq import distributed as mdist
        from mlipuq.prediction import Prediction

        if distributed is None:
            distributed = mdist.active() and not isinstance(structures, ase.Atoms)
        structures = structures_list(structures)
        n_rot = len(self.rotations)
        chunk = max(1, int(batch_size) // n_rot)
        parts, e_rot, f_rot = [], [], []
        for start in range(0, len(structures), chunk):
            group = structures[start:start + chunk]
            copies = [rotate(a, r) for a in group for r in self.rotations]
            pred = self._inner(copies, batch_size, calibrated, composition, distributed)
            part, e_var, f_var = self._average(group, pred)
            parts.append(part)
            e_rot.append(e_var)
            f_rot.append(f_var)
        return RotationalPrediction(Prediction.concatenate(parts), np.concatenate(e_rot),
                                    np.concatenate(f_rot))

    def _average(self, group, pred):
        """Average the prediction of ``len(group) * n_rot`` rotated copies per structure."""
        from mlipuq.prediction import Prediction

        rot = self.rotations
        n_rot, n_struct = len(rot), len(group)
        sizes = np.array([len(a) for a in group])
        energy = pred.energy.reshape(n_struct, n_rot)
        kw = {"energy": energy.mean(axis=1), "n_atoms": sizes,
              "batch": np.repeat(np.arange(n_struct), sizes),
              "numbers": np.concatenate([a.numbers for a in group])}
        e_rot = energy.var(axis=1)
        kw["energy_var"] = pred.energy_var.reshape(n_struct, n_rot).mean(axis=1) + e_rot
        for name in ("energy_aleatoric_var", "energy_epistemic_var"):
            value = getattr(pred, name)
            if value is not None:
                kw[name] = value.reshape(n_struct, n_rot).mean(axis=1)
        if pred.energy_members is not None:
            k = pred.energy_members.shape[0]
            kw["energy_members"] = pred.energy_members.reshape(k, n_struct, n_rot).mean(axis=2)
        forces, f_var, f_rot, atom_var, members = [], [], [], [], []
        start = 0
        for size in sizes:
            rows = [slice(start + r * size, start + (r + 1) * size) for r in range(n_rot)]
            start += n_rot * size
            back = np.stack([pred.forces[s] @ rot[r] for r, s in enumerate(rows)])  # (R, n, 3)
            forces.append(back.mean(axis=0))
            f_rot.append(back.var(axis=0))
            # diag(R^T diag(v) R)_a = sum_c R_ca^2 v_c
            var = np.stack([pred.forces_var[s] @ (rot[r] ** 2) for r, s in enumerate(rows)])
            f_var.append(var.mean(axis=0) + f_rot[-1])
            if pred.atom_energy_var is not None:
                atom_var.append(np.mean([pred.atom_energy_var[s] for s in rows], axis=0))
            if pred.forces_members is not None:
                members.append(np.mean([pred.forces_members[:, s] @ rot[r]
                                        for r, s in enumerate(rows)], axis=0))
        kw["forces"], kw["forces_var"] = np.concatenate(forces), np.concatenate(f_var)
        if atom_var:
            kw["atom_energy_var"] = np.concatenate(atom_var)
        if members:
            kw["forces_members"] = np.concatenate(members, axis=1)
        return Prediction(**kw), e_rot, np.concatenate(f_rot)

    def compute_stress(self, atoms) -> np.ndarray:
        """(3, 3) rotation-averaged stress (eV/Å^3): mean of R^T σ(R x) R."""
        out = np.zeros((3, 3))
        for r in self.rotations:
            copy = rotate(atoms, r)
            if self._is_model:
                stress = self.wrapper.compute(copy, stress=True)["stress"][0]
            else:
                stress = self.wrapper.compute_stress(copy)
            out += r.T @ np.asarray(stress, np.float64) @ r
        return out / len(self.rotations)
