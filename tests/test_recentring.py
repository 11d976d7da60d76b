"""The deep ensemble's recentring: per-species energy offsets per member, fitted per
atom so that every calibration structure weighs the same whatever its size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlipuq import data as mdata
from mlipuq.models import MiniMLIP
from mlipuq.prediction import Prediction
from mlipuq.uq.deep_ensemble import recentring_offsets
from mlipuq.uq.recentring import shifted_members
from mlipuq.uq.ensembles import DeepEnsemble


def test_one_species_offsets_by_hand():
    """One species, cells of 32 and 108 atoms: the per-atom fit is the plain mean of
    the per-atom residuals; the fit to total energies is sum(N r) / sum(N²), which the
    large cells dominate."""
    n = np.array([32, 32, 32, 108])
    per_atom = np.array([[0.010, 0.012, 0.008, -0.002], [0.0, 0.001, -0.001, 0.004]])
    residuals = per_atom * n  # (K, B) eV
    counts = n[:, None].astype(float)
    np.testing.assert_allclose(recentring_offsets(counts, residuals, n)[:, 0],
                               per_atom.mean(axis=1), rtol=1e-12)
    total = recentring_offsets(counts, residuals, n, per_atom=False)[:, 0]
    np.testing.assert_allclose(total, (residuals * n).sum(axis=1) / (n**2).sum(), rtol=1e-12)
    assert abs(total[0] - per_atom[0, 3]) < abs(per_atom.mean(axis=1)[0] - per_atom[0, 3])


def test_one_size_both_fits_agree():
    """Cells of one size (two species): dividing every row by the same count changes
    no least-squares solution."""
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 20, size=(8, 2)).astype(float)
    counts[:, 1] = 24 - counts[:, 0]
    residuals = rng.normal(size=(3, 8))
    np.testing.assert_allclose(recentring_offsets(counts, residuals, np.full(8, 24)),
                               recentring_offsets(counts, residuals, np.full(8, 24),
                                                  per_atom=False), rtol=1e-10, atol=1e-14)


def test_shifted_members_by_hand():
    """Two members, two structures (one Cu atom; one Cu and one Au): member k's energy
    moves by its per-species shifts times the counts; the mean and the population
    variance follow, the forces do not, and the local variances are dropped."""
    members = np.array([[1.0, 2.0], [3.0, 6.0]])
    prediction = Prediction(energy=members.mean(0), energy_var=members.var(0),
                            forces=np.ones((3, 3)), forces_var=np.ones((3, 3)),
                            n_atoms=np.array([1, 2]), batch=np.array([0, 1, 1]),
                            numbers=np.array([29, 29, 79]), energy_members=members,
                            atom_energy_var=np.ones(3))
    counts = np.array([[1.0, 0.0], [1.0, 1.0]])  # Cu, Au
    moved = shifted_members(prediction, counts, np.array([[0.5, 0.0], [-1.0, 2.0]]))
    np.testing.assert_allclose(moved.energy_members, [[1.5, 2.5], [2.0, 7.0]])
    np.testing.assert_allclose(moved.energy, [1.75, 4.75])
    np.testing.assert_allclose(moved.energy_var, [0.0625, 5.0625])
    np.testing.assert_array_equal(moved.forces, prediction.forces)
    assert moved.atom_energy_var is None


def _cells(repeats, seed=0, energy_shift=0.0):
    """EMT-labelled rattled Cu cells, their energies moved by ``energy_shift`` (eV)."""
    rng = np.random.default_rng(seed)
    frames = []
    for r in repeats:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(r)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy + energy_shift, forces=forces)
        frames.append(atoms)
    return mdata.as_dataset(frames)


@pytest.fixture(scope="module")
def mixed():
    members = [MiniMLIP(["Cu"], cutoff=4.0, width=8, n_interactions=1, n_rbf=4,
                        n_readout_features=8, seed=s) for s in (0, 1)]
    return DeepEnsemble(members), _cells([2, 2, 2, 2, 3, 3])


def test_calibrate_recentres_per_atom(mixed):
    """``calibrate`` on 32- and 108-atom cells: each member's offset is the mean of its
    per-atom residuals over the cells (by default), sum(N r) / sum(N²) with
    ``recentre="total"``, and none with ``recentre=False``."""
    deep, val = mixed
    raw = deep.predict(val, calibrated=False, composition=False, progress=False)
    n = np.asarray(val.n_atoms, dtype=np.float64)
    residuals = val.energies[None, :] - raw.energy_members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained members: offset warnings
        deep.calibrate(val)
        np.testing.assert_allclose(deep.member_offsets_[:, 0],
                                   (residuals / n).mean(axis=1), rtol=1e-6)
        deep.calibrate(val, recentre="total")
        np.testing.assert_allclose(deep.member_offsets_[:, 0],
                                   (residuals * n).sum(axis=1) / (n**2).sum(), rtol=1e-6)
        deep.calibrate(val, recentre=False)
    assert deep.member_offsets_ is None


def test_members_recentring_keeps_the_mean(mixed):
    """``recentre="members"``: the per-atom offsets less their mean over the members,
    so the ensemble's mean energy is the unrecentred one and only the members move
    onto it (their per-atom mean residuals then agree)."""
    deep, val = mixed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained members: offset warnings
        deep.calibrate(val, recentre=False)
        raw = deep.predict(val, calibrated=False, composition=False, progress=False)
        deep.calibrate(val, recentre="members")
        moved = deep.predict(val, calibrated=False, composition=False, progress=False)
    n = np.asarray(val.n_atoms, dtype=np.float64)
    per_atom = ((val.energies[None, :] - raw.energy_members) / n).mean(axis=1)
    np.testing.assert_allclose(deep.member_offsets_[:, 0], per_atom - per_atom.mean(),
                               rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(moved.energy, raw.energy, rtol=1e-12)
    drift = ((moved.energy_members - moved.energy) / n).mean(axis=1)
    np.testing.assert_allclose(drift, 0.0, atol=1e-9)


def test_calibrate_warnings_point_at_the_caller(mixed):
    """The offset warning of a deep ensemble's ``calibrate`` (reference energies 50 eV
    above EMT's: the errors share an offset) names the user's line, not mlipuq's."""
    from mlipuq.calibration.bias import MIN_TARGETS, OffsetWarning

    deep, _ = mixed
    val = _cells([2] * MIN_TARGETS, seed=1, energy_shift=50.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deep.calibrate(val, recentre=False)
    offsets = [w for w in caught if issubclass(w.category, OffsetWarning)]
    assert offsets and {w.filename for w in offsets} == {__file__}


def test_recentre_must_be_known(mixed):
    deep, val = mixed
    with pytest.raises(ValueError, match="recentre must be"):
        deep.calibrate(val, recentre="per_structure")


def test_recentre_alone_fits_calibrates_offsets(mixed):
    """``recentre(val)`` fits the offsets ``calibrate(val)`` fits, and drops the
    calibration (fitted with other offsets)."""
    deep, val = mixed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained members: offset warnings
        deep.calibrate(val, recentre="members")
        calibrated = deep.member_offsets_.copy()
        deep.recentre(val, recentre=False)
        assert deep.member_offsets_ is None and not deep.calibrated_
        deep.recentre(val, recentre="members")
    np.testing.assert_allclose(deep.member_offsets_, calibrated, rtol=1e-12, atol=1e-15)


def test_latent_combination_recentres_a_fresh_ensemble(mixed):
    """``LatentDistance(combine=deep).fit``: a deep ensemble neither calibrated nor
    recentred is recentred on the held-out structures (as its calibrate would); one
    calibrated without recentring keeps that choice."""
    from mlipuq.uq import LatentDistance

    deep, val = mixed
    train = _cells([2] * 6, seed=2)
    expected = DeepEnsemble(deep.models)
    fresh, chosen = DeepEnsemble(deep.models), DeepEnsemble(deep.models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained members, few atoms per feature
        expected.recentre(val)
        chosen.calibrate(val, recentre=False)
        LatentDistance(deep.models[0], combine=fresh).fit(train, val)
        LatentDistance(deep.models[0], combine=chosen).fit(train, val)
    assert fresh.member_offsets_ is not None and chosen.member_offsets_ is None
    np.testing.assert_allclose(fresh.member_offsets_, expected.member_offsets_, rtol=1e-12)
