"""Energy conservation: are the forces the gradient of an energy, and does NVE drift?

:func:`jacobian_asymmetry` computes the force Jacobian
:math:`J = \\partial F / \\partial r` (3N x 3N) of each structure and the
asymmetry ratio of Bigi, Langer & Ceriotti ("The dark side of the forces",
arXiv:2412.11569, 2024)

.. math:: \\lambda = \\lVert J_\\mathrm{anti} \\rVert_F / \\lVert J \\rVert_F,
          \\qquad J_\\mathrm{anti} = (J - J^T)/2 .

Forces that are minus the gradient of an energy have :math:`J = -H`, the
Hessian, which is symmetric: :math:`\\lambda` is round-off (about 1e-16 with
autograd in float64). Base MLIPs are differentiated by autograd through their
forces (3N backward passes); UQ wrappers (their mean forces) and ASE
calculators by central differences of the forces (6N evaluations, step ``step``,
default 1e-5 Å: the truncation error of λ grows as the step squared;
calculators that compute in float32 need about 1e-3 Å).

:func:`nve_drift` runs a short velocity-Verlet simulation (ASE) and fits a
line to the total energy per atom against time: the slope is the drift
(eV/atom/ps).

Thresholds, ``(pass_max, warn_max)``:

* :data:`ASYMMETRY_THRESHOLDS` = (1e-6, 1e-3). Pass: numerical (autograd of a
  conservative model gives 1e-15 to 1e-16; central differences add a
  truncation error that shrinks as the step squared and stays far below 1e-6
  at the default step for smooth models). Fail: models that predict forces directly have
  :math:`\\lambda` = 0.004 (PET-NC) to 0.03 (SOAP-BPNN-NC), 0.015 for ORB and
  0.017 for EquiformerV2 (Bigi et al. 2024), and heat up in NVE; 1e-3 is four
  times below the smallest of these.
* :data:`DRIFT_THRESHOLDS` = (1e-3, 1e-2) eV/atom/ps. 1e-3 eV/atom/ps is a
  heating rate of about 4 K/ps (half the drift goes to the kinetic energy,
  :math:`\\dot T \\approx \\mathrm{drift} / (3 k_B)`), the noise floor of the slope
  of a run of a few hundred femtoseconds; 1e-2 eV/atom/ps (about 40 K/ps)
  spoils an NVE run of a few picoseconds. Integration error also drifts: use
  a time step that conserves energy for the system (0.5 fs with hydrogen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mlipuq.trust.report import Result, as_target, grade, structures_list

#: (pass_max, warn_max) of the Jacobian asymmetry ratio λ (dimensionless).
ASYMMETRY_THRESHOLDS = (1e-6, 1e-3)
#: (pass_max, warn_max) of |NVE drift| (eV/atom/ps).
DRIFT_THRESHOLDS = (1e-3, 1e-2)
METHODS = ("auto", "autograd", "fd")

_KB = 8.617333262e-5  # Boltzmann constant (eV/K)


@dataclass
class AsymmetryResult(Result):
    """Outcome of :func:`jacobian_asymmetry`: λ per structure (dimensionless) and its max."""

    asymmetry: np.ndarray
    asymmetry_max: float
    method: str
    n_structures: int
    thresholds: dict = field(default_factory=dict)
    verdict: str = "pass"
    name: str = "conservation (Jacobian asymmetry)"
    kind: str = "jacobian_asymmetry"

    def summary(self) -> str:
        t = self.thresholds["asymmetry"]
        return (f"λ = {self.asymmetry_max:.1e} (max over {self.n_structures} structures, "
                f"{self.method}; threshold pass <= {t[0]:g}, fail > {t[1]:g})")


def antisymmetry_ratio(jacobian: np.ndarray) -> float:
    """‖(J − Jᵀ)/2‖_F / ‖J‖_F of a square matrix (0 for J = 0)."""
    j = np.asarray(jacobian, np.float64)
    norm = np.linalg.norm(j)
    return 0.0 if norm == 0 else float(np.linalg.norm(0.5 * (j - j.T)) / norm)


def _jacobian_autograd(mlip, atoms) -> Optional[np.ndarray]:
    """∂F/∂r (3N, 3N) by autograd through the model's forces; None if the model
    does not expose the graph (then finite differences are used)."""
    import torch

    batch = mlip.collate([atoms])
    out = mlip(batch, forces=True, features=True, create_graph=True)
    forces, positions = out.get("forces"), out.get("positions")
    if positions is None or forces is None or not forces.requires_grad:
        return None
    flat = forces.reshape(-1)
    rows = []
    for k in range(flat.shape[0]):
        (grad,) = torch.autograd.grad(flat[k], positions, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(positions).reshape(-1) if grad is None
                    else grad.reshape(-1))
    return torch.stack(rows).detach().cpu().double().numpy()


def _jacobian_fd(target, atoms, step: float) -> np.ndarray:
    """∂F/∂r (3N, 3N) by central differences of the forces (step in Å)."""
    n = len(atoms)
    displaced = []
    for m in range(3 * n):
        for sign in (1.0, -1.0):
            copy = atoms.copy()
            copy.positions[m // 3, m % 3] += sign * step
            displaced.append(copy)
    forces = target.evaluate(displaced).forces.reshape(3 * n, 2, 3 * n)
    return ((forces[:, 0] - forces[:, 1]) / (2 * step)).T  # column m: ∂F/∂r_m


def force_jacobian(model, atoms, *, method: str = "auto", step: float = 1e-5) -> np.ndarray:
    """(3N, 3N) force Jacobian ∂F/∂r (eV/Å²) of one structure, in float64.

    ``method``: ``"autograd"`` (base MLIPs), ``"fd"`` (central differences with
    ``step`` Å) or ``"auto"`` (autograd where possible).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    target = as_target(model)
    (atoms,) = structures_list(atoms)
    if method in ("auto", "autograd") and target.kind == "model":
        jacobian = _jacobian_autograd(target.model, atoms)
        if jacobian is not None:
            return jacobian
    if method == "autograd":
        raise ValueError(f"autograd needs a base MLIP exposing its force graph; "
                         f"{target.description} does not: use method='fd'")
    return _jacobian_fd(target, atoms, float(step))


def jacobian_asymmetry(
    model,
    structures,
    *,
    method: str = "auto",
    step: float = 1e-5,
    thresholds: tuple = ASYMMETRY_THRESHOLDS,
) -> AsymmetryResult:
    """Asymmetry λ = ‖J_anti‖_F/‖J‖_F of the force Jacobian of each structure.

    Parameters
    ----------
    model
        Base MLIP (autograd), UQ wrapper (its mean forces) or ASE calculator
        (central differences); evaluated in float64.
    structures
        One ``ase.Atoms``, a list or an AtomsDataset (cost: 3N backward passes
        or 6N force evaluations per structure).
    method, step
        ``"auto"``, ``"autograd"`` or ``"fd"``; the finite-difference step (Å).
    thresholds
        ``(pass_max, warn_max)`` of λ (module docstring).
    """
    target = as_target(model)
    structures = structures_list(structures)
    used = set()
    values = []
    for atoms in structures:
        jacobian = None
        if method in ("auto", "autograd") and target.kind == "model":
            jacobian = _jacobian_autograd(target.model, atoms)
            used.add("autograd" if jacobian is not None else "fd")
        if jacobian is None:
            jacobian = force_jacobian(target, atoms, method=method, step=step)
            used.add("fd")
        values.append(antisymmetry_ratio(jacobian))
    values = np.asarray(values)
    result = AsymmetryResult(
        asymmetry=values, asymmetry_max=float(values.max()),
        method="+".join(sorted(used)) if used else "fd", n_structures=len(structures),
        thresholds={"asymmetry": tuple(thresholds), "step_A": float(step)},
    )
    result.verdict = grade(result.asymmetry_max, *thresholds)
    return result


# ---------------------------------------------------------------------- NVE
@dataclass
class DriftResult(Result):
    """Outcome of :func:`nve_drift` (eV, fs, eV/atom/ps)."""

    drift: float
    heating_K_per_ps: float
    fluctuation: float
    time_fs: np.ndarray
    total_energy: np.ndarray
    n_atoms: int
    steps: int
    timestep_fs: float
    temperature_K: float
    thresholds: dict = field(default_factory=dict)
    verdict: str = "pass"
    name: str = "conservation (NVE drift)"
    kind: str = "nve_drift"

    _skip = ("time_fs", "total_energy")

    def summary(self) -> str:
        t = self.thresholds["drift"]
        return (f"drift {self.drift:.1e} eV/atom/ps (~{self.heating_K_per_ps:.2g} K/ps), "
                f"fluctuation {self.fluctuation:.1e} eV/atom over {self.steps} steps of "
                f"{self.timestep_fs:g} fs (threshold pass <= {t[0]:g}, fail > {t[1]:g} "
                "eV/atom/ps)")


def nve_drift(
    model,
    atoms,
    *,
    steps: int = 200,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    seed: int = 0,
    thresholds: tuple = DRIFT_THRESHOLDS,
) -> DriftResult:
    """Energy drift of a short NVE (velocity Verlet, ASE) run: the slope of a
    linear fit of the total energy per atom against time (eV/atom/ps).

    ``atoms`` keeps its momenta if it has any; otherwise Maxwell-Boltzmann
    velocities at ``temperature_K`` (K) are drawn from ``seed`` and the
    centre-of-mass motion removed. ``fluctuation`` is the std of the residuals
    of the fit (eV/atom); ``heating_K_per_ps`` is drift / (3 k_B).

    The slope of a run much shorter than ~50 fs (a few vibrational periods) is
    dominated by the oscillation of the total energy, not by its drift: keep
    ``steps * timestep_fs`` at 50 fs or more (the default is 100 fs).
    """
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    steps = int(steps)
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if not float(timestep_fs) > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    target = as_target(model)
    (md,) = structures_list(atoms)
    if not np.any(md.get_momenta()):
        rng = np.random.default_rng(seed)
        if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
            vd.thermalize_momenta(md, float(temperature_K), rng=rng)
        else:
            vd.MaxwellBoltzmannDistribution(md, temperature_K=float(temperature_K), rng=rng)
        vd.Stationary(md)
    md.calc = target.calculator()
    energies = []

    def record():
        energies.append(md.get_potential_energy() + md.get_kinetic_energy())

    dyn = VelocityVerlet(md, timestep=float(timestep_fs) * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(steps)
    total = np.asarray(energies, np.float64)
    time_fs = float(timestep_fs) * np.arange(len(total))
    n = len(md)
    if not np.all(np.isfinite(total)):
        drift = fluctuation = float("nan")
    else:
        slope, intercept = np.polyfit(time_fs / 1000.0, total / n, 1)
        residual = total / n - (slope * time_fs / 1000.0 + intercept)
        drift, fluctuation = float(slope), float(residual.std())
    result = DriftResult(
        drift=drift, heating_K_per_ps=drift / (3 * _KB), fluctuation=fluctuation,
        time_fs=time_fs, total_energy=total, n_atoms=n, steps=steps,
        timestep_fs=float(timestep_fs), temperature_K=float(temperature_K),
        thresholds={"drift": tuple(thresholds), "unit": "eV/atom/ps"},
    )
    result.verdict = grade(abs(drift), *thresholds)
    return result
