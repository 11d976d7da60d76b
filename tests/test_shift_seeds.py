"""The fit-to-fit spread table (``benchmarks/shift_seeds.py``) reports each base model's
worst shift, marks exactly the misses and counts them; ``shift.py --base-seed`` refuses
the deep ensemble, whose members are the base models."""

from __future__ import annotations


import pytest

from conftest import benchmark_modules

@pytest.fixture(scope="module")
def benchmarks():
    return tuple(benchmark_modules("shift", "shift_seeds"))


def _row(seed, split, f_cov, e_cov, e_std=2.0, e_mae=1.0, wrapper="W", method="default"):
    return {"system": "ethanol", "wrapper": wrapper, "method": method, "split": split,
            "base_seed": seed, "force_cov95": f_cov, "energy_cov95": e_cov,
            "energy_std_per_atom": e_std, "energy_mae_per_atom": e_mae}


def test_each_base_models_worst_shift_and_the_tally(benchmarks):
    _, shift_seeds = benchmarks
    rows = [_row(0, "in distribution", 0.5, 0.5),  # in distribution: not a shift
            _row(0, "tail A", 0.95, 0.90), _row(0, "tail B", 0.91, 0.86, e_std=4.0),
            _row(1, "tail A", 0.89, 1.00), _row(1, "tail B", 0.99, 0.84),
            _row(1, "tail C", 0.93, 0.95, method="scalar")]  # another method: left out
    lines = shift_seeds.seed_table(rows).splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[1] == "W (seeds 0,1)"
    assert cells[2] == "0.910 / 0.890 ✗"
    assert cells[3] == "0.860 / 0.840 ✗"
    assert cells[4] == "3.0 / 2.0"  # mean over the shifts of std ÷ MAE
    assert lines[-1] == "| W | 1 of 2 | 1 of 2 |"


def test_seed_zero_is_compared_with_the_table(benchmarks):
    _, shift_seeds = benchmarks
    table = [{**_row(None, "tail A", 0.95, 0.90), "force_std": 0.1}]
    rows = [{**_row(0, "tail A", 0.95, 0.88, e_std=2.2), "force_std": 0.1}]
    text = shift_seeds.against_table(rows, table)
    assert "energy_cov95 0.02" in text and "energy_std_per_atom 0.1 (relative)" in text


@pytest.fixture
def refusal(benchmarks, capsys, monkeypatch, tmp_path):
    """What ``shift.py --parts ethanol OPTIONS`` says when it refuses to run. Run safely:
    the table's path is a temporary one and ``--from-json`` names no file, so that a run
    that is not refused fails at once instead of training and writing the table (one
    did, when a default changed under this test)."""
    shift, _ = benchmarks
    monkeypatch.setattr(shift, "TABLE_OUT", str(tmp_path / "shift.json"))

    def run(*options) -> str:
        with pytest.raises(SystemExit):
            shift.main(["--parts", "ethanol", "--from-json", str(tmp_path / "none.json"),
                        *options])
        return capsys.readouterr().err
    return run


def test_base_seed_refuses_the_deep_ensemble(refusal):
    assert "deep ensemble" in refusal("--base-seed", "1", "--wrappers", "DeepEnsemble")


def test_an_update_keeps_the_rows_of_other_base_models(benchmarks, tmp_path):
    """Each seed is its own run into one file: a rerun replaces its own base model's rows
    and keeps the others' (they once replaced each other)."""
    import argparse
    import json

    shift, _ = benchmarks
    out = tmp_path / "seeds.json"
    old = [_row(0, "tail A", 0.95, 0.90), _row(2, "tail A", 0.80, 0.90)]
    out.write_text(json.dumps({"args": {}, "rows": old, "runs": {
        "ethanol (W)": {}, "ethanol on base model 2 (W)": {}}}))
    args = argparse.Namespace(update=True, out=str(out), parts=["ethanol"], wrappers=None,
                              only=["W"], base_seed=2)
    rows, runs = shift.merged(args, [_row(2, "tail A", 0.85, 0.90)])
    assert sorted((r["base_seed"], r["force_cov95"]) for r in rows) == [(0, 0.95), (2, 0.85)]
    # base model 0's run stays as it was; base model 2's earlier run is marked so
    assert sorted(runs) == ["ethanol (W)", "ethanol on base model 2 (W)",
                            "ethanol on base model 2 (W) (earlier)"]
    # what was written by hand about the earlier runs survives the update; a new file has none
    assert shift.kept_notes(shift.previous_results(args)) == {}
    out.write_text(json.dumps({"args": {}, "rows": old, "notes": "stage 1 rerun"}))
    assert shift.kept_notes(shift.previous_results(args)) == {"notes": "stage 1 rerun"}
    assert shift.kept_notes(shift.previous_results(
        argparse.Namespace(update=False, out=str(out)))) == {}


def test_an_update_keeps_other_wrappers_run_records(benchmarks):
    """A run of one wrapper marks only its own earlier run of a part (and a whole-part
    run) as earlier, numbered past earlier ones; another wrapper's run of that part
    stays recorded as it was (it was once renamed, overwriting the earlier record)."""
    import argparse

    shift, _ = benchmarks
    old_runs = {"ethanol (V)": {"v": 1}, "ethanol (W)": {"w": 2},
                "ethanol (W) (earlier)": {"w": 1}, "ethanol": {"all": 0}, "acac (W)": {"a": 1}}
    args = argparse.Namespace(update=True, out="unused.json", parts=["ethanol"], wrappers=None,
                              only=["W"], base_seed=0)
    _, runs = shift.merged(args, [], {"rows": [], "runs": old_runs})
    assert runs == {"ethanol (V)": {"v": 1}, "ethanol (W) (earlier 2)": {"w": 2},
                    "ethanol (W) (earlier)": {"w": 1}, "ethanol (earlier)": {"all": 0},
                    "acac (W)": {"a": 1}, "ethanol (W)": vars(args)}


@pytest.mark.parametrize("option", [["--base-seed", "1"], ["--no-refit-references"]],
                         ids=["base seed", "unrefitted"])
def test_other_fits_stay_out_of_the_shift_table(refusal, option):
    """Rows on another base model, or on base models whose reference energies stay as
    fitted before training, never go into shift.json (base model 0, reference energies
    refitted: mlipuq.train's default since 2026-12-04)."""
    assert "own --out" in refusal(*option, "--wrappers", "LastLayerLaplace")


def test_refit_comparison_counts_fits_in_both(benchmarks):
    """Before → after per wrapper, over the fits present in both files: goal counts, the
    medians of the in-distribution energy MAE and std (meV/atom) and of the worst-shift
    energy coverage."""
    _, shift_seeds = benchmarks
    before = [_row(0, "in distribution", 0.97, 1.0, e_std=0.010, e_mae=0.008),
              _row(0, "tail A", 0.95, 0.90), _row(1, "in distribution", 0.97, 1.0,
                                                  e_std=0.020, e_mae=0.016),
              _row(1, "tail A", 0.92, 0.95), _row(2, "tail A", 0.50, 0.10)]  # not after
    after = [_row(0, "in distribution", 0.97, 1.0, e_std=0.002, e_mae=0.001),
             _row(0, "tail A", 0.95, 0.40), _row(1, "in distribution", 0.97, 1.0,
                                                 e_std=0.004, e_mae=0.003),
             _row(1, "tail A", 0.85, 0.86)]
    line = shift_seeds.refit_table(before, after).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["W", "2", "2 → 1", "2 → 1", "12.00 → 2.00", "15.00 → 3.00",
                     "0.925 → 0.630"]
