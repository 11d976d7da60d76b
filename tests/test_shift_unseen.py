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
                 ["--unseen", "--parts", "copper"],  # into the shift table's own file
                 ["--unseen", "--parts", "copper", "--frontier", "5", "--out", "/tmp/x.json"]):
        with pytest.raises(SystemExit):
            shift.main(argv)
