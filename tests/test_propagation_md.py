"""MD with uncertainty (run_md), observables, and reweighting validated against direct MD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

import mlipuq
from mlipuq import datasets
from mlipuq.errors import ResumeError
from mlipuq.models import MiniMLIP, wrap
from mlipuq.propagation import (
    MDTrajectory,
    block_standard_error,
    kinetic_temperature,
    mean_square_displacement,
    member_energies,
    potential_energy,
    pressure,
    radial_distribution,
    reweight,
    run_md,
    volume,
)
from mlipuq.uq import DeepEnsemble, LastLayerLaplace

# Girifalco-Weizer Morse parameters for Cu (eV, 1/Å, Å), with a cosine cutoff.
MORSE = dict(depth=0.3429, alpha=1.3588, r0=2.866, cutoff=5.5)
A_MORSE = 3.775  # Å, fcc lattice constant of this (cut-off) Morse potential


class Morse(torch.nn.Module):
    """Morse pair potential as an MLIP: phi_i = ½ Σ_j (e^{-2α(r-r0)} - 2 e^{-α(r-r0)}) f_c(r),
    eps_i = D phi_i (the readout weight is the well depth D)."""

    def __init__(self, depth, alpha, r0, cutoff):
        super().__init__()
        self.alpha, self.r0, self.cutoff = alpha, r0, cutoff
        self.readout = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.readout.weight.fill_(depth)

    def forward(self, batch):
        i, _ = batch.edge_index
        r = batch.edge_vectors().norm(dim=1)
        e = torch.exp(-self.alpha * (r - self.r0))
        pair = 0.5 * (e * e - 2 * e) * 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1)
        phi = torch.zeros(len(batch.numbers), 1, dtype=r.dtype).index_add_(0, i, pair[:, None])
        return self.readout(phi)


def morse_committee(scales=(0.9, 1.0, 1.1), alphas=None):
    """DeepEnsemble of Cu Morse potentials with well depths D·scale (and optional α)."""
    alphas = alphas or [MORSE["alpha"]] * len(scales)
    models = [
        wrap(Morse(MORSE["depth"] * s, a, MORSE["r0"], MORSE["cutoff"]), "readout",
             species=["Cu"], cutoff=MORSE["cutoff"], atomic_energies={"Cu": 0.0}).double()
        for s, a in zip(scales, alphas)
    ]
    return DeepEnsemble(models)


@pytest.fixture(scope="module")
def committee():
    return morse_committee()


@pytest.fixture
def cu4():
    return bulk("Cu", "fcc", a=A_MORSE, cubic=True)


QUICK = dict(temperature_K=300.0, timestep_fs=5.0, seed=0, progress=False)


# ------------------------------------------------------------------ logging
def test_frames_hold_committee_and_uncertainty(committee, cu4):
    run = run_md(cu4, committee, steps=12, log_every=4, **QUICK)
    assert isinstance(run, MDTrajectory)
    np.testing.assert_array_equal(run.step, [0, 4, 8, 12])
    np.testing.assert_allclose(run.time_fs, run.step * 5.0)
    assert run.energies.shape == (4, 3) and run.n_members == 3
    # logged values are those of the wrapper at the logged positions
    pred = committee.predict(run.frames[-1])
    np.testing.assert_allclose(run.energies[-1], pred.energy_members[:, 0], rtol=1e-12)
    np.testing.assert_allclose(run.energy[-1], pred.energy[0], rtol=1e-12)
    np.testing.assert_allclose(run.energy_std[-1], pred.energy_std[0], rtol=1e-10)
    per_atom = np.sqrt((pred.forces_std**2).sum(axis=1)).max()
    assert run.max_force_std[-1] == pytest.approx(per_atom, rel=1e-10)
    assert run.max_force_std[-1] > 0
    assert run.stress.shape == (4, 3, 3)
    assert not run.flagged.any() and not run.stopped
    assert len(cu4.info) == 0 and not np.any(cu4.get_momenta())  # input untouched


def test_llpr_posterior_samples_fixed_for_the_run(model64, ethanol):
    llpr = LastLayerLaplace(model64, n_samples=4, force_variance="samples").fit(ethanol)
    start = ethanol[0].copy()
    run = run_md(start, llpr, ensemble="nve", steps=6, log_every=3,
                 temperature_K=100.0, timestep_fs=0.1, seed=0, progress=False)
    for frame, energies in zip(run.frames, run.energies):
        # the same K posterior samples at every frame: re-predicting reproduces them
        np.testing.assert_allclose(llpr.predict(frame).energy_members[:, 0], energies, rtol=1e-9)
    assert np.all(run.energy_std > 0)


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("suffix, atol", [(".traj", 1e-12), (".extxyz", 1e-5)])
def test_resume_reproduces_uninterrupted_run(committee, cu4, tmp_path, suffix, atol):
    full = run_md(cu4, committee, steps=12, log_every=3, trajectory=tmp_path / f"a{suffix}",
                  **QUICK)
    path = tmp_path / f"b{suffix}"
    half = run_md(cu4, committee, steps=6, log_every=3, trajectory=path, **QUICK)
    assert len(half) == 3
    resumed = run_md(cu4, committee, steps=12, log_every=3, trajectory=path, **QUICK)
    np.testing.assert_array_equal(resumed.step, full.step)
    np.testing.assert_allclose(resumed.frames[-1].positions, full.frames[-1].positions, atol=atol)
    np.testing.assert_allclose(resumed.frames[-1].get_momenta(), full.frames[-1].get_momenta(),
                               atol=atol)
    np.testing.assert_allclose(resumed.energies, full.energies, atol=atol * 100)
    again = MDTrajectory.read(path)
    np.testing.assert_array_equal(again.step, full.step)
    assert again.energies.shape == (5, 3)
    # a finished run returns its frames without new steps
    assert len(run_md(cu4, committee, steps=12, log_every=3, trajectory=path, **QUICK)) == 5


def test_resume_refuses_another_system(committee, cu4, tmp_path):
    path = tmp_path / "md.traj"
    run_md(cu4, committee, steps=2, log_every=1, trajectory=path, **QUICK)
    before = path.read_bytes()
    with pytest.raises(ResumeError, match="different system"):
        run_md(cu4.repeat((2, 1, 1)), committee, steps=4, log_every=1, trajectory=path, **QUICK)
    assert path.read_bytes() == before  # refused before writing (more in test_md_resume.py)


# --------------------------------------------------------------- threshold
def test_threshold_stops_or_flags(committee, cu4):
    free = run_md(cu4, committee, steps=20, log_every=5, **QUICK)
    threshold = 0.5 * free.max_force_std[1:].max()
    stop = run_md(cu4, committee, steps=20, log_every=5, uncertainty_threshold=threshold, **QUICK)
    assert stop.stopped and stop.flagged[-1] and stop.max_force_std[-1] > threshold
    assert stop.step[-1] < 20
    flag = run_md(cu4, committee, steps=20, log_every=5, uncertainty_threshold=threshold,
                  on_threshold="flag", **QUICK)
    assert not flag.stopped and flag.step[-1] == 20
    np.testing.assert_array_equal(flag.flagged, flag.max_force_std > threshold)
    assert flag.n_flagged_steps >= flag.flagged.sum() >= 1
    e_flag = run_md(cu4, committee, steps=4, log_every=2, uncertainty_threshold=1e-6,
                    threshold_on="energy_std", on_threshold="flag", **QUICK)
    assert e_flag.flagged.all()


def test_npt_changes_the_volume(committee, cu4):
    compressed = cu4.copy()
    compressed.set_cell(cu4.cell * 0.97, scale_atoms=True)
    run = run_md(compressed, committee, ensemble="npt", steps=40, log_every=10,
                 pdamp_fs=200.0, **QUICK)
    v = volume(run)
    assert v[-1] > v[0]  # a compressed cell expands at zero pressure
    assert pressure(run)[0] > 1.0  # GPa


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ensemble="nph"), "unknown ensemble"),
        (dict(temperature_K=-1.0), "temperature_K"),
        (dict(timestep_fs=0.0), "timestep_fs"),
        (dict(steps=2.5), "integer"),
        (dict(log_every=0), "log_every"),
        (dict(on_threshold="pause"), "on_threshold"),
        (dict(trajectory="md.pdb"), "extension"),
        (dict(uncertainty_threshold=-1.0), "uncertainty_threshold"),
    ],
)
def test_bad_input(committee, cu4, kwargs, match):
    args = dict(steps=2, log_every=1, **QUICK)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_md(cu4, committee, **args)


def test_threshold_needs_a_wrapper(committee, cu4):
    with pytest.raises(ValueError, match="UQ wrapper"):
        run_md(cu4, committee.models[0], steps=2, log_every=1, uncertainty_threshold=0.1, **QUICK)


# -------------------------------------------------------------- observables
def test_observables(committee, cu4):
    run = run_md(cu4.repeat(2), committee, steps=10, log_every=5, **QUICK)
    np.testing.assert_allclose(potential_energy(run), run.energy)
    np.testing.assert_allclose(member_energies(run).mean(axis=1), run.energy, rtol=1e-12)
    np.testing.assert_allclose(volume(run), (2 * A_MORSE) ** 3)
    r, g = radial_distribution(run, r_max=3.0, n_bins=60)
    assert g.shape == (3, 60) and r.shape == (60,)
    # the perfect crystal of frame 0: 12 nearest neighbours at a/sqrt(2)
    rho = 32 / (2 * A_MORSE) ** 3
    dr = r[1] - r[0]
    coordination = np.sum(g[0] * 4 * np.pi * r**2 * rho * dr)
    assert coordination == pytest.approx(12, rel=0.02)
    assert abs(r[np.argmax(g[0])] - A_MORSE / np.sqrt(2)) < dr
    msd = mean_square_displacement(run)
    assert msd[0] == 0 and msd[-1] > 0
    kinetic = np.array([f.get_kinetic_energy() for f in run.frames])
    expected = (2 * kinetic / (3 * volume(run)) - np.trace(run.stress, axis1=1, axis2=2) / 3)
    np.testing.assert_allclose(pressure(run), expected / mlipuq.propagation.md.units.GPa)
    assert kinetic_temperature(run).shape == (3,)
    # frames read from a file work as well
    np.testing.assert_allclose(volume(run.frames), volume(run))
    with pytest.raises(ValueError, match="periodic"):
        volume([Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])])


def test_rdf_reweighting_keeps_normalisation(committee, cu4):
    run = run_md(cu4.repeat(2), committee, steps=20, log_every=2, **QUICK)
    r, g = radial_distribution(run, r_max=4.0, n_bins=40)
    est = reweight(g, run.energies, run.energy, 300.0)
    assert est.members.shape == (3, 40) and est.std.shape == (40,)
    # weights sum to one: the reweighted histograms count the same number of pairs
    np.testing.assert_allclose(est.members.sum(axis=1), g.sum(axis=1).mean(), rtol=0.05)


# ----------------------------------------------------------- validation
def _compare_reweighted_with_direct(wrapper, member_model, atoms, k, temperature, steps, seed=1):
    """Reweighted <V_k> from the mean-potential run vs <V_k> from MD on member k.

    Standard errors by block averaging (20 blocks, autocorrelation-aware);
    the reweighted one from the linearised ratio estimator w_i (A_i - <A>_k) / <w>.
    """
    md = dict(ensemble="nvt", temperature_K=temperature, timestep_fs=5.0, steps=steps,
              log_every=4, friction=0.05, progress=False)
    mean_run = run_md(atoms, wrapper, seed=seed, **md)
    direct_run = run_md(atoms, member_model, seed=seed + 1, **md)
    burn = len(mean_run) // 10
    energies, mean_energy = mean_run.energies[burn:], mean_run.energy[burn:]
    observable = energies[:, k]
    est = reweight(observable, energies, mean_energy, temperature)
    log_w = -(energies[:, k] - mean_energy) / (mlipuq.propagation.md.units.kB * temperature)
    w = np.exp(log_w - log_w.max())
    w /= w.mean()
    se_rew = block_standard_error(w * (observable - est.members[k]))
    direct = direct_run.energy[burn:]
    se_direct = block_standard_error(direct)
    return est, direct.mean(), math.hypot(se_rew, se_direct)


def test_reweighted_energy_matches_md_on_the_member(cu4):
    """Cu (fcc, Morse committee with well depths 0.75, 1, 1.25 D): the reweighted
    potential energy of member 0 agrees with MD run on member 0 directly
    within 4 combined standard errors."""
    committee = morse_committee(scales=(0.75, 1.0, 1.25))
    est, direct, se = _compare_reweighted_with_direct(committee, committee.models[0], cu4,
                                                      k=0, temperature=300.0, steps=1200)
    assert est.ess[0] > 0.3
    assert abs(est.members[0] - direct) < 4 * se
    assert se < 0.02  # eV: the comparison has teeth (the members differ by ~0.03 eV here)


@pytest.mark.slow
def test_reweighted_energy_matches_md_on_trained_emt_member():
    """The same check with three small MiniMLIPs trained on built-in EMT Cu data."""
    torch.set_num_threads(1)
    data = datasets.emt(("Cu",), 60, (300, 600), seed=0, kinds=("bulk", "strained"))
    ensemble = DeepEnsemble.train(
        lambda s: MiniMLIP(["Cu"], cutoff=4.5, width=16, n_interactions=1, n_rbf=8, seed=s),
        data, n_members=3, epochs=40, batch_size=8, lr=3e-3, progress=False,
    ).to(torch.float64)
    atoms = data[0].copy()
    atoms.calc = None
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    est, direct, se = _compare_reweighted_with_direct(ensemble, ensemble.models[0], atoms,
                                                      k=0, temperature=300.0, steps=1000)
    assert abs(est.members[0] - direct) < 4 * se
