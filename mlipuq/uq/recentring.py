"""The deep ensemble's recentring: per-member, per-species energy offsets fitted on
the calibration data (:meth:`mlipuq.uq.ensembles.DeepEnsemble.calibrate`).

Responsibility: the offsets' least-squares fit, the choice of its weighting, the
calibration prediction moved by them without predicting again, and the members'
alignment along the reference-energy directions their training left undetermined.

Independently trained members carry their own constant errors per atom of each
species; left in, they dominate the members' spread. The offsets remove them, so that
the spread measures how the members differ between structures (docs/shift.md,
"Deep-ensemble recentring").
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mlipuq.prediction import Prediction


#: ``calibrate``'s ``recentre`` values besides True (``"per_atom"``) and False
RECENTRINGS = ("per_atom", "total", "members")


def recentring_weighting(recentre) -> Optional[str]:
    """``"per_atom"``, ``"total"``, ``"members"`` or None (no recentring) from
    ``calibrate``'s ``recentre`` (True: ``"per_atom"``; False or None: none)."""
    if recentre is True:
        return "per_atom"
    if recentre is False or recentre is None:
        return None
    if isinstance(recentre, str) and recentre in RECENTRINGS:
        return recentre
    raise ValueError("recentre must be True, False, 'per_atom', 'total' or 'members', "
                     f"got {recentre!r}")


def recentring_offsets(counts, residuals, n_atoms, *, per_atom: bool = True) -> np.ndarray:
    """(K, S) per-species energy offsets (eV/atom) of each member: the least-squares
    (minimum-norm) fit of ``counts`` (B, S) atoms per species to ``residuals`` (K, B),
    the reference energies minus each member's (eV). ``per_atom``: every row divided by
    its structure's atom count ``n_atoms`` (B,) first, so each structure weighs the
    same; else the fit to the total energies (a structure weighs as n_atoms²)."""
    counts = np.asarray(counts, dtype=np.float64)
    residuals = np.asarray(residuals, dtype=np.float64).T  # (B, K)
    if per_atom:
        size = np.maximum(np.asarray(n_atoms, dtype=np.float64), 1.0)[:, None]
        counts, residuals = counts / size, residuals / size
    return np.linalg.lstsq(counts, residuals, rcond=None)[0].T


def members_only(offsets) -> np.ndarray:
    """``offsets`` (K, S) less their mean over the members: each member moved onto the
    members' mean, which stays where it was (``recentre="members"``). By the linearity
    of least squares these are the offsets fitted to the mean member's energies minus
    each member's, so the reference energies do not enter them."""
    offsets = np.asarray(offsets, dtype=np.float64)
    return offsets - offsets.mean(axis=0, keepdims=True)


def shifted_members(prediction: Prediction, counts, shifts) -> Prediction:
    """``prediction`` (uncalibrated, with ``energy_members``) as the members predict it
    with each member's per-atom energy of each species moved by ``shifts`` (K, S) eV;
    ``counts`` (B, S) are the structures' atoms per species.

    The member energies, their mean and their population variance move; forces do not
    (the shifts are constant per atom). The local energy variances are dropped: the
    members' local energies are not in a prediction, so theirs cannot be moved, and
    :meth:`~mlipuq.uq.base.UQWrapper.calibrate` does not read them."""
    if prediction.energy_members is None:
        raise ValueError("shifted_members needs a prediction with energy_members")
    members = prediction.energy_members + np.asarray(shifts, np.float64) @ np.asarray(
        counts, np.float64).T
    return dataclasses.replace(prediction, energy_members=members,
                               energy=members.mean(axis=0), energy_var=members.var(axis=0),
                               atom_energy_var=None)  # population variance, as predict's


def member_drifts(models, offsets: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """(K, S) each member's energies along its undetermined reference-energy
    directions, in species space (eV), its recentring ``offsets`` (K, S; None: none)
    included; None unless every member has a basis and a measured drift."""
    bases = [m.offset_basis for m in models]
    drifts = [m.offset_drift for m in models]
    if not all(b is not None and d is not None for b, d in zip(bases, drifts)):
        return None
    if offsets is None:
        offsets = np.zeros((len(bases), bases[0].shape[0]))
    return np.stack([b @ (d + b.T @ o) for b, d, o in zip(bases, drifts, offsets)])


def mean_drift(models, offsets: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The drift of the members' mean energy along member 0's undetermined directions:
    the members' mean drift, recentring ``offsets`` included (in species space, then on
    member 0's basis); zero (the prior alone) unless every member has a drift; None
    without a basis (the training compositions determine every reference energy)."""
    basis = models[0].offset_basis
    if basis is None:
        return None
    drifts = member_drifts(models, offsets)
    return np.zeros(basis.shape[1]) if drifts is None else basis.T @ drifts.mean(axis=0)


def member_alignment(models, offsets: Optional[np.ndarray]) -> np.ndarray:
    """(K, S) per-species energy shifts (eV per atom) that move every member to
    the members' mean drift along the undetermined directions (0 when none).

    Trained alike, members hold different shares of the reference energies
    their training compositions left undetermined (three AgPd members: +2.09,
    +1.65, -1.01 eV along e_Ag - e_Pd); left in, removing one atom spreads
    their energies by about an eV per cell, a spread the composition variance
    (prior and mean drift) already accounts for. Aligned, the spread on
    another stoichiometry measures how the members differ in the structure;
    the mean and every training composition's member energies are unchanged.
    """
    drifts = member_drifts(models, offsets)
    if drifts is None:
        return np.zeros((len(models), len(models[0].species)))
    return drifts.mean(axis=0) - drifts
