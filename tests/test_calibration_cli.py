"""The `mlipuq evaluate` subcommand, run through the parser it registers."""

import argparse
import json

import ase
import matplotlib
import pytest

import mlipuq.data as mdata
from conftest import synthetic_prediction
from mlipuq.calibration import cli, evaluate, plots

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
    assert args.prediction == ["pred.extxyz"] and args.reference is None and args.out == "dir"
    assert args.num_bins == 100 and args.ence_bins == 10 and not args.no_plots
    assert args.labels is None and args.format == "png" and args.dpi == 150
    assert args.max_points == 2000 and args.threads is None
    args = parse(["evaluate", "a.extxyz", "b.extxyz", "--labels", "LLPR", "Shallow", "--out",
                  "dir", "--format", "png,pdf,svg", "--dpi", "300", "--threads", "2"])
    assert args.prediction == ["a.extxyz", "b.extxyz"] and args.labels == ["LLPR", "Shallow"]
    assert cli.parse_formats(args.format) == ("png", "pdf", "svg") and args.threads == 2
    with pytest.raises(SystemExit):
        parse(["evaluate", "pred.extxyz"])  # --out is required


def test_evaluate_writes_reports_and_pngs(tmp_path, capsys):
    pred, ref = make_case()
    path = tmp_path / "pred.extxyz"
    ref.write(path, pred)
    out = tmp_path / "out"
    args = parse(["evaluate", str(path), "--out", str(out), "--max-points", "200",
                  "--dpi", "80"])
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
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(str(p) for p in out.iterdir()) == sorted(cli.output_files(str(out)))
    from PIL import Image

    width, _ = Image.open(out / "parity_forces.png").size
    assert width == round(80 * plots.COLUMN_WIDTH)  # one column wide at --dpi
    assert "wrote 14 files" in capsys.readouterr().out  # 13 before report.html


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
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
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


def written_case(tmp_path, n_structures=12, seed=3, name="pred.extxyz"):
    pred, ref = make_case(n_structures, seed=seed)
    path = tmp_path / name
    ref.write(path, pred)
    return path


def test_formats_and_dpi_produce_the_files(tmp_path):
    path = written_case(tmp_path)
    out = tmp_path / "out"
    args = parse(["evaluate", str(path), "--out", str(out), "--format", "svg, PDF"])
    assert cli.run(args) == 0
    for stem in ["summary"] + [f"{p}_{t}" for t in cli.PLOT_TARGETS for p in cli.PLOTS]:
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    assert not list(out.glob("*.png"))
    assert sorted(str(p) for p in out.iterdir()) == sorted(
        cli.output_files(str(out), formats=("svg", "pdf")))
    # the page embeds PNGs all the same
    assert "data:image/png;base64," in (out / "report.html").read_text(encoding="utf-8")
    for bad, match in ((["--format", "jpg"], "--format"), (["--format", ","], "--format"),
                       (["--dpi", "0"], "--dpi"), (["--threads", "0"], "--threads"),
                       (["--max-points", "0"], "--max-points")):
        with pytest.raises(ValueError, match=match):
            cli.run(parse(["evaluate", str(path), "--out", str(tmp_path / "bad")] + bad))
    assert not (tmp_path / "bad").exists()


def test_existing_outputs_are_refused_without_overwrite(tmp_path):
    path = written_case(tmp_path)
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    argv = ["evaluate", str(path), "--out", str(out), "--no-plots"]
    assert cli.run(parse(argv)) == 0
    before = (out / "report.json").read_text(encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        cli.run(parse(argv))
    # refused before reading anything: a missing prediction is not even looked at
    with pytest.raises(FileExistsError, match="report.json"):
        cli.run(parse(["evaluate", str(tmp_path / "missing.extxyz"), "--out", str(out),
                       "--no-plots"]))
    for name in ("report.json", "report.md", "report.html"):
        (out / name).unlink()
    (out / "report.html").symlink_to(tmp_path / "nowhere")  # a dangling link counts too
    with pytest.raises(FileExistsError, match="report.html"):
        cli.run(parse(argv))
    assert not (out / "report.json").exists()
    assert cli.run(parse(argv + ["--overwrite"])) == 0
    assert (out / "report.json").read_text(encoding="utf-8") == before
    # the link itself is replaced, never written through
    assert not (out / "report.html").is_symlink() and not (tmp_path / "nowhere").exists()
    # a comparison refuses a file in a label's folder
    other = written_case(tmp_path, seed=4, name="other.extxyz")
    cmp_out = tmp_path / "cmp"
    (cmp_out / "B").mkdir(parents=True)
    (cmp_out / "B" / "report.md").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="report.md"):
        cli.run(parse(["evaluate", str(path), str(other), "--labels", "A", "B", "--out",
                       str(cmp_out), "--no-plots"]))
    assert (cmp_out / "B" / "report.md").read_text(encoding="utf-8") == "mine"
    file_out = tmp_path / "file"
    file_out.write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not a folder"):
        cli.run(parse(["evaluate", str(path), "--out", str(file_out)]))


def test_threads_sets_torch_threads(tmp_path):
    import torch

    path = written_case(tmp_path, 6)
    before = torch.get_num_threads()
    try:
        assert cli.run(parse(["evaluate", str(path), "--out", str(tmp_path / "o"), "--no-plots",
                              "--threads", "2"])) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_labels_are_checked(tmp_path):
    a = written_case(tmp_path, 6, name="a.extxyz")
    (tmp_path / "x").mkdir()
    b = written_case(tmp_path / "x", 6, name="a.extxyz")
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match="--labels gives 1 names for 2"):
        cli.run(parse(["evaluate", str(a), str(b), "--labels", "A", "--out", out]))
    with pytest.raises(ValueError, match="not distinct.*--labels"):
        cli.run(parse(["evaluate", str(a), str(b), "--out", out]))  # two stems "a"
    with pytest.raises(ValueError, match="not distinct"):
        cli.run(parse(["evaluate", str(a), str(b), "--labels", "x y", "x/y", "--out", out]))
    with pytest.raises(ValueError, match="like a report file"):
        cli.run(parse(["evaluate", str(a), str(b), "--labels", "A", "report.html", "--out", out]))
    assert cli.folder_name("LLPR (cal.)") == "LLPR_cal" and cli.folder_name("../..") == "prediction"
