"""Direct propagation of static properties (mlipuq.propagation.static, .committee)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.vibrations import Vibrations
from scipy.optimize import minimize_scalar

import mlipuq
from mlipuq.propagation import member_calculators, static
from mlipuq.propagation.committee import CommitteeEvaluator
from mlipuq.uq import LastLayerLaplace
from test_propagation_md import A_MORSE, MORSE, morse_committee

SCALES = (0.9, 1.0, 1.1)


@pytest.fixture(scope="module")
def scaled():
    """Members that differ by the well depth only: V_k = s_k V_1."""
    return morse_committee(scales=SCALES)


@pytest.fixture(scope="module")
def shaped():
    """Members that also differ in range (alpha), so lattice constants differ."""
    return morse_committee(scales=SCALES, alphas=[1.30, 1.3588, 1.42])


def member_energy(model, atoms):
    return float(model.compute(atoms)["energy"][0])


def test_member_calculators_match_predict(shaped):
    atoms = bulk("Cu", "fcc", a=A_MORSE, cubic=True)
    atoms.rattle(0.05, seed=0)
    calcs = member_calculators(shaped, atoms=atoms)
    assert len(calcs) == 3
    pred = shaped.predict(atoms)
    for k, calc in enumerate(calcs):
        a = atoms.copy()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(pred.energy_members[k, 0], abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), pred.forces_members[k], atol=1e-12)
        # the member is the k-th model of the ensemble
        assert a.get_potential_energy() == pytest.approx(member_energy(shaped.models[k], atoms))
    assert len(member_calculators(shaped)) == 3  # count from the wrapper


def test_equation_of_state_per_member(scaled, shaped):
    atoms = bulk("Cu", "fcc", a=A_MORSE, cubic=True)
    res = static.equation_of_state(atoms, scaled, lattice_constant=A_MORSE)
    # depth-scaled members: same lattice constant, bulk modulus proportional to depth
    assert res.lattice_constant.std < 1e-6
    np.testing.assert_allclose(res.bulk_modulus.members / res.bulk_modulus.members[1], SCALES,
                               rtol=1e-6)
    np.testing.assert_allclose(res.energy.members / res.energy.members[1], SCALES, rtol=1e-6)
    assert res.bulk_modulus.unit == "GPa" and 50 < res.bulk_modulus.mean < 200
    # shaped members: each lattice constant is the minimum of that member's energy
    res = static.equation_of_state(atoms, shaped, lattice_constant=A_MORSE)
    assert res.lattice_constant.std > 0.01
    for k, model in enumerate(shaped.models):
        def energy(a):
            return member_energy(model, bulk("Cu", "fcc", a=a, cubic=True))
        best = minimize_scalar(energy, bracket=(3.6, 3.8, 3.95), tol=1e-10).x
        assert res.lattice_constant.members[k] == pytest.approx(best, abs=2e-3)
    assert res.member_energies.shape == (3, 9)
    with pytest.raises(ValueError, match="periodic"):
        static.equation_of_state(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), scaled)


def test_vacancy_formation_energy(scaled):
    atoms = bulk("Cu", "fcc", a=A_MORSE, cubic=True).repeat(2)
    unrelaxed = static.vacancy_formation_energy(atoms, scaled)
    vac = atoms.copy()
    del vac[0]
    for k, model in enumerate(scaled.models):
        expected = member_energy(model, vac) - 31 / 32 * member_energy(model, atoms)
        assert unrelaxed.members[k] == pytest.approx(expected, abs=1e-10)
    np.testing.assert_allclose(unrelaxed.members / unrelaxed.members[1], SCALES, rtol=1e-10)
    assert unrelaxed.mean > 0 and unrelaxed.unit == "eV"
    relaxed = static.vacancy_formation_energy(atoms, scaled, relax=True, fmax=0.01)
    assert np.all(relaxed.members <= unrelaxed.members + 1e-9)
    assert np.all(unrelaxed.members - relaxed.members > 1e-4)  # relaxation did something
    with pytest.raises(ValueError, match="out of range"):
        static.vacancy_formation_energy(atoms, scaled, index=40)


def test_relaxed_energies(scaled):
    atoms = bulk("Cu", "fcc", a=A_MORSE, cubic=True)
    atoms.rattle(0.05, seed=1)
    res = static.relaxed_energies(atoms, scaled, fmax=1e-3)
    assert res.converged.all()
    start = scaled.predict(atoms).energy_members[:, 0]
    assert np.all(res.energy.members < start)
    # forces scale with the depth, so all members relax to the same structure
    for s in res.structures[1:]:
        np.testing.assert_allclose(s.positions, res.structures[0].positions, atol=1e-3)
    np.testing.assert_allclose(res.energy.members / res.energy.members[1], SCALES, rtol=1e-5)


def test_vibrational_frequencies_match_ase_vibrations(shaped, tmp_path):
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, MORSE["r0"]]])
    res = static.vibrational_frequencies(dimer, shaped, delta=0.01)
    assert res.members.shape == (3, 6) and res.unit == "meV"
    calcs = member_calculators(shaped, atoms=dimer)
    for k, calc in enumerate(calcs):
        atoms = dimer.copy()
        atoms.calc = calc
        vib = Vibrations(atoms, delta=0.01, nfree=2, name=str(tmp_path / f"vib{k}"))
        vib.run()
        e = vib.get_energies()  # eV; imaginary modes as imaginary numbers
        ase_mev = 1000 * np.sort(np.where(np.abs(e.imag) > 0, -np.abs(e.imag), e.real))
        np.testing.assert_allclose(res.members[k], ase_mev, rtol=1e-6, atol=1e-4)
        assert res.members[k, -1] > 5  # the stretch, well above the translations (meV)
        np.testing.assert_allclose(res.members[k, :3], 0.0, atol=1e-3)  # translations
    assert res.std[-1] > 0.1  # the stretch frequency differs between members (meV)


def test_wrappers_without_members_are_refused(model64, ethanol):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    exact = LastLayerLaplace(model64, n_samples=4).fit(ethanol)  # force_variance="exact"
    # energies only: fine (the untrained model has no usable EOS; the evaluator is the point)
    assert CommitteeEvaluator(exact, forces=False).predict(cu).energy_members.shape == (4, 1)
    with pytest.raises(ValueError, match="force_variance='samples', energy_posterior='joint'"):
        static.vibrational_frequencies(cu, exact)
    with pytest.raises(ValueError, match="force_variance='samples'"):
        member_calculators(exact, atoms=cu)[0]
    no_samples = LastLayerLaplace(model64, n_samples=0).fit(ethanol)
    with pytest.raises(ValueError, match="committee energies"):
        static.equation_of_state(cu, no_samples)
    with pytest.raises(ValueError, match="committee energies"):
        CommitteeEvaluator(no_samples, forces=False).predict(cu)
    assert isinstance(mlipuq.propagation.static.PropertyEstimate.from_members([1.0, 3.0]).std,
                      np.ndarray)


def test_eos_fit_failure_names_the_member(model64, ethanol, monkeypatch):
    import ase.eos

    def fail(self):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(ase.eos.EquationOfState, "fit", fail)
    wrapper = LastLayerLaplace(model64, n_samples=3).fit(ethanol)
    with pytest.raises(ValueError, match="member 0: the birchmurnaghan fit"):
        static.equation_of_state(bulk("Cu", "fcc", a=3.6, cubic=True), wrapper)


def test_member_forces_need_gradient_consistent_members(model64, ethanol):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    split = LastLayerLaplace(model64, n_samples=3, force_variance="samples").fit(ethanol)
    assert not split.consistent_members
    with pytest.raises(ValueError, match="energy_posterior='joint'"):
        member_calculators(split, atoms=cu)
    member_calculators(split, atoms=cu, forces=False)  # energies alone are fine
    joint = LastLayerLaplace(model64, n_samples=3, force_variance="samples",
                             energy_posterior="joint", distance=None).fit(ethanol)
    calc = member_calculators(joint, atoms=cu)[1]
    atoms = cu.copy()
    atoms.rattle(0.05, seed=0)
    atoms.calc = calc
    forces = atoms.get_forces()
    # member forces are minus the gradient of the member energy (central differences)
    h, (a, c) = 1e-4, (3, 1)
    shifted = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[a, c] += sign * h
        moved.calc = calc
        shifted.append(moved.get_potential_energy())
    assert forces[a, c] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), rel=1e-4, abs=1e-6)
