"""report.html of `mlipuq evaluate`: self-contained, names its inputs, compares
several predictions, and shows its figures in a real browser (headless Chromium)."""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest

from conftest import synthetic_prediction
from mlipuq.calibration import cli, evaluate, html

matplotlib.use("Agg")

#: Browser binaries tried, in order (Debian: the `chromium` package installs
#: /usr/bin/chromium, `chromium-headless-shell` /usr/bin/chromium-headless-shell).
CHROMIUM = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")


def parse(argv):
    parser = argparse.ArgumentParser(prog="mlipuq")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(page):
    parser = Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Two prediction files of the same 12 structures compared as LLPR and Shallow."""
    root = tmp_path_factory.mktemp("cmp")
    cases = {}
    for name, miscal in (("a.extxyz", 2.0), ("b.extxyz", 1.0)):
        pred, ref = synthetic_prediction(12, 5, miscal=miscal)
        ref.write(root / name, pred)
        cases[name] = (pred, ref)
    out = root / "report"
    argv = ["evaluate", str(root / "a.extxyz"), str(root / "b.extxyz"), "--labels", "LLPR",
            "Shallow", "--out", str(out), "--max-points", "100", "--dpi", "60"]
    assert cli.run(parse(argv)) == 0
    return out, cases


def assert_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    low = page.lower()
    for bad in ('src="http', "src='http", "<link", "<script", "@import", "url(", "<iframe"):
        assert bad not in low, bad
    images = 0
    for tag, attrs in tags(page):
        assert "href" not in attrs or attrs["href"].startswith("#"), (tag, attrs)
        if "src" in attrs:
            assert tag == "img" and attrs["src"].startswith("data:image/png;base64,")
            data = base64.b64decode(attrs["src"].split(",", 1)[1])
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            images += 1
    return images


def metric_rows(page):
    """``{target: number of prediction rows}`` of the side-by-side tables."""
    found = re.findall(r'<table class="metrics" data-target="(\w+)">(.*?)</table>', page, re.S)
    return {target: body.count('<tr class="prediction">') for target, body in found}


def test_comparison_layout_and_json(comparison):
    out, cases = comparison
    assert sorted(str(p) for p in out.rglob("*") if p.is_file()) == sorted(
        cli.output_files(str(out), labels=["LLPR", "Shallow"]))
    combined = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert combined["format"] == "mlipuq-calibration-comparison" and combined["version"] == 1
    assert combined["labels"] == ["LLPR", "Shallow"]
    for label, name in (("LLPR", "a.extxyz"), ("Shallow", "b.extxyz")):
        own = json.loads((out / label / "report.json").read_text(encoding="utf-8"))
        assert own == combined["reports"][label]
        expected = evaluate(*cases[name])
        assert own["metrics"]["forces"] == pytest.approx(expected["forces"], rel=1e-5, abs=1e-9)
        assert own["settings"]["label"] == label
        assert own["settings"]["inputs"]["prediction_file"].endswith(name)
        assert own["settings"]["inputs"]["reference_file"] is None
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Calibration comparison")
    assert re.search(r"^\| LLPR \|", md, re.M) and re.search(r"^\| Shallow \|", md, re.M)
    assert "a.extxyz" in (out / "LLPR" / "report.md").read_text(encoding="utf-8")


def test_html_is_self_contained_and_names_its_inputs(comparison):
    out, _ = comparison
    page = (out / "report.html").read_text(encoding="utf-8")
    n_images = assert_self_contained(page)
    # 2 x 10 single plots and 4 overlaid comparisons (the summary figures are files only)
    assert n_images == 2 * len(cli.PLOTS) * len(cli.PLOT_TARGETS) + 4
    for text in ("LLPR", "Shallow", "a.extxyz", "b.extxyz", "Comparison", "calibration curves",
                 "Settings", "recalibration", "excluded as exact", "12 structures"):
        assert text in page, text
    rows = metric_rows(page)
    assert rows == {"energy": 2, "forces": 2}  # one row per prediction, per target
    all_tables = re.findall(r'<table class="all-metrics">(.*?)</table>', page, re.S)
    assert len(all_tables) == 4 and all("<th>LLPR</th><th>Shallow</th>" in t for t in all_tables)
    # the better calibrated prediction is marked best for the miscalibration area
    energy = re.search(r'data-target="energy">(.*?)</table>', page, re.S).group(1)
    shallow = energy.split('<tr class="prediction"><td>Shallow</td>')[1]
    assert shallow.count('class="num best"') >= 1


def test_single_prediction_page(tmp_path):
    pred, ref = synthetic_prediction(8, 1, miscal=1.5)
    ref.write(tmp_path / "test_set.extxyz", pred)
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "test_set.extxyz"), "--labels", "LLPR", "--out",
            str(out), "--no-plots"]
    assert cli.run(parse(argv)) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert assert_self_contained(page) == 0  # --no-plots: tables only
    assert "Calibration report: LLPR" in page and "test_set.extxyz" in page
    assert metric_rows(page) == {"energy": 1, "forces": 1}
    assert "LLPR — " in (out / "report.md").read_text(encoding="utf-8")


def test_render_escapes_and_validates(comparison):
    out, cases = comparison
    report = evaluate(*cases["a.extxyz"])
    report.settings["inputs"] = {"prediction_file": "<x>.extxyz", "reference_file": None,
                                 "recorded": {"mlipuq_wrapper": "sha256:abc"}}
    page = html.render({"<b>A&B</b>": report})
    assert "&lt;b&gt;A&amp;B&lt;/b&gt;" in page and "<b>A&B" not in page
    assert "&lt;x&gt;.extxyz" in page and "sha256:abc" in page
    with pytest.raises(ValueError, match="no reports"):
        html.render({})
    with pytest.raises(ValueError, match="not a PNG"):
        html.render({"A": report}, [{"png": b"GIF89a", "caption": "", "section": ""}])


# ------------------------------------------------------------ headless browser
def chromium():
    """Path of a Chromium binary (``MLIPUQ_CHROMIUM`` first), or None."""
    forced = os.environ.get("MLIPUQ_CHROMIUM")
    if forced:
        return shutil.which(forced) or (forced if os.access(forced, os.X_OK) else None)
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page_path, png_path, profile):
    binary = chromium()
    cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
           f"--screenshot={png_path}", "--window-size=1200,2000", page_path.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert os.path.exists(png_path), (done.returncode, done.stderr[-2000:])
    import matplotlib.image

    image = matplotlib.image.imread(png_path)[..., :3]
    return np.round(image * 255).astype(np.uint8)


def distinct_colours(pixels):
    return len(np.unique(pixels.reshape(-1, 3), axis=0))


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (Debian package: chromium)")
def test_browser_screenshot_shows_the_figures(comparison, tmp_path):
    out, _ = comparison
    page = (out / "report.html").read_text(encoding="utf-8")
    bare = tmp_path / "bare.html"  # the same page without its figures
    bare.write_text(re.sub(r"<img [^>]*>", "", page), encoding="utf-8")
    shot = screenshot(out / "report.html", tmp_path / "report.png", tmp_path / "profile1")
    empty = screenshot(bare, tmp_path / "bare.png", tmp_path / "profile2")
    assert shot.shape == empty.shape == (2000, 1200, 3)
    # the page rendered (tables and text), with and without figures
    assert distinct_colours(empty) > 10 and (empty < 128).any()
    differ = (shot != empty).any(axis=2)
    assert differ.mean() > 0.1, differ.mean()  # the figures fill a good part of the window
    rows = np.flatnonzero(differ.any(axis=1))
    top = rows[0]
    assert top < 1400  # the first figures are in view, not below the window
    # where the first row of figures is drawn: plots (many colours), not blank boxes
    region = shot[top:top + 300]
    assert distinct_colours(region) > 300
    assert distinct_colours(empty[top:top + 300]) < distinct_colours(region) / 5
    # coloured plot elements (calibration curves, hexbins), not just grey text
    rgb = region.astype(int)
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 80
    assert saturated.mean() > 0.005


def test_recorded_entries_and_file_names(tmp_path):
    from mlipuq.calibration.report import load_labelled

    pred, ref = synthetic_prediction(4, 2, miscal=1.0)
    for k, atoms in enumerate(ref):
        atoms.info["mlipuq_wrapper"] = "sha256:0123"  # the same in every frame: recorded
        atoms.info["mlipuq_step"] = k  # per frame: not
        atoms.info["mlipuq_note"] = f"frame {k}"  # differs: not
    ref.write(tmp_path / "p.extxyz", pred)
    ref.write(tmp_path / "r.extxyz")
    _, _, inputs = load_labelled(tmp_path / "p.extxyz", str(tmp_path / "r.extxyz"))
    assert inputs == {"prediction_file": str(tmp_path / "p.extxyz"),
                      "reference_file": str(tmp_path / "r.extxyz"),
                      "recorded": {"mlipuq_wrapper": "sha256:0123"}}
