"""``mlipuq demo`` from the packaged pretrained models, the pretrained files, the
per-batch time budget of ``mlipuq.train`` and the per-atom prediction columns."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shutil
import time
import warnings

import ase.io
import numpy as np
import pytest
from ase.data import atomic_numbers

import mlipuq
from mlipuq import cli, demo, pretrained, schema
from mlipuq.calibration import CalibrationReport
from mlipuq.errors import FileFormatError
from mlipuq.prediction import read_prediction
from mlipuq.training import TimeBudgetWarning, errors

pytestmark = pytest.mark.filterwarnings("ignore::mlipuq.training.UndeterminedReferenceWarning")

WRAPPERS = {"LastLayerLaplace": "llpr", "ShallowEnsemble (8 heads)": "shallow_ensemble",
            "EvidentialHead": "evidential", "DeepEnsemble (3)": "deep_ensemble"}


@pytest.fixture(scope="module")
def emt_cache(tmp_path_factory):
    """One EMT cache for the module: the demo's 200 structures are generated once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLIPUQ_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _table(stdout: str) -> dict:
    rows = {}
    for line in stdout.splitlines():
        for name in WRAPPERS:
            if line.strip().startswith(name):
                rows[name] = line.split()[-5:]
    return rows


def _ci_demo(folder: pathlib.Path) -> tuple[int, str, str, pathlib.Path]:
    """The README's main job as ``.ci/run`` runs it beside the tests (``mlipuq demo`` in
    ``folder``, its output in ``stdout.txt``/``stderr.txt``, its exit status in ``rc``
    once it ends): waits for it, then (rc, stdout, stderr, out folder)."""
    deadline = time.monotonic() + 1800
    while not (folder / "rc").exists():
        if time.monotonic() > deadline:
            pytest.fail(f"`mlipuq demo` in {folder} did not end within 30 minutes")
        time.sleep(1)
    rc = int((folder / "rc").read_text())
    return (rc, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text(),
            folder / "mlipuq-demo")


@pytest.fixture(scope="module")
def demo_run(emt_cache, tmp_path_factory):
    """The default demo (pretrained models), into a fresh folder: the one ``.ci/run``
    runs as the README's main job where it says so (``MLIPUQ_TEST_DEMO_RUN``, as the
    PostgreSQL URL), otherwise its own."""
    if os.environ.get("MLIPUQ_TEST_DEMO_RUN"):
        return _ci_demo(pathlib.Path(os.environ["MLIPUQ_TEST_DEMO_RUN"]))
    out = tmp_path_factory.mktemp("demo") / "mlipuq-demo"
    rc, stdout, stderr = _main(["demo", "--out", str(out), "--no-progress"])
    return rc, stdout, stderr, out


# ------------------------------------------------------------------- the demo
def test_demo_runs_from_the_pretrained_models_and_writes_the_reports(demo_run):
    rc, stdout, stderr, out = demo_run
    assert rc == 0, stderr
    assert "pretrained MiniMLIP cu_emt_0" in stdout and "forces MAE" in stdout
    rows = _table(stdout)
    assert list(rows) == list(WRAPPERS)
    for name, values in rows.items():
        values = [float(v) for v in values]
        assert all(np.isfinite(values)), name
        assert 0.0 <= values[4] <= 1.0  # a coverage
    for top in ("report.html", "report.json", "report.md", "summary.md", "summary.json"):
        assert (out / top).stat().st_size > 0, top
    assert json.loads((out / "report.json").read_text())["labels"] == list(WRAPPERS)
    assert "<html" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "pretrained"
    test_set = demo.system_data()[2]
    for name, folder in WRAPPERS.items():
        sub = out / folder
        report = CalibrationReport.from_json((sub / "report.json").read_text())
        assert report.n_structures == len(test_set)
        assert summary["wrappers"][name]["table"]["forces nll"] == pytest.approx(
            report.metrics["forces"]["nll"])
        assert "# Calibration report" in (sub / "report.md").read_text()
        assert (sub / "summary.png").read_bytes()[:4] == b"\x89PNG"
        frames = ase.io.read(sub / "predictions.extxyz", ":")
        assert len(frames) == len(test_set)
        for frame in frames:
            std = frame.arrays[schema.FORCES_STD]
            np.testing.assert_allclose(frame.arrays[schema.FORCES_STD_NORM],
                                       np.sqrt((std**2).sum(axis=1)), rtol=1e-6, atol=1e-7)
            # local energy variances: every wrapper here but the evidential head
            assert (schema.ATOM_ENERGY_STD in frame.arrays) == (folder != "evidential")


@pytest.mark.slow  # a second whole demo (~75 s on one core): out of the CI budget
def test_demo_table_is_the_same_on_every_run(demo_run, tmp_path):
    """Pretrained models and fixed epoch counts: nothing depends on time or load."""
    _, stdout, _, first = demo_run
    out = tmp_path / "again"
    rc, again, stderr = _main(["demo", "--out", str(out), "--no-progress", "--no-plots"])
    assert rc == 0, stderr
    assert _table(again) == _table(stdout)
    for name in ("summary.json", "report.json", "llpr/report.json",
                 "deep_ensemble/report.json", "shallow_ensemble/predictions.extxyz"):
        assert (out / name).read_bytes() == (first / name).read_bytes(), name


def test_demo_refuses_an_existing_folder_before_any_work(emt_cache, tmp_path):
    out = tmp_path / "mlipuq-demo"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    rc, stdout, stderr = _main(["demo", "--out", str(out)])
    assert rc == 2
    assert "exists" in stderr and "--overwrite" in stderr and stderr.count("\n") == 1
    assert "1/4" not in stdout
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, stderr = _main(["demo", "--out", str(afile), "--overwrite"])
    assert rc == 2 and "not a folder" in stderr


def test_demo_needs_train_for_more_members_than_shipped(tmp_path):
    rc, _, stderr = _main(["demo", "--members", "4", "--out", str(tmp_path / "d")])
    assert rc == 2 and "--train" in stderr
    assert not (tmp_path / "d").exists()


def test_demo_train_mode_trains_from_scratch(emt_cache, tmp_path):
    """--train (or any training option) trains as the demo did before the pretrained models:
    the main job shrunk, built-in data, training, every wrapper calibrated and scored."""
    out, model_path = tmp_path / "trained", tmp_path / "demo.pt"
    rc, stdout, stderr = _main(["demo", "--structures", "24", "--epochs", "2", "--members", "2",
                                "--max-time", "4", "--save", str(model_path),
                                "--out", str(out), "--no-plots", "--no-progress"])
    assert rc == 0, stderr
    assert "training the built-in MLIP" in stdout and "epochs in" in stdout
    for name in ("LastLayerLaplace", "ShallowEnsemble", "EvidentialHead", "DeepEnsemble (2)"):
        line = next(line for line in stdout.splitlines() if line.strip().startswith(name))
        values = [float(v) for v in line.split()[-5:]]
        assert all(np.isfinite(values)), line
        assert 0.0 <= values[4] <= 1.0  # a coverage
    assert json.loads((out / "summary.json").read_text())["mode"] == "train"
    assert mlipuq.models.load(model_path).species == [29]


# ------------------------------------------------------------ pretrained files
@pytest.mark.parametrize("name", sorted(demo.manifest()["models"]))
def test_pretrained_model_reproduces_its_recorded_test_errors(emt_cache, name):
    info = demo.manifest()
    entry = info["models"][name]
    assert entry["bytes"] < 200_000  # small package data
    assert entry["training"]["max_time"] is None  # epochs, not a time budget
    model = demo.load_pretrained(name)
    assert isinstance(model, mlipuq.models.MiniMLIP)
    assert model.species == sorted(atomic_numbers[s] for s in entry["model"]["species"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", demo.DataMismatchWarning)  # the recorded data
        _, _, test_set = demo.system_data(entry["system"])
    found = errors(model, test_set)
    for key, value in entry["test_errors"].items():
        assert found[key] == pytest.approx(value, rel=1e-6), key


def test_packaged_pretrained_files_add_up_to_a_few_hundred_kb():
    info = demo.manifest()
    assert sum(entry["bytes"] for entry in info["models"].values()) < 600_000
    assert len(info["systems"][demo.DEMO_SYSTEM]["members"]) == 3
    for name, entry in info["models"].items():
        assert entry["sha256"] == pretrained._sha256(demo.pretrained_path(name))


def test_load_pretrained_refuses_a_changed_file(tmp_path, monkeypatch):
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained._folder(), folder)
    path = folder / demo.manifest()["models"]["cu_emt_0"]["file"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "_folder", lambda: folder)  # where demo reads it
    with pytest.raises(FileFormatError, match="SHA-256"):
        demo.load_pretrained("cu_emt_0")
    with pytest.raises(ValueError, match="no pretrained model"):
        demo.load_pretrained("nothing")


# ------------------------------------------------------------ time budgets
def _tiny(species):
    from mlipuq.models import MiniMLIP

    return MiniMLIP(species, cutoff=4.0, width=8, n_interactions=1, n_rbf=4,
                    n_readout_features=8, seed=0)


def test_time_budget_stops_within_one_batch_and_warns(ethanol):
    model = _tiny(ethanol.species)
    with pytest.warns(TimeBudgetWarning, match=r"max_time=1e-06 s\) after 0 of 50 epochs and "
                                               r"1 of the 8 batches"):
        history = mlipuq.train(model, ethanol[:16], ethanol[16:], epochs=50, batch_size=2,
                               max_time=1e-6, progress=False)
    assert history.stopped_by_time and not history.stopped_early
    assert len(history) == 1
    row = history.epochs[0]
    assert row["partial"] and row["batches"] == 1
    assert np.isfinite(row["val_loss"]) and history.best_epoch == 0  # its weights are kept


def test_budget_warning_points_at_the_users_call(ethanol):
    """Through ``DeepEnsemble.train`` (mlipuq calling mlipuq.train) the warning still
    names this file's line (it named one inside mlipuq until 2026-12-05)."""
    from mlipuq.uq import DeepEnsemble

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DeepEnsemble.train(lambda s: _tiny(ethanol.species), ethanol[:8], ethanol[16:],
                           n_members=2, epochs=5, batch_size=4, max_time=1e-6,
                           progress=False)
    budget = [w for w in caught if issubclass(w.category, TimeBudgetWarning)]
    assert len(budget) == 2 and {w.filename for w in budget} == {__file__}


def test_no_budget_warning_when_the_epochs_end_first(ethanol):
    model = _tiny(ethanol.species)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeBudgetWarning)
        history = mlipuq.train(model, ethanol[:8], ethanol[16:], epochs=2, batch_size=4,
                               max_time=1e6, progress=False)
    assert len(history) == 2 and not history.stopped_by_time
    assert "partial" not in history.epochs[-1]


def test_budget_warning_reaches_the_train_command(ethanol, tmp_path):
    data = tmp_path / "data.xyz"
    ethanol[:12].write(data)
    with pytest.warns(TimeBudgetWarning, match="max_time"):
        rc, stdout, stderr = _main(["train", str(data), "--out", str(tmp_path / "m.pt"),
                                    "--epochs", "50", "--max-time", "1e-6", "--features", "8",
                                    "--interactions", "1", "--batch-size", "2"])
    assert rc == 0, stderr
    assert "1 epochs in" in stdout


# ------------------------------------------------------------ per-atom columns
def _with_atom_variances(pred):
    rng = np.random.default_rng(1)
    return dataclasses.replace(pred, atom_energy_var=rng.uniform(1e-4, 1e-2, len(pred.batch)))


def test_prediction_files_carry_per_atom_columns(tmp_path):
    from conftest import synthetic_prediction

    pred, ref = synthetic_prediction(5, seed=2)
    pred = _with_atom_variances(pred)
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    frames = ase.io.read(path, ":")
    norm = np.concatenate([f.arrays[schema.FORCES_STD_NORM] for f in frames])
    atom_std = np.concatenate([f.arrays[schema.ATOM_ENERGY_STD] for f in frames])
    np.testing.assert_allclose(norm, np.sqrt(pred.forces_var.sum(axis=1)), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(atom_std, np.sqrt(pred.atom_energy_var), rtol=1e-6, atol=1e-8)
    for k in range(pred.n_structures):  # the in-memory columns are exactly the values
        _, arrays = pred.columns(k)
        one = pred.structure(k)
        np.testing.assert_array_equal(arrays[schema.FORCES_STD_NORM],
                                      np.sqrt(one.forces_var.sum(axis=1)))
        np.testing.assert_array_equal(arrays[schema.ATOM_ENERGY_STD],
                                      np.sqrt(one.atom_energy_var))
    again, _ = read_prediction(path)
    np.testing.assert_allclose(again.atom_energy_var, pred.atom_energy_var, rtol=1e-5, atol=1e-12)


def test_prediction_without_local_variances_and_old_files(tmp_path):
    from conftest import synthetic_prediction

    pred, ref = synthetic_prediction(4, seed=3)
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    frames = ase.io.read(path, ":")
    assert all(schema.ATOM_ENERGY_STD not in f.arrays for f in frames)
    assert all(schema.FORCES_STD_NORM in f.arrays for f in frames)
    # a file written before the per-atom columns existed reads as before
    for f in frames:
        del f.arrays[schema.FORCES_STD_NORM]
    old = tmp_path / "old.extxyz"
    ase.io.write(old, frames, format="extxyz")
    again, _ = read_prediction(old)
    assert again.atom_energy_var is None
    np.testing.assert_allclose(again.forces_var, pred.forces_var, rtol=1e-5, atol=1e-12)


def test_malformed_local_energy_std_is_named(tmp_path):
    from conftest import synthetic_prediction

    pred, ref = synthetic_prediction(3, seed=4)
    pred = _with_atom_variances(pred)
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    frames = ase.io.read(path, ":")
    frames[1].arrays[schema.ATOM_ENERGY_STD][0] = -1.0
    bad = tmp_path / "bad.extxyz"
    ase.io.write(bad, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"frame 1.*mlipuq_atom_energy_std"):
        read_prediction(bad)


def test_wrapper_predictions_fill_the_local_energy_column(ethanol, tmp_path):
    """LLPR fills ``atom_energy_var``; its file column is the square root of it."""
    from mlipuq.uq import LastLayerLaplace

    model = _tiny(ethanol.species)
    mlipuq.train(model, ethanol[:14], epochs=2, batch_size=7, progress=False)
    pred = LastLayerLaplace(model).fit(ethanol[:14]).predict(ethanol[14:])
    assert pred.atom_energy_var is not None
    path = tmp_path / "llpr.extxyz"
    ethanol[14:].write(path, pred)
    frames = ase.io.read(path, ":")
    np.testing.assert_allclose(
        np.concatenate([f.arrays[schema.ATOM_ENERGY_STD] for f in frames]),
        np.sqrt(pred.atom_energy_var), rtol=1e-6, atol=1e-8)


def _rebuilt_with_energy_shift(monkeypatch, shift):
    """``build_data`` (of :mod:`mlipuq.pretrained`, where ``demo.system_data`` calls it)
    with the first test structure's energy moved by ``shift`` eV."""
    real = demo.build_data

    def build(spec):
        splits = real(spec)
        atoms = splits[2][0]
        atoms.calc.results["energy"] = atoms.get_potential_energy() + shift
        return splits

    monkeypatch.setattr(pretrained, "build_data", build)


def test_system_data_takes_last_digit_differences_for_the_same_data(monkeypatch):
    # another processor rebuilds the EMT data with other last digits: other SHA-256s,
    # the same structures (energies within 1e-6 eV): no mismatch
    _rebuilt_with_energy_shift(monkeypatch, 1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", demo.DataMismatchWarning)
        _, _, test_set = demo.system_data("cu_emt")
    assert demo.dataset_fingerprint(test_set) != demo.manifest()["systems"]["cu_emt"][
        "data"]["fingerprints"]["test"]


def test_system_data_warns_when_a_structure_differs(monkeypatch):
    _rebuilt_with_energy_shift(monkeypatch, 1e-3)
    with pytest.warns(demo.DataMismatchWarning, match="cu_emt test data"):
        demo.system_data("cu_emt")
