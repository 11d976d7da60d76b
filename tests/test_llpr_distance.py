"""LastLayerLaplace's latent-distance term (``distance=``): the check suite, the same
variances as ``LatentDistance(model, combine=llpr)``, members stretched to them,
save/load, files without a term unchanged, and its settings checked."""

from __future__ import annotations

import numpy as np
import pytest

import mlipuq
from mlipuq import fileio
from mlipuq.errors import FileFormatError
from mlipuq.testing import check_uq_wrapper
from mlipuq.uq import LastLayerLaplace, LatentDistance, load


@pytest.mark.parametrize("forces", ["sum", "max"])
def test_passes_the_check_suite(base, ethanol, forces):
    check_uq_wrapper(LastLayerLaplace(base, distance="mahalanobis", force_combination=forces),
                     ethanol[:14], fit_kwargs={})


def test_variances_are_latent_distance_combined_with_llpr(base, ethanol):
    """The term is LatentDistance's joint fit with LLPR: λ σ²_LLPR + a + b u², the same
    numbers as ``LatentDistance(model, combine=llpr)`` fitted on the same data."""
    train, val, test = ethanol[:10], ethanol[10:14], ethanol[14:]
    own = LastLayerLaplace(base, distance="mahalanobis").fit(train, val)
    llpr = LastLayerLaplace(base, distance=None).fit(train)
    combined = LatentDistance(base, combine=llpr).fit(train, val)
    a, b = own.predict(test), combined.predict(test)
    np.testing.assert_allclose(a.energy_var, b.energy_var, rtol=1e-9)
    np.testing.assert_allclose(a.forces_var, b.forces_var, rtol=1e-9)
    alone = llpr.predict(test, calibrated=False)
    term = own.distance_
    assert term.forces_other_scale_ > 0
    assert np.all(a.forces_var >= term.forces_other_scale_ * alone.forces_var * (1 - 1e-12))
    np.testing.assert_array_equal(a.energy, alone.energy)
    assert own.default_widening() == LatentDistance(base).default_widening()


def test_members_are_stretched_to_the_combined_variance(base, ethanol):
    own = LastLayerLaplace(base, distance="mahalanobis", n_samples=32).fit(
        ethanol[:10], ethanol[10:14])
    alone = own.copy()
    alone.distance_ = None
    pred, before = (w.predict(ethanol[14:], calibrated=False) for w in (own, alone))
    np.testing.assert_allclose(pred.energy_members - pred.energy,
                               (before.energy_members - before.energy)
                               * np.sqrt(pred.energy_var / before.energy_var),
                               rtol=1e-7, atol=1e-10)
    scale = own.distance_.energy_other_scale_
    assert np.all(pred.energy_var > scale * before.energy_var)
    assert not own.has_consistent_members
    assert own.members_hint(forces=True).endswith("energy_posterior='joint', distance=None)")


def test_save_load_keeps_the_term(base, ethanol, tmp_path):
    own = LastLayerLaplace(base, distance="mahalanobis").fit(ethanol[:10], ethanol[10:14])
    own.calibrate(ethanol[10:14])
    own.save(tmp_path / "llpr.pt")
    loaded = load(tmp_path / "llpr.pt")
    assert loaded.distance == "mahalanobis" and loaded.distance_ is not None
    a, b = own.predict(ethanol[14:]), loaded.predict(ethanol[14:])
    np.testing.assert_allclose(b.energy_var, a.energy_var, rtol=1e-12)
    np.testing.assert_allclose(b.forces_var, a.forces_var, rtol=1e-12)
    assert loaded.fingerprint() == own.fingerprint()


def test_without_a_term_llpr_and_its_files_are_unchanged(base, ethanol):
    plain = LastLayerLaplace(base, distance=None).fit(ethanol[:14])
    assert plain.distance is None and plain.distance_ is None
    assert "distance" not in plain.config() and "distance" not in plain._get_state()
    assert plain._format_version() == 2
    assert plain.default_widening() == LastLayerLaplace.default_extrapolation


def test_bad_settings_and_data_without_forces(base, ethanol):
    with pytest.raises(ValueError, match="distance must be None or one of"):
        LastLayerLaplace(base, distance="euclid")
    with pytest.raises(ValueError, match="distance_features"):
        LastLayerLaplace(base, distance="mahalanobis", distance_features="first")
    energies_only = []
    for atoms in ethanol[:14]:  # a copy drops the calculator, and with it the forces
        copy = atoms.copy()
        copy.info["energy"] = atoms.get_potential_energy()
        energies_only.append(copy)
    energies_only = mlipuq.load(energies_only)
    with pytest.warns(UserWarning, match="the data hold none"):
        own = LastLayerLaplace(base, distance="mahalanobis", include_forces=False).fit(
            energies_only[:10], energies_only[10:14])
    assert own.distance is None and own.distance_ is None


def test_energy_only_queries_add_the_term(base, ethanol):
    """``predict_energy`` (one pass, no forces) reports what ``predict`` does, the
    term's energy variance included, calibrated or not."""
    own = LastLayerLaplace(base, distance="mahalanobis").fit(ethanol[:10], ethanol[10:14])
    for fitted in (own, own.copy().calibrate(ethanol[10:14])):
        energy, var = fitted.predict_energy(ethanol[14:])
        pred = fitted.predict(ethanol[14:])
        np.testing.assert_allclose(energy, pred.energy, rtol=1e-12)
        np.testing.assert_allclose(var, pred.energy_var, rtol=1e-9)


def test_command_line_fit_adds_the_term_on_val(base, ethanol, tmp_path, capsys):
    """``mlipuq fit llpr --score mahalanobis`` fits the term on ``--val`` (the summary
    names it); ``--score none`` and ``--latent`` leave LLPR alone (with ``--latent`` the
    combination supplies the term)."""
    from mlipuq import cli

    common = _fit_llpr_args(base, ethanol, tmp_path)
    assert cli.main(common + ["--score", "mahalanobis", "--out", str(tmp_path / "t.pt")]) == 0
    assert "mahalanobis: λσ²_LLPR + a + b u²" in capsys.readouterr().out
    _assert_as_python_fit(tmp_path / "t.pt", base, ethanol, "forces_var",
                          distance="mahalanobis")
    for extra, name in ((["--score", "none"], "n.pt"), (["--latent", "forces"], "l.pt")):
        assert cli.main(common + extra + ["--out", str(tmp_path / name)]) == 0
    assert "none (LLPR alone)" in capsys.readouterr().out
    assert load(tmp_path / "n.pt").distance_ is None
    assert load(tmp_path / "l.pt").combine.distance_ is None


def test_energies_fitted_apart_take_the_larger(base, ethanol):
    """``energy_combination="max"``: the forces as the joint fit's; the energies
    max(λ_E σ²_LLPR, latent distance's own), λ_E the maximum-likelihood scale of LLPR's
    energy variance on val (mean r²/σ², by hand) and latent distance's part the same
    numbers as ``LatentDistance`` alone fitted on the same data."""
    apart, a, scale, term, alone = _fitted_apart(base, ethanol, "energy")
    assert apart.energy_distance_.energy_other_scale_ == pytest.approx(scale, rel=1e-9)
    np.testing.assert_allclose(a.energy_var, np.maximum(scale * alone, term), rtol=1e-9)
    energy, var = apart.predict_energy(ethanol[14:])  # (not calibrated)
    np.testing.assert_allclose(var, a.energy_var, rtol=1e-9)


def test_energies_fitted_apart_survive_save_and_load(base, ethanol, tmp_path, monkeypatch):
    """The energies' own term is saved (format 4: version-3 readers would drop it) and
    loaded; files with the joint term alone load as ``"sum"``."""
    apart = LastLayerLaplace(base, energy_combination="max").fit(ethanol[:10], ethanol[10:14])
    apart.calibrate(ethanol[10:14])
    assert apart._format_version() == 4
    apart.save(tmp_path / "max.pt")
    loaded = load(tmp_path / "max.pt")
    assert loaded.energy_combination == "max" and loaded.energy_distance_ is not None
    a, b = apart.predict(ethanol[14:]), loaded.predict(ethanol[14:])
    np.testing.assert_allclose(b.energy_var, a.energy_var, rtol=1e-12)
    assert loaded.fingerprint() == apart.fingerprint()
    joint = LastLayerLaplace(base).fit(ethanol[:10], ethanol[10:14])
    state = joint._get_state()
    assert "energy_distance" not in state and joint._format_version() == 3
    assert "energy_combination" not in joint.config()  # files of the joint fit as before
    assert apart.config()["energy_combination"] == "max"
    monkeypatch.setitem(fileio.CURRENT, "mlipuq.uq", 3)  # a reader from before the term
    with pytest.raises(FileFormatError, match="format version 4 is not supported"):
        load(tmp_path / "max.pt")
    with pytest.raises(ValueError, match="energy_combination must be one of"):
        LastLayerLaplace(base, energy_combination="product")


def test_command_line_fits_the_targets_apart(base, ethanol, tmp_path, capsys):
    """``mlipuq fit llpr --energy-combination max`` is ``energy_combination="max"`` and
    ``--force-combination max`` is ``force_combination="max"`` (the summary says so); a
    value another method's alone is refused by name."""
    from mlipuq import cli

    common = _fit_llpr_args(base, ethanol, tmp_path)
    for target, option in (("energy", "energy_combination"), ("forces", "force_combination")):
        path = str(tmp_path / f"{target}.pt")
        assert cli.main(common + [f"--{option.replace('_', '-')}", "max", "--out", path]) == 0
        assert f"({target}: the larger)" in capsys.readouterr().out
        _assert_as_python_fit(path, base, ethanol, f"{target}_var", **{option: "max"})
    assert cli.main(common + ["--energy-combination", "none", "--out",
                              str(tmp_path / "n.pt")]) == 2
    assert "--energy-combination none is not one of fit llpr's: sum, max" in \
        capsys.readouterr().err
    shallow = ["fit", "shallow"] + common[2:] + ["--energy-combination", "sum"]
    assert cli.main(shallow + ["--out", str(tmp_path / "s.pt")]) == 2
    assert "not one of fit shallow's: max, none" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists() and not (tmp_path / "s.pt").exists()


def test_forces_fitted_apart_take_the_larger(base, ethanol):
    """``force_combination="max"``: the energies as the joint fit's; per atom the larger
    of λ_F × LLPR's mean component variance and latent distance's own, LLPR's components
    stretched by one factor to it, λ_F the maximum-likelihood scale of LLPR's
    force variance on val (mean r²/σ², by hand) and latent distance's part the same
    numbers as ``LatentDistance`` alone fitted on the same data. With both targets
    apart, one term serves both."""
    train, val, test = ethanol[:10], ethanol[10:14], ethanol[14:]
    apart, a, scale, term, alone = _fitted_apart(base, ethanol, "forces")
    assert apart.distance_.forces_other_scale_ == pytest.approx(scale, rel=1e-9)
    mean = (scale * alone).mean(axis=1, keepdims=True)  # per atom, by hand
    np.testing.assert_allclose(a.forces_var, scale * alone * np.maximum(mean, term[:, :1]) / mean,
                               rtol=1e-9)
    assert np.any(term[:, :1] > mean) and np.any(term[:, :1] < mean)  # both sides taken
    both = LastLayerLaplace(base, force_combination="max", energy_combination="max").fit(
        train, val)
    assert both.energy_distance_ is None  # the forces' term, fitted apart, serves both
    c = both.predict(test, calibrated=False)
    np.testing.assert_allclose(c.forces_var, a.forces_var, rtol=1e-9)
    energy_apart = LastLayerLaplace(base, energy_combination="max").fit(train, val)
    np.testing.assert_allclose(c.energy_var, energy_apart.predict(
        test, calibrated=False).energy_var, rtol=1e-9)


def test_forces_fitted_apart_survive_save_and_load(base, ethanol, tmp_path, monkeypatch):
    """The forces' term fitted apart is saved (format 5: version-4 readers would add it
    to LLPR's variance) and loaded with the energies' joint term; the combinations are
    in the config and the fingerprint."""
    apart = LastLayerLaplace(base, force_combination="max").fit(ethanol[:10], ethanol[10:14])
    apart.calibrate(ethanol[10:14])
    assert apart._format_version() == 5
    assert apart.config()["force_combination"] == "max"
    apart.save(tmp_path / "max.pt")
    loaded = load(tmp_path / "max.pt")
    assert (loaded.force_combination, loaded.energy_combination) == ("max", "sum")
    assert loaded.energy_distance_ is not None
    a, b = apart.predict(ethanol[14:]), loaded.predict(ethanol[14:])
    for target in ("energy_var", "forces_var"):
        np.testing.assert_allclose(getattr(b, target), getattr(a, target), rtol=1e-12)
    assert loaded.fingerprint() == apart.fingerprint()
    assert loaded.fingerprint() != LastLayerLaplace(base).fit(
        ethanol[:10], ethanol[10:14]).fingerprint()
    monkeypatch.setitem(fileio.CURRENT, "mlipuq.uq", 4)  # a reader from before it
    with pytest.raises(FileFormatError, match="format version 5 is not supported"):
        load(tmp_path / "max.pt")
    with pytest.raises(ValueError, match="force_combination must be one of"):
        LastLayerLaplace(base, force_combination="product")


def _fitted_apart(base, ethanol, target: str):
    """LLPR with ``target``'s term fitted apart (``"energy"`` or ``"forces"``) on train
    ethanol[:10] and val ethanol[10:14], after checking that the other target's
    uncalibrated variances on the test structures ethanol[14:] are the joint fit's.
    Returns the wrapper, its test prediction, λ by hand (mean r²/σ² of LLPR alone's
    ``target`` on val), latent distance alone's ``target`` variances fitted on the same
    data, and LLPR alone's."""
    train, val, test = ethanol[:10], ethanol[10:14], ethanol[14:]
    other = {"energy": "forces", "forces": "energy"}[target]
    apart = LastLayerLaplace(base, **{f"{target.rstrip('s')}_combination": "max"}).fit(
        train, val)
    a, b = (w.predict(test, calibrated=False)
            for w in (apart, LastLayerLaplace(base).fit(train, val)))
    np.testing.assert_allclose(getattr(a, f"{other}_var"), getattr(b, f"{other}_var"),
                               rtol=1e-9)
    llpr = LastLayerLaplace(base, distance=None).fit(train)
    on_val = llpr.predict(val, calibrated=False)
    truth = val.energies if target == "energy" else val.forces
    scale = np.mean((getattr(on_val, target) - truth) ** 2 / getattr(on_val, f"{target}_var"))
    latent = LatentDistance(base, structure_covariance="held-out").fit(train, val)
    term = getattr(latent.predict(test, calibrated=False, composition=False), f"{target}_var")
    return apart, a, scale, term, getattr(llpr.predict(test, calibrated=False), f"{target}_var")


def _assert_as_python_fit(path, base, ethanol, target: str, **options) -> None:
    """The wrapper the command line saved at ``path`` predicts the uncalibrated
    ``target`` variances of ``LastLayerLaplace(base, **options)`` fitted in Python on
    the arguments' train and val (:func:`_fit_llpr_args`), to 1e-9."""
    direct = LastLayerLaplace(base, **options).fit(ethanol[:10], ethanol[10:14])
    np.testing.assert_allclose(getattr(load(path).predict(ethanol[14:], calibrated=False),
                                       target),
                               getattr(direct.predict(ethanol[14:], calibrated=False), target),
                               rtol=1e-9)


def _fit_llpr_args(base, ethanol, tmp_path) -> list[str]:
    """``mlipuq fit llpr`` arguments for ``base`` saved in ``tmp_path`` with its first
    ten structures as ``--train`` and the next four as ``--val`` (the files written)."""
    ethanol[:10].write(tmp_path / "train.extxyz")
    ethanol[10:14].write(tmp_path / "val.extxyz")
    base.save(tmp_path / "model.pt")
    return ["fit", "llpr", "--model", str(tmp_path / "model.pt"), "--train",
            str(tmp_path / "train.extxyz"), "--val", str(tmp_path / "val.extxyz")]

