"""The caps' table of benchmarks/shift_caps.py reads each wrapper at the widening powers
``calibrate`` gave it, and reports the worst coverage and the largest std ÷ MAE of a shift
(rows of shift_widening.py, hand-made here)."""

import pathlib
import sys

import pytest

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def shift_caps():
    sys.path.insert(0, str(_BENCHMARKS))
    try:
        import shift_caps
    finally:
        sys.path.remove(str(_BENCHMARKS))
    return shift_caps


def _row(split, rule, power, f_cov, e_cov, f_std=1.0, e_std=1.0, wrapper="LatentDistance"):
    return {"system": "copper", "wrapper": wrapper, "split": split, "rule": rule,
            "power": power, "base_model": "minimlip", "force_cov95": f_cov,
            "energy_cov95": e_cov, "force_std": f_std, "force_mae": 0.5,
            "energy_std_per_atom": e_std, "energy_mae_per_atom": 0.25,
            "default_powers": {"energy": 0.75, "forces": 0.5}}


def test_worst_coverage_and_largest_ratio_at_the_default_powers(shift_caps):
    rows = [_row("in distribution", "capped 10", 0.5, 0.1, 0.1),  # not a shift
            _row("surface", "capped 10", 0.5, 0.95, 0.2, f_std=5.0),
            _row("vacancy", "capped 10", 0.5, 0.91, 0.3, f_std=2.0),
            _row("surface", "capped 10", 0.75, 0.4, 0.99, e_std=3.0),
            _row("vacancy", "capped 10", 0.75, 0.5, 0.88, e_std=1.0),
            _row("surface", "capped 10", 1.0, 0.0, 0.0, 99.0, 99.0)]  # not a default power
    out = shift_caps.summary(rows, "LatentDistance", "capped 10")
    # worst coverage, largest and median std ÷ MAE
    assert out["forces"] == pytest.approx((0.91, 10.0, 7.0))  # std 5, 2 over MAE 0.5
    assert out["energy"] == pytest.approx((0.88, 12.0, 8.0))  # std 3, 1 over MAE 0.25
    assert shift_caps.summary(rows, "LatentDistance", "capped 3") == {}
    assert [shift_caps.kept(r) for r in rows] == [True] * 5 + [False]


def test_rows_without_their_powers_get_the_wrappers(shift_caps):
    """Rows saved before they recorded their powers: a MiniMLIP's wrapper reads every
    layer's features (its all-layers powers), a MACE's its readout (the class's)."""
    from mlipuq.uq import LastLayerLaplace

    row = {"wrapper": "LastLayerLaplace", "base_model": "minimlip"}
    assert shift_caps.default_powers(row) == LastLayerLaplace.all_layers_extrapolation
    assert shift_caps.default_powers({**row, "base_model": "mace"}) == \
        LastLayerLaplace.default_extrapolation


def test_verdicts_by_cell(shift_caps):
    """A cap fails where it takes a cell that met the goal below it, or lowers a cell's
    worst coverage by more than the slack even below the goal (Cu's base model 1: 0.675
    uncapped, 0.000 at 10); it passes where neither happens."""
    def cell(system, seed, e_cov):  # worst energy coverage per rule, forces all 0.95
        return [{**_row(split, rule, power, 0.95, cov), "system": system, "base_seed": seed}
                for rule, cov in e_cov.items() for split, power in
                (("surface", 0.75), ("surface", 0.5), ("bulk", 0.75), ("bulk", 0.5))]
    rows = (cell("copper", 1, {"structure": 0.675, "capped 30": 0.675, "capped 10": 0.0,
                               "capped 3": 0.0})
            + cell("agpd", 0, {"structure": 0.95, "capped 30": 0.95, "capped 10": 0.945,
                               "capped 3": 0.80}))
    lines = shift_caps.verdicts({"unseen": rows}).splitlines()
    assert "capped 30 energy: 2 cells, 0 lost, largest drop 0.000 -> passes" in lines
    assert "capped 10 energy: 2 cells, 0 lost, largest drop 0.675 -> fails" in lines
    assert "capped 3 energy: 2 cells, 1 lost, largest drop 0.675 -> fails" in lines
    assert "capped 10 forces: 2 cells, 0 lost, largest drop 0.000 -> passes" in lines
    assert "capped 100 energy: 0 cells, 0 lost, largest drop 0.000 -> passes" in lines
    assert any("lost: ('unseen', 'agpd', 0, 'LatentDistance')" in line for line in lines)
