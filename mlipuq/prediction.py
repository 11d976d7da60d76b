"""The :class:`Prediction` every UQ wrapper's ``predict()`` returns.

Fields, shapes and units (B structures, N atoms in total, K committee members):

========================  ===========  ==========================================
field                     shape        unit
========================  ===========  ==========================================
``energy``                (B,)         eV
``energy_var``            (B,)         eV^2
``forces``                (N, 3)       eV/Å
``forces_var``            (N, 3)       eV^2/Å^2, per Cartesian component
``energy_members``        (K, B)       eV (committee-type wrappers, LLPR samples)
``forces_members``        (K, N, 3)    eV/Å
``energy_aleatoric_var``  (B,)         eV^2 (evidential)
``energy_epistemic_var``  (B,)         eV^2 (evidential)
``atom_energy_var``       (N,)         eV^2, local (per-atom) energy variance (LLPR)
``stress``                (B, 3, 3)    eV/Å^3, ``predict(..., stress=True)`` only
``stress_var``            (B, 3, 3)    eV^2/Å^6, element-wise (``has_stress_uncertainty``)
``stress_members``        (K, B, 3, 3) eV/Å^3 (committee-type wrappers, LLPR samples)
``n_atoms``               (B,)         atoms per structure
``batch``                 (N,)         index of each atom's structure
``numbers``               (N,)         atomic number of each atom (set by ``predict``)
``calibration_excess``    (B,)         >= 1: how far the raw std lies beyond the calibration
                                       data's range (1 inside; set by recalibration)
``strain_energy_var``     (B,)         eV^2, the first-order energy error of a strained cell
                                       (the mean model's stress error measured by
                                       ``calibrate`` on stress labels; part of the
                                       calibrated ``energy_var``)
``energy_distance_var``   (B,)         eV^2, the part a latent-distance term gave the energy
                                       variance, where a wrapper combines it with another
                                       (the evidential head; its recalibration scales it
                                       with ``energy_var``): how far the structure lies
                                       from the reference in the term's own measure
``energy_dof``            scalar       Student-t degrees of freedom of the energies
``forces_dof``            scalar       ... of the force components
========================  ===========  ==========================================

``energy_dof`` / ``forces_dof`` are None (Gaussian predictive) unless a
Student-t recalibration set them (``calibrate(val)`` fits one to the forces by
default; ``method="student_t"`` to both targets); the
std is then the Gaussian-equivalent std, the half-width of the central 68 %
interval (:mod:`mlipuq.predictive`), and :meth:`Prediction.interval`
gives the t intervals. Where ``calibration_excess`` > 1 the calibrated std
was extrapolated and widened, not fitted (:mod:`mlipuq.calibration.extrapolation`).

All arrays are NumPy float64 (``n_atoms`` and ``batch`` are int64). Standard
deviations are properties computed from the stored variances.

Stresses follow ASE's convention, :math:`\\sigma = V^{-1}\\,\\partial E/\\partial
\\varepsilon` (the sign of ``MLIP.compute(..., stress=True)`` and of
``atoms.get_stress()``), as full symmetric 3 x 3 matrices; ``stress_var`` is
the variance of each element (None where a wrapper has no stress
uncertainty, see ``docs/stress.md``).

This module is neutral ground: the UQ wrappers (``mlipuq.uq``) produce
predictions, calibration, propagation and active learning consume them, and
this module imports none of them. Its file I/O: :meth:`Prediction.columns`
gives the extxyz columns :meth:`mlipuq.data.AtomsDataset.write` writes, and
:func:`read_prediction` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np

from mlipuq import schema

#: Scalar fields (one value for all targets), kept as Python floats.
_SCALARS = ("energy_dof", "forces_dof")

_OPTIONAL = (
    "energy_members",
    "forces_members",
    "energy_aleatoric_var",
    "energy_epistemic_var",
    "atom_energy_var",
    "numbers",
    "stress",
    "stress_var",
    "stress_members",
    "calibration_excess",
    "strain_energy_var",
    "energy_distance_var",
)


@dataclass
class Prediction:
    """Energies and forces with their uncertainties (eV, Å)."""

    energy: np.ndarray
    energy_var: np.ndarray
    forces: np.ndarray
    forces_var: np.ndarray
    n_atoms: np.ndarray
    batch: np.ndarray
    energy_members: Optional[np.ndarray] = None
    forces_members: Optional[np.ndarray] = None
    energy_aleatoric_var: Optional[np.ndarray] = None
    energy_epistemic_var: Optional[np.ndarray] = None
    atom_energy_var: Optional[np.ndarray] = None
    numbers: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    stress_var: Optional[np.ndarray] = None
    stress_members: Optional[np.ndarray] = None
    calibration_excess: Optional[np.ndarray] = None
    strain_energy_var: Optional[np.ndarray] = None
    energy_distance_var: Optional[np.ndarray] = None
    energy_dof: Optional[float] = None
    forces_dof: Optional[float] = None

    def __post_init__(self) -> None:
        from mlipuq.predictive import check_dof

        self.energy_dof = check_dof(self.energy_dof, "Prediction.energy_dof")
        self.forces_dof = check_dof(self.forces_dof, "Prediction.forces_dof")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in _SCALARS:
                continue
            dtype = np.int64 if f.name in ("n_atoms", "batch", "numbers") else np.float64
            setattr(self, f.name, np.asarray(value, dtype=dtype))
        b = self.energy.shape
        n = int(self.n_atoms.sum())
        expected = {
            "energy": b,
            "energy_var": b,
            "n_atoms": b,
            "forces": (n, 3),
            "forces_var": (n, 3),
            "batch": (n,),
            "energy_aleatoric_var": b,
            "energy_epistemic_var": b,
            "atom_energy_var": (n,),
            "numbers": (n,),
            "stress": b + (3, 3),
            "stress_var": b + (3, 3),
            "calibration_excess": b,
            "strain_energy_var": b,
            "energy_distance_var": b,
        }
        if self.energy.ndim != 1:
            raise ValueError(f"Prediction.energy must have shape (B,), got {self.energy.shape}")
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"Prediction.{name} must have shape {shape}, got {value.shape}")
        if self.energy_members is not None:
            if self.energy_members.ndim != 2 or self.energy_members.shape[1] != b[0]:
                raise ValueError(
                    f"Prediction.energy_members must have shape (K, {b[0]}), "
                    f"got {self.energy_members.shape}"
                )
        if self.forces_members is not None:
            if self.forces_members.ndim != 3 or self.forces_members.shape[1:] != (n, 3):
                raise ValueError(
                    f"Prediction.forces_members must have shape (K, {n}, 3), "
                    f"got {self.forces_members.shape}"
                )
        if self.stress_members is not None:
            if self.stress_members.ndim != 4 or self.stress_members.shape[1:] != b + (3, 3):
                raise ValueError(
                    f"Prediction.stress_members must have shape (K, {b[0]}, 3, 3), "
                    f"got {self.stress_members.shape}"
                )
        if self.stress_var is not None and self.stress is None:
            raise ValueError("Prediction.stress_var is given without stress")
        for name in (
            "energy_var",
            "forces_var",
            "energy_aleatoric_var",
            "energy_epistemic_var",
            "atom_energy_var",
            "stress_var",
            "strain_energy_var",
        ):
            value = getattr(self, name)
            if value is not None and np.any(value < 0):
                raise ValueError(f"Prediction.{name} has negative variances")

    # ------------------------------------------------------------------ views
    @property
    def energy_std(self) -> np.ndarray:
        """Energy standard deviation per structure (eV)."""
        return np.sqrt(self.energy_var)

    @property
    def forces_std(self) -> np.ndarray:
        """Force standard deviation per atom and Cartesian component (eV/Å)."""
        return np.sqrt(self.forces_var)

    @property
    def stress_std(self) -> Optional[np.ndarray]:
        """(B, 3, 3) stress standard deviation per element (eV/Å^3); None without
        ``stress_var``."""
        return None if self.stress_var is None else np.sqrt(self.stress_var)

    @property
    def energy_per_atom(self) -> np.ndarray:
        """Energy per atom (eV/atom)."""
        return self.energy / self.n_atoms

    @property
    def energy_per_atom_std(self) -> np.ndarray:
        """Energy standard deviation per atom (eV/atom)."""
        return self.energy_std / self.n_atoms

    @property
    def max_force_std(self) -> np.ndarray:
        """(B,) DP-GEN model deviation: the largest per-atom norm of the force std
        vector, ``max_i sqrt(sum_c Var F_ic)`` (eV/Å)."""
        per_atom = np.sqrt(self.forces_var.sum(axis=1))
        out = np.zeros(self.n_structures)
        np.maximum.at(out, self.batch, per_atom)
        return out

    @property
    def n_structures(self) -> int:
        return int(self.energy.shape[0])

    @property
    def n_members(self) -> int:
        """Number of committee members (0 when the wrapper exposes none)."""
        return 0 if self.energy_members is None else int(self.energy_members.shape[0])

    def interval(self, level: float = 0.95, target: str = "forces") -> tuple:
        """Central predictive interval ``(low, high)`` of coverage ``level``.

        ``target``: ``"energy"`` ((B,) eV) or ``"forces"`` ((N, 3) eV/Å).
        Gaussian, μ ± σΦ⁻¹(½ + level/2), unless the prediction carries
        Student-t degrees of freedom (``energy_dof`` / ``forces_dof``); then
        the t interval of :mod:`mlipuq.predictive`.
        """
        from mlipuq.predictive import half_width

        if target not in ("energy", "forces"):
            raise ValueError(f"target must be 'energy' or 'forces', got {target!r}")
        mean, std = getattr(self, target), getattr(self, f"{target}_std")
        half = half_width(std, getattr(self, f"{target}_dof"), level)
        return mean - half, mean + half

    def structure(self, index: int) -> "Prediction":
        """The prediction of one structure, as a Prediction with B = 1."""
        if not -self.n_structures <= index < self.n_structures:
            raise IndexError(f"structure index {index} out of range for {self.n_structures}")
        index %= self.n_structures
        atoms = self.batch == index
        kwargs = {
            "energy": self.energy[index : index + 1],
            "energy_var": self.energy_var[index : index + 1],
            "forces": self.forces[atoms],
            "forces_var": self.forces_var[atoms],
            "n_atoms": self.n_atoms[index : index + 1],
            "batch": np.zeros(int(atoms.sum()), dtype=np.int64),
            "energy_dof": self.energy_dof,
            "forces_dof": self.forces_dof,
        }
        if self.energy_members is not None:
            kwargs["energy_members"] = self.energy_members[:, index : index + 1]
        if self.forces_members is not None:
            kwargs["forces_members"] = self.forces_members[:, atoms]
        if self.stress_members is not None:
            kwargs["stress_members"] = self.stress_members[:, index : index + 1]
        for name in ("atom_energy_var", "numbers"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value[atoms]
        for name in ("energy_aleatoric_var", "energy_epistemic_var", "stress", "stress_var",
                     "calibration_excess", "strain_energy_var", "energy_distance_var"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value[index : index + 1]
        return Prediction(**kwargs)

    @classmethod
    def concatenate(cls, predictions: Sequence["Prediction"]) -> "Prediction":
        """Join predictions of consecutive batches into one."""
        predictions = list(predictions)
        if not predictions:
            raise ValueError("cannot concatenate an empty list of predictions")
        offsets = np.cumsum([0] + [p.n_structures for p in predictions[:-1]])
        kwargs = {
            "energy": np.concatenate([p.energy for p in predictions]),
            "energy_var": np.concatenate([p.energy_var for p in predictions]),
            "forces": np.concatenate([p.forces for p in predictions]),
            "forces_var": np.concatenate([p.forces_var for p in predictions]),
            "n_atoms": np.concatenate([p.n_atoms for p in predictions]),
            "batch": np.concatenate([p.batch + o for p, o in zip(predictions, offsets)]),
        }
        for name in _OPTIONAL:
            values = [getattr(p, name) for p in predictions]
            present = [v is not None for v in values]
            if all(present):
                axis = 1 if name.endswith("members") else 0
                kwargs[name] = np.concatenate(values, axis=axis)
            elif any(present):
                raise ValueError(f"cannot concatenate predictions where only some have {name}")
        for name in _SCALARS:
            values = {getattr(p, name) for p in predictions}
            if len(values) > 1:
                raise ValueError(f"cannot concatenate predictions with different {name}: "
                                 f"{sorted(values, key=str)}")
            kwargs[name] = values.pop()
        return cls(**kwargs)

    # -------------------------------------------------------------- file I/O
    def columns(self, index: int) -> tuple[dict, dict]:
        """``(info, arrays)`` extxyz columns of structure ``index``: predicted energy
        and std (eV) and committee energies per structure, predicted forces and
        their std (eV/Å, per component) per atom (keys in :mod:`mlipuq.schema`).

        With a stress, ``mlipuq_stress`` and (where there is a variance)
        ``mlipuq_stress_std`` per structure: full 3 x 3 matrices (eV/Å^3), the
        form MD frames use for ``mlipuq_stress``; ASE's extxyz writes them as
        a nested JSON list and reads them back as (3, 3) arrays.

        Per atom, for colouring structures in a viewer: ``mlipuq_forces_std_norm``
        (N,) = sqrt(sum_c σ²_F,ic) (eV/Å; the key MD frames use), and, where the
        prediction has local energy variances (``atom_energy_var``: LLPR,
        shallow and deep ensembles, latent distance; not the evidential head),
        ``mlipuq_atom_energy_std`` (N,) = their square root (eV).
        """
        one = self.structure(index)
        info = {schema.ENERGY: float(one.energy[0]), schema.ENERGY_STD: float(one.energy_std[0])}
        if one.energy_members is not None:
            info[schema.ENERGY_MEMBERS] = np.asarray(one.energy_members[:, 0])
        if one.stress is not None:
            info[schema.STRESS] = np.array(one.stress[0])
        if one.stress_var is not None:
            info[schema.STRESS_STD] = np.array(one.stress_std[0])
        if one.calibration_excess is not None:
            info[schema.CALIBRATION_EXCESS] = float(one.calibration_excess[0])
        if one.strain_energy_var is not None:
            info[schema.STRAIN_ENERGY_STD] = float(np.sqrt(one.strain_energy_var[0]))
        if one.energy_distance_var is not None:
            info[schema.ENERGY_DISTANCE_STD] = float(np.sqrt(one.energy_distance_var[0]))
        for key, dof in ((schema.ENERGY_DOF, one.energy_dof), (schema.FORCES_DOF, one.forces_dof)):
            if dof is not None:
                info[key] = float(dof)
        arrays = {schema.FORCES: np.asarray(one.forces), schema.FORCES_STD: one.forces_std,
                  schema.FORCES_STD_NORM: np.sqrt(one.forces_var.sum(axis=1))}
        if one.atom_energy_var is not None:
            arrays[schema.ATOM_ENERGY_STD] = np.sqrt(one.atom_energy_var)
        return info, arrays


def _number(value, path: str, k: int, key: str) -> float:
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        raise _column_error(path, k, key, f"{value!r} is not a number")
    return float(value)


def _column_error(path: str, k: int, key: str, problem: str):
    from mlipuq.errors import InputFileError

    return InputFileError(f"{path}: frame {k}: {key}: {problem}", file=path, frame=k, key=key)


def _stress_matrix(value, path: str, k: int, key: str) -> np.ndarray:
    """A (3, 3) stress from a (3, 3), 9-value or Voigt-6 (xx yy zz yz xz xy) column."""
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)):
            raise TypeError
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _column_error(path, k, key, f"{value!r} is not numeric") from None
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.reshape(6)
        array = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif array.size == 9:
        array = array.reshape(3, 3)
    else:
        raise _column_error(path, k, key, f"{array.size} values; expected a 3x3 matrix "
                            "(9 values) or Voigt 6")
    if not np.isfinite(array).all():
        raise _column_error(path, k, key, "non-finite values")
    return array


def read_prediction(path) -> tuple["Prediction", object]:
    """``(Prediction, AtomsDataset)`` from an extxyz written by
    :meth:`mlipuq.data.AtomsDataset.write` with a prediction.

    Stresses (``mlipuq_stress``, ``mlipuq_stress_std``: 3 x 3, 9 values or
    Voigt 6, eV/Å^3) are read when every frame has them, and so are local
    energy stds (``mlipuq_atom_energy_std``, eV, into ``atom_energy_var``).
    ``mlipuq_forces_std_norm`` is not read: it follows from ``mlipuq_forces_std``.
    Files without these optional columns (older ones) read as before.

    Raises :class:`~mlipuq.errors.InputFileError` (a ``ValueError``) naming the
    file, frame and key when a prediction column is missing or malformed.
    """
    import os

    from mlipuq.data import load

    path = os.fspath(path)
    structures = load(path)
    if len(structures) == 0:
        raise ValueError(f"{path}: no structures")
    energy, energy_std, forces, forces_std, members = [], [], [], [], []
    for k, atoms in enumerate(structures):
        for key in (schema.ENERGY, schema.ENERGY_STD):
            if key not in atoms.info:
                raise _column_error(path, k, key, "missing prediction column")
        for key in (schema.FORCES, schema.FORCES_STD):
            if key not in atoms.arrays:
                raise _column_error(path, k, key, "missing prediction column")
        energy.append(_number(atoms.info[schema.ENERGY], path, k, schema.ENERGY))
        energy_std.append(_number(atoms.info[schema.ENERGY_STD], path, k, schema.ENERGY_STD))
        shape = (len(atoms), 3)
        forces.append(np.asarray(atoms.arrays[schema.FORCES], np.float64).reshape(shape))
        forces_std.append(np.asarray(atoms.arrays[schema.FORCES_STD], np.float64).reshape(shape))
        if schema.ENERGY_MEMBERS in atoms.info:
            members.append(np.atleast_1d(np.asarray(atoms.info[schema.ENERGY_MEMBERS],
                                                    np.float64)))
    energy_members = None
    if len(members) == len(structures) and len({m.shape for m in members}) == 1:
        energy_members = np.stack(members, axis=1)
    stress = stress_var = None
    if all(schema.STRESS in a.info for a in structures):
        stress = np.stack([_stress_matrix(a.info[schema.STRESS], path, k, schema.STRESS)
                           for k, a in enumerate(structures)])
        if all(schema.STRESS_STD in a.info for a in structures):
            std = [_stress_matrix(a.info[schema.STRESS_STD], path, k, schema.STRESS_STD)
                   for k, a in enumerate(structures)]
            for k, one in enumerate(std):
                if (one < 0).any():
                    raise _column_error(path, k, schema.STRESS_STD, "negative std")
            stress_var = np.stack(std) ** 2
    atom_energy_var = None
    if all(schema.ATOM_ENERGY_STD in a.arrays for a in structures):
        stds = []
        for k, a in enumerate(structures):
            try:
                std = np.asarray(a.arrays[schema.ATOM_ENERGY_STD], np.float64).reshape(len(a))
            except (TypeError, ValueError):
                raise _column_error(path, k, schema.ATOM_ENERGY_STD,
                                    f"expected {len(a)} numbers, one per atom") from None
            if not np.isfinite(std).all() or (std < 0).any():
                raise _column_error(path, k, schema.ATOM_ENERGY_STD,
                                    "std must be finite and >= 0")
            stds.append(std)
        atom_energy_var = np.concatenate(stds) ** 2
    energy_std, forces_std = np.asarray(energy_std), np.concatenate(forces_std)
    for name, values in (("energy", energy_std), ("forces", forces_std)):
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"{path}: predicted {name} std must be finite and >= 0")
    n_atoms = structures.n_atoms
    prediction = Prediction(
        energy=np.asarray(energy), energy_var=energy_std**2,
        forces=np.concatenate(forces), forces_var=forces_std**2,
        n_atoms=n_atoms, batch=np.repeat(np.arange(len(structures)), n_atoms),
        numbers=np.concatenate([a.numbers for a in structures]),
        energy_members=energy_members, atom_energy_var=atom_energy_var,
        stress=stress, stress_var=stress_var,
        calibration_excess=_read_excess(structures, path),
        strain_energy_var=_read_strain(structures, path),
        energy_distance_var=_read_squared(structures, schema.ENERGY_DISTANCE_STD, path),
        energy_dof=_read_dof(structures, schema.ENERGY_DOF, path),
        forces_dof=_read_dof(structures, schema.FORCES_DOF, path),
    )
    return prediction, structures


def _frame_column(structures, key: str, path: str, least: float) -> Optional[np.ndarray]:
    """The per-frame number ``key`` when every frame has it (each finite and >= ``least``,
    else an error naming the frame), else None."""
    if not all(key in atoms.info for atoms in structures):
        return None
    values = np.array([_number(a.info[key], path, k, key) for k, a in enumerate(structures)])
    bad = np.flatnonzero(~((values >= least) & np.isfinite(values)))
    if bad.size:
        raise _column_error(path, int(bad[0]), key, f"must be a finite number >= {least:g}")
    return values


def _read_excess(structures, path: str) -> Optional[np.ndarray]:
    """``mlipuq_calibration_excess`` per frame when every frame has it, else None."""
    return _frame_column(structures, schema.CALIBRATION_EXCESS, path, 1.0)


def _read_strain(structures, path: str) -> Optional[np.ndarray]:
    """``strain_energy_var`` from ``mlipuq_strain_energy_std`` when every frame has it."""
    return _read_squared(structures, schema.STRAIN_ENERGY_STD, path)


def _read_squared(structures, key: str, path: str) -> Optional[np.ndarray]:
    """The square of the per-frame std ``key`` (each finite and >= 0) when every frame
    has it, else None."""
    std = _frame_column(structures, key, path, 0.0)
    return None if std is None else std**2


def _read_dof(structures, key: str, path: str) -> Optional[float]:
    """The Student-t ``key`` column (one value for the file), or None when absent."""
    present = [key in atoms.info for atoms in structures]
    if not any(present):
        return None
    if not all(present):
        k = present.index(False)
        raise _column_error(path, k, key, "missing here but present in other frames")
    values = []
    for k, atoms in enumerate(structures):
        value = _number(atoms.info[key], path, k, key)
        if not np.isfinite(value) or value <= 0:
            raise _column_error(path, k, key, f"degrees of freedom must be > 0, got {value}")
        values.append(value)
    if len(set(values)) > 1:
        raise _column_error(path, 0, key, "differs between frames (one predictive per file)")
    return values[0]
