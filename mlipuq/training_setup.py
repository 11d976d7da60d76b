"""Data preparation before training: validated graphs, reference energies, neighbour scale.

Split out of :mod:`mlipuq.training`, which re-exports every name here.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.checks import periodic_widths
from mlipuq.errors import user_stacklevel
from mlipuq.models.base import MLIP

log = logging.getLogger("mlipuq.training")  # the name the training log has always used


def prepare_graphs(dataset: mdata.AtomsDataset, model: MLIP, *, need_forces: bool):
    """Validate ``dataset`` for training and build its neighbour lists once."""
    dataset.validate(model.species, require_energy=True, require_forces=need_forces)
    return [mdata.to_graph(a, model.cutoff, k, model.species) for k, a in enumerate(dataset)]


def fit_scales(model: MLIP, train: mdata.AtomsDataset, graphs: Sequence[mdata.Graph]) -> None:
    """Give the model what it needs from the data before training starts:
    species reference energies (least squares) and the mean neighbour count;
    warn where the training cells leave the equation of state unmeasured
    (:func:`check_cells`)."""
    check_cells(train)
    check_cell_widths(train, model.cutoff)
    if not model.atomic_energies_set:
        fit_reference_energies(model, train)
    else:
        check_reference_energies(model, train)
    if hasattr(model, "avg_num_neighbors") and model.avg_num_neighbors is None:
        edges = sum(g.edge_index.shape[1] for g in graphs)
        atoms = sum(len(g.numbers) for g in graphs)
        model.avg_num_neighbors = max(edges / max(atoms, 1), 1.0)


class SingleCellWarning(UserWarning):
    """Every periodic training structure has the same cell: no label measured the
    energy at another volume or shape."""


#: Largest strain component between two cells that still counts as one cell: a
#: strain this small measures no equation of state.
SAME_CELL_STRAIN = 1e-3


def check_cells(train) -> None:
    """Warn (:class:`SingleCellWarning`) when two or more fully periodic training
    structures all share one cell: no strain component between the first cell and any
    other above :data:`SAME_CELL_STRAIN`. Energies and forces at one volume leave the
    equation of state to the network; without stress labels in the calibration data (the
    strain term, :mod:`mlipuq.calibration.strain`) no wrapper models its error
    (docs/shift.md, "Strained cells' energies"). Non-periodic and partially periodic
    structures are ignored; the same lattice in another supercell or with its vectors
    permuted or rotated counts as another cell (no warning)."""
    first, count = None, 0
    for atoms in train:
        if not np.all(atoms.pbc):
            continue
        cell = np.asarray(atoms.cell, dtype=float)
        if first is None:
            if abs(np.linalg.det(cell)) == 0:  # not a cell to compare strains with
                return
            first = cell
        elif np.abs(np.linalg.solve(first, cell) - np.eye(3)).max() > SAME_CELL_STRAIN:
            return
        count += 1
    if count < 2:
        return
    warnings.warn(
        f"all {count} periodic training structures share one cell (volume "
        f"{abs(np.linalg.det(first)):.6g} Å^3): energies and forces at one volume and "
        "shape leave the equation of state to the network, so energies of strained or "
        "compressed cells may be far off with small stds; add cells at other volumes "
        "(strained cells, NPT frames) to the training data, or calibrate on data with "
        "stress labels (calibrate then measures the stress error and adds its energy "
        "variance to strained cells, docs/calibration.md, 'the strain term'), or ignore "
        "this if you will only simulate at this cell",
        SingleCellWarning, stacklevel=user_stacklevel(),
    )


class SmallCellWarning(UserWarning):
    """Every periodic training cell is narrower than twice the model's cutoff: the
    environments of larger cells were never seen."""


def check_cell_widths(train, cutoff: float) -> None:
    """Warn (:class:`SmallCellWarning`) when every fully periodic training structure has
    a perpendicular width below twice ``cutoff``: some neighbours then enter an atom's
    environment through two periodic images and move together, a constraint larger
    cells do not have. Measured on the shift benchmark (EMT metals trained on 32-atom
    cells, docs/shift.md, "Shift kinds no round saw"): forces in 108- and 256-atom cells
    at the training temperature were 1.4–2.9 times less accurate, and the single
    models' stds did not rise with the error; trained on as many atoms in 108-atom
    cells, the error was the same in every cell size. Nothing when a training cell is
    wide enough or none is fully periodic (degenerate cells are validation's to report)."""
    widths = periodic_widths(train)
    if not widths.size or widths.max() >= 2.0 * cutoff:
        return
    warnings.warn(
        f"all {len(widths)} periodic training cells are narrower than twice the model's "
        f"cutoff ({cutoff:g} Å; widest {widths.max():.3g} Å): neighbours enter each "
        "environment through two periodic images and move together, so the network "
        "never sees the environments of larger cells, whose forces were up to 3 times "
        "less accurate with stds that did not grow (docs/shift.md, 'Shift kinds no round "
        f"saw'); add cells at least {2.0 * cutoff:.3g} Å wide to the training data, or "
        "ignore this if you will only simulate cells of the training size",
        SmallCellWarning, stacklevel=user_stacklevel(),
    )


class ForeignReferenceWarning(UserWarning):
    """A model's own reference energies leave its training energies farther from them
    than any atomization energy: they are not the references of this data's method."""


#: RMS per-atom distance (eV/atom) between the training energies and the model's own
#: reference energies beyond which they cannot be this data's references: cohesive and
#: atomization energies stay below about 10 eV/atom.
FOREIGN_REFERENCE = 20.0


def check_reference_energies(model: MLIP, train: mdata.AtomsDataset) -> float:
    """Warn (:class:`ForeignReferenceWarning`) before training when the reference
    energies a model already has leave the labelled training energies more than
    :data:`FOREIGN_REFERENCE` eV/atom (RMS) from them: E0s of 0 on DFT total
    energies, or another code's. ``mlipuq.train`` keeps a model's own references, so
    the network would have to learn that offset (a small MACE with E0s of 0 ended
    0.8 eV/Å off on ethanol, docs/shift.md). Returns that RMS distance (eV/atom)."""
    labelled = train[np.flatnonzero(train.has_reference)]
    if not len(labelled):
        return 0.0
    counts = mdata.composition_matrix(labelled, model.species)
    own = np.array([model.atomic_energies[z] for z in model.species], dtype=np.float64)
    distance = float(np.sqrt(np.mean(((labelled.energies - counts @ own)
                                      / counts.sum(axis=1)) ** 2)))
    if distance > FOREIGN_REFERENCE:
        warnings.warn(
            f"the model's reference energies leave the training energies {distance:.4g} "
            f"eV/atom (RMS) from them, beyond any atomization energy: they are not the "
            "references of this data's method (E0s of 0, or another code's), and the "
            "network would have to learn the difference. Fit them before training "
            "(mlipuq.training.fit_reference_energies(model, train)) or set this method's "
            "isolated-atom energies (model.set_atomic_energies(...))",
            ForeignReferenceWarning, stacklevel=user_stacklevel())
    return distance


class UndeterminedReferenceWarning(UserWarning):
    """The training compositions do not determine every per-species reference energy."""


def fit_reference_energies(model: MLIP, train: mdata.AtomsDataset) -> None:
    """Per-species reference energies by least squares, with the combinations the
    training compositions leave undetermined recorded on the model.

    One molecule (or any fixed stoichiometry) determines only one combination
    of its species' reference energies: another stoichiometry would then get a
    confident wrong energy. Here the undetermined directions (null space of the
    composition matrix) are stored with a prior std τ and every wrapper adds
    ``model.composition_variance`` to its energy variance. τ is the empirical-
    Bayes (type-II maximum-likelihood) scale of independent N(0, τ²) priors on
    the reference energies: a structure's energy E = c·e then has variance
    τ²|c|², so τ² = mean over the training structures of E²/|c|² (eV²).
    A warning names the undetermined combinations; isolated-atom energies
    (``model.set_atomic_energies(mlipuq.data.atomic_energies_from(path))``
    before training) fix them.
    """
    labelled = train[np.flatnonzero(train.has_reference)]
    counts = mdata.composition_matrix(labelled, model.species)
    basis = mdata.undetermined_offsets(counts)
    energies = mdata.fit_atomic_energies(train, model.species)
    tau = float(np.sqrt(np.mean(labelled.energies**2 / np.einsum("bs,bs->b", counts, counts))))
    if basis.shape[1]:
        warnings.warn(
            f"the training compositions determine only {len(model.species) - basis.shape[1]} "
            f"of the {len(model.species)} per-species reference energies; undetermined "
            f"combinations: {mdata.describe_offsets(basis, model.species)}. Energies of other "
            f"stoichiometries get a composition variance (prior std {tau:.3g} eV per "
            "direction); give isolated-atom energies (model.set_atomic_energies("
            "mlipuq.data.atomic_energies_from(path))) to determine them",
            UndeterminedReferenceWarning, stacklevel=user_stacklevel(),
        )
    model.set_atomic_energies(energies, undetermined=basis, prior_std=max(tau, 1e-12))
    log.info("fitted atomic energies %s", model.atomic_energies)


def fit_offset_drift(model: MLIP, train: mdata.AtomsDataset, *, batch_size: int = 32) -> None:
    """Measure where the trained network put the reference-energy combinations its
    training compositions left undetermined (:meth:`MLIP.set_offset_drift`).

    With one stoichiometry the data fix only the sum of the species' energies;
    the network's per-species share is whatever training left it: on EMT
    Cu₃Au and AgPd, models trained alike held 0.5–2.1 eV (in size) along the
    undetermined direction, which predicted their energy errors on another
    stoichiometry within 20 %, errors 8–26 times the prior's std
    (``docs/shift.md``). The drift is ``Nᵀē``, ``ē_s`` the mean energy
    (reference energy included) of the atoms of species ``s`` in ``train``
    (the data the model was trained on: ``mlipuq.train`` calls this when it
    ends); :meth:`MLIP.composition_variance` adds its square. Nothing to do
    when every combination is determined. A species of the undetermined
    directions absent from ``train`` keeps an earlier drift (fine-tuning on
    part of the species); measured first without it, its ``ē_s`` counts as 0
    (an untrained species: the prior alone). A model without per-atom
    energies keeps the prior alone (logged).
    """
    basis = model.offset_basis
    if basis is None:
        return
    try:
        sums, counts = _species_energy_sums(model, train, batch_size)
    except NotImplementedError:
        log.info("%s has no per-atom energies: its composition variance keeps the prior "
                 "alone", type(model).__name__)
        model.set_offset_drift(None)
        return
    absent = (counts == 0) & np.any(np.abs(basis) > 1e-12, axis=1)
    if np.any(absent) and model.offset_drift is not None:
        log.info("offset drift kept: no atoms of atomic numbers %s in this training data",
                 [z for z, a in zip(model.species, absent) if a])
        return
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    model.set_offset_drift(basis.T @ mean)


class EnergyOffsetWarning(UserWarning):
    """Training ended with a constant energy offset that a refit of the reference
    energies would remove (``mlipuq.train(..., refit_references=True)``)."""


def reference_energy_shift(model: MLIP, train: mdata.AtomsDataset, *,
                           batch_size: int = 32) -> tuple[np.ndarray, float, float]:
    """The shift of the per-species reference energies (eV, order of ``species``) that
    removes the trained model's mean energy error on ``train`` along the combinations
    the training compositions determine, and the RMS per-atom error it removes and
    the one it leaves (eV/atom).

    The shift is the minimum-norm least-squares solution of ``C δ = E_ref − E_model``
    (C the composition matrix): it lies in the span of the training compositions, so
    the undetermined combinations (:attr:`MLIP.offset_basis`) and every force are
    unchanged by it.
    """
    dataset = mdata.as_dataset(train)
    labelled = dataset[np.flatnonzero(dataset.has_reference)]
    counts = mdata.composition_matrix(labelled, model.species)
    residual = labelled.energies - _energies(model, labelled, batch_size)
    shift, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    n_atoms = counts.sum(axis=1)
    removed = (counts @ shift) / n_atoms
    left = (residual - counts @ shift) / n_atoms
    return shift, float(np.sqrt(np.mean(removed**2))), float(np.sqrt(np.mean(left**2)))


def refit_reference_energies(model: MLIP, train: mdata.AtomsDataset, *,
                             batch_size: int = 32) -> dict[int, float]:
    """Refit the per-species reference energies to the trained network by
    :func:`reference_energy_shift` on ``train``; returns the shift (eV per atomic
    number). Idempotent.

    Training weighs forces (``forces_weight=100`` per eV²/Å²) far above the
    per-atom energy (1 per eV²), so a constant energy offset costs it almost
    nothing: MiniMLIPs trained so ended 0.05–31 meV/atom off on their own
    training structures, with a spread of 0.2–2.3 meV/atom around that offset
    (``benchmarks/reference_refit.py``). The undetermined combinations, their
    prior and drift, and every force stay as they were.
    """
    shift, _, _ = reference_energy_shift(model, train, batch_size=batch_size)
    old = model.atomic_energies
    basis, prior, drift = model.offset_basis, model.offset_prior_std, model.offset_drift
    model.set_atomic_energies({z: old[z] + d for z, d in zip(model.species, shift)},
                              undetermined=basis, prior_std=prior)
    if drift is not None:
        model.set_offset_drift(drift)
    log.info("reference energies refitted to the trained model: shift %s eV",
             np.round(shift, 6).tolist())
    return {z: float(d) for z, d in zip(model.species, shift)}


def check_energy_offset(model: MLIP, train: mdata.AtomsDataset, *,
                        stacklevel: Optional[int] = None) -> dict[int, float]:
    """Warn (:class:`EnergyOffsetWarning`) when the trained model's energy error on
    ``train`` is mostly a constant offset per composition: the RMS per-atom error a
    refit of the reference energies would remove exceeds the one it would leave.
    Returns that refit's shift (eV per atomic number), applied or not; ``stacklevel``
    as in :func:`warnings.warn` (None: the first frame outside mlipuq)."""
    shift, removed, left = reference_energy_shift(model, train)
    if removed > left:
        warnings.warn(
            f"training left a constant energy offset: refitting the reference energies "
            f"would remove {1000 * removed:.3g} meV/atom (RMS) of the energy error on the "
            f"training data and leave {1000 * left:.3g}; pass refit_references=True to "
            "mlipuq.train (or call mlipuq.training.refit_reference_energies(model, train)) "
            "to remove it", EnergyOffsetWarning,
            stacklevel=user_stacklevel() if stacklevel is None else stacklevel)
    return {z: float(d) for z, d in zip(model.species, shift)}


def _energies(model: MLIP, dataset: mdata.AtomsDataset, batch_size: int) -> np.ndarray:
    """(B,) float64 energies (eV) of ``dataset`` without forces."""
    out = []
    with torch.no_grad():
        for _, batch in mdata.iter_batches(dataset, model.cutoff, batch_size,
                                           species=model.species, dtype=model.dtype):
            energy = model.forward(batch.to(device=model.device), forces=False)["energy"]
            out.append(energy.detach().cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def settle_references(model: MLIP, train, refit: bool) -> dict[int, float]:
    """What ``mlipuq.train`` does with the reference energies when training ends:
    refits them (``refit``, :func:`refit_reference_energies`) or checks for the
    offset a refit would remove (:func:`check_energy_offset`), then measures the
    offset drift (:func:`fit_offset_drift`); returns the refit's shift (eV per
    atomic number), applied or not."""
    if refit:
        shift = refit_reference_energies(model, train)
    else:  # the warning points at the user's call (mlipuq.train, or a wrapper's fit)
        shift = check_energy_offset(model, train)
    fit_offset_drift(model, mdata.as_dataset(train))  # what training left undetermined
    return shift


def measure_missing_drift(model: MLIP, train) -> None:
    """:func:`fit_offset_drift` on ``train`` for a model saved before ``mlipuq.train``
    measured it (2026-12-02); nothing for a model that has one or needs none."""
    if model.offset_basis is not None and model.offset_drift is None:
        fit_offset_drift(model, train)


def _species_energy_sums(model: MLIP, dataset, batch_size: int) -> tuple:
    """Per species of ``model``: the summed per-atom energies (reference energy
    included, eV) of ``dataset``'s atoms, and their number."""
    sums, counts = np.zeros(len(model.species)), np.zeros(len(model.species))
    offsets = np.array([model.atomic_energies[z] for z in model.species])
    with torch.no_grad():
        for _, batch in mdata.iter_batches(mdata.as_dataset(dataset), model.cutoff,
                                           batch_size, species=model.species,
                                           dtype=model.dtype):
            batch = batch.to(device=model.device)
            index = model.species_index(batch).cpu().numpy()
            energy = model.per_atom_energy(batch).detach().cpu().double().numpy().reshape(-1)
            if energy.shape != index.shape:
                raise ValueError(f"{type(model).__name__}.per_atom_energy gave {energy.size} "
                                 f"values for {index.size} atoms")
            np.add.at(sums, index, energy + offsets[index])
            np.add.at(counts, index, 1.0)
    return sums, counts
