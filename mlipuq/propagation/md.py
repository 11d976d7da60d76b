"""Molecular dynamics driven by a UQ wrapper's mean potential, logging its uncertainty.

>>> run = run_md(atoms, wrapper, ensemble="nvt", temperature_K=300, timestep_fs=2,
...              steps=2000, seed=0, log_every=10, trajectory="md.traj")
>>> run.energies            # (n_frames, K) committee energies (eV) for reweighting
>>> run.max_force_std       # (n_frames,) largest per-atom force std (eV/Å)

Every logged frame holds the positions, momenta and cell, the mean energy and
its std, the committee energies and the largest per-atom force std
:math:`\\max_i \\sqrt{\\sum_c \\sigma^2_{F,ic}}`, plus the virial stress of the
mean potential for periodic cells. For LLPR the committee are the posterior
samples drawn once at fit time, so they are the same K potentials for the
whole run (and across resumed runs).

Frames are appended to ``trajectory`` (``.traj``: ASE trajectory, binary
float64; ``.xyz``/``.extxyz``: extended XYZ, 8 decimals) as they are produced;
calling ``run_md`` again with the same file continues from its last frame up
to ``steps`` in total. The Langevin noise is reseeded from ``(seed, step)`` at
every logged frame, so an interrupted and resumed NVT or NVE run reproduces the
uninterrupted one (exactly with ``.traj``; to the stored precision with
extxyz). NPT (isotropic MTK barostat with Nosé-Hoover chains) resumes from the
particles and the cell; its thermostat and barostat variables restart from zero.

A resume cannot spoil the file: every frame records the wrapper's
``fingerprint()`` and the ensemble, time step, temperature and
thermostat/barostat settings (:data:`RECORD_KEYS`, checked by
:mod:`mlipuq.propagation.trajectory`), and any difference, a damaged last frame
or another system raises :class:`~mlipuq.errors.ResumeError` before a byte is
written. ``repair=True`` moves a damaged last frame to a side file first;
``allow_unrecorded=True`` resumes a file written before the records existed.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

import ase.io
import numpy as np
from ase import units
from ase.stress import voigt_6_to_full_3x3_stress

from mlipuq import schema
from mlipuq.progress import bar as progress_bar
from mlipuq.propagation.trajectory import (  # noqa: F401  (record keys re-exported)
    ENSEMBLE_KEY,
    FRICTION_KEY,
    PDAMP_KEY,
    PRESSURE_KEY,
    RECORD_KEYS,
    SEED_KEY,
    TDAMP_KEY,
    TEMPERATURE_KEY,
    TIMESTEP_KEY,
    WRAPPER_KEY,
    TrajectoryWriter as _Writer,
    check_members as _check_members,
    frame_records as _records,
    repair_tail as _repair,
    scan,
    scan_for_resume as _scan_for_resume,
    trajectory_format,
)

log = logging.getLogger(__name__)

ENSEMBLES = ("nvt", "nve", "npt")
ON_THRESHOLD = ("stop", "flag")
THRESHOLD_ON = ("max_force_std", "energy_std", "energy_std_per_atom")
_P = schema.PREFIX


@dataclass
class MDTrajectory:
    """Logged frames of :func:`run_md` as arrays (eV, Å, fs).

    Attributes
    ----------
    frames : list of ase.Atoms
        Positions (Å), momenta and cell of each frame; the per-frame data below
        is also in each frame's ``info`` under ``mlipuq_*`` keys, and per atom
        (``arrays``; extxyz columns) the mean forces ``mlipuq_forces``, their
        std ``mlipuq_forces_std`` (N, 3) and its norm ``mlipuq_forces_std_norm``
        (N,) (eV/Å), the per-atom scalar OVITO colours by.
    step : (n,) int
        MD step of each frame.
    time_fs : (n,) float
        Simulated time (fs).
    energy, energy_std : (n,) float
        Mean potential energy and its std (eV).
    energies : (n, K) float
        Committee member energies (eV); K = 0 for a base model.
    max_force_std : (n,) float
        Largest per-atom force std (eV/Å).
    stress : (n, 3, 3) float or None
        Virial stress of the mean potential (eV/Å³), periodic cells only.
    flagged : (n,) bool
        The frame's uncertainty exceeded ``uncertainty_threshold``.
    temperature_K : float
        Target temperature of the run (K).
    stopped : bool
        The run stopped early at the uncertainty threshold.
    n_flagged_steps : int
        Steps whose uncertainty exceeded the threshold in this call (logged or not).
    """

    frames: list
    step: np.ndarray
    time_fs: np.ndarray
    energy: np.ndarray
    energy_std: np.ndarray
    energies: np.ndarray
    max_force_std: np.ndarray
    stress: Optional[np.ndarray]
    flagged: np.ndarray
    temperature_K: float
    stopped: bool = False
    n_flagged_steps: int = 0
    path: Optional[str] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_members(self) -> int:
        return int(self.energies.shape[1])

    @classmethod
    def from_frames(cls, frames, **extra) -> "MDTrajectory":
        """Collect the ``mlipuq_*`` info of frames written by :func:`run_md`."""
        frames = list(frames)
        if not frames:
            raise ValueError("no frames")
        missing = [i for i, a in enumerate(frames) if schema.ENERGY not in a.info]
        if missing:
            raise ValueError(
                f"frames {missing[:5]} lack mlipuq_* data: they were not written by run_md"
            )

        def col(key, dtype=np.float64):
            return np.array([a.info[_P + key] for a in frames], dtype=dtype)

        energies = [np.atleast_1d(np.asarray(a.info.get(schema.ENERGIES, []), float))
                    for a in frames]
        stress = None
        if all(schema.STRESS in a.info for a in frames):
            stress = np.array([np.reshape(a.info[schema.STRESS], (3, 3)) for a in frames], float)
        return cls(
            frames=frames,
            step=col("step", np.int64),
            time_fs=col("time_fs"),
            energy=col("energy"),
            energy_std=col("energy_std"),
            energies=np.array(energies, dtype=np.float64).reshape(len(frames), -1),
            max_force_std=col("max_force_std"),
            stress=stress,
            flagged=col("flagged", bool),
            temperature_K=float(frames[-1].info.get(schema.TEMPERATURE_K, np.nan)),
            **extra,
        )

    @classmethod
    def read(cls, path, *, complete_only: bool = False) -> "MDTrajectory":
        """Read a trajectory written by :func:`run_md` (``.traj``, ``.xyz`` or ``.extxyz``).

        A damaged last frame (a run that crashed while writing it) raises
        :class:`~mlipuq.errors.ResumeError` naming the file and the frame;
        with ``complete_only=True`` the complete frames are returned with a
        warning instead (the file is not modified).
        """
        path = os.fspath(path)
        found = scan(path)
        if found.damaged is not None:
            if not complete_only:
                raise found.error()
            warnings.warn(f"{found.describe()}; reading the complete frames only",
                          stacklevel=2)
        if not found.frames and not os.path.exists(path):
            raise FileNotFoundError(path)
        return cls.from_frames(found.frames, path=path)


def _positive(name: str, value, *, integer: bool = False, allow_zero: bool = False):
    try:
        x = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if integer and (isinstance(value, bool) or x != value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not np.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return x


def _rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step), 7])


def _thermalize(atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (K), centre of mass at rest."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)


def _uncertainty(results: dict) -> tuple[float, float]:
    """(energy std in eV, max per-atom force std in eV/Å) from calculator results."""
    return (float(results.get(schema.RESULT_ENERGY_STD, 0.0)),
            float(results.get(schema.RESULT_MAX_FORCE_STD, 0.0)))


def _dynamics(atoms, ensemble, dt_fs, temperature_K, seed, step, friction, pressure_GPa,
              tdamp_fs, pdamp_fs):
    dt = dt_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature_K, friction=friction / units.fs,
                        fixcm=False, rng=_rng(seed, step))
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    return IsotropicMTKNPT(
        atoms, dt, temperature_K=temperature_K, pressure_au=pressure_GPa * units.GPa,
        tdamp=(tdamp_fs or 100 * dt_fs) * units.fs, pdamp=(pdamp_fs or 1000 * dt_fs) * units.fs,
    )


def _frame(atoms, results, step, dt_fs, records, flagged) -> "ase.Atoms":
    if np.all(atoms.pbc):
        atoms.get_stress(include_ideal_gas=False)  # lazily, at logged frames only
        results = atoms.calc.results
    return frame_from_results(atoms, results, step, dt_fs, records, flagged)


def frame_from_results(atoms, results, step, dt_fs, records, flagged) -> "ase.Atoms":
    """A logged frame: a copy of ``atoms`` with the ``mlipuq_*`` per-frame keys
    and per-atom columns from calculator-style ``results`` (any engine)."""
    frame = atoms.copy()
    frame.calc = None
    frame.constraints = []
    frame.info = {}
    e_std, f_max = _uncertainty(results)
    info = {
        schema.STEP: int(step),
        schema.TIME_FS: float(step * dt_fs),
        schema.ENERGY: float(results["energy"]),
        schema.ENERGY_STD: e_std,
        schema.ENERGY_STD_PER_ATOM: e_std / len(atoms),
        schema.MAX_FORCE_STD: f_max,
        schema.FLAGGED: bool(flagged),
    }
    if schema.RESULT_ENERGIES in results:
        info[schema.ENERGIES] = np.asarray(results[schema.RESULT_ENERGIES], np.float64).copy()
    if "stress" in results:
        info[schema.STRESS] = voigt_6_to_full_3x3_stress(np.asarray(results["stress"]))
    if schema.RESULT_CALIBRATION_EXCESS in results:  # > 1: std beyond the calibration range
        info[schema.CALIBRATION_EXCESS] = float(results[schema.RESULT_CALIBRATION_EXCESS])
    if schema.RESULT_STRAIN_ENERGY_STD in results:  # the strain term's part (NPT: the cell)
        info[schema.STRAIN_ENERGY_STD] = float(results[schema.RESULT_STRAIN_ENERGY_STD])
    frame.arrays[schema.FORCES] = np.asarray(results["forces"], np.float64).copy()
    if schema.RESULT_FORCES_STD in results:  # per-atom columns (OVITO colours by them)
        f_std = np.asarray(results[schema.RESULT_FORCES_STD], np.float64)
        frame.arrays[schema.FORCES_STD] = f_std.copy()
        frame.arrays[schema.FORCES_STD_NORM] = np.sqrt((f_std**2).sum(axis=1))
    if schema.RESULT_ATOM_ENERGY_STD in results:  # local energy std (eV), e.g. LLPR
        frame.arrays[schema.ATOM_ENERGY_STD] = np.asarray(
            results[schema.RESULT_ATOM_ENERGY_STD], np.float64).copy()
    frame.info.update(info)
    frame.info.update(records)
    return frame


def _wrapper_id(model) -> Optional[str]:
    """``"sha256:<hex>"`` identity of the model: ``fingerprint()`` of a UQ wrapper, the
    digest of the parameters for another torch module, ``None`` for anything else."""
    fingerprint = getattr(model, "fingerprint", None)
    if callable(fingerprint):
        return "sha256:" + str(fingerprint())
    import torch

    if isinstance(model, torch.nn.Module):
        from mlipuq.fileio import payload_digest

        state = {k: v for k, v in model.state_dict().items()}
        try:
            return "sha256:" + payload_digest({"class": type(model).__name__, "state": state})
        except TypeError:  # extra state that is not plain data: no identity to record
            return None
    return None


@dataclass
class RunSetup:
    """A checked MD run, ready for any engine (:func:`prepare_run`)."""

    path: Optional[str]
    records: dict
    found: object  # the scanned trajectory (None without a file)
    previous: list  # frames already in the file
    start: int  # the step to continue from
    atoms: object  # the state to start from (None when ``done``)
    temperature_K: float
    timestep_fs: float
    steps: int
    log_every: int
    seed: int
    friction: float
    uncertainty_threshold: Optional[float]
    done: bool = False  # the file already holds ``steps``


def prepare_run(atoms, uq_model, *, ensemble, temperature_K, timestep_fs, steps, seed,
                log_every, trajectory, uncertainty_threshold, on_threshold, threshold_on,
                friction, pressure_GPa, tdamp_fs, pdamp_fs, repair,
                allow_unrecorded) -> RunSetup:
    """Check :func:`run_md`'s arguments and any file to resume (before a byte is
    written); the starting state, thermalised at ``temperature_K`` from ``seed``
    unless it has momenta or continues a file."""
    from mlipuq.models.base import MLIP

    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose from {', '.join(ENSEMBLES)}")
    if on_threshold not in ON_THRESHOLD:
        raise ValueError(f"on_threshold must be one of {ON_THRESHOLD}, got {on_threshold!r}")
    if threshold_on not in THRESHOLD_ON:
        raise ValueError(f"threshold_on must be one of {THRESHOLD_ON}, got {threshold_on!r}")
    temperature_K = _positive("temperature_K", temperature_K)
    timestep_fs = _positive("timestep_fs", timestep_fs)
    steps = _positive("steps", steps, integer=True, allow_zero=True)
    log_every = _positive("log_every", log_every, integer=True)
    seed = _positive("seed", seed, integer=True, allow_zero=True)
    friction = _positive("friction", friction)
    if uncertainty_threshold is not None:
        uncertainty_threshold = _positive("uncertainty_threshold", uncertainty_threshold)
        if isinstance(uq_model, MLIP):
            raise ValueError("uncertainty_threshold needs a UQ wrapper, not a bare base model")
    if len(atoms) == 0:
        raise ValueError("atoms is empty")
    if ensemble == "npt" and not np.all(atoms.pbc):
        raise ValueError("ensemble='npt' needs a periodic cell in all three directions")
    path = None if trajectory is None else os.fspath(trajectory)
    if path is not None:
        trajectory_format(path)
    records = _records(_wrapper_id(uq_model), ensemble, temperature_K, timestep_fs, seed,
                       friction, pressure_GPa, tdamp_fs, pdamp_fs)
    found = None  # every check comes before the first byte is written
    if path is not None:
        found = _scan_for_resume(path, atoms, records, repair=repair,
                                 allow_unrecorded=allow_unrecorded)
    previous = [] if found is None else found.frames
    if previous:
        start = int(previous[-1].info[schema.STEP])
        if start >= steps:
            _repair(found)
            log.info("%s already holds step %d of %d; nothing to run", path, start, steps)
            return RunSetup(path, records, found, previous, start, None, temperature_K,
                            timestep_fs, steps, log_every, seed, friction,
                            uncertainty_threshold, done=True)
        md_atoms = previous[-1].copy()
        md_atoms.info = {}
        md_atoms.set_constraint([c.copy() for c in atoms.constraints])
        log.info("resuming %s from step %d of %d", path, start, steps)
    else:
        start = 0
        md_atoms = atoms.copy()
        md_atoms.info = {}
        if not np.any(md_atoms.get_momenta()):
            _thermalize(md_atoms, temperature_K, np.random.default_rng(seed))
    return RunSetup(path, records, found, previous, start, md_atoms, temperature_K, timestep_fs,
                    steps, log_every, seed, friction, uncertainty_threshold)


def run_md(
    atoms,
    uq_model,
    *,
    ensemble: str = "nvt",
    temperature_K: float,
    timestep_fs: float,
    steps: int,
    seed: int = 0,
    log_every: int = 10,
    trajectory=None,
    uncertainty_threshold: Optional[float] = None,
    on_threshold: str = "stop",
    threshold_on: str = "max_force_std",
    friction: float = 0.01,
    pressure_GPa: float = 0.0,
    tdamp_fs: Optional[float] = None,
    pdamp_fs: Optional[float] = None,
    progress: bool = True,
    repair: bool = False,
    allow_unrecorded: bool = False,
) -> MDTrajectory:
    """Run MD with the mean potential of ``uq_model`` and log its uncertainty.

    Parameters
    ----------
    atoms
        Starting structure (not modified). Momenta already set are kept;
        otherwise Maxwell-Boltzmann velocities at ``temperature_K`` are drawn
        (from ``seed``) and the centre-of-mass motion removed.
    uq_model
        A fitted UQ wrapper (or a base MLIP, then without uncertainties),
        evaluated in float64 on a copy (as :class:`mlipuq.Calculator` does;
        the stress only at logged frames and for NPT).
    ensemble
        ``"nvt"`` (Langevin, ``friction`` in 1/fs), ``"nve"`` (velocity
        Verlet) or ``"npt"`` (isotropic MTK barostat at ``pressure_GPa``,
        damping times ``tdamp_fs``/``pdamp_fs``, default 100 and 1000 time
        steps; periodic cells only).
    temperature_K
        Target (nvt, npt) or initial (nve) temperature (K).
    timestep_fs
        Time step (fs).
    steps
        Total number of MD steps, counting those of a run being resumed.
    seed
        Seeds the initial velocities and the Langevin noise.
    log_every
        Log (and write) a frame every this many steps; step 0 is logged too.
    trajectory
        ``None`` (frames kept in memory only) or a ``.traj``/``.xyz``/``.extxyz``
        path. An existing file written by ``run_md`` is resumed: the run
        continues from its last frame and appends. Every frame records the
        wrapper's ``fingerprint()``, the ensemble, time step, temperature and
        thermostat/barostat settings (:data:`RECORD_KEYS`); a resume with any
        other value raises :class:`~mlipuq.errors.ResumeError` before writing.
    uncertainty_threshold
        Checked after every step against ``threshold_on``: ``"max_force_std"``
        (eV/Å, default), ``"energy_std"`` (eV) or ``"energy_std_per_atom"``
        (eV/atom).
    on_threshold
        ``"stop"``: log the offending frame (flagged) and stop, for active
        learning; ``"flag"``: keep going, mark logged frames above the
        threshold and count all such steps.
    progress
        Show a tqdm progress bar.
    repair
        Resume a file whose last frame is damaged (a crash while writing it):
        its bytes are moved to a new side file ``<trajectory>.partial-<frame>``
        and the run continues from the last complete frame. Without it such a
        file raises ``ResumeError`` naming the file and the frame.
    allow_unrecorded
        Resume a file written before the frames recorded their settings: what
        the old frames hold (temperature, time step) is still checked, the rest
        (wrapper, ensemble, thermostat) only warned about.

    Returns
    -------
    MDTrajectory
        All logged frames (those of a resumed file included).
    """
    from mlipuq.calculator import Calculator

    run = prepare_run(atoms, uq_model, ensemble=ensemble, temperature_K=temperature_K,
                      timestep_fs=timestep_fs, steps=steps, seed=seed, log_every=log_every,
                      trajectory=trajectory, uncertainty_threshold=uncertainty_threshold,
                      on_threshold=on_threshold, threshold_on=threshold_on, friction=friction,
                      pressure_GPa=pressure_GPa, tdamp_fs=tdamp_fs, pdamp_fs=pdamp_fs,
                      repair=repair, allow_unrecorded=allow_unrecorded)
    if run.done:  # (a damaged tail was already dropped, with repair=True)
        return MDTrajectory.from_frames(run.previous, path=run.path)
    path, records, found, previous, start, md_atoms = (
        run.path, run.records, run.found, run.previous, run.start, run.atoms)
    temperature_K, timestep_fs, steps, log_every = (
        run.temperature_K, run.timestep_fs, run.steps, run.log_every)
    seed, friction, uncertainty_threshold = run.seed, run.friction, run.uncertainty_threshold
    md_atoms.calc = Calculator(uq_model)  # the stress is computed only when asked
    if previous:
        md_atoms.get_potential_energy()
        _check_members(path, previous[-1], md_atoms.calc.results)
    _repair(found)
    frames = list(previous)
    writer = _Writer(path)
    n_atoms = len(md_atoms)

    def exceeded(results) -> bool:
        if uncertainty_threshold is None:
            return False
        e_std, f_max = _uncertainty(results)
        value = {"max_force_std": f_max, "energy_std": e_std,
                 "energy_std_per_atom": e_std / n_atoms}[threshold_on]
        return value > uncertainty_threshold

    stopped, n_flagged = False, 0
    try:
        if not previous:
            md_atoms.get_potential_energy()
            flag = exceeded(md_atoms.calc.results)
            n_flagged += int(flag)
            frames.append(_frame(md_atoms, md_atoms.calc.results, 0, timestep_fs, records,
                                 flag))
            writer.write(frames[-1])
            stopped = flag and on_threshold == "stop"
        dyn = _dynamics(md_atoms, ensemble, timestep_fs, temperature_K, seed, start, friction,
                        pressure_GPa, tdamp_fs, pdamp_fs)
        bar = progress_bar(steps, f"ASE MD {ensemble.upper()} ({type(uq_model).__name__})",
                           "step", enabled=progress, initial=start)
        step = start
        while step < steps and not stopped:
            dyn.step()
            step += 1
            bar.update(1)
            results = md_atoms.calc.results
            if "energy" not in results:
                md_atoms.get_potential_energy()
                results = md_atoms.calc.results
            flag = exceeded(results)
            n_flagged += int(flag)
            stopped = flag and on_threshold == "stop"
            if step % log_every == 0 or stopped:
                frames.append(_frame(md_atoms, results, step, timestep_fs, records, flag))
                writer.write(frames[-1])
                if hasattr(dyn, "rng"):
                    dyn.rng = _rng(seed, step)
                info = frames[-1].info
                bar.set_postfix({"E std": f"{info[schema.ENERGY_STD]:.3g} eV",
                                 "max F std": f"{info[schema.MAX_FORCE_STD]:.3g} eV/Å"})
        bar.close()
    finally:
        writer.close()
    if stopped:
        log.warning("MD stopped at step %d: %s above the threshold %g",
                    int(frames[-1].info[schema.STEP]), threshold_on, uncertainty_threshold)
    if not frames:
        raise ValueError("no frames were logged")
    return MDTrajectory.from_frames(frames, stopped=stopped, n_flagged_steps=n_flagged, path=path)
