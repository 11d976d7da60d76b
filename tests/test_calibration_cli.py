"""The `mlipuq evaluate` subcommand, run through the parser it registers."""

import argparse
import json

import ase
import matplotlib
import pytest

import mlipuq.data as mdata
from conftest import synthetic_prediction
from mlipuq.calibration import cli, evaluate

matplotlib.use("Agg")


def parse(argv):
    parser = argparse.ArgumentParser(prog="mlipuq")
    subparsers = parser.add_subparsers(dest="command")
    cli.add_parser(subparsers)
    return parser.parse_args(argv)


def make_case(n_structures=25, seed=0):
    return synthetic_prediction(n_structures, seed, miscal=2.0)


def test_parser_registers_evaluate():
    args = parse(["evaluate", "pred.extxyz", "--out", "dir"])
    assert args.command == "evaluate" and args.func is cli.run
    assert args.prediction == "pred.extxyz" and args.reference is None and args.out == "dir"
    assert args.num_bins == 100 and args.ence_bins == 10 and not args.no_plots
    with pytest.raises(SystemExit):
        parse(["evaluate", "pred.extxyz"])  # --out is required


def test_evaluate_writes_reports_and_pngs(tmp_path, capsys):
    pred, ref = make_case()
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    out = tmp_path / "out"
    args = parse(["evaluate", str(path), "--out", str(out), "--max-points", "200"])
    assert args.func(args) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    expected = evaluate(pred, ref)
    for target in ("energy", "energy_per_atom", "forces", "forces_norm"):
        assert report["metrics"][target] == pytest.approx(expected[target], rel=1e-5, abs=1e-9)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Calibration report") and "(eV/Å)" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "summary.png" in pngs and len(pngs) == 1 + len(cli.PLOTS) * len(cli.PLOT_TARGETS)
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 13 files" in capsys.readouterr().out


def test_evaluate_with_separate_reference_and_no_plots(tmp_path):
    pred, ref = make_case(12, seed=1)
    bare = mdata.AtomsDataset([ase.Atoms(a.numbers, a.positions) for a in ref])
    bare.write(tmp_path / "pred.extxyz", pred)
    ref.write(tmp_path / "ref.extxyz")
    out = tmp_path / "out"
    args = parse(["evaluate", str(tmp_path / "pred.extxyz"), "--reference",
                  str(tmp_path / "ref.extxyz"), "--out", str(out), "--no-plots",
                  "--ence-bins", "5"])
    assert cli.run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["num_bins_ence"] == 5
    assert len(report["binned"]["energy"]["rmse"]) == 5


def test_evaluate_reports_bad_input_and_returns_2(tmp_path, capsys):
    from mlipuq import cli as main_cli

    pred, ref = make_case(5, seed=2)
    bare = mdata.AtomsDataset([ase.Atoms(a.numbers, a.positions) for a in ref])
    bare.write(tmp_path / "pred.extxyz", pred)
    argv = ["evaluate", str(tmp_path / "pred.extxyz"), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="reference energ"):
        cli.run(parse(argv))  # the subcommand raises; mlipuq.cli.main reports
    assert main_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error:") and "reference energ" in err
    assert not (tmp_path / "out").exists()
    argv = ["evaluate", str(tmp_path / "missing.extxyz"), "--out", str(tmp_path / "out")]
    assert main_cli.main(argv) == 2
    assert "no such file" in capsys.readouterr().err
