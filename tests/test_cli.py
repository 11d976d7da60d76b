"""The ``mlipuq`` command line."""

from __future__ import annotations

import argparse
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
    assert model.cutoff == 3.0 and model.config()["width"] == 8
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


@pytest.mark.parametrize("fraction, message", [
    ("1.5", "--val-fraction must be between 0 and 1 (exclusive), got 1.5"),
    ("0", "--val-fraction must be between 0 and 1 (exclusive), got 0.0"),
    ("0.999", "leaves 0 for training"),
])
def test_train_names_a_bad_val_fraction(tiny_xyz, tmp_path, capsys, fraction, message):
    out = tmp_path / "model.pt"
    args = [a for a in SMALL if a not in ("--val-fraction", "0.25")]
    assert cli.main(["train", str(tiny_xyz), "--out", str(out), *args,
                     "--val-fraction", fraction]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and message in err
    assert not out.exists()


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
    assert cli.main(["train", str(tmp_path / "missing.xyz"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "no such file" in capsys.readouterr().err

    no_forces = tmp_path / "no_forces.xyz"
    frames = []
    for atoms in ethanol[:4]:
        a = ase.Atoms(atoms.symbols, positions=atoms.positions)
        a.info["energy"] = atoms.get_potential_energy()
        frames.append(a)
    ase.io.write(no_forces, frames, format="extxyz")
    out = tmp_path / "m.pt"
    assert cli.main(["train", str(no_forces), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error:") and "no reference forces" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert mlipuq.load(no_forces).has_reference.all()


def test_subpackages_reachable_from_the_top_level():
    code = ("import mlipuq; mlipuq.calibration.evaluate; mlipuq.active.select; "
            "mlipuq.propagation.run_md; mlipuq.datasets.emt; mlipuq.LastLayerLaplace; "
            "mlipuq.ShallowEnsemble; mlipuq.DeepEnsemble; mlipuq.EvidentialHead; mlipuq.Calculator")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------ one convention for every subcommand
def _prediction_file(tmp_path):
    from conftest import synthetic_prediction

    pred, ref = synthetic_prediction(6, seed=3)
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    return path


def _subcommand_argvs(tmp_path):
    missing = str(tmp_path / "missing.extxyz")
    return {
        "train": ["train", missing, "--out", str(tmp_path / "m.pt")],
        "evaluate": ["evaluate", missing, "--out", str(tmp_path / "report")],
        "select": ["select", "--strategy", "random", "--pool", missing, "-k", "1",
                   "--out", str(tmp_path / "sel.extxyz")],
        "select-model": ["select", "--model", str(tmp_path / "missing.pt"), "--pool", missing,
                         "-k", "1", "--out", str(tmp_path / "sel.extxyz")],
    }


@pytest.mark.parametrize("name", ["train", "evaluate", "select", "select-model"])
def test_user_error_is_one_line_and_exit_2_for_every_subcommand(tmp_path, capsys, name):
    argv = _subcommand_argvs(tmp_path)[name]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mlipuq: error: ") and captured.err.count("\n") == 1
    assert "missing" in captured.err and "Traceback" not in captured.err
    with pytest.raises((FileNotFoundError, ValueError)):
        cli.main(["--debug", *argv])
    assert not list(tmp_path.iterdir())  # nothing written


def test_multi_line_messages_are_joined_into_one_line(monkeypatch, capsys):
    def fail(args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli, "run_train", fail)
    assert cli.main(["train", "x.xyz", "--out", "y.pt"]) == 2
    assert capsys.readouterr().err == "mlipuq: error: first line second line\n"


def test_programming_errors_keep_their_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(cli, "run_train", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "x.xyz", "--out", "y.pt"])


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_train", interrupted)
    assert cli.main(["train", "x.xyz", "--out", "y.pt"]) == 130
    assert capsys.readouterr().err == "mlipuq: interrupted\n"


@pytest.mark.parametrize("name", ["demo", "train", "evaluate", "select"])
def test_every_writing_subcommand_has_overwrite_debug_and_shows_defaults(capsys, name):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in out and "--debug" in out
    assert "(default: " in out


def _subparsers(parser, path=("mlipuq",)):
    """(command path, parser) of every parser under ``parser``, itself first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_every_option_of_every_subcommand_is_described_with_its_default(monkeypatch):
    """No bare option anywhere: each has a help text, and a set default is shown."""
    monkeypatch.setenv("COLUMNS", "500")  # no line wrapping inside a default
    parsers = list(_subparsers(cli.build_parser()))
    assert len(parsers) >= 10  # demo, train, fit, predict, evaluate, select, md, check, ...
    for path, parser in parsers:
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            where = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{where}: no help"
        text = " ".join(parser.format_help().split())
        flags = (argparse._StoreTrueAction, argparse._StoreFalseAction)
        shown = [a for a in parser._actions if a.option_strings and not a.required
                 and a.default not in (None, False, argparse.SUPPRESS)
                 and not isinstance(a, flags)
                 and "%(default)" not in (a.help or "") and "default" not in (a.help or "")]
        for action in shown:
            assert f"(default: {action.default})" in text, (
                f"{' '.join(path)} {action.option_strings[0]}: default not shown")
        # a --no-x flag stores False: "(default: True)" after it would read as "on"
        assert "(default: True)" not in text, f"{' '.join(path)}: a flag shows its default"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 500)", "(default: 5.0)", "(default: energy)", "(default: 0.1)"):
        assert text in out


def test_evaluate_refuses_existing_report_unless_overwrite(tmp_path, capsys):
    pred = _prediction_file(tmp_path)
    out = tmp_path / "report"
    argv = ["evaluate", str(pred), "--out", str(out), "--no-plots"]
    assert cli.main(argv) == 0
    first = (out / "report.json").read_bytes()
    (out / "report.json").write_text("my edited report")
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and "report.json" in err and "--overwrite" in err
    assert (out / "report.json").read_text() == "my edited report"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "report.json").read_bytes() == first
    # an existing folder without reports is fine; a file in place of the folder is not
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["evaluate", str(pred), "--out", str(empty), "--no-plots"]) == 0
    (tmp_path / "afile").write_text("x")
    assert cli.main(["evaluate", str(pred), "--out", str(tmp_path / "afile"), "--no-plots"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_demo_refuses_existing_save_before_training(tmp_path, capsys):
    save = tmp_path / "demo.pt"
    save.write_bytes(b"precious")
    assert cli.main(["demo", "--save", str(save), "--structures", "4"]) == 2
    captured = capsys.readouterr()
    assert "exists" in captured.err and "--overwrite" in captured.err
    assert "building" not in captured.out  # refused before any work
    assert save.read_bytes() == b"precious"


@pytest.fixture
def pool_file(tmp_path, ethanol):
    path = tmp_path / "pool.extxyz"
    mlipuq.AtomsDataset([ase.Atoms(a.numbers, a.positions) for a in ethanol[:6]]).write(path)
    return path


def test_select_random_with_missing_model_fails(tmp_path, pool_file, capsys):
    out = tmp_path / "sel.extxyz"
    argv = ["select", "--strategy", "random", "--model", str(tmp_path / "missing.pt"),
            "--pool", str(pool_file), "-k", "2", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and "missing.pt" in err
    assert not out.exists()
    # a file that is not a saved wrapper is refused too
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    argv[4] = str(junk)
    assert cli.main(argv) == 2
    assert "junk.pt" in capsys.readouterr().err and not out.exists()


def test_select_random_without_model_and_model_strategies_need_one(tmp_path, pool_file, capsys):
    out = tmp_path / "sel.extxyz"
    argv = ["select", "--strategy", "random", "--pool", str(pool_file), "-k", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert len(ase.io.read(out, ":")) == 2
    capsys.readouterr()
    assert cli.main(argv) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert cli.main(["select", "--pool", str(pool_file), "-k", "2",
                     "--out", str(tmp_path / "other.extxyz")]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_version_and_threads_on_every_subcommand(capsys):
    import mlipuq

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlipuq {mlipuq.__version__}"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        assert any("--threads" in a.option_strings for a in subparser._actions), name
    with pytest.raises(SystemExit) as bad:  # argparse's usage error: status 2
        cli.main(["select", "--threads", "0", "--pool", "x", "-k", "1", "--out", "y"])
    assert bad.value.code == 2


def test_train_reports_test_errors_and_saves_the_split(tmp_path, capsys):
    import json

    import mlipuq
    from mlipuq.atoms_dataset import split_indices

    from conftest import ETHANOL_SMALL

    data = mlipuq.load(ETHANOL_SMALL)
    data[:12].write(tmp_path / "train.xyz")
    data[12:].write(tmp_path / "test.xyz")
    out = tmp_path / "m.pt"
    rc = cli.main(["train", str(tmp_path / "train.xyz"), "--out", str(out), "--epochs", "2",
                   "--features", "8", "--interactions", "1", "--val-fraction", "0.25",
                   "--test", str(tmp_path / "test.xyz")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test errors" in text and "8 structures" in text
    split = json.loads((tmp_path / "m.pt.split.json").read_text())
    expected = split_indices(12, [0.75, 0.25], 0)
    assert split["train"] == expected[0].tolist() and split["val"] == expected[1].tolist()
    assert sorted(split["train"] + split["val"]) == list(range(12))
