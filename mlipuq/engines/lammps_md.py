"""``run_md`` in LAMMPS: the ASE engine's run, frames and resume rules, LAMMPS's integrators.

:func:`run_md` takes the arguments of :func:`mlipuq.propagation.run_md` and
writes the same frames (the same ``mlipuq_*`` keys and per-atom columns), with
the same checks before a byte is written and the same resume rules, but
integrates in LAMMPS with the wrapper attached through ``fix external``
(:func:`mlipuq.engines.lammps.attach`):

* ``nve``: ``fix nve`` (velocity Verlet, as ASE's);
* ``nvt``: ``fix langevin`` (damping ``1/friction``) + ``fix nve``: the same
  Langevin dynamics as ASE's, with LAMMPS's own random numbers (seeded from
  ``seed`` and the step, so a resumed run is reproducible, not identical to
  the ASE one);
* ``npt``: ``fix npt`` (Nosé-Hoover chains, MTK isotropic barostat, the
  damping times of the ASE engine); its thermostat and barostat variables
  restart from zero on a resume, as ASE's do.

The model's virial (stress) is computed only for ``npt``: frames of ``nve``
and ``nvt`` runs carry no ``mlipuq_stress`` (the ASE engine logs it at logged
frames of periodic cells). The uncertainty threshold is checked by LAMMPS after every step (``fix halt``
on the fix's global vector), so a run stops at the first step above it, as in
the ASE engine. ``on_threshold="flag"`` needs the ASE engine.
"""

from __future__ import annotations

import logging

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from mlipuq.calculator import Calculator
from mlipuq.engines.lammps import VECTOR, attach, load_lammps, setup_atoms
from mlipuq.progress import bar as progress_bar
from mlipuq.propagation.md import MDTrajectory, frame_from_results, prepare_run
from mlipuq.propagation.trajectory import TrajectoryWriter, check_members, repair_tail

log = logging.getLogger(__name__)

#: what ``threshold_on`` compares, as an index (1-based) of the fix's global vector
_VECTOR_INDEX = {"max_force_std": VECTOR.index("max_force_std") + 1,
                 "energy_std": VECTOR.index("energy_std") + 1,
                 "energy_std_per_atom": VECTOR.index("energy_std_per_atom") + 1}
_GPA_TO_BAR = 1e4


def _results(prediction) -> dict:
    """Calculator-style results (as :class:`mlipuq.Calculator` fills them)."""
    results: dict = {}
    Calculator._fill(results, prediction)
    stress = getattr(prediction, "stress", None)
    if stress is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress)[0])
    return results


def _integrator(ensemble: str, run, pressure_GPa: float, tdamp_fs, pdamp_fs,
                step: int) -> list:
    t, dt = run.temperature_K, run.timestep_fs
    if ensemble == "nve":
        return ["fix mlipuq_int all nve"]
    if ensemble == "nvt":
        damp_ps = 1e-3 / run.friction  # friction in 1/fs
        noise_seed = 1 + (run.seed * 7919 + step) % 900_000_000  # LAMMPS wants 1..2^30
        return ["fix mlipuq_int all nve",
                f"fix mlipuq_thermo all langevin {t!r} {t!r} {damp_ps!r} {noise_seed} zero no"]
    p_bar = pressure_GPa * _GPA_TO_BAR
    tdamp = 1e-3 * (tdamp_fs or 100 * dt)
    pdamp = 1e-3 * (pdamp_fs or 1000 * dt)
    return [f"fix mlipuq_int all npt temp {t!r} {t!r} {tdamp!r} iso {p_bar!r} {p_bar!r} "
            f"{pdamp!r}"]


def run_md(atoms, uq_model, *, ensemble: str = "nvt", temperature_K: float,
           timestep_fs: float, steps: int, seed: int = 0, log_every: int = 10,
           trajectory=None, uncertainty_threshold=None, on_threshold: str = "stop",
           threshold_on: str = "max_force_std", friction: float = 0.01,
           pressure_GPa: float = 0.0, tdamp_fs=None, pdamp_fs=None, progress: bool = True,
           repair: bool = False, allow_unrecorded: bool = False, cmdargs=None) -> MDTrajectory:
    """:func:`mlipuq.propagation.run_md` with LAMMPS as the integrator (see the
    module notes for the ensembles). ``cmdargs``: LAMMPS command-line arguments
    (default: no log file, no screen output)."""
    if on_threshold != "stop":
        raise ValueError("the LAMMPS engine stops at the threshold (on_threshold='stop'); "
                         "flagging without stopping needs the ASE engine")
    if not hasattr(uq_model, "predict"):
        raise TypeError("the LAMMPS engine needs a UQ wrapper (mlipuq.uq.load)")
    run = prepare_run(atoms, uq_model, ensemble=ensemble, temperature_K=temperature_K,
                      timestep_fs=timestep_fs, steps=steps, seed=seed, log_every=log_every,
                      trajectory=trajectory, uncertainty_threshold=uncertainty_threshold,
                      on_threshold=on_threshold, threshold_on=threshold_on, friction=friction,
                      pressure_GPa=pressure_GPa, tdamp_fs=tdamp_fs, pdamp_fs=pdamp_fs,
                      repair=repair, allow_unrecorded=allow_unrecorded)
    if run.done:
        return MDTrajectory.from_frames(run.previous, path=run.path)
    lmp = load_lammps().lammps(cmdargs=list(cmdargs) if cmdargs is not None
                               else ["-log", "none", "-screen", "none", "-nocite"])
    try:
        return _run(lmp, run, uq_model, ensemble, threshold_on, pressure_GPa, tdamp_fs,
                    pdamp_fs, progress)
    finally:
        lmp.close()


def _run(lmp, run, uq_model, ensemble, threshold_on, pressure_GPa, tdamp_fs, pdamp_fs,
         progress) -> MDTrajectory:
    start_atoms = run.atoms
    elements = setup_atoms(lmp, start_atoms)
    # the model virial (a strain derivative per member) only where the barostat needs it
    fix = attach(lmp, uq_model, elements, virial=ensemble == "npt")
    lmp.commands_list([f"timestep {run.timestep_fs * 1e-3!r}", f"reset_timestep {run.start}",
                       "thermo_modify lost error"]
                      + _integrator(ensemble, run, pressure_GPa, tdamp_fs, pdamp_fs, run.start))
    if run.uncertainty_threshold is not None:
        lmp.commands_list([
            f"variable mlipuq_u equal f_{fix.fix_id}[{_VECTOR_INDEX[threshold_on]}]",
            f"fix mlipuq_halt all halt 1 v_mlipuq_u > {run.uncertainty_threshold!r} "
            "error continue"])
    frames, writer = list(run.previous), TrajectoryWriter(run.path)
    repair_tail(run.found)
    step, stopped = run.start, False
    bar = progress_bar(run.steps, f"LAMMPS MD {ensemble.upper()} ({type(uq_model).__name__})",
                       "step", enabled=progress, initial=step)
    try:
        lmp.command("run 0 post no")  # the forces and uncertainties of the start
        fix.check()
        if run.previous:
            check_members(run.path, run.previous[-1], _results(fix.prediction))
        else:
            stopped = _over(fix, run, threshold_on)
            frames.append(_log(fix, run, step, stopped, writer))
        while step < run.steps and not stopped:
            n = min(run.log_every - step % run.log_every, run.steps - step)
            lmp.command(f"run {n} pre no post no")
            fix.check()
            reached = int(lmp.get_thermo("step"))
            bar.update(reached - step)
            stopped = reached < step + n or _over(fix, run, threshold_on)
            step = reached
            frames.append(_log(fix, run, step, stopped, writer))
        bar.close()
    finally:
        writer.close()
    if stopped:
        log.warning("LAMMPS MD stopped at step %d: %s above the threshold %g", step,
                    threshold_on, run.uncertainty_threshold)
    return MDTrajectory.from_frames(frames, stopped=stopped, n_flagged_steps=int(stopped),
                                    path=run.path)


def _over(fix, run, threshold_on: str) -> bool:
    return (run.uncertainty_threshold is not None
            and fix.values[threshold_on] > run.uncertainty_threshold)


def _log(fix, run, step: int, flagged: bool, writer):
    """The frame at ``step`` (LAMMPS's state, the fix's latest prediction)."""
    atoms = fix.atoms(velocities=True)
    if fix.step != step:
        raise RuntimeError(f"the fix last predicted step {fix.step}, not {step}")
    frame = frame_from_results(atoms, _results(fix.prediction), step, run.timestep_fs,
                               run.records, flagged)
    writer.write(frame)
    return frame

