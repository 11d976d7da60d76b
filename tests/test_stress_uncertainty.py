"""Stress (virial) uncertainty: ``predict(..., stress=True)``, its members, the calculator.

The member stresses are checked against central differences of the member
energies under strain, in float64. With h = 1e-5 the truncation error of the
virial dE/d(eps) is h^2 E'''/6, measured at ~3e-9 eV on these cells (it
scales as h^2: 3e-5 eV at h = 1e-3, 3e-7 eV at 1e-4), and the rounding error
is ~1e-16 |E| / h ~ 1e-10 eV; the tolerance 1e-7 eV is 30 times the larger,
and 4e5 times smaller than the spread of the members' virials (>= 0.04 eV),
so a member mixed up with another, with the mean, or with a sign flipped fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.stress import full_3x3_to_voigt_6_stress

import mlipuq
from mlipuq import schema
from mlipuq.errors import InvalidStructureError
from mlipuq.prediction import Prediction, read_prediction
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble)

from conftest import make_model

H = 1e-5  # strain step of the central differences (see the module docstring)
VIRIAL_ATOL = 1e-7  # eV
VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])  # xx yy zz yz xz xy
SAME_FIELDS = ("energy", "energy_var", "forces", "forces_var", "energy_members",
               "forces_members", "atom_energy_var", "energy_aleatoric_var",
               "energy_epistemic_var", "numbers", "n_atoms", "batch")


def _cells(n: int, seed: int) -> mlipuq.AtomsDataset:
    """Rattled 4-atom Cu cells (a ~ 3.55 Å) with EMT energies and forces."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.05 * rng.standard_normal(), cubic=True)
        atoms.rattle(0.05, seed=100 * seed + k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return mlipuq.load(out)


def _sheared(atoms):
    """A rattled, sheared (triclinic) copy: every stress element is non-zero."""
    out = atoms.copy()
    out.set_cell(np.asarray(out.cell) @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, -0.02],
                                                  [0.01, 0.0, 1.02]]), scale_atoms=True)
    return out


def _strained(atoms, h: float) -> list:
    """The 18 copies of ``atoms`` with positions and cell transformed by 1 + eps,
    eps = +-h/2 (e_ab + e_ba): order (a, b, sign)."""
    cell = np.asarray(atoms.cell)
    out = []
    for a in range(3):
        for b in range(3):
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += sign * h / 2
                eps[b, a] += sign * h / 2
                copy = atoms.copy()
                copy.calc = None
                copy.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
                out.append(copy)
    return out


def _central(values: np.ndarray, h: float) -> np.ndarray:
    """(..., 3, 3) central differences of (..., 18) values ordered as :func:`_strained`."""
    values = values.reshape(values.shape[:-1] + (9, 2))
    return ((values[..., 0] - values[..., 1]) / (2 * h)).reshape(values.shape[:-2] + (3, 3))


@pytest.fixture(scope="module")
def cu():
    train, test = _cells(6, 0), _cells(2, 1)
    return train, mlipuq.load([test[0], _sheared(test[1])])


@pytest.fixture(scope="module")
def wrappers(cu):
    train, _ = cu
    torch.manual_seed(0)
    return {
        "llpr_exact": LastLayerLaplace(make_model(), n_samples=6, energy_posterior="joint",
                                       distance=None).fit(train),
        "llpr_samples": LastLayerLaplace(make_model(), n_samples=6, force_variance="samples",
                                         energy_posterior="joint", distance=None).fit(train),
        "deep": DeepEnsemble([make_model(seed=s) for s in range(3)], distance=None),
        # the heads' own energy members: the default energy term stretches them per
        # structure, and the member stresses stay the heads' (strain derivatives of them)
        "shallow": ShallowEnsemble(make_model(), n_heads=4, init="random",
                                   energy_combination=None).fit(
            train, epochs=1, seed=0, batch_size=4, progress=False),
    }


COMMITTEES = ["llpr_exact", "llpr_samples", "deep", "shallow"]


# --------------------------------------------------- (a) members by finite differences
@pytest.mark.parametrize("name", COMMITTEES)
def test_member_virials_are_strain_derivatives_of_member_energies(wrappers, cu, name):
    wrapper = wrappers[name]
    for atoms in cu[1]:
        pred = wrapper.predict(atoms, stress=True, calibrated=False)
        virial = atoms.get_volume() * pred.stress_members[:, 0]  # (K, 3, 3) eV
        energies = wrapper.predict(_strained(atoms, H), calibrated=False).energy_members
        reference = _central(energies, H)
        assert pred.stress_members.shape == (wrapper.n_members, 1, 3, 3)
        assert np.ptp(virial, axis=0).max() > 1e-2  # members differ: the check can fail
        np.testing.assert_allclose(virial, reference, rtol=0, atol=VIRIAL_ATOL)
        np.testing.assert_allclose(virial, virial.transpose(0, 2, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["deep", "shallow", "llpr_samples"])
def test_committee_stress_is_member_mean_and_variance(wrappers, cu, name):
    pred = wrappers[name].predict(cu[1], stress=True)
    members = pred.stress_members
    if name != "llpr_samples":  # the LLPR mean is the MAP model's, not the samples' mean
        np.testing.assert_allclose(pred.stress, members.mean(0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(pred.stress_var, members.var(0), rtol=1e-12, atol=1e-20)
    assert pred.stress.shape == pred.stress_var.shape == (2, 3, 3)


def test_deep_members_are_the_members_own_stresses(wrappers, cu):
    deep = wrappers["deep"]
    pred = deep.predict(cu[1], stress=True)
    for k, model in enumerate(deep.models):
        np.testing.assert_allclose(pred.stress_members[k],
                                   model.compute(cu[1], stress=True)["stress"],
                                   rtol=0, atol=1e-14)


# ------------------------------------------------------------ (b) LLPR exact variance
def test_llpr_exact_stress_var_is_diag_of_j_sigma_jt(wrappers, cu):
    """J from central differences of the public energy rows (design_matrix), Σ the
    joint posterior covariance: an independent route to diag(J Σ Jᵀ)."""
    llpr = wrappers["llpr_exact"]
    for atoms in cu[1]:
        pred = llpr.predict(atoms, stress=True)
        rows = llpr.design_matrix(_strained(atoms, H))  # (18, D)
        jac = _central(rows.T, H) / atoms.get_volume()  # (D, 3, 3): d f / d eps / V
        expected = np.einsum("dab,de,eab->ab", jac, llpr.covariance_, jac)
        np.testing.assert_allclose(pred.stress_var[0], expected, rtol=1e-6, atol=0)
        assert np.all(pred.stress_var > 0)


def test_llpr_exact_stress_var_matches_posterior_samples(cu):
    """With 4000 posterior samples (their stresses are linear in the samples, so
    cheap), the sample variance agrees within sampling error: the relative
    std of a variance estimate is sqrt(2/K) = 2.2 %; tolerance 5 sigma."""
    llpr = LastLayerLaplace(make_model(), n_samples=4000, seed=4).fit(cu[0])
    pred = llpr.predict(cu[1], stress=True)
    np.testing.assert_allclose(pred.stress_members.var(0), pred.stress_var,
                               rtol=5 * np.sqrt(2 / 4000))


def test_llpr_stress_uses_the_joint_posterior(cu):
    """energy_posterior="energy" changes the energy variances, not the stress ones."""
    kw = dict(n_samples=4, seed=1)
    split = LastLayerLaplace(make_model(), **kw).fit(cu[0]).predict(cu[1], stress=True)
    joint = LastLayerLaplace(make_model(), energy_posterior="joint", **kw).fit(cu[0]).predict(
        cu[1], stress=True)
    assert not np.allclose(split.energy_var, joint.energy_var)
    np.testing.assert_allclose(split.stress_var, joint.stress_var, rtol=1e-10)
    np.testing.assert_allclose(split.stress_members, joint.stress_members, rtol=1e-10)


@pytest.mark.parametrize("name", ["llpr_exact", "llpr_samples", "shallow"])
def test_batched_backward_gives_the_same_stresses(wrappers, cu, name):
    """vectorize=True (one batched backward pass, the default on CUDA) equals the loop."""
    wrapper = wrappers[name].copy()
    looped = wrapper.predict(cu[1], stress=True)
    wrapper.vectorize = True
    batched = wrapper.predict(cu[1], stress=True)
    for field in ("stress", "stress_var", "stress_members", "forces_var"):
        np.testing.assert_allclose(getattr(batched, field), getattr(looped, field),
                                   rtol=1e-10, atol=1e-16, err_msg=field)


# ------------------------------------------------------------- (c) the mean stress
@pytest.mark.parametrize("name", ["llpr_exact", "llpr_samples"])
def test_llpr_mean_stress_is_the_base_model_stress(wrappers, cu, name):
    llpr = wrappers[name]
    pred = llpr.predict(cu[1], stress=True)
    reference = llpr.base_model.compute(cu[1], stress=True)["stress"]
    np.testing.assert_allclose(pred.stress, reference, rtol=0, atol=1e-14)
    assert np.abs(reference).max() > 1e-4


def test_compute_stress_is_the_predicted_mean_stress_at_the_posterior_mean(cu):
    """``refit_mean``: the stress the ASE calculator (without a stress uncertainty) and
    the engines take from ``compute_stress`` is the posterior mean's, the readout of
    the energies and forces, not the base model's; so is latent distance's with it."""
    llpr = LastLayerLaplace(make_model(), refit_mean=True).fit(cu[0])
    combined = LatentDistance(llpr.base_model, combine=llpr).fit(cu[0], cu[0])
    for wrapper in (llpr, combined):
        for atoms in cu[1]:
            predicted = wrapper.predict(atoms, stress=True).stress[0]
            np.testing.assert_allclose(wrapper.compute_stress(atoms), predicted, rtol=1e-12,
                                       atol=1e-14)
    base = llpr.base_model.compute(cu[1][0], stress=True)["stress"][0]
    assert np.abs(llpr.compute_stress(cu[1][0]) - base).max() > 1e-6  # Δ moves it


@pytest.fixture(scope="module")
def means(wrappers, cu):
    """Every wrapper kind, each with a mean of its own: the base model's, the
    posterior mean's (refit_mean), the mean head model's, the members' mean."""
    train = cu[0]
    refit = LastLayerLaplace(make_model(seed=1), refit_mean=True).fit(train)
    return {**wrappers, "llpr_refit": refit,
            "latent_on_refit": LatentDistance(refit.base_model, combine=refit).fit(train, train),
            "latent_on_deep": LatentDistance(wrappers["deep"].models[0],
                                             combine=wrappers["deep"]).fit(train, train),
            "evidential": EvidentialHead(make_model()).fit(train, epochs=1, seed=0,
                                                           batch_size=4, progress=False)}


@pytest.mark.parametrize("name", ["llpr_exact", "llpr_samples", "deep", "shallow", "llpr_refit",
                                  "latent_on_refit", "latent_on_deep", "evidential"])
def test_mean_stress_is_the_predicted_stress(means, cu, name):
    """``mean_stress`` (calibrate's strain pass) and ``compute_stress`` (the calculator
    and engines) give ``predict(..., stress=True)``'s stress, each wrapper's own mean,
    in any batching; where that mean is not the base model's, it differs from it, so
    a mix-up fails."""
    wrapper = means[name]
    predicted = wrapper.predict(cu[1], stress=True, calibrated=False).stress
    for batch_size in (1, 2):
        np.testing.assert_allclose(wrapper.mean_stress(cu[1], batch_size=batch_size), predicted,
                                   rtol=1e-10, atol=1e-14)
    for k, atoms in enumerate(cu[1]):
        np.testing.assert_allclose(wrapper.compute_stress(atoms), predicted[k], rtol=1e-10,
                                   atol=1e-14)
    if name in ("deep", "llpr_refit", "latent_on_refit", "latent_on_deep"):  # not the base's
        base = wrapper.base_model.compute(cu[1], stress=True)["stress"]
        assert np.abs(predicted - base).max() > 1e-6


def test_mean_stress_needs_3d_periodic_structures(means, cu):
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    for name in ("llpr_refit", "deep"):
        with pytest.raises(InvalidStructureError, match=r"structure 2.*periodic"):
            means[name].mean_stress([cu[1][0], cu[1][1], slab], batch_size=2)


def test_calibrate_measures_the_stress_error_of_each_wrappers_mean(means, cu):
    """The strain term's mean stress error is the predicted mean stress minus the
    labels: the posterior mean's for refit_mean, the members' mean for the ensemble."""
    from ase.calculators.singlepoint import SinglePointCalculator

    labels = np.array([[1e-3, 2e-4, 0], [2e-4, -3e-3, 1e-4], [0, 1e-4, 2e-3]])[None]
    val = []
    scales = np.arange(1, len(cu[0]) + 1)[:, None, None]
    for atoms, label in zip(cu[0], labels * scales):
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(), stress=label)
        val.append(copy)
    for name in ("llpr_refit", "deep"):
        wrapper = means[name].copy()
        predicted = wrapper.predict(val, stress=True, calibrated=False).stress
        wrapper.calibrate(val)
        expected = np.mean(predicted - np.array([a.get_stress(voigt=False) for a in val]), axis=0)
        np.testing.assert_allclose(wrapper.strain_term_.mean_error_[0], expected, rtol=1e-10,
                                   atol=1e-14)


def test_shallow_mean_stress_is_the_mean_head_model(wrappers, cu):
    shallow = wrappers["shallow"]
    pred = shallow.predict(cu[1], stress=True)
    reference = shallow.base_model.compute(cu[1], stress=True)["stress"]
    np.testing.assert_allclose(pred.stress, reference, rtol=1e-10, atol=1e-14)


# -------------------------------------------------------------------- (d) calculator
@pytest.mark.parametrize("name", COMMITTEES)
@pytest.mark.parametrize("stress_first", [True, False])
def test_calculator_stress_std_and_committee(wrappers, cu, name, stress_first):
    wrapper = wrappers[name]
    atoms = cu[1][1].copy()
    atoms.calc = mlipuq.Calculator(wrapper)
    if stress_first:
        stress = atoms.get_stress()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    else:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = atoms.get_stress()
    pred = wrapper.predict(atoms, stress=True)
    results = atoms.calc.results
    np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(pred.stress[0]),
                               rtol=0, atol=1e-14)
    std = results[schema.RESULT_STRESS_STD]
    assert std.shape == (6,)
    np.testing.assert_allclose(std, np.sqrt(pred.stress_var[0])[VOIGT], rtol=1e-12, atol=0)
    committee = results[schema.RESULT_STRESS_COMMITTEE]
    assert committee.shape == (wrapper.n_members, 6)
    np.testing.assert_allclose(committee, pred.stress_members[:, 0][(slice(None),) + VOIGT],
                               rtol=0, atol=1e-14)
    # energies and forces do not depend on whether the stress came in the same pass
    plain = wrapper.predict(atoms)
    assert energy == plain.energy[0]
    np.testing.assert_array_equal(forces, plain.forces)
    np.testing.assert_array_equal(results[schema.RESULT_FORCES_STD], plain.forces_std)
    for key in (schema.RESULT_STRESS_STD, schema.RESULT_STRESS_COMMITTEE):
        assert key in mlipuq.Calculator.implemented_properties


def test_calculator_property_requests(wrappers, cu):
    atoms = cu[1][0].copy()
    atoms.calc = mlipuq.Calculator(wrappers["deep"])
    std = atoms.calc.get_property(schema.RESULT_STRESS_STD, atoms)
    assert std.shape == (6,) and np.all(std > 0)
    assert atoms.calc.get_property(schema.RESULT_STRESS_COMMITTEE, atoms).shape == (3, 6)
    np.testing.assert_array_equal(atoms.get_stress(), atoms.calc.results["stress"])


def test_calculator_without_stress_uncertainty(wrappers, cu):
    llpr = wrappers["llpr_exact"]
    atoms = cu[1][1].copy()
    atoms.calc = mlipuq.Calculator(llpr, stress_uncertainty=False)
    stress = atoms.get_stress()
    assert schema.RESULT_STRESS_STD not in atoms.calc.results
    np.testing.assert_allclose(stress, full_3x3_to_voigt_6_stress(llpr.compute_stress(atoms)),
                               rtol=0, atol=1e-14)


def test_calculator_on_a_molecule_has_no_stress(wrappers, ethanol):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = ethanol[0].copy()
    atoms.calc = mlipuq.Calculator(wrappers["deep"])
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    assert schema.RESULT_STRESS_STD not in atoms.calc.results


def test_npt_md_runs_with_a_stress_uncertainty_wrapper(wrappers, cu):
    from mlipuq.propagation import run_md

    llpr = wrappers["llpr_exact"]
    run = run_md(cu[1][0], llpr, ensemble="npt", temperature_K=300, timestep_fs=1.0,
                 steps=6, log_every=3, progress=False)
    assert run.stress is not None and np.all(np.isfinite(run.stress))


# ------------------------------------------------------------------ (e) bad input
def test_stress_needs_3d_periodic_structures(wrappers, cu, ethanol):
    llpr = wrappers["llpr_exact"]
    with pytest.raises(InvalidStructureError, match="structure 1"):
        llpr.predict([cu[1][0], ethanol[0]], stress=True)
    with pytest.raises(ValueError, match="structure 2"):  # index across batches
        llpr.predict([cu[1][0], cu[1][1], ethanol[0]], stress=True, batch_size=2)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)  # pbc = (T, T, F)
    with pytest.raises(InvalidStructureError, match=r"structure 0.*periodic"):
        wrappers["deep"].predict(slab, stress=True)
    llpr.predict(ethanol[0])  # without stress molecules are fine


# ------------------------------------------------------ (f) stress=False unchanged
@pytest.mark.parametrize("name", COMMITTEES)
def test_stress_false_unchanged_and_stress_true_adds_only_stress(wrappers, cu, name):
    wrapper = wrappers[name]
    plain = wrapper.predict(cu[1])
    assert plain.stress is None and plain.stress_var is None and plain.stress_members is None
    with_stress = wrapper.predict(cu[1], stress=True)
    for field in SAME_FIELDS:  # the stress pass gives the same values, bit for bit
        a, b = getattr(plain, field), getattr(with_stress, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)


# ------------------------------------------------------ wrappers without members
def test_wrapper_without_stress_uncertainty_gives_the_mean_stress(cu):
    head = EvidentialHead(make_model()).fit(cu[0], epochs=1, seed=0, batch_size=4,
                                            progress=False)
    assert not head.has_stress_uncertainty
    pred = head.predict(cu[1], stress=True)
    assert pred.stress_var is None and pred.stress_members is None and pred.stress_std is None
    np.testing.assert_allclose(pred.stress, head.base_model.compute(cu[1], stress=True)["stress"],
                               rtol=0, atol=1e-14)
    atoms = cu[1][0].copy()
    atoms.calc = mlipuq.Calculator(head)
    np.testing.assert_allclose(atoms.get_stress(), full_3x3_to_voigt_6_stress(pred.stress[0]),
                               rtol=0, atol=1e-14)
    assert schema.RESULT_STRESS_STD not in atoms.calc.results


# ------------------------------------------------------- recalibration and I/O
def test_recalibration_leaves_stresses_alone(cu):
    llpr = LastLayerLaplace(make_model(), n_samples=4).fit(cu[0])
    raw = llpr.predict(cu[1], stress=True)
    llpr.calibrate(cu[0])
    calibrated = llpr.predict(cu[1], stress=True)
    assert not np.allclose(raw.energy_var, calibrated.energy_var)
    for field in ("stress", "stress_var", "stress_members"):
        np.testing.assert_array_equal(getattr(raw, field), getattr(calibrated, field))


def test_prediction_fields_concatenate_and_file_round_trip(wrappers, cu, tmp_path):
    deep = wrappers["deep"]
    parts = [deep.predict(cu[1][:1], stress=True), deep.predict(cu[1][1:], stress=True)]
    whole = Prediction.concatenate(parts)
    np.testing.assert_array_equal(whole.stress_members,
                                  deep.predict(cu[1], stress=True).stress_members)
    one = whole.structure(1)
    np.testing.assert_array_equal(one.stress[0], whole.stress[1])
    np.testing.assert_array_equal(one.stress_members[:, 0], whole.stress_members[:, 1])
    with pytest.raises(ValueError, match="stress"):
        Prediction.concatenate([parts[0], deep.predict(cu[1][1:])])
    with pytest.raises(ValueError, match="stress_members"):
        Prediction(**{**vars(one), "stress_members": np.zeros((3, 2, 3, 3))})
    with pytest.raises(ValueError, match="negative"):
        Prediction(**{**vars(one), "stress_var": -np.ones((1, 3, 3))})

    info, _ = whole.columns(0)
    assert info[schema.STRESS].shape == info[schema.STRESS_STD].shape == (3, 3)
    path = tmp_path / "pred.xyz"
    cu[1].write(path, whole)
    back, _ = read_prediction(path)
    np.testing.assert_allclose(back.stress, whole.stress, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(back.stress_var, whole.stress_var, rtol=1e-10, atol=1e-30)

    plain_path = tmp_path / "plain.xyz"
    cu[1].write(plain_path, deep.predict(cu[1]))
    plain, _ = read_prediction(plain_path)
    assert plain.stress is None and plain.stress_var is None


# ------------------------------------------------------------------ two processes
_WORKER = '''
import sys
from pathlib import Path
import numpy as np
import torch
import mlipuq
from mlipuq import distributed
from mlipuq.uq import load

torch.set_num_threads(1)
distributed.init()
folder = Path(sys.argv[1])
wrapper = load(folder / "llpr.pt")
cells = mlipuq.load(folder / "cells.xyz")
pred = wrapper.predict(cells, stress=True, batch_size=2)
try:
    wrapper.predict(mlipuq.load(folder / "mixed.xyz"), stress=True, batch_size=2)
    message = "no error"
except Exception as exc:  # rank 0: RankFailedError naming rank 1's error
    message = str(exc)
np.savez(folder / f"out_{distributed.world_size()}_{distributed.rank()}.npz",
         stress=pred.stress, stress_var=pred.stress_var, stress_members=pred.stress_members,
         energy=pred.energy, message=np.array(message))
distributed.finalize()
'''


def test_stress_prediction_over_two_processes_equals_one(wrappers, cu, ethanol, tmp_path):
    """Collective predict(stress=True): every rank gets what one process computes,
    and a structure without a 3D cell is named by its index in the whole set."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    wrappers["llpr_exact"].save(tmp_path / "llpr.pt")
    cells = mlipuq.load(list(cu[0]) + list(cu[1]))  # 8 cells: 4 per rank
    cells.write(tmp_path / "cells.xyz")
    molecule = ethanol[0].copy()
    molecule.calc = None
    mlipuq.AtomsDataset(list(cells)[:6] + [molecule] + list(cells)[6:]).write(
        tmp_path / "mixed.xyz")  # structure 6: on rank 1, its local index 2
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "2", str(worker), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single = wrappers["llpr_exact"].predict(mlipuq.load(tmp_path / "cells.xyz"), stress=True,
                                            batch_size=2)  # positions as written (8 decimals)
    for rank in range(2):
        out = np.load(tmp_path / f"out_2_{rank}.npz")
        for field in ("stress", "stress_var", "stress_members", "energy"):
            np.testing.assert_allclose(out[field], getattr(single, field), rtol=1e-10,
                                       atol=1e-15, err_msg=field)
        assert "structure 6:" in str(out["message"]), str(out["message"])
