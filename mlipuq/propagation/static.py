"""Direct propagation of static properties: evaluate once per member, report mean ± std.

For a committee of K potentials (deep or shallow ensemble members, or LLPR
posterior samples; see :mod:`mlipuq.propagation.committee`) a property
:math:`P` is computed with every member, :math:`P_k`, and reported as
:math:`\\bar P \\pm \\sigma_P` over members (population std, ``ddof=0``), the
"direct propagation" of Kellner & Ceriotti (2024). This keeps the correlation
between energies of different structures that a single std per structure
would lose (an equation of state shifted as a whole costs nothing in the
lattice constant).

* :func:`equation_of_state`: equilibrium volume, energy, lattice constant and
  bulk modulus (energies at isotropically scaled cells; no member stresses).
* :func:`vacancy_formation_energy`: unrelaxed or relaxed per member.
* :func:`vibrational_frequencies`: harmonic frequencies from a finite-difference
  Hessian of every member (needs member forces).
* :func:`relaxed_energies`: each member relaxes the structure (positions) itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from ase import units

from mlipuq.propagation.committee import CommitteeEvaluator, MemberCalculator

log = logging.getLogger(__name__)


@dataclass
class PropertyEstimate:
    """A property evaluated per committee member.

    Attributes
    ----------
    mean, std : numpy.ndarray
        Mean and standard deviation over members (``ddof=0``), unit in ``unit``.
    members : numpy.ndarray
        (K, ...) value for each member.
    unit : str
        Unit of the values.
    """

    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray
    unit: str = ""

    @classmethod
    def from_members(cls, members, unit: str = "") -> "PropertyEstimate":
        m = np.asarray(members, dtype=np.float64)
        return cls(mean=np.asarray(m.mean(axis=0)), std=np.asarray(m.std(axis=0)), members=m,
                   unit=unit)

    def __str__(self) -> str:
        if np.ndim(self.mean) == 0:
            return f"{float(self.mean):.6g} ± {float(self.std):.3g} {self.unit}".rstrip()
        return (f"PropertyEstimate(shape={np.shape(self.mean)}, K={len(self.members)}, "
                f"unit={self.unit!r})")


@dataclass
class EOSResult:
    """Equation of state per member (:func:`equation_of_state`).

    ``volume`` (Å³), ``energy`` (eV), ``bulk_modulus`` (GPa) and
    ``lattice_constant`` (Å) at the minimum; ``volumes`` (n,) Å³ and
    ``member_energies`` (K, n) eV are the fitted points.
    """

    volume: PropertyEstimate
    energy: PropertyEstimate
    bulk_modulus: PropertyEstimate
    lattice_constant: PropertyEstimate
    volumes: np.ndarray
    member_energies: np.ndarray


@dataclass
class RelaxationResult:
    """Energies of the structure relaxed by each member (:func:`relaxed_energies`).

    ``energy`` in eV; ``structures`` the K relaxed structures; ``converged``
    (K,) whether each relaxation reached ``fmax``.
    """

    energy: PropertyEstimate
    structures: list
    converged: np.ndarray


def _evaluator(wrapper, *, forces: bool, calibrated: bool) -> CommitteeEvaluator:
    return CommitteeEvaluator(wrapper, forces=forces, calibrated=calibrated)


def equation_of_state(
    atoms,
    wrapper,
    *,
    strain: float = 0.03,
    n_points: int = 9,
    eos: str = "birchmurnaghan",
    lattice_constant: Optional[float] = None,
    calibrated: bool = True,
) -> EOSResult:
    """Equation of state of every committee member.

    The cell is scaled isotropically by factors in ``[1 - strain, 1 + strain]``
    (positions scaled with it, no relaxation: exact for one atom per primitive
    cell and for ideal crystals), member energies are evaluated in one batched
    call, and each member's energies are fitted with
    :class:`ase.eos.EquationOfState`.

    Parameters
    ----------
    atoms
        A periodic structure near equilibrium.
    wrapper
        UQ wrapper with committee energies.
    strain
        Largest linear strain (fraction, 0 < strain < 0.5).
    n_points
        Number of volumes (>= 5).
    eos
        Any equation-of-state name accepted by ASE (``"birchmurnaghan"``, ``"murnaghan"``, ...).
    lattice_constant
        Lattice constant (Å) of the input cell; the member's equilibrium value
        is this times :math:`(V_{0,k}/V)^{1/3}`. Default: the length of the
        first cell vector (the lattice constant of a cubic cell, divided by
        the supercell size for supercells).

    Returns
    -------
    EOSResult
        Equilibrium volume (Å³), energy (eV), bulk modulus (GPa) and lattice
        constant (Å) with their committee spread.
    """
    from ase.eos import EquationOfState

    if not np.all(atoms.pbc):
        raise ValueError("equation_of_state needs a cell periodic in all directions")
    if not 0 < float(strain) < 0.5 or int(n_points) < 5:
        raise ValueError(f"need 0 < strain < 0.5 and n_points >= 5, got {strain}, {n_points}")
    scales = np.linspace(1 - strain, 1 + strain, int(n_points))
    cell = np.asarray(atoms.cell)
    structures = []
    for s in scales:
        scaled = atoms.copy()
        scaled.calc = None
        scaled.set_cell(cell * s, scale_atoms=True)
        structures.append(scaled)
    volumes = atoms.get_volume() * scales**3
    energies = _evaluator(wrapper, forces=False, calibrated=calibrated).energies(structures)
    a_ref = float(np.linalg.norm(cell[0])) if lattice_constant is None else float(lattice_constant)
    v0, e0, b0 = [], [], []
    for k, e_k in enumerate(energies):
        fit = EquationOfState(volumes, e_k, eos=eos)
        try:
            v, e, b = fit.fit()
        except RuntimeError as err:  # scipy's curve_fit gave up
            raise ValueError(
                f"member {k}: the {eos} fit of its energies did not converge ({err}); "
                "does the member have an energy minimum near the input cell?"
            ) from err
        if not volumes.min() <= v <= volumes.max():
            log.warning("member %d: equilibrium volume %.3f Å³ outside the sampled range", k, v)
        v0.append(v)
        e0.append(e)
        b0.append(b / units.GPa)
    v0 = np.array(v0)
    return EOSResult(
        volume=PropertyEstimate.from_members(v0, "Å^3"),
        energy=PropertyEstimate.from_members(e0, "eV"),
        bulk_modulus=PropertyEstimate.from_members(b0, "GPa"),
        lattice_constant=PropertyEstimate.from_members(
            a_ref * (v0 / atoms.get_volume()) ** (1 / 3), "Å"
        ),
        volumes=volumes,
        member_energies=energies,
    )


def _relax(atoms, calc, fmax: float, max_steps: int) -> bool:
    from ase.optimize import BFGS

    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    return bool(opt.run(fmax=fmax, steps=max_steps))


def vacancy_formation_energy(
    atoms,
    wrapper,
    *,
    index: int = 0,
    relax: bool = False,
    fmax: float = 0.02,
    max_steps: int = 200,
    calibrated: bool = True,
) -> PropertyEstimate:
    """Vacancy formation energy of every member (eV).

    .. math:: E_f^{(k)} = E_k(\\text{N-1 atoms}) - \\frac{N-1}{N} E_k(\\text{bulk, N atoms})

    Parameters
    ----------
    atoms
        The perfect periodic (super)cell, at equilibrium.
    index
        The atom removed.
    relax
        Relax the vacancy cell's positions with each member (BFGS, cell
        fixed; needs member forces, i.e. ``forces_members``) instead of the
        unrelaxed value.
    fmax, max_steps
        Relaxation convergence (eV/Å) and step limit.

    Returns
    -------
    PropertyEstimate
        Formation energy (eV) per member, mean and std.
    """
    n = len(atoms)
    if n < 2 or not np.all(atoms.pbc):
        raise ValueError("vacancy_formation_energy needs a periodic cell with at least 2 atoms")
    if not -n <= int(index) < n:
        raise ValueError(f"index {index} out of range for {n} atoms")
    vacancy = atoms.copy()
    vacancy.calc = None
    del vacancy[int(index)]
    evaluator = _evaluator(wrapper, forces=relax, calibrated=calibrated)
    energies = evaluator.energies([atoms, vacancy])  # (K, 2)
    e_vac = energies[:, 1]
    if relax:
        e_vac = np.empty(len(energies))
        for k in range(len(energies)):
            relaxed = vacancy.copy()
            if not _relax(relaxed, MemberCalculator(evaluator, k), fmax, max_steps):
                log.warning("member %d: vacancy relaxation not converged in %d steps", k, max_steps)
            e_vac[k] = relaxed.get_potential_energy()
    return PropertyEstimate.from_members(e_vac - (n - 1) / n * energies[:, 0], "eV")


def relaxed_energies(
    atoms,
    wrapper,
    *,
    fmax: float = 0.02,
    max_steps: int = 200,
    calibrated: bool = True,
) -> RelaxationResult:
    """Each member relaxes ``atoms`` (positions, BFGS, cell fixed); energies in eV.

    Needs member forces (``forces_members``). Every step evaluates the whole
    committee through ``predict``, so this costs K relaxations of the full wrapper.
    """
    evaluator = _evaluator(wrapper, forces=True, calibrated=calibrated)
    k_total = evaluator.predict(atoms).n_members
    energies, structures, converged = [], [], []
    for k in range(k_total):
        relaxed = atoms.copy()
        relaxed.calc = None
        converged.append(_relax(relaxed, MemberCalculator(evaluator, k), fmax, max_steps))
        energies.append(relaxed.get_potential_energy())
        structures.append(relaxed)
    return RelaxationResult(
        energy=PropertyEstimate.from_members(energies, "eV"),
        structures=structures,
        converged=np.array(converged),
    )


def vibrational_frequencies(
    atoms,
    wrapper,
    *,
    indices: Optional[Sequence[int]] = None,
    delta: float = 0.01,
    calibrated: bool = True,
) -> PropertyEstimate:
    """Harmonic vibrational energies of every member by finite differences (meV).

    For each member, the Hessian of the moving atoms is built by central
    differences of the member's forces (displacements ±``delta`` Å), symmetrised
    and mass-weighted; its eigenvalues λ give :math:`\\hbar\\omega = \\hbar\\sqrt{\\lambda}`.
    Imaginary modes are returned as negative values. All 6n displaced
    structures are evaluated in one batched ``predict``.

    Parameters
    ----------
    atoms
        A relaxed structure (relax with the mean model first).
    indices
        Atoms allowed to move (default all).
    delta
        Displacement (Å).

    Returns
    -------
    PropertyEstimate
        (K, 3n) members, each sorted ascending, in meV (multiply by
        ``1e-3 / ase.units.invcm`` ≈ 8.0655 for cm⁻¹).
    """
    idx = np.arange(len(atoms)) if indices is None else np.asarray(indices, dtype=int)
    if idx.size == 0 or idx.min() < -len(atoms) or idx.max() >= len(atoms):
        raise ValueError(f"indices must select atoms among {len(atoms)}, got {indices!r}")
    if not float(delta) > 0:
        raise ValueError(f"delta must be positive (Å), got {delta}")
    idx = idx % len(atoms)
    displaced = []
    for a in idx:
        for c in range(3):
            for sign in (1, -1):
                d = atoms.copy()
                d.calc = None
                d.positions[a, c] += sign * delta
                displaced.append(d)
    pred = _evaluator(wrapper, forces=True, calibrated=calibrated).members_of(displaced)
    k_total, n = pred.n_members, len(atoms)
    forces = pred.forces_members.reshape(k_total, len(idx), 3, 2, n, 3)[:, :, :, :, idx, :]
    # H[k, (a,c), (b,d)] = -(F_bd(+) - F_bd(-)) / (2 delta)
    hess = -(forces[:, :, :, 0] - forces[:, :, :, 1]) / (2 * delta)
    hess = hess.reshape(k_total, 3 * len(idx), 3 * len(idx))
    hess = 0.5 * (hess + np.transpose(hess, (0, 2, 1)))
    m = np.repeat(atoms.get_masses()[idx], 3)
    dyn = hess / np.sqrt(m[:, None] * m[None, :])
    lam = np.linalg.eigvalsh(dyn)  # eV / (Å² amu), ascending
    scale = units._hbar * 1e10 / np.sqrt(units._e * units._amu)  # eV per sqrt(eV/(Å² amu))
    energies = 1000 * scale * np.sign(lam) * np.sqrt(np.abs(lam))
    return PropertyEstimate.from_members(np.sort(energies, axis=1), "meV")
