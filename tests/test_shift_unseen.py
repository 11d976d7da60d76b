"""The shift kinds no round saw (``shift.py --unseen``): built from what the training
set says of its system, so they are new kinds for every EMT system of the table."""

from __future__ import annotations

import pytest

from conftest import benchmark_modules
from mlipuq import datasets


@pytest.fixture(scope="module")
def shift_data():
    return benchmark_modules("shift_data")[0]


def test_the_training_recipe_is_read_off_the_training_set(shift_data):
    train = datasets.emt({"Cu": 0.75, "Au": 0.25}, n_structures=4, temperatures=(600, 300),
                         kinds=("bulk",), seed=3, cache=False)
    composition, temperatures = shift_data.training_recipe(train)
    assert composition == {"Cu": 0.75, "Au": 0.25}
    assert temperatures == (300.0, 600.0)


def test_unseen_kinds_are_new_for_every_system(shift_data):
    """Bulk 3.4 times larger at the lowest training temperature; the three other
    kinds 1.5 times beyond the highest, so none is a (kind, temperature) the table's
    shifts or training sets hold."""
    recipes = shift_data.unseen_recipes((300.0, 900.0))
    assert recipes == {"bulk 108 atoms 300 K": ("bulk", 300.0, 3),
                       "surface 1350 K": ("surface", 1350.0, 2),
                       "vacancy clusters 1350 K": ("vacancy_cluster", 1350.0, 2),
                       "strained 1350 K": ("strained", 1350.0, 2)}
    assert list(shift_data.unseen_recipes((300.0,))) == [
        "bulk 108 atoms 300 K", "surface 450 K", "vacancy clusters 450 K", "strained 450 K"]


def test_unseen_refuses_what_it_does_not_serve(shift_data):
    shift = benchmark_modules("shift")[0]
    for argv in (["--unseen", "--parts", "ethanol", "--out", "/tmp/x.json"],
                 ["--unseen", "--parts", "copper"]):  # into the shift table's own file
        with pytest.raises(SystemExit):
            shift.main(argv)


def test_mace_rows_go_to_their_own_file(shift_data):
    """The shift table's rows are MiniMLIP's: --base-model mace into its file is refused
    before anything is built (mace need not be installed)."""
    shift = benchmark_modules("shift")[0]
    with pytest.raises(SystemExit):
        shift.main(["--base-model", "mace", "--parts", "copper"])


def _row(system, split, f_cov, e_cov, f_std=2.0, wrapper="LastLayerLaplace", **extra):
    return {"system": system, "wrapper": wrapper, "method": "default", "split": split,
            "base_seed": 0, "refit_references": True, "force_cov95": f_cov,
            "energy_cov95": e_cov, "force_std": f_std, "force_mae": 1.0,
            "energy_std_per_atom": 3.0, "energy_mae_per_atom": 1.0, "force_nll": 0.0,
            "energy_nll": 0.0, **extra}


def test_the_check_counts_goals_and_names_the_worst_shift():
    (unseen,) = benchmark_modules("shift_unseen")
    rows = [_row("copper", "in distribution (300 K)", 0.5, 0.5),  # not a shift
            _row("copper", "surface 450 K", 0.95, 0.84, f_std=4.0),
            _row("alloy", "strained 450 K", 0.89, 0.90, f_std=6.0),
            _row("alloy", "strained 450 K", 0.10, 0.10, method="scalar")]  # not default
    table = [_row("copper", "bulk 600 K", 0.99, 0.99, f_std=1.0),
             _row("ethanol", "highest energy", 0.99, 0.99, f_std=100.0)]  # other system
    line = unseen.summary_table(unseen.default_rows(rows), table).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:6] == ["LastLayerLaplace", "2", "1", "1", "0.890 (alloy, strained 450 K)",
                         "0.840 (copper, surface 450 K)"]
    assert cells[6] == "5.0 / 1.0"  # median of 4 and 6 against copper's own shift
    systems = unseen.system_table(unseen.default_rows(rows))
    assert "| copper | 0.950 / 0.840 ✗ |" in systems and "| alloy | 0.890 ✗ / 0.900 |" in systems
    assert unseen.cover_text(0.8997, "force") == "0.8997"  # a miss never reads as 0.900
    assert unseen.cover_text(0.9003, "force") == "0.900"
    gap = unseen.in_distribution_gap(rows, [_row("copper", "in distribution", 0.5, 0.25)])
    assert gap == 0.25


def test_unseen_frontier_cells_come_from_a_run_of_their_own(shift_data, tmp_path,
                                                           monkeypatch):
    """``--unseen --frontier n``: n 108-atom cells at the lowest training temperature,
    from their own seed: none is a structure of the 108-atom test set."""
    monkeypatch.setenv("MLIPUQ_CACHE", str(tmp_path))  # the benchmark caches its sets
    train = datasets.emt("Cu", n_structures=2, temperatures=(300,), kinds=("bulk",), seed=3,
                         cache=False)
    name, frontier = shift_data.unseen_frontier(train, 1000, 2)
    assert name == "bulk 108 atoms 300 K"
    assert len(frontier) == 2 and {len(a) for a in frontier} == {108}
    assert {a.info["temperature"] for a in frontier} == {300.0}
    test = datasets.emt("Cu", n_structures=2, temperatures=(300,), kinds=("bulk",), seed=1000,
                        size=3)  # the test set's seed (unseen_shifts: the first kind)
    assert all(abs(a.positions - b.positions).max() > 1e-3 for a in frontier for b in test)


def test_frontier_rows_are_told_apart():
    (unseen,) = benchmark_modules("shift_unseen")
    rows = [_row("copper", "surface 450 K", 0.95, 0.9),
            _row("copper", "surface 450 K", 0.99, 0.9,
                 method="default + 5 frontier (bulk 108 atoms 300 K)"),
            _row("copper", "surface 450 K", 0.5, 0.9, method="scalar + 5 frontier (x)")]
    assert [r["force_cov95"] for r in unseen.default_rows(rows)] == [0.95]
    assert [r["force_cov95"] for r in unseen.default_rows(rows, frontier=True)] == [0.99]
