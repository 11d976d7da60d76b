"""``mlipuq fit`` and ``mlipuq predict``: the workflow from the command line, one
process and under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from ase.data import chemical_symbols

import mlipuq
from mlipuq import cli, schema
from mlipuq.calibration.student_t import StudentTRecalibrator
from mlipuq.predictive import ROBUST_MAX_DOF
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble)
from mlipuq.uq import load as load_wrapper

from conftest import ETHANOL_SMALL, tiny_model

WRAPPERS = {"llpr": LastLayerLaplace, "shallow": ShallowEnsemble,
            "evidential": EvidentialHead, "deep": DeepEnsemble, "latent": LatentDistance}
#: the fastest settings of each method (the fit must only work, not be good)
#: isolated-atom-like reference energies (eV): ethanol alone determines one combination
ATOMIC_ENERGIES = {"H": -13.5, "C": -1025.0, "O": -2035.5}
QUICK = {"llpr": [], "shallow": ["--epochs", "2", "--heads", "2"],
         "evidential": ["--epochs", "2"], "deep": ["--members", "2", "--epochs", "2"],
         "latent": []}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train/val/test extxyz files of the small ethanol set and a base model
    trained briefly on the training part (saved as ``mlipuq train`` does)."""
    folder = tmp_path_factory.mktemp("workflow")
    data = mlipuq.load(ETHANOL_SMALL)
    paths = {name: folder / f"{name}.extxyz" for name in ("train", "val", "test")}
    data[:10].write(paths["train"])
    data[10:15].write(paths["val"])
    data[15:].write(paths["test"])
    model = tiny_model(data.species, seed=0)
    model.set_atomic_energies(ATOMIC_ENERGIES)
    mlipuq.train(model, data[:10], epochs=15, lr=1e-2, batch_size=5, seed=0, progress=False)
    paths["model"] = folder / "model.pt"
    model.save(paths["model"])
    paths["llpr"] = folder / "llpr.pt"
    assert cli.main(["fit", "llpr", "--model", str(paths["model"]), "--train",
                     str(paths["train"]), "--val", str(paths["val"]),
                     "--out", str(paths["llpr"])]) == 0
    return paths


def _fit(files, method, out, *extra):
    return cli.main(["fit", method, "--model", str(files["model"]), "--train",
                     str(files["train"]), "--val", str(files["val"]), "--out", str(out),
                     *QUICK[method], *extra])


def _read(path):
    frames = ase.io.read(path, ":")
    energy = np.array([a.info[schema.ENERGY] for a in frames])
    energy_std = np.array([a.info[schema.ENERGY_STD] for a in frames])
    forces = np.concatenate([a.arrays[schema.FORCES] for a in frames])
    forces_std = np.concatenate([a.arrays[schema.FORCES_STD] for a in frames])
    return frames, energy, energy_std, forces, forces_std


def test_python_m_mlipuq_is_the_command():
    result = subprocess.run([sys.executable, "-m", "mlipuq", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: mlipuq" in result.stdout
    for command in ("demo", "train", "fit", "predict", "evaluate", "select"):
        assert command in result.stdout


@pytest.mark.parametrize("name", ["fit", "predict"])
def test_help_shows_defaults_overwrite_device(capsys, name):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--overwrite", "--debug", "--device", "(default: cpu)", "--batch-size"):
        assert text in out


def test_fit_llpr_then_predict_round_trip(files, tmp_path, capsys):
    out = tmp_path / "sub" / "pred.extxyz"  # the folder is created
    argv = ["predict", "--model", str(files["llpr"]), "--data", str(files["test"]),
            "--out", str(out), "--chunk-size", "2", "--batch-size", "1"]
    assert cli.main(argv) == 0
    assert "5 structures predicted with LastLayerLaplace (calibrated" in capsys.readouterr().out
    assert sorted(os.listdir(out.parent)) == ["pred.extxyz"]  # no temporary file left

    wrapper = load_wrapper(files["llpr"])
    assert wrapper.calibrated_
    test = mlipuq.load(files["test"])
    expected = wrapper.predict(test, batch_size=1)
    frames, energy, energy_std, forces, forces_std = _read(out)
    assert len(frames) == len(test) == 5  # three chunks, in order
    for got, ref in zip(frames, test):
        np.testing.assert_allclose(got.positions, ref.positions, atol=1e-8)
        assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(energy, expected.energy, rtol=1e-10, atol=0)
    np.testing.assert_allclose(energy_std, expected.energy_std, rtol=1e-10, atol=0)
    np.testing.assert_allclose(forces, expected.forces, atol=1e-7)  # written with 8 decimals
    np.testing.assert_allclose(forces_std, expected.forces_std, atol=1e-7)
    assert all(schema.ENERGY_MEMBERS in a.info for a in frames) == (
        expected.energy_members is not None)
    # the default calibration: a Student-t for the forces, its ν in every frame
    assert all(a.info[schema.CALIBRATION] == "energy scalar, forces student_t per species" for a in frames)
    assert all(a.info[schema.FORCES_DOF] == pytest.approx(expected.forces_dof) for a in frames)
    assert expected.forces_dof is not None and schema.ENERGY_DOF not in frames[0].info

    raw = tmp_path / "raw.extxyz"
    assert cli.main([*argv[:-5], str(raw), "--no-calibration", "--batch-size", "1"]) == 0
    assert "(raw uncertainties)" in capsys.readouterr().out
    np.testing.assert_allclose(_read(raw)[2], wrapper.predict(test, batch_size=1,
                               calibrated=False).energy_std, rtol=1e-10, atol=0)


def test_fit_llpr_summary(files, tmp_path, capsys):
    out = tmp_path / "llpr.pt"
    assert _fit(files, "llpr", out, "--calibration", "power", "--extrapolation", "1") == 0
    printed = capsys.readouterr().out
    assert "(energy, p = 1)" in printed and "(RMS force, p = 1)" in printed
    assert load_wrapper(out).recalibrator_.options["extrapolation"] == 1.0
    # 5 validation structures are too few to fit how stds scale between structures
    line = next(t for t in printed.splitlines() if "between structures" in t)
    assert line.endswith("stds x (S / S_ref)^c, c = 0.00 (energy), 0.00 (forces)")
    assert "force stds x (s / s_ref)^c per element, c = 0.00" in printed
    assert load_wrapper(out).recalibrator_.options["structure_scaling"] is True
    plain = tmp_path / "plain.pt"
    assert _fit(files, "llpr", plain, "--no-structure-scaling") == 0
    assert load_wrapper(plain).recalibrator_.options["structure_scaling"] is False
    printed_plain = capsys.readouterr().out
    assert "between atoms" not in printed_plain
    only = tmp_path / "only.pt"
    assert _fit(files, "llpr", only, "--no-atom-scaling") == 0
    assert load_wrapper(only).recalibrator_.options["structure_scaling"] == "structures"
    assert "atoms" not in load_wrapper(only).recalibrator_.structure_scaling_
    capsys.readouterr()
    assert _fit(files, "llpr", tmp_path / "x.pt", "--extrapolation", "-1") == 2
    assert "--extrapolation must be >= 0" in capsys.readouterr().err
    for bad in ("0.5", "inf", "nan"):  # refused before any training
        assert _fit(files, "llpr", tmp_path / "x.pt", "--widening-cap", bad) == 2
        assert "--widening-cap must be a number >= 1 or 'none'" in capsys.readouterr().err
    cap = tmp_path / "cap.pt"
    assert _fit(files, "llpr", cap, "--widening-cap", "3") == 0
    assert "energy factor at most 3, forces factor at most 3" in capsys.readouterr().out
    assert load_wrapper(cap).recalibrator_.widening_cap == {"energy": 3.0, "forces": 3.0}
    uncapped = tmp_path / "uncapped.pt"
    assert _fit(files, "llpr", uncapped, "--widening-cap", "None") == 0
    assert "factor at most" not in capsys.readouterr().out
    assert load_wrapper(uncapped).recalibrator_.widening_cap == {"energy": np.inf,
                                                                 "forces": np.inf}
    # the default: the wrappers' default_widening_cap, energies 30, forces 10
    assert load_wrapper(out).recalibrator_.widening_cap == {"energy": 30.0, "forces": 10.0}
    assert "energy factor at most 30, forces factor at most 10" in printed
    for text in ("LastLayerLaplace (llpr)", "prior precision", "energy noise", "forces noise",
                 "power on 5 structures", "energy std x", f"wrapper saved to {out}"):
        assert text in printed
    wrapper = load_wrapper(out)
    assert wrapper.recalibrator_.method == "power"


def test_student_t_from_fit_through_predict_to_evaluate(files, tmp_path, capsys):
    """--calibration student_t: the prediction file carries ν and evaluate scores the t."""
    wrapper_path, pred_path = tmp_path / "deep.pt", tmp_path / "pred.extxyz"
    assert _fit(files, "deep", wrapper_path, "--calibration", "student_t") == 0
    assert cli.main(["predict", "--model", str(wrapper_path), "--data", str(files["test"]),
                     "--out", str(pred_path)]) == 0
    wrapper = load_wrapper(wrapper_path)
    expected = wrapper.predict(mlipuq.load(files["test"]))
    assert expected.forces_dof is not None
    frames = ase.io.read(pred_path, ":")
    assert all(a.info[schema.FORCES_DOF] == pytest.approx(expected.forces_dof) for a in frames)
    out = tmp_path / "report"
    assert cli.main(["evaluate", str(pred_path), "--out", str(out), "--no-plots"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["dof"]["forces"] == pytest.approx(expected.forces_dof)
    html = (out / "report.html").read_text()
    assert f"forces ν = {expected.forces_dof:.3g}" in html  # the inputs table says so
    capsys.readouterr()


def test_fit_llpr_refit_mean(files, tmp_path, capsys):
    """--refit-mean saves a wrapper predicting with the posterior mean of the readout."""
    out = tmp_path / "llpr.pt"
    assert _fit(files, "llpr", out, "--refit-mean") == 0, capsys.readouterr().err
    wrapper = load_wrapper(out)
    assert wrapper.refit_mean and np.abs(wrapper.mean_shift_).max() > 0
    test = mlipuq.load(files["test"])
    base = wrapper.model.compute(test)["energy"]
    assert np.abs(wrapper.predict(test).energy - base).max() > 1e-8
    assert _fit(files, "shallow", tmp_path / "s.pt", "--refit-mean") == 2
    assert "--refit-mean is an llpr option" in capsys.readouterr().err


def test_fit_max_dof_bounds_the_force_t(files, tmp_path, capsys):
    """--max-dof sets the largest ν of the forces' Student-t (default: ROBUST_MAX_DOF);
    it is refused for a calibration without a t, and below ν = 1."""
    fits = {}
    for name, extra in (("default", ()), ("wide", ("--max-dof", "1000")),
                        ("heavy", ("--max-dof", "1.5"))):
        out = tmp_path / f"{name}.pt"
        assert _fit(files, "llpr", out, *extra) == 0, capsys.readouterr().err
        fits[name] = (load_wrapper(out).recalibrator_, capsys.readouterr().out)
    for name, high in (("default", ROBUST_MAX_DOF), ("wide", 1000.0), ("heavy", 1.5)):
        recalibrator, printed = fits[name]
        assert tuple(recalibrator.options["dof_bounds"]) == (1.0, high)
        assert 1.0 <= recalibrator.forces_.dof_ <= high
        capped = recalibrator.forces_.dof_ == pytest.approx(high)
        assert ("(the cap, --max-dof)" in printed) == capped
    assert fits["heavy"][0].forces_.dof_ <= fits["wide"][0].forces_.dof_
    assert _fit(files, "llpr", tmp_path / "s.pt", "--calibration", "scalar", "--max-dof", "3") == 2
    assert "--max-dof applies to --calibration student_t" in capsys.readouterr().err
    assert _fit(files, "llpr", tmp_path / "s.pt", "--max-dof", "1") == 2
    assert "--max-dof must be > 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["llpr", "shallow", "evidential", "deep", "latent"])
def test_every_method_gives_a_loadable_calibrated_wrapper(files, tmp_path, capsys, method):
    out = tmp_path / f"{method}.pt"
    assert _fit(files, method, out) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    # every wrapper's default calibration: a Student-t predictive for the forces, and for
    # the energies of every wrapper but LLPR (the evidential head's and latent
    # distance's since 2026-12-05)
    energy = "scalar" if method == "llpr" else "student_t"
    assert f"energy {energy}, forces student_t per species on 5 structures" in printed
    assert "wrapper saved to" in printed
    assert "forces Student-t ν" in printed
    assert ("energy Student-t ν" in printed) == (energy == "student_t")
    # the widening beyond the calibration range, with the wrapper's default powers (with
    # every layer's features, the default since 2026-12-06: the shallow ensemble's 0.5,
    # the evidential head's, latent distance's, LLPR's and the deep ensemble's (their
    # terms') forces 0.5 and energies 0.75)
    forces_p = 0.5
    energy_p = {"shallow": 0.5}.get(method, 0.75)
    powers = f"p = {energy_p:g}), "
    assert "beyond calibration" in printed and powers in printed
    assert f"(RMS force, p = {forces_p:g})" in printed
    wrapper = load_wrapper(out)
    # the evidential head's term has its own range (distance_range), printed beside
    term_range = wrapper.recalibrator_.std_range_.get("energy_distance")
    assert (term_range is not None) == (method == "evidential")
    if term_range is not None:
        assert (f"{term_range * 1000:.3g} meV/atom (the latent-distance term's own energy "
                "std)") in printed
    assert type(wrapper) is WRAPPERS[method]
    assert wrapper.calibrated_
    forces = wrapper.recalibrator_.forces_  # one std multiplier per element, printed as such
    for z, factor in zip(forces.species_, forces.multiplier(np.ones(len(forces.species_)),
                                                            numbers=forces.species_)):
        assert f"{factor:.4g} ({chemical_symbols[z]})" in printed
    if method == "deep":
        assert wrapper.n_members == 2 and wrapper.seeds_ == [0, 1]
        assert "members" in printed and "seeds [0, 1]" in printed
    if method == "shallow":  # with its latent-distance terms unless --score none
        assert wrapper.n_heads == 2
        line = next(t for t in printed.splitlines() if t.split()[:1] == ["distance"])
        assert wrapper.distance_ is not None and line.split()[1] == "mahalanobis:"
        lam = wrapper.energy_distance_.energy_other_scale_
        assert (f"energy {lam:.3g} (forces λσ²_heads + a + b u², energies "
                "max(λσ²_heads, n²(a + b U²)))") in line
    if method == "latent":  # the Mahalanobis distance unless --score says otherwise
        line = next(t for t in printed.splitlines() if t.split()[:1] == ["distance"])
        assert wrapper.score == "mahalanobis" and line.split()[1] == "mahalanobis"
        assert wrapper.energy_distance == "structure" and "energy n² (" in printed
    if method == "evidential":  # with its latent-distance term unless --score none
        line = next(t for t in printed.splitlines() if t.split()[:1] == ["distance"])
        assert wrapper.distance_ is not None and line.split()[1] == "mahalanobis:"
    prediction = wrapper.predict(mlipuq.load(files["test"]))
    assert np.all(np.isfinite(prediction.energy_std)) and np.all(prediction.forces_std > 0)


@pytest.mark.parametrize("method", ["evidential", "shallow"])
def test_fit_without_the_distance_term(files, tmp_path, capsys, method):
    out = tmp_path / "alone.pt"
    assert _fit(files, method, out, "--score", "none") == 0, capsys.readouterr().err
    line = next(t for t in capsys.readouterr().out.splitlines() if t.split()[:1] == ["distance"])
    wrapper = load_wrapper(out)
    assert wrapper.distance is None and wrapper.distance_ is None and line.split()[1] == "none"
    if method == "shallow":  # the heads alone: member forces are energy gradients
        assert wrapper.has_consistent_members


def test_fit_shallow_energy_combination(files, tmp_path, capsys):
    """--energy-combination none: the heads' energy variance alone (the force term
    kept); refused where there is no shallow latent-distance term."""
    out = tmp_path / "heads_energies.pt"
    assert _fit(files, "shallow", out, "--energy-combination", "none") == 0, \
        capsys.readouterr().err
    line = next(t for t in capsys.readouterr().out.splitlines() if t.split()[:1] == ["distance"])
    assert "energies: the heads' variance (forces λσ²_heads + a + b u²)" in line
    wrapper = load_wrapper(out)
    assert wrapper.energy_combination is None and wrapper.energy_distance_ is None
    assert wrapper.distance_ is not None
    for method, extra in (("evidential", ()), ("shallow", ("--score", "none"))):
        assert _fit(files, method, tmp_path / "refused.pt", "--energy-combination", "max",
                    *extra) == 2
        assert "--energy-combination is a shallow or llpr option" in capsys.readouterr().err
    assert not (tmp_path / "refused.pt").exists()
    # --force-combination max: the larger of the heads' and the term's force variances
    out = tmp_path / "forces_max.pt"
    assert _fit(files, "shallow", out, "--force-combination", "max") == 0, \
        capsys.readouterr().err
    assert "(forces max(λσ²_heads, a + b u²), energies max(" in capsys.readouterr().out
    assert load_wrapper(out).force_combination == "max"
    assert _fit(files, "evidential", tmp_path / "refused.pt", "--force-combination",
                "max") == 2
    assert "--force-combination is a shallow or llpr option" in capsys.readouterr().err
    assert not (tmp_path / "refused.pt").exists()


def test_fit_evidential_reference(files, tmp_path, capsys):
    """--reference: the latent-distance term measures its distances to the base model's
    training structures while the head is fitted on held-out --train data."""
    out = tmp_path / "referenced.pt"
    assert cli.main(["fit", "evidential", "-m", str(files["model"]), "--train",
                     str(files["val"]), "--val", str(files["test"]), "--reference",
                     str(files["train"]), "--out", str(out), *QUICK["evidential"],
                     "--structure-covariance", "held-out", "--distance-combination", "sum"]
                    ) == 0, capsys.readouterr().err
    assert "to 10 reference structures" in capsys.readouterr().out
    head = load_wrapper(out)
    assert head.distance_.n_train_ == 10
    # --structure-covariance reaches the term: its covariance chosen on --val
    assert head.structure_covariance == "held-out" and head.distance_.structure_["diagonal"] > 0
    assert head.distance_combination == "sum"  # --distance-combination reaches the head


def test_fit_latent_score_and_without_val(files, tmp_path, capsys):
    """--score picks the latent distance; without --val the map is fitted on a held-out
    fifth of --train and the wrapper is not calibrated."""
    out = tmp_path / "knn.pt"
    assert _fit(files, "latent", out, "--score", "knn") == 0, capsys.readouterr().err
    line = next(t for t in capsys.readouterr().out.splitlines() if t.split()[:1] == ["distance"])
    assert load_wrapper(out).score == "knn" and line.split()[1] == "knn"
    atoms = tmp_path / "atoms.pt"
    assert _fit(files, "latent", atoms, "--energy-distance", "atoms") == 0
    assert load_wrapper(atoms).energy_distance == "atoms" and "Σu²" in capsys.readouterr().out
    held = tmp_path / "held.pt"
    assert _fit(files, "latent", held, "--structure-covariance", "held-out") == 0
    assert load_wrapper(held).structure_["diagonal"] > 0
    bare = tmp_path / "bare.pt"
    assert cli.main(["fit", "latent", "-m", str(files["model"]), "--train",
                     str(files["train"]), "--out", str(bare)]) == 0
    wrapper = load_wrapper(bare)
    assert not wrapper.calibrated_ and wrapper.n_train_ == 8  # 2 of 10 held out
    capsys.readouterr()


def test_fit_latent_term_added_to_another_method(files, tmp_path, capsys):
    """--latent forces: LatentDistance(model, combine=heads, energy_distance=None)
    around the heads alone (the shallow ensemble's own default, spelled out), fitted
    on --val and calibrated; the energies stay the heads' and the heads stay its
    members. --latent both: a latent energy term too (here with LLPR, its structure
    covariance chosen on --val)."""
    out = tmp_path / "shallow_latent.pt"
    assert _fit(files, "shallow", out, "--latent", "forces") == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "LatentDistance + ShallowEnsemble (shallow)" in text and "forces only" in text
    wrapper = load_wrapper(out)
    assert wrapper.energy_distance is None and wrapper.calibrated_
    assert type(wrapper.combine).__name__ == "ShallowEnsemble"
    assert wrapper.combine.distance_ is None  # the heads alone inside: one latent term
    test = mlipuq.load(files["test"])
    raw = dict(calibrated=False, composition=False)
    pred, heads = wrapper.predict(test, **raw), wrapper.combine.predict(test, **raw)
    np.testing.assert_array_equal(pred.energy_var, heads.energy_var)
    assert pred.n_members == wrapper.combine.n_heads
    both = tmp_path / "llpr_latent.pt"
    assert _fit(files, "llpr", both, "--latent", "both", "--score", "knn",
                "--structure-covariance", "held-out") == 0
    loaded = load_wrapper(both)
    assert loaded.energy_distance == "structure" and loaded.score == "knn"
    assert loaded.structure_covariance == "held-out" and loaded.structure_["diagonal"] > 0
    assert type(loaded.combine).__name__ == "LastLayerLaplace"
    capsys.readouterr()


def test_fit_without_val_is_not_calibrated(files, tmp_path, capsys):
    out = tmp_path / "llpr.pt"
    assert cli.main(["fit", "llpr", "-m", str(files["model"]), "--train", str(files["train"]),
                     "--out", str(out)]) == 0
    assert "none (no --val)" in capsys.readouterr().out
    assert not load_wrapper(out).calibrated_


def test_fit_deep_from_several_trained_models(files, tmp_path, capsys):
    second = tmp_path / "second.pt"
    data = mlipuq.load(files["train"])
    model = tiny_model(data.species, seed=1)
    model.set_atomic_energies(ATOMIC_ENERGIES)
    mlipuq.train(model, data, epochs=2, lr=1e-2, batch_size=5, seed=1, progress=False)
    model.save(second)
    out = tmp_path / "deep.pt"
    assert cli.main(["fit", "deep", "-m", str(files["model"]), "-m", str(second),
                     "--train", str(files["train"]), "--val", str(files["val"]),
                     "--out", str(out)]) == 0
    assert "none (trained --model files)" in capsys.readouterr().out
    wrapper = load_wrapper(out)
    assert wrapper.n_members == 2 and wrapper.calibrated_
    base = mlipuq.models.load(files["model"])
    for p, q in zip(wrapper.models[0].state_dict().values(), base.state_dict().values()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q)  # not retrained


@pytest.mark.parametrize("argv, message", [
    (["llpr", "--coverage", "0.9"], "--coverage applies to --calibration conformal"),
    (["llpr", "--calibration", "scalar", "--per-species"],
     "--per-species applies to --calibration student_t or conformal"),
    (["deep", "--members", "1"], "--members must be >= 2"),
    (["llpr", "-m", "{model}"], "fit llpr takes one --model"),
    (["shallow", "--heads", "1"], "--heads must be >= 2"),
    (["shallow", "--score", "none", "--latent", "forces"], "is an evidential, shallow, llpr "
                                                          "or deep option, without --latent"),
    (["deep", "--score", "none", "--latent", "both"], "is an evidential, shallow, llpr or deep"),
    (["latent", "--latent", "forces"], "--latent adds a latent distance to llpr, shallow or"),
    (["evidential", "--latent", "both"], "not to fit evidential"),
    (["latent", "--score", "none"], "--score none (no latent-distance term) is an evidential,"),
    (["evidential", "--energy-distance", "atoms"], "--energy-distance is a latent option"),
    (["latent", "--reference", "train.extxyz"], "--reference is an evidential option"),
    (["llpr", "--structure-covariance", "held-out"], "--structure-covariance is a latent"),
    (["llpr", "--latent", "forces", "--structure-covariance", "held-out"],
     "--structure-covariance is a latent"),
    (["evidential", "--score", "none", "--structure-covariance", "held-out"],
     "not one of fit evidential --score none"),
    (["llpr", "--distance-combination", "sum"], "--distance-combination is an evidential "
                                                "option (with its latent-distance term), "
                                                "not one of fit llpr"),
    (["evidential", "--score", "none", "--distance-combination", "max"],
     "not one of fit evidential --score none"),
    (["evidential", "--score", "none", "--reference", "train.extxyz"],
     "--score none has no such term"),
    (["latent", "--epochs", "3"], "fit latent trains nothing: --epochs"),
    (["llpr", "--epochs", "3", "--max-time", "9"], "fit llpr trains nothing: --epochs, "
                                                   "--max-time do not apply"),
    (["llpr", "--heads", "4"], "--heads is a shallow option, not one of fit llpr"),
    (["evidential", "--members", "3"], "--members is a deep option, not one of fit evidential"),
    (["llpr", "--device", "cuda"], "CUDA is not available"),
])
def test_fit_user_errors(files, tmp_path, capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [a.format(model=files["model"]) for a in argv]
    out = tmp_path / "w.pt"
    code = cli.main(["fit", argv[0], "-m", str(files["model"]), "--train", str(files["train"]),
                     "--out", str(out), *argv[1:]])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_per_species_flag_sets_the_force_recalibrator(files, tmp_path, capsys):
    """--no-per-species: one force scale; --calibration conformal --per-species: a
    quantile per element; the default: a t scale per element (printed per element)."""
    numbers = np.concatenate([a.numbers for a in mlipuq.load(files["val"])])
    elements, atoms = np.unique(numbers, return_counts=True)
    # a t scale of its own needs 30 force components (10 atoms); conformal takes every element
    own = elements[3 * atoms >= StudentTRecalibrator.MIN_SPECIES_TARGETS]
    for extra, expected in (((), own), (("--no-per-species",), []),
                            (("--calibration", "conformal", "--coverage", "0.5", "--per-species"), elements)):
        out = tmp_path / f"w{len(extra)}.pt"
        assert _fit(files, "llpr", out, *extra) == 0, capsys.readouterr().err
        recalibrator = load_wrapper(out).recalibrator_
        np.testing.assert_array_equal(recalibrator.forces_.species_, expected)
        assert ("per species" in recalibrator.description) == bool(len(expected))
    capsys.readouterr()


def test_bad_device_is_a_usage_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", "-m", str(files["llpr"]), "-d", str(files["test"]),
                  "-o", str(tmp_path / "p.extxyz"), "--device", "gpu"])
    assert info.value.code == 2
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_existing_outputs_are_refused_and_left_identical(files, tmp_path, capsys):
    wrapper_out, pred_out = tmp_path / "w.pt", tmp_path / "p.extxyz"
    wrapper_out.write_bytes(b"precious wrapper")
    pred_out.write_bytes(b"precious prediction")
    assert _fit(files, "llpr", wrapper_out) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    argv = ["predict", "-m", str(files["llpr"]), "-d", str(files["test"]), "-o", str(pred_out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: --out") and "--overwrite" in err
    assert wrapper_out.read_bytes() == b"precious wrapper"
    assert pred_out.read_bytes() == b"precious prediction"
    assert sorted(os.listdir(tmp_path)) == ["p.extxyz", "w.pt"]

    assert _fit(files, "llpr", wrapper_out, "--overwrite") == 0
    assert isinstance(load_wrapper(wrapper_out), LastLayerLaplace)
    assert cli.main([*argv, "--overwrite"]) == 0
    assert len(ase.io.read(pred_out, ":")) == 5


def test_interrupted_predict_leaves_no_partial_file(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.extxyz"
    out.write_bytes(b"the previous result")
    calls = []
    original = LastLayerLaplace.predict

    def predict_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LastLayerLaplace, "predict", predict_then_interrupt)
    argv = ["predict", "-m", str(files["llpr"]), "-d", str(files["test"]), "-o", str(out),
            "--chunk-size", "2", "--overwrite"]
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous result"
    assert os.listdir(tmp_path) == ["p.extxyz"]  # the temporary files are gone
    out.unlink()
    calls.clear()
    assert cli.main(argv[:-1]) == 130
    assert os.listdir(tmp_path) == []


def test_predict_reports_bad_input(files, tmp_path, capsys):
    out = tmp_path / "p.extxyz"
    base = ["predict", "-m", str(files["llpr"]), "-o", str(out)]
    assert cli.main([*base, "-d", str(tmp_path / "missing.extxyz")]) == 2
    assert "missing.extxyz" in capsys.readouterr().err
    assert cli.main(["predict", "-m", str(files["model"]), "-d", str(files["test"]),
                     "-o", str(out)]) == 2  # a base model, not a wrapper
    assert "UQ-wrapper" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv, cwd, timeout=240):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", env["MASTER_PORT"], "-m", "mlipuq",
         *argv],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_torchrun_predict_writes_the_single_process_file(files, tmp_path, capsys):
    """Two ranks share each chunk (predict is collective); rank 0 alone prints and
    writes, and the file equals the one-process file. ``--batch-size 1`` makes the
    float results independent of how the structures are split into batches; the last
    chunk (one structure) leaves rank 0 an empty share."""
    one, two = tmp_path / "one.extxyz", tmp_path / "two.extxyz"
    common = ["-m", str(files["llpr"]), "-d", str(files["test"]), "--chunk-size", "2",
              "--batch-size", "1"]
    assert cli.main(["predict", *common, "-o", str(one)]) == 0
    result = _torchrun(["predict", *common, "-o", str(two)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("structures predicted") == 1  # rank 0 only
    assert sorted(os.listdir(tmp_path)) == ["one.extxyz", "two.extxyz"]
    frames_1, *values_1 = _read(one)
    frames_2, *values_2 = _read(two)
    assert len(frames_2) == len(frames_1) == 5
    for a, b in zip(values_1, values_2):  # float32 models: the ranks' thread counts may
        # differ from this process's (one energy moved by 9e-10 relative on a loaded machine)
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)

    # an existing output is refused on every rank, and left as it is
    before = two.read_bytes()
    result = _torchrun(["predict", *common, "-o", str(two)], tmp_path)
    assert result.returncode != 0
    assert "mlipuq: error: --out" in result.stderr and "fit_cli.py" not in result.stderr
    assert two.read_bytes() == before


def test_torchrun_fit_llpr_equals_one_process(files, tmp_path):
    """``LastLayerLaplace.fit`` sums its statistics over the ranks' shards."""
    out = tmp_path / "llpr2.pt"
    argv = ["fit", "llpr", "-m", str(files["model"]), "--train", str(files["train"]),
            "--val", str(files["val"]), "--out", str(out)]
    result = _torchrun(argv, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrapper saved to") == 1
    one, two = load_wrapper(files["llpr"]), load_wrapper(out)
    for name in ("prior_precision_", "energy_noise_", "forces_noise_"):
        assert getattr(two, name) == pytest.approx(getattr(one, name), rel=1e-8)
    test = mlipuq.load(files["test"])
    p1, p2 = one.predict(test, batch_size=1), two.predict(test, batch_size=1)
    # (its latent term, fitted on float32 features summed in another order: 1e-5)
    np.testing.assert_allclose(p2.energy_std, p1.energy_std, rtol=1e-5)
    np.testing.assert_allclose(p2.forces_std, p1.forces_std, rtol=1e-5)
    assert two.recalibrator_.energy_.scale_ == pytest.approx(one.recalibrator_.energy_.scale_,
                                                             rel=1e-6)
