"""The deep ensemble's own latent-distance term (``DeepEnsemble(distance=...)``): the
measured combination ``LatentDistance(models[0], combine=DeepEnsemble(models))`` built
in, fitted by ``fit`` and ``fit_distance``, saved and loaded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import mlipuq
from mlipuq import cli, fileio
from mlipuq.uq import DeepEnsemble, LatentDistance, NoDistanceTermWarning
from mlipuq.uq import load as load_wrapper

from conftest import ETHANOL_SMALL, tiny_model

FIELDS = ("energy", "energy_var", "forces", "forces_var", "energy_members", "forces_members")


@pytest.fixture(scope="module")
def sets():
    """train (14), val (6) of the small ethanol set, and val rattled by 0.05 Å (away)."""
    data = mlipuq.load(ETHANOL_SMALL)
    away = [atoms.copy() for atoms in data[14:]]
    for k, atoms in enumerate(away):
        atoms.rattle(stdev=0.05, seed=k)
    return data[:14], data[14:], away


def _quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few calibration structures, one composition
        return make()


def test_the_term_is_the_combination_the_benchmark_measured(fitted_members, sets):
    """``DeepEnsemble(models).fit_distance(train, val).calibrate(val)`` predicts what
    ``LatentDistance(models[0], combine=DeepEnsemble(models)).fit(train, val)
    .calibrate(val)`` does (the rows of benchmarks/results/shift_latent_deep.json), on
    the calibration structures and away from them; members recentred on val."""
    train, val, away = sets
    built_in = _quiet(lambda: DeepEnsemble(fitted_members).fit_distance(train, val)
                      .calibrate(val))
    combined = _quiet(lambda: LatentDistance(
        fitted_members[0], combine=DeepEnsemble(fitted_members)).fit(train, val).calibrate(val))
    assert built_in.member_offsets_ is not None
    np.testing.assert_array_equal(built_in.member_offsets_, combined.combine.member_offsets_)
    for structures in (val, away):
        a, b = _quiet(lambda: built_in.predict(structures)), combined.predict(structures)
        for name in FIELDS:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9,
                                       atol=1e-15, err_msg=name)


def test_the_members_are_stretched_to_the_combined_variance(fitted_members, sets):
    """Uncalibrated, the members' population variance is the reported one (λσ² + a +
    b u²), which is at least λ times their own spread, per energy and force component."""
    train, val, away = sets
    ensemble = _quiet(lambda: DeepEnsemble(fitted_members).fit_distance(train, val))
    term = ensemble.distance_
    pred = ensemble.predict(away, calibrated=False, composition=False)
    alone = DeepEnsemble(fitted_members)
    alone.member_offsets_ = ensemble.member_offsets_
    spread = alone.predict(away, calibrated=False, composition=False)
    np.testing.assert_allclose(pred.energy_members.var(axis=0), pred.energy_var, rtol=1e-9)
    np.testing.assert_allclose(pred.forces_members.var(axis=0), pred.forces_var, rtol=1e-9)
    assert np.all(pred.energy_var >= term.energy_other_scale_ * spread.energy_var * (1 - 1e-12))
    assert np.all(pred.forces_var >= term.forces_other_scale_ * spread.forces_var * (1 - 1e-12))
    np.testing.assert_allclose(pred.energy, spread.energy, rtol=1e-12)  # the mean unchanged
    # per atom as per structure: λ times the members' local-energy spread plus the term's
    assert np.all(pred.atom_energy_var >= term.energy_other_scale_ * spread.atom_energy_var
                  * (1 - 1e-12))


def test_save_load_keeps_the_term(fitted_members, sets, tmp_path):
    train, val, away = sets
    ensemble = _quiet(lambda: DeepEnsemble(fitted_members).fit_distance(train, val)
                      .calibrate(val))
    path = tmp_path / "deep.pt"
    ensemble.save(path)
    assert torch.load(path, weights_only=True)["format_version"] == 5
    loaded = load_wrapper(path)
    assert loaded.distance == "mahalanobis" and loaded.distance_ is not None
    assert loaded.fingerprint() == ensemble.fingerprint()
    a, b = _quiet(lambda: loaded.predict(away)), _quiet(lambda: ensemble.predict(away))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    plain = tmp_path / "plain.pt"  # without a term: the version-2 file it always was
    DeepEnsemble(fitted_members, distance=None).save(plain)
    assert torch.load(plain, weights_only=True)["format_version"] == 2
    assert fileio.read_payload(plain, format="mlipuq.uq", what="UQ")["format_version"] == 5
    assert load_wrapper(plain).distance is None


def test_fit_trains_the_members_then_fits_the_term(sets):
    train, val, _ = sets

    def make(seed):
        return tiny_model(train.species, seed)

    fitted = _quiet(lambda: DeepEnsemble.train(make, train, val, n_members=2, epochs=1,
                                               lr=1e-2, batch_size=8))
    assert fitted.distance_ is not None and fitted.distance_.model is fitted.models[0]
    assert fitted.member_offsets_ is not None  # recentred on val before the term's fit
    plain = _quiet(lambda: DeepEnsemble.train(make, train, val, n_members=2, epochs=1,
                                              lr=1e-2, batch_size=8, distance=None))
    assert plain.distance_ is None
    pred = plain.predict(val, calibrated=False, composition=False)
    np.testing.assert_allclose(pred.energy_var, pred.energy_members.var(axis=0), rtol=1e-12)


def test_bad_settings_are_refused(fitted_members, sets):
    with pytest.raises(ValueError, match="distance must be None or one of"):
        DeepEnsemble(fitted_members, distance="euclid")
    with pytest.raises(ValueError, match="distance=None"):
        DeepEnsemble(fitted_members, distance=None).fit_distance(*sets[:2])


def test_calibrating_without_the_term_warns(fitted_members, sets):
    """Members built from trained models have no term until ``fit_distance``:
    calibrating them then warns, naming the fix, and calibrates the members alone;
    the members alone by choice (``distance=None``) and a fitted term do not warn."""
    train, val, away = sets
    with pytest.warns(NoDistanceTermWarning, match=r"fit_distance\(train, val\)"):
        unfitted = DeepEnsemble(fitted_members).calibrate(val)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoDistanceTermWarning)
        alone = DeepEnsemble(fitted_members, distance=None).calibrate(val)
        fitted = DeepEnsemble(fitted_members).fit_distance(train, val).calibrate(val)
    assert unfitted.distance_ is None and fitted.distance_ is not None
    a, b = unfitted.predict(away), alone.predict(away)
    np.testing.assert_array_equal(a.forces_var, b.forces_var)


@pytest.mark.parametrize("score", [None, "none"])
def test_cli_fits_the_term_around_trained_members(fitted_members, sets, tmp_path, score,
                                                  capsys):
    """``mlipuq fit deep -m a -m b`` fits the term around the members as they are;
    ``--score none`` leaves their spread alone."""
    train, val, _ = sets
    paths = {"train": tmp_path / "train.extxyz", "val": tmp_path / "val.extxyz"}
    train.write(paths["train"])
    val.write(paths["val"])
    argv = ["fit", "deep", "--train", str(paths["train"]), "--val", str(paths["val"]),
            "--out", str(tmp_path / "deep.pt")]
    for k, model in enumerate(fitted_members[:2]):
        model.save(tmp_path / f"m{k}.pt")
        argv += ["-m", str(tmp_path / f"m{k}.pt")]
    argv += [] if score is None else ["--score", score]
    assert _quiet(lambda: cli.main(argv)) == 0
    saved = load_wrapper(tmp_path / "deep.pt")
    assert (saved.distance_ is None) == (score == "none") and saved.calibrated_
    printed = capsys.readouterr().out  # the summary names the term, or its absence
    assert ("none (the members' spread alone)" in printed) == (score == "none")
    assert ("mahalanobis: λσ²_members + a + b u²" in printed) == (score is None)


def test_member_wise_forces_need_the_members_alone(fitted_members, sets):
    """Stretched atom by atom, the members' forces are no gradients of their energies:
    member-wise MD is refused with the fix named; energies member-wise still work."""
    train, val, away = sets
    ensemble = _quiet(lambda: DeepEnsemble(fitted_members).fit_distance(train, val))
    assert not ensemble.has_consistent_members
    with pytest.raises(ValueError, match=r"DeepEnsemble\(models, distance=None\)"):
        ensemble.members(away, forces=True, calibrated=False)
    assert ensemble.members(away, forces=False, calibrated=False).n_members == 3
    assert DeepEnsemble(fitted_members, distance=None).has_consistent_members
