"""The ``mlipuq`` command line."""

from __future__ import annotations

import subprocess
import sys

import ase
import ase.io
import numpy as np
import pytest

import mlipuq
from mlipuq import cli
from mlipuq.models import MiniMLIP, load

SMALL = ["--epochs", "2", "--features", "8", "--interactions", "1", "--cutoff", "3.0",
         "--batch-size", "4", "--val-fraction", "0.25", "--seed", "0"]


@pytest.fixture
def tiny_xyz(tmp_path, ethanol):
    path = tmp_path / "tiny.xyz"
    ethanol[:8].write(path)
    return path


def test_module_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "mlipuq.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: mlipuq" in result.stdout
    for command in ("demo", "train"):
        assert command in result.stdout


def test_main_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--epochs", "--overwrite", "--energy-key", "--atomic-energies"):
        assert option in out


def test_main_without_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "usage: mlipuq" in capsys.readouterr().out


def test_train_missing_required_out(tiny_xyz, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", str(tiny_xyz)])
    assert info.value.code != 0
    assert "--out" in capsys.readouterr().err


def test_train_saves_loadable_model_and_refuses_overwrite(tiny_xyz, tmp_path, capsys, ethanol):
    out = tmp_path / "model.pt"
    assert cli.main(["train", str(tiny_xyz), "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "model saved to" in printed and "energy MAE" in printed
    model = load(out)
    assert isinstance(model, MiniMLIP)
    assert model.species == [1, 6, 8]
    assert model.cutoff == 3.0 and model.config()["n_features"] == 8
    assert model.atomic_energies_set
    prediction = model.compute(ethanol[10:12])
    assert np.all(np.isfinite(prediction["energy"])) and np.all(np.isfinite(prediction["forces"]))
    saved = out.read_bytes()

    code = cli.main(["train", str(tiny_xyz), "--out", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code != 0
    assert "error" in captured.err and "exists" in captured.err and "overwrite" in captured.err
    assert out.read_bytes() == saved

    assert cli.main(["train", str(tiny_xyz), "--out", str(out), "--overwrite", *SMALL]) == 0
    assert isinstance(load(out), MiniMLIP)


def test_train_refuses_existing_out_before_training(tiny_xyz, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    assert cli.main(["train", str(tiny_xyz), "--out", str(out), *SMALL]) != 0
    captured = capsys.readouterr()
    assert "exists" in captured.err
    assert "epochs in" not in captured.out  # no training happened


def test_train_custom_keys_and_atomic_energies(tmp_path, ethanol, capsys):
    frames = []
    for atoms in ethanol[:8]:
        a = ase.Atoms(atoms.symbols, positions=atoms.positions)
        a.info["REF_energy"] = atoms.get_potential_energy()
        a.arrays["REF_forces"] = atoms.get_forces()
        frames.append(a)
    data = tmp_path / "custom.xyz"
    ase.io.write(data, frames, format="extxyz")
    isolated = []
    for symbol, energy in (("H", -13.5), ("C", -1025.25), ("O", -2035.5)):
        a = ase.Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        a.info["energy"] = energy
        isolated.append(a)
    e0 = tmp_path / "isolated.xyz"
    ase.io.write(e0, isolated, format="extxyz")
    out = tmp_path / "model.pt"
    args = ["train", str(data), "--out", str(out), "--energy-key", "REF_energy",
            "--forces-key", "REF_forces", "--atomic-energies", str(e0), *SMALL]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert load(out).atomic_energies == {1: -13.5, 6: -1025.25, 8: -2035.5}


def test_train_reports_bad_data(tmp_path, ethanol, capsys):
    assert cli.main(["train", str(tmp_path / "missing.xyz"), "--out", str(tmp_path / "m.pt")]) != 0
    assert "no such file" in capsys.readouterr().err

    no_forces = tmp_path / "no_forces.xyz"
    frames = []
    for atoms in ethanol[:4]:
        a = ase.Atoms(atoms.symbols, positions=atoms.positions)
        a.info["energy"] = atoms.get_potential_energy()
        frames.append(a)
    ase.io.write(no_forces, frames, format="extxyz")
    out = tmp_path / "m.pt"
    assert cli.main(["train", str(no_forces), "--out", str(out), *SMALL]) != 0
    err = capsys.readouterr().err
    assert "mlipuq train: error:" in err and "no reference forces" in err
    assert not out.exists()
    assert mlipuq.load(no_forces).has_reference.all()


def test_demo_runs_end_to_end_and_compares_every_wrapper(tmp_path, monkeypatch, capsys):
    """The main job, shrunk: built-in data, training, every wrapper calibrated and scored."""
    monkeypatch.setenv("MLIPUQ_CACHE", str(tmp_path / "cache"))
    model_path = tmp_path / "demo.pt"
    rc = cli.main(["demo", "--structures", "24", "--max-time", "4", "--epochs", "3", "--members", "2",
               "--no-progress", "--save", str(model_path)])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("LastLayerLaplace", "ShallowEnsemble", "EvidentialHead", "DeepEnsemble (2)"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        values = [float(v) for v in line.split()[-5:]]
        assert all(np.isfinite(values)), line
        assert 0.0 <= values[4] <= 1.0  # a coverage
    assert "forces MAE" in out
    assert mlipuq.models.load(model_path).species == [29]


def test_subpackages_reachable_from_the_top_level():
    code = ("import mlipuq; mlipuq.calibration.evaluate; mlipuq.active.select; "
            "mlipuq.propagation.run_md; mlipuq.datasets.emt; mlipuq.LastLayerLaplace; "
            "mlipuq.ShallowEnsemble; mlipuq.DeepEnsemble; mlipuq.EvidentialHead; mlipuq.Calculator")
    subprocess.run([sys.executable, "-c", code], check=True)
