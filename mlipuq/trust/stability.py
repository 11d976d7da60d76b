"""MD stability: short NVT runs at rising temperatures, watched for failures.

:func:`stability` runs :func:`mlipuq.propagation.run_md` (Langevin NVT) from
one structure at each temperature and reports, per run,

* the fraction of logged frames whose largest per-atom force std exceeds an
  uncertainty threshold (UQ wrappers only);
* structural events (:func:`structural_events`): a bond of the first frame
  broken, a bond formed that the first frame did not have, or an atom lost;
* the time of the first failure (fs): the first frame with an event, above
  the threshold, or where the run crashed (non-finite energies, atoms too
  close for the neighbour list, ...).

Bonds are pairs closer than :data:`BOND_MULT` (1.2) times the sum of their
covalent radii (ase ``natural_cutoffs``; 1.2 because C–H and O–H bonds are a
few per cent longer than the sum of the radii). A first-frame bond counts as
broken when stretched beyond :data:`BREAK_MULT` (1.5) times that sum, a new bond
as formed below :data:`FORM_MULT` (1.0) times it; the gap between the two
multipliers keeps thermal vibrations (a few per cent of a bond length at
600 K) from counting. An atom is lost when no other atom is within
:data:`LOSS_MULT` (1.5) times their radii sum. These rules are meant for
molecules and solids near equilibrium; in liquids and during diffusion,
neighbours change legitimately.

The default uncertainty threshold, :data:`FORCE_STD_THRESHOLD` = 0.3 eV/Å, is
the upper trust level (``model_devi_f_trust_hi``, 0.25-0.35 eV/Å in typical
settings) of DP-GEN (Zhang et al., Comput. Phys. Commun. 253, 107206, 2020):
frames whose committee force deviation exceeds it are treated as failed, not
as candidates for labelling.

Verdict: ``fail`` if any run has a structural event or crashed, ``warn`` if
any frame exceeds the uncertainty threshold, ``pass`` otherwise.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mlipuq.trust.report import FAIL, PASS, WARN, Result, as_target, structures_list, worst

#: Largest per-atom force std (eV/Å) a trusted frame may have (DP-GEN trust_hi).
FORCE_STD_THRESHOLD = 0.3
#: Bonds at the start: distance < BOND_MULT * (r_i + r_j), covalent radii.
BOND_MULT = 1.2
#: A starting bond is broken beyond BREAK_MULT * (r_i + r_j).
BREAK_MULT = 1.5
#: A new bond is formed below FORM_MULT * (r_i + r_j).
FORM_MULT = 1.0
#: An atom is lost when no other atom is within LOSS_MULT * (r_i + r_j).
LOSS_MULT = 1.5


@dataclass
class StabilityRun(Result):
    """One MD run of :func:`stability` (K, fs, eV/Å).

    ``events`` lists ``{"time_fs", "type", "atoms"}`` with type ``"bond broken"``,
    ``"bond formed"`` or ``"atom lost"`` (first occurrence of each);
    ``first_failure_fs`` is None when nothing failed, ``failure`` says what failed first.
    """

    temperature_K: float
    n_frames: int
    time_fs: np.ndarray
    max_force_std: Optional[np.ndarray]
    fraction_above: Optional[float]
    events: list
    first_failure_fs: Optional[float]
    failure: str
    crashed: str = ""
    verdict: str = "pass"
    name: str = "run"

    def summary(self) -> str:
        above = "" if self.fraction_above is None else \
            f", {100 * self.fraction_above:.0f}% of frames above the threshold"
        first = "no failure" if self.first_failure_fs is None else \
            f"first failure at {self.first_failure_fs:g} fs ({self.failure})"
        return f"{self.temperature_K:g} K: {len(self.events)} events{above}, {first}"


@dataclass
class StabilityResult(Result):
    """Outcome of :func:`stability`: one :class:`StabilityRun` per temperature."""

    runs: list
    steps: int
    timestep_fs: float
    threshold: Optional[float]
    thresholds: dict = field(default_factory=dict)
    verdict: str = "pass"
    name: str = "MD stability"
    kind: str = "stability"

    def summary(self) -> str:
        runs = "; ".join(r.summary() for r in self.runs)
        limit = "" if self.threshold is None else \
            f"; uncertainty threshold {self.threshold:g} eV/Å warns"
        return (f"{runs} ({self.steps} steps of {self.timestep_fs:g} fs; structural events "
                f"or a crash fail{limit})")


def _radii(atoms) -> np.ndarray:
    from ase.neighborlist import natural_cutoffs

    return np.asarray(natural_cutoffs(atoms, mult=1.0), np.float64)


def _pairs(atoms, radii: np.ndarray, mult: float) -> dict:
    """{(i, j): d / (r_i + r_j)} for i < j closer than ``mult`` (r_i + r_j), minimum image."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, radii * mult)
    out = {}
    for a, b, dist in zip(i, j, d):
        if a < b:
            ratio = float(dist / (radii[a] + radii[b]))
            out[(int(a), int(b))] = min(ratio, out.get((int(a), int(b)), np.inf))
    return out


def structural_events(
    frames,
    times_fs: Optional[Sequence[float]] = None,
    *,
    bond_mult: float = BOND_MULT,
    break_mult: float = BREAK_MULT,
    form_mult: float = FORM_MULT,
    loss_mult: float = LOSS_MULT,
) -> list:
    """Bonds broken or formed relative to ``frames[0]`` and atoms lost, first
    occurrence of each: ``[{"time_fs", "frame", "type", "atoms"}, ...]`` in time
    order (``times_fs`` default: the frame index). Rules in the module docstring."""
    frames = list(frames)
    if not frames:
        return []
    times = np.arange(len(frames), dtype=float) if times_fs is None else np.asarray(times_fs)
    radii = _radii(frames[0])
    reach = max(break_mult, loss_mult)
    start = set(_pairs(frames[0], radii, bond_mult))
    lonely_at_start = _lonely(frames[0], _pairs(frames[0], radii, loss_mult))
    events, seen = [], set()
    for f, frame in enumerate(frames):
        near = _pairs(frame, radii, reach)
        found = []
        for pair in start:
            if near.get(pair, np.inf) > break_mult:
                found.append(("bond broken", pair))
        for pair, ratio in near.items():
            if pair not in start and ratio < form_mult:
                found.append(("bond formed", pair))
        close = {p: r for p, r in near.items() if r <= loss_mult}
        for a in sorted(_lonely(frame, close) - lonely_at_start):
            found.append(("atom lost", (a,)))
        for kind, atoms in found:
            if (kind, atoms) not in seen:
                seen.add((kind, atoms))
                events.append({"time_fs": float(times[f]), "frame": f, "type": kind,
                               "atoms": list(atoms)})
    return events


def _lonely(atoms, pairs: dict) -> set:
    if len(atoms) < 2:
        return set()
    has = {a for pair in pairs for a in pair}
    return set(range(len(atoms))) - has


def _run(model, atoms, temperature, steps, timestep_fs, seed, log_every, friction):
    """run_md into a temporary trajectory; on a crash, the frames written before it."""
    from mlipuq.propagation.md import MDTrajectory, run_md

    with tempfile.TemporaryDirectory(prefix="mlipuq-trust-") as folder:
        path = os.path.join(folder, "md.traj")
        try:
            traj = run_md(atoms, model, ensemble="nvt", temperature_K=temperature,
                          timestep_fs=timestep_fs, steps=steps, seed=seed,
                          log_every=log_every, trajectory=path, friction=friction,
                          progress=False)
            return traj, ""
        except (ValueError, FloatingPointError, RuntimeError, OverflowError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            try:
                traj = MDTrajectory.read(path, complete_only=True)
            except (ValueError, FileNotFoundError, OSError):
                traj = None
            if traj is None or not len(traj):  # nothing ran: a setup error, not a crash
                raise
            return traj, message


def stability(
    model,
    atoms,
    temperatures: Sequence[float] = (300.0, 600.0),
    steps: int = 200,
    *,
    timestep_fs: float = 0.5,
    threshold: Optional[float] = FORCE_STD_THRESHOLD,
    log_every: int = 5,
    seed: int = 0,
    friction: float = 0.01,
    bond_mult: float = BOND_MULT,
    break_mult: float = BREAK_MULT,
    form_mult: float = FORM_MULT,
    loss_mult: float = LOSS_MULT,
) -> StabilityResult:
    """Short Langevin NVT runs at each temperature (K), watched for failures.

    Parameters
    ----------
    model
        A base MLIP or a UQ wrapper (the uncertainty fraction needs a wrapper).
    atoms
        Starting structure (not modified; its momenta are redrawn per temperature).
    steps, timestep_fs, log_every, seed, friction
        Passed to :func:`mlipuq.propagation.run_md` (friction in 1/fs). Events are
        looked for at logged frames, so ``log_every * timestep_fs`` is the
        resolution of the failure time.
    threshold
        Largest per-atom force std (eV/Å) of a trusted frame; None: no
        uncertainty check.
    bond_mult, break_mult, form_mult, loss_mult
        The structural rules (module docstring).
    """
    target = as_target(model)
    if target.kind == "calculator":
        raise TypeError("stability runs mlipuq's MD: pass an mlipuq MLIP or UQ wrapper, "
                        "not an ASE calculator")
    (start,) = structures_list(atoms)
    if int(steps) < 1 or int(log_every) < 1 or not float(timestep_fs) > 0:
        raise ValueError(f"steps and log_every must be >= 1 and timestep_fs > 0, got "
                         f"{steps}, {log_every}, {timestep_fs}")
    start.set_momenta(np.zeros((len(start), 3)))
    temperatures = [float(t) for t in np.atleast_1d(temperatures)]
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive, got {temperatures}")
    use_threshold = threshold is not None and target.has_uncertainty
    runs = []
    for temperature in temperatures:
        traj, crashed = _run(target.model, start, temperature, int(steps), timestep_fs, seed,
                             log_every, friction)
        frames = [] if traj is None else list(traj.frames)
        times = np.zeros(0) if traj is None else np.asarray(traj.time_fs)
        events = structural_events(frames, times, bond_mult=bond_mult, break_mult=break_mult,
                                   form_mult=form_mult, loss_mult=loss_mult)
        std = None if traj is None or not target.has_uncertainty else \
            np.asarray(traj.max_force_std)
        fraction = None
        failures = [(e["time_fs"], f"{e['type']} {e['atoms']}") for e in events]
        if use_threshold and std is not None and len(std):
            above = std > float(threshold)
            fraction = float(above.mean())
            if above.any():
                failures.append((float(times[np.argmax(above)]),
                                 f"force std above {float(threshold):g} eV/Å"))
        if crashed:
            failures.append((float(times[-1]) + timestep_fs if len(times) else 0.0,
                             f"crashed: {crashed}"))
        first = min(failures, key=lambda f: f[0]) if failures else None
        verdict = FAIL if events or crashed else (WARN if fraction else PASS)
        runs.append(StabilityRun(
            temperature_K=temperature, n_frames=len(frames), time_fs=times, max_force_std=std,
            fraction_above=fraction, events=events,
            first_failure_fs=None if first is None else first[0],
            failure="" if first is None else first[1], crashed=crashed, verdict=verdict,
            name=f"{temperature:g} K"))
    return StabilityResult(
        runs=runs, steps=int(steps), timestep_fs=float(timestep_fs),
        threshold=float(threshold) if use_threshold else None,
        thresholds={"max_force_std_eV_per_A": threshold if use_threshold else None,
                    "bond_mult": bond_mult, "break_mult": break_mult, "form_mult": form_mult,
                    "loss_mult": loss_mult},
        verdict=worst([r.verdict for r in runs]))
