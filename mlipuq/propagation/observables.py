"""Per-frame observables of an MD trajectory, ready for :func:`~mlipuq.propagation.reweight`.

Each function takes an :class:`~mlipuq.propagation.md.MDTrajectory` (or a
sequence of ``ase.Atoms`` frames) and returns one value per frame, with the
frames along the first axis:

========================  ============  ==========================================
function                  shape         unit
========================  ============  ==========================================
``potential_energy``      (n,)          eV (mean potential; MDTrajectory only)
``member_energies``       (n, K)        eV (MDTrajectory only)
``volume``                (n,)          Å³ (periodic cells)
``pressure``              (n,)          GPa (periodic cells, kinetic + virial)
``kinetic_temperature``   (n,)          K
``radial_distribution``   (n, n_bins)   dimensionless g(r), with bin centres in Å
``mean_square_displacement``  (n,)      Å², from the first frame
========================  ============  ==========================================
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from ase import units

from mlipuq.propagation.md import MDTrajectory


def _frames(trajectory) -> list:
    if isinstance(trajectory, MDTrajectory):
        frames = trajectory.frames
    else:
        try:
            frames = list(trajectory)
        except TypeError:
            raise ValueError(
                "expected an MDTrajectory or a sequence of ase.Atoms, got "
                f"{type(trajectory).__name__}"
            ) from None
    if not frames:
        raise ValueError("the trajectory holds no frames")
    return frames


def _as_trajectory(trajectory) -> MDTrajectory:
    if isinstance(trajectory, MDTrajectory):
        return trajectory
    return MDTrajectory.from_frames(_frames(trajectory))


def _periodic(frames, what: str) -> None:
    for i, atoms in enumerate(frames):
        if not np.all(atoms.pbc):
            raise ValueError(f"{what} needs periodic cells; frame {i} has pbc={atoms.pbc.tolist()}")


def potential_energy(trajectory) -> np.ndarray:
    """(n,) mean potential energy of each frame (eV)."""
    return _as_trajectory(trajectory).energy.copy()


def member_energies(trajectory) -> np.ndarray:
    """(n, K) committee energies of each frame (eV): the ``member_energies`` of reweighting."""
    traj = _as_trajectory(trajectory)
    if traj.n_members == 0:
        raise ValueError("the trajectory has no committee energies (run with a UQ wrapper)")
    return traj.energies.copy()


def volume(trajectory) -> np.ndarray:
    """(n,) cell volume of each frame (Å³)."""
    frames = _frames(trajectory)
    _periodic(frames, "volume")
    return np.array([a.get_volume() for a in frames], dtype=np.float64)


def kinetic_temperature(trajectory) -> np.ndarray:
    """(n,) instantaneous kinetic temperature (K), 3N degrees of freedom."""
    return np.array([a.get_temperature() for a in _frames(trajectory)], dtype=np.float64)


def pressure(trajectory) -> np.ndarray:
    """(n,) instantaneous pressure (GPa): kinetic part plus the mean potential's virial.

    .. math:: P = \\frac{2 K}{3 V} - \\frac{1}{3}\\operatorname{tr}\\sigma

    with the kinetic energy K (eV), volume V (Å³) and the virial stress σ
    (eV/Å³, ASE sign convention) logged by :func:`~mlipuq.propagation.run_md`.
    """
    traj = _as_trajectory(trajectory)
    _periodic(traj.frames, "pressure")
    if traj.stress is None:
        raise ValueError("the trajectory has no stresses (they are logged for periodic cells)")
    kinetic = np.array([a.get_kinetic_energy() for a in traj.frames])
    vol = np.array([a.get_volume() for a in traj.frames])
    p = 2.0 * kinetic / (3.0 * vol) - np.trace(traj.stress, axis1=1, axis2=2) / 3.0
    return p / units.GPa


def radial_distribution(
    trajectory,
    *,
    r_max: float = 5.0,
    n_bins: int = 100,
    elements: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g(r) of every frame.

    .. math:: g(r) = \\frac{V}{N_a N_b}\\,\\frac{n_{ab}(r)}{4\\pi r^2\\,\\Delta r}

    with :math:`n_{ab}(r)` the number of ordered (a, b) pairs in the shell
    (periodic images included, so ``r_max`` may exceed half the cell).

    Parameters
    ----------
    trajectory
        MDTrajectory or frames with periodic cells.
    r_max
        Largest distance (Å).
    n_bins
        Number of histogram bins.
    elements
        ``(a, b)`` element pair for a partial g(r); default all atoms.

    Returns
    -------
    r, g
        Bin centres (n_bins,) in Å and g(r) per frame (n_frames, n_bins).
    """
    from ase.neighborlist import neighbor_list

    frames = _frames(trajectory)
    _periodic(frames, "radial_distribution")
    r_max = float(r_max)
    if not r_max > 0 or int(n_bins) < 1:
        raise ValueError(f"r_max must be positive and n_bins >= 1, got {r_max}, {n_bins}")
    edges = np.linspace(0.0, r_max, int(n_bins) + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    out = np.zeros((len(frames), int(n_bins)))
    for f, atoms in enumerate(frames):
        i, j, d = neighbor_list("ijd", atoms, r_max)
        symbols = np.array(atoms.get_chemical_symbols())
        if elements is None:
            n_a = n_b = len(atoms)
            keep = slice(None)
        else:
            a, b = elements
            n_a, n_b = int((symbols == a).sum()), int((symbols == b).sum())
            if n_a == 0 or n_b == 0:
                raise ValueError(f"frame {f} has no {a}-{b} pairs")
            keep = (symbols[i] == a) & (symbols[j] == b)
        counts, _ = np.histogram(d[keep], bins=edges)
        out[f] = counts * atoms.get_volume() / (n_a * n_b * shell)
    return 0.5 * (edges[1:] + edges[:-1]), out


def mean_square_displacement(trajectory, *, remove_drift: bool = True) -> np.ndarray:
    """(n,) mean-square displacement from the first frame (Å²).

    Positions written by ``run_md`` are not wrapped into the cell, so the
    displacements are continuous. With ``remove_drift`` the centre-of-mass
    displacement is subtracted first.
    """
    frames = _frames(trajectory)
    ref = frames[0].positions
    out = np.zeros(len(frames))
    for f, atoms in enumerate(frames):
        if len(atoms) != len(ref):
            raise ValueError(f"frame {f} has {len(atoms)} atoms, frame 0 has {len(ref)}")
        disp = atoms.positions - ref
        if remove_drift:
            masses = atoms.get_masses()
            disp = disp - (masses[:, None] * disp).sum(axis=0) / masses.sum()
        out[f] = float(np.mean(np.sum(disp**2, axis=1)))
    return out
