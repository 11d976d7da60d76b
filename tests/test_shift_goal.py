"""The shift benchmark's goal table marks exactly the cells that miss issue #20's goal."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "shift_goal.py"


@pytest.fixture(scope="module")
def shift_goal():
    spec = importlib.util.spec_from_file_location("shift_goal", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, split, f_cov=0.95, e_cov=0.95, miscal=0.01, f_nll=-1.0, e_nll=-2.0,
         f_std=0.05, bound=0.1):
    return {"system": "ethanol", "wrapper": "W", "method": method, "split": split,
            "force_cov95": f_cov, "energy_cov95": e_cov, "force_miscal": miscal,
            "force_nll": f_nll, "energy_nll": e_nll, "force_std": f_std,
            "force_std_bound_ratio": bound, "energy_std_bound_ratio": None}


def _cells(table):
    line = table.splitlines()[2]
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_wrapper_meeting_every_goal_has_no_mark(shift_goal):
    rows = [_row("default", "in distribution"), _row("default", "tail A", f_cov=0.90),
            _row("scalar", "in distribution", f_nll=-1.0, f_std=0.1),
            _row("scalar", "tail A")]
    table = shift_goal.goal_table(rows, ["ethanol"])
    assert "✗" not in table
    cells = _cells(table)
    assert cells[2] == "0.900 (tail A)"
    assert cells[7] == "50.00 (×0.50)"  # mean force std in meV/Å and against the scalar's


def test_each_miss_is_marked_where_it_is(shift_goal):
    rows = [_row("default", "in distribution", miscal=0.06, f_nll=-0.9985, bound=1.2),
            _row("default", "tail A", f_cov=0.897, e_cov=0.84),
            _row("default", "tail B", f_cov=0.99, e_cov=0.99),
            _row("scalar", "in distribution", f_nll=-1.0), _row("scalar", "tail A")]
    cells = _cells(shift_goal.goal_table(rows, ["ethanol"]))
    assert cells[2] == "0.897 ✗ (tail A)" and cells[3] == "0.840 ✗ (tail A)"
    assert cells[4] == "0.060 ✗"
    assert cells[5] == "-0.999 / -1.000 ✗"  # worse as printed: marked
    assert cells[6] == "-2.000 / -2.000"    # equal: not
    assert cells[8] == "1.20 ✗"


def test_a_wrapper_without_scalar_rows_is_left_out(shift_goal):
    rows = [_row("default", "in distribution"), _row("default", "tail A")]
    assert len(shift_goal.goal_table(rows, ["ethanol"]).splitlines()) == 2


def test_widening_table_takes_the_worst_shift_of_every_system(shift_goal):
    def row(system, method, split, f_cov, nll, std, mae=0.01):
        return {"system": system, "wrapper": "W", "method": method, "split": split,
                "force_cov95": f_cov, "energy_cov95": 0.99, "force_nll": nll,
                "force_std": std, "force_mae": mae}

    rows = [row("copper", "default", "in distribution", 0.5, 0.0, 0.01),  # never a shift
            row("copper", "default", "hot", 0.95, -2.0, 0.02),
            row("copper", "default", "cold", 0.91, -1.0, 0.04),
            row("alloy", "default", "surface", 0.70, -1.5, 0.01),
            row("copper", "default, widening 1", "hot", 0.99, 1.0, 0.2),
            row("copper", "default, widening 1", "cold", 0.97, 0.0, 0.1),
            row("alloy", "default, widening 1", "surface", 0.94, -0.5, 0.05)]
    line = shift_goal.widening_table(rows, ["copper", "alloy"], ["W"]).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "0.700 → 0.940"       # worst over both systems' shifts
    assert cells[3] == "-1.50 → 0.50"        # mean over Cu's shifts only
    assert cells[4] == "3.0 → 15.0"          # mean of std / MAE over Cu's shifts
    assert cells[6] == "1.0 → 5.0"


def _power_rows(cover_by_power, split="shift A", system="alloy", wrapper="W"):
    """Rows of shift_widening.py: force and energy coverage per power from a mapping."""
    return [{"system": system, "wrapper": wrapper, "split": split, "rule": "structure",
             "power": p, "force_cov95": c, "energy_cov95": c, "force_nll": 0.0,
             "energy_nll": 0.0, "force_std": 1.0, "force_mae": 1.0,
             "energy_std_per_atom": 1.0, "energy_mae_per_atom": 1.0}
            for p, c in cover_by_power.items()]


def test_choose_takes_the_smallest_power_meeting_the_goal_everywhere(shift_goal):
    rising = dict(zip(shift_goal.POWERS, (0.5, 0.7, 0.85, 0.91, 0.95, 0.97, 0.99)))
    easy = dict.fromkeys(shift_goal.POWERS, 0.99)
    rows = _power_rows(rising) + _power_rows(easy, split="shift B", system="copper")
    # forces: 0.90 first reached at 0.75; energies: 0.85 at 0.5 (the earlier default)
    assert shift_goal.choose(rows, "force", "W") == 0.75
    assert shift_goal.choose(rows, "energy", "W") == 0.5
    # never below the earlier default, even where p = 0 would do
    assert shift_goal.choose(_power_rows(easy), "force", "W") == 0.5
    assert shift_goal.choose(_power_rows(easy, wrapper="DeepEnsemble (3)"), "force",
                             "DeepEnsemble (3)") == 0.0
    # a shift that p = 1 leaves below the goal is not the widening's to fix: left out
    stuck = dict.fromkeys(shift_goal.POWERS, 0.80)
    assert shift_goal.choose(rows + _power_rows(stuck, split="shift C"), "force", "W") == 0.75
    # the in-distribution rows never count
    assert shift_goal.choose(rows + _power_rows(dict.fromkeys(shift_goal.POWERS, 0.0),
                                                split="in distribution"), "force", "W") == 0.75


def test_the_choice_on_six_systems_starts_from_the_powers_chosen_on_four(shift_goal):
    easy = dict.fromkeys(shift_goal.POWERS, 0.99)
    six = shift_goal.FOUR_SYSTEMS
    # where every shift is met already, each wrapper keeps what four systems chose
    for wrapper in shift_goal.WRAPPERS:
        rows = _power_rows(easy, wrapper=wrapper)
        assert shift_goal.choose(rows, "force", wrapper, earlier=six) == six["force"][wrapper]
        assert shift_goal.choose(rows, "energy", wrapper, earlier=six) == six["energy"][wrapper]
    # a new shift that needs more raises it to the smallest power that meets it
    rising = dict(zip(shift_goal.POWERS, (0.5, 0.6, 0.7, 0.8, 0.86, 0.9, 0.95)))
    rows = _power_rows(rising, wrapper="LatentDistance")
    assert shift_goal.choose(rows, "energy", "LatentDistance", earlier=six) == 1.0
    # each round counts only its own systems
    assert set(shift_goal.ROUNDS["four"][0]) < set(shift_goal.ROUNDS["six"][0])
    assert "platinum" not in shift_goal.ROUNDS["six"][0]


def test_the_powers_chosen_last_are_the_wrappers_defaults(shift_goal):
    """The powers the last round chose (the floors of the next) are each wrapper's
    widening powers as the code has them, a candidate's those of the wrapper it would
    replace; the earlier floors differ only where that round raised a power; the table
    marks a system a candidate was not scored on instead of failing."""
    from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                           ShallowEnsemble)

    nine, floors = shift_goal.NINE_SYSTEMS, shift_goal.FORCE_ROUNDS
    raised = {("energy", name) for name in nine["energy"] if name.startswith("LastLayerLaplace")}
    assert {(target, name) for target, named in nine.items() for name, p in named.items()
            if shift_goal.SIX_SYSTEMS[target][name] != p} == raised
    # the force rounds on 25 fits (2026-12-05) raised the head's and both ensembles'
    assert {(target, name) for target, named in floors.items() for name, p in named.items()
            if nine[target][name] != p} == {("force", "EvidentialHead"),
                                             ("force", "ShallowEnsemble"),
                                             ("force", "DeepEnsemble (3)")}
    classes = {"LastLayerLaplace": LastLayerLaplace, "LatentDistance": LatentDistance,
               "LatentDistance + LLPR": LatentDistance, "ShallowEnsemble": ShallowEnsemble,
               "EvidentialHead": EvidentialHead, "DeepEnsemble (3)": DeepEnsemble}
    for name, cls in classes.items():
        assert floors["force"][name] == cls.default_extrapolation["forces"], name
        assert floors["energy"][name] == cls.default_extrapolation["energy"], name
    for name in shift_goal.REFIT:
        replaced = name.split(" (")[0]
        assert (floors["force"][name], floors["energy"][name]) == (
            floors["force"][replaced], floors["energy"][replaced])
    easy = dict.fromkeys(shift_goal.POWERS, 0.99)
    candidate = shift_goal.REFIT[0]
    rows = (_power_rows(easy, system="copper", wrapper="LastLayerLaplace")
            + _power_rows(easy, system="alloy", wrapper="LastLayerLaplace")
            + _power_rows(easy, system="alloy", wrapper=candidate))
    table = shift_goal.choice_table(rows, floors, ("LastLayerLaplace", candidate))
    line = next(row for row in table.splitlines() if row.startswith(f"| {candidate} | forces"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "0.75 → 0.75" and cells[4] == "—"  # systems: alloy, copper
    assert cells[3].startswith("0.990 → 0.990")


def test_update_keeps_the_rows_it_does_not_replace(tmp_path, monkeypatch):
    import argparse
    import json

    monkeypatch.syspath_prepend(str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("shift", _PATH.parent / "shift.py")
    shift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shift)
    row = lambda system, method, value: {"system": system, "wrapper": "W",  # noqa: E731
                                         "method": method, "split": "s", "v": value}
    out = tmp_path / "shift.json"
    old = [row("copper", "default", 1), row("copper", "scalar", 2), row("ethanol", "default", 3)]
    out.write_text(json.dumps({"args": {"parts": ["copper", "ethanol"]}, "rows": old}))
    args = argparse.Namespace(update=True, out=str(out), parts=["copper"], wrappers=None,
                              only=["W"], base_seed=0)
    new = {**row("copper", "default", 10), "defaults": shift.defaults_of("W", "copper")}
    rows, runs = shift.merged(args, [new])
    assert sorted((r["system"], r["method"], r["v"]) for r in rows) == [
        ("copper", "default", 10), ("copper", "scalar", 2), ("ethanol", "default", 3)]
    assert set(runs) == {"copper (earlier)", "ethanol", "copper (W)"}
    # in the tables, rows measured with earlier defaults (no tag) are marked †
    scored = {"force_cov95": 0.9, "energy_cov95": 0.9, "force_miscal": 0.0, "force_nll": 0.0,
              "spearman": 0.0, "force_std": 0.1}
    table = shift.table([{**r, **scored, "split": split} for r in rows
                         for split in ("in distribution", "shift")])
    marked = {line.split("|")[3].strip() for line in table.splitlines()[2:]}
    assert marked == {"default", "scalar †", "default †"}
    # the refit (2026-12-04) changed every wrapper's energies: a row of any earlier
    # defaults is stale, whatever its wrapper and method
    assert shift.current({"defaults": shift.DEFAULTS, "wrapper": "LastLayerLaplace (alone)",
                          "method": "scalar"})
    # the evidential head's own default changed after (the larger of two variances): its
    # rows of the refit's defaults are stale; those of its own tag were current until
    # its covariance's choice on both halves (2026-12-05, a later default)
    tag = shift.WRAPPER_DEFAULTS["EvidentialHead"]
    assert not shift.current({"defaults": tag, "wrapper": "EvidentialHead",
                              "method": "scalar"})
    assert not shift.current({"defaults": shift.DEFAULTS, "wrapper": "EvidentialHead",
                              "method": "default"})
    assert not shift.current({"defaults": tag, "wrapper": "LastLayerLaplace (alone)",
                              "method": "default"})
    # since the strain term (2026-12-05) an EMT system's rows are current with its tag
    # alone, for a wrapper without a later default; a molecule's keep the wrapper's tag
    for wrapper in ("LatentDistance + LLPR (refit mean)", "LastLayerLaplace (alone)"):
        assert shift.current({"defaults": shift.STRAIN_TERM, "wrapper": wrapper,
                              "system": "cupd"})
        assert not shift.current({"defaults": shift.defaults_of(wrapper), "wrapper": wrapper,
                                  "system": "cupd"})
        assert not shift.current({"defaults": shift.STRAIN_TERM, "wrapper": wrapper,
                                  "system": "ethanol"})
        assert shift.current({"defaults": shift.defaults_of(wrapper), "wrapper": wrapper,
                              "system": "acac"})
    # the shallow ensemble's energy term and the evidential head's covariance (2026-12-05,
    # after the strain term): their rows are current with that tag alone, on every
    # system; those of the strain term's are stale
    for wrapper, tag in shift.LATER_DEFAULTS.items():
        for system in ("cupd", "ethanol"):
            assert shift.current({"defaults": tag, "wrapper": wrapper, "system": system})
            assert not shift.current({"defaults": tag, "wrapper": "LastLayerLaplace (alone)",
                                      "system": system})
        assert not shift.current({"defaults": shift.STRAIN_TERM, "wrapper": wrapper,
                                  "system": "cupd"})
        assert not shift.current({"defaults": shift.DEFAULTS, "wrapper": wrapper,
                                  "system": "acac"})
    for earlier in shift.EARLIER_DEFAULTS + (None,):
        for wrapper in ("EvidentialHead", "LastLayerLaplace (alone)", "ShallowEnsemble"):
            for method in ("default", "scalar", "default, no widening"):
                assert not shift.current({"defaults": earlier, "wrapper": wrapper,
                                          "method": method})


def test_refit_comparison_counts_goals_before_and_after(monkeypatch):
    """``benchmarks/refit_defaults.py``: a system and wrapper in both files gets its worst
    shift coverages before → after, and the goal counts move with them; rows after the
    change count only when tagged with the new defaults."""
    monkeypatch.syspath_prepend(str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("refit_defaults",
                                                  _PATH.parent / "refit_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def rows(e_cov, tag=None):
        out = [{**_row("default", split, e_cov=cov), "wrapper": "EvidentialHead",
                "energy_std_per_atom": 0.02, "energy_mae_per_atom": 0.01, "defaults": tag}
               for split, cov in (("in distribution", 0.95), ("tail A", e_cov),
                                  ("tail B", 0.99))]
        return out

    tag = "new"
    text = module.compare(rows(0.80), rows(0.90, tag) + rows(0.10, "old"), tag)
    line = next(x for x in text.splitlines() if x.startswith("| ethanol | EvidentialHead"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "0.800 → 0.900" and cells[6] == "2.0 → 2.0"
    assert "| EvidentialHead | 1 | 1 → 1 | 0 → 1 |" in text
