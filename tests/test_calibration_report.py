"""evaluate(), CalibrationReport and reading predictions back from extxyz."""

import json

import ase
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq.data as mdata
from conftest import synthetic_prediction
from mlipuq.calibration import CalibrationReport, evaluate, load_prediction
from mlipuq.calibration import metrics as m
from mlipuq.errors import FileFormatError, ZeroUncertaintyError
from mlipuq.prediction import Prediction


def make_case(n_structures=30, seed=0, miscal=1.5, members=False):
    return synthetic_prediction(n_structures, seed, miscal, members)


def test_evaluate_scores_all_targets_like_the_metrics():
    pred, ref = make_case()
    report = evaluate(pred, ref)
    assert set(report.metrics) == {"energy", "energy_per_atom", "forces", "forces_norm"}
    assert report.units == {
        "energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/Å", "forces_norm": "eV/Å"
    }
    n = pred.n_atoms.astype(float)
    expected = {
        "energy": m.all_metrics(pred.energy, pred.energy_std, ref.energies),
        "energy_per_atom": m.all_metrics(pred.energy / n, pred.energy_std / n, ref.energies / n),
        "forces": m.all_metrics(pred.forces, pred.forces_std, ref.forces),
        "forces_norm": m.all_metrics(pred.forces, pred.forces_std, ref.forces, reduce="norm"),
    }
    for target, values in expected.items():
        assert report[target] == pytest.approx(values), target
    assert report["forces"]["n"] == 3 * report.n_atoms
    assert report["forces_norm"]["n"] == report.n_atoms
    assert report.n_structures == 30
    bins = m.rmse_rmv_bins(pred.forces, pred.forces_std, ref.forces)
    assert report.binned["forces"]["rmse"] == pytest.approx(list(bins.rmse))


def test_evaluate_accepts_anything_as_dataset_accepts():
    pred, ref = make_case(5)
    a = evaluate(pred, ref)
    b = evaluate(pred, list(ref))
    assert a == b


def test_evaluate_rejects_mismatches_and_missing_references():
    pred, ref = make_case(6)
    with pytest.raises(ValueError, match="structures"):
        evaluate(pred, ref[:5])
    swapped = mdata.AtomsDataset([ref[1], ref[0]] + list(ref[2:]))
    if ref.n_atoms[0] != ref.n_atoms[1]:
        with pytest.raises(ValueError, match="atoms"):
            evaluate(pred, swapped)
    no_forces = [a.copy() for a in ref]
    for a, b in zip(no_forces, ref):
        a.calc = SinglePointCalculator(a, energy=b.get_potential_energy())
    with pytest.raises(ValueError, match="forces"):
        evaluate(pred, no_forces)
    no_energy = [a.copy() for a in ref]
    for a, b in zip(no_energy, ref):
        a.calc = SinglePointCalculator(a, forces=b.get_forces())
    with pytest.raises(ValueError, match="energy"):
        evaluate(pred, no_energy)
    zero = Prediction(
        energy=pred.energy, energy_var=pred.energy_var, forces=pred.forces,
        forces_var=np.where(np.arange(pred.forces.size).reshape(-1, 3) == 4, 0.0, pred.forces_var),
        n_atoms=pred.n_atoms, batch=pred.batch,
    )
    with pytest.raises(ZeroUncertaintyError, match="forces of structure 0: predicted std is 0"):
        evaluate(zero, ref)


def test_report_serialisation_roundtrip():
    pred, ref = make_case(4)  # fewer structures than ENCE bins: undefined -> None
    report = evaluate(pred, ref)
    assert report["energy"]["ence"] is None and "energy" not in report.binned
    text = report.to_json()
    d = json.loads(text)
    assert d["format"] == "mlipuq-calibration-report" and d["version"] == 1
    assert d["metrics"]["energy"]["ence"] is None
    back = CalibrationReport.from_json(text)
    assert back == report and back.data is None
    assert CalibrationReport.from_dict(report.to_dict()) == report
    d["version"] = 99
    with pytest.raises(FileFormatError, match="version"):
        CalibrationReport.from_dict(d)
    with pytest.raises(FileFormatError):
        CalibrationReport.from_json("{}")
    with pytest.raises(FileFormatError):
        CalibrationReport.from_json("not json")


def test_markdown_has_a_table_per_target_with_units():
    pred, ref = make_case(12)
    md = evaluate(pred, ref).to_markdown()
    titles = (
        "## Energy (total, per structure) (eV)",
        "## Energy per atom (eV/atom)",
        "## Forces (per Cartesian component) (eV/Å)",
        "## Forces (per-atom norm) (eV/Å)",
    )
    for title in titles:
        assert title in md
    assert md.count("| metric | value | unit | ideal | description |") == 4
    assert "| rmse |" in md and "| coverage_95 |" in md and "| miscalibration_area |" in md
    row = next(line for line in md.splitlines() if line.startswith("| crps |"))
    assert "eV" in row
    for line in md.splitlines():  # every table row has 5 cells (pipes escaped)
        if line.startswith("| ") and not line.startswith("| metric"):
            assert line.replace("\\|", "").count("|") == 6, line


def test_keep_data_false_drops_arrays():
    pred, ref = make_case(12)
    report = evaluate(pred, ref, keep_data=False)
    assert report.data is None
    assert report == evaluate(pred, ref)


# ------------------------------------------------------------ extxyz
def test_load_prediction_roundtrips_written_file(tmp_path):
    pred, ref = make_case(10, members=True)
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    back, back_ref = load_prediction(path)
    for name in ("energy", "energy_std", "forces", "forces_std", "energy_members"):
        np.testing.assert_allclose(getattr(back, name), getattr(pred, name), rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(back.n_atoms, pred.n_atoms)
    np.testing.assert_array_equal(back.batch, pred.batch)
    np.testing.assert_allclose(back_ref.energies, ref.energies)
    np.testing.assert_allclose(back_ref.forces, ref.forces, atol=1e-8)
    expected = evaluate(pred, ref)["forces"]
    assert evaluate(back, back_ref)["forces"] == pytest.approx(expected, rel=1e-5)


def test_load_prediction_with_separate_reference(tmp_path):
    pred, ref = make_case(8)
    bare = mdata.AtomsDataset([ase.Atoms(a.numbers, a.positions) for a in ref])
    bare.write(tmp_path / "pred.extxyz", pred)
    ref.write(tmp_path / "ref.extxyz")
    with pytest.raises(ValueError, match="reference energ"):
        load_prediction(tmp_path / "pred.extxyz")
    back, back_ref = load_prediction(tmp_path / "pred.extxyz", tmp_path / "ref.extxyz")
    np.testing.assert_allclose(back_ref.forces, ref.forces, atol=1e-8)
    shuffled = mdata.AtomsDataset(list(ref)[::-1])
    with pytest.raises(ValueError, match="structure 0"):
        load_prediction(tmp_path / "pred.extxyz", shuffled)
    with pytest.raises(ValueError, match="structures"):
        load_prediction(tmp_path / "pred.extxyz", ref[:3])


def test_load_prediction_rejects_files_without_predictions(tmp_path):
    _, ref = make_case(3)
    ref.write(tmp_path / "plain.extxyz")
    with pytest.raises(ValueError, match="mlipuq_energy"):
        load_prediction(tmp_path / "plain.extxyz")
    with pytest.raises(FileNotFoundError):
        load_prediction(tmp_path / "missing.extxyz")
