"""Training cells narrower than twice the cutoff (``SmallCellWarning``): their atoms
see some neighbours through two periodic images, and the shift benchmark measured
forces in larger cells several times less accurate with stds that did not grow."""

from __future__ import annotations

import warnings

import ase
import numpy as np
import pytest
from ase.build import bulk

from mlipuq import datasets
from mlipuq.checks import perpendicular_widths
from mlipuq.data import AtomsDataset
from mlipuq.models import MiniMLIP
from mlipuq.training import SmallCellWarning, fit_scales, prepare_graphs
from mlipuq.training_setup import check_cell_widths


@pytest.fixture(scope="module")
def cells():
    """EMT Cu, 32-atom cells (7.22 Å wide), labelled."""
    return datasets.emt("Cu", n_structures=3, kinds=("bulk",), seed=5, cache=False)


def _small_cell_warnings(train, cutoff):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_cell_widths(train, cutoff)
    return [w for w in caught if issubclass(w.category, SmallCellWarning)]


def test_perpendicular_widths_by_hand():
    a = 3.6
    cubic = np.diag([2 * a, 2 * a, 3 * a])
    np.testing.assert_allclose(perpendicular_widths(cubic), [2 * a, 2 * a, 3 * a])
    # fcc primitive vectors: the (111) planes are a / √3 apart
    primitive = bulk("Cu", "fcc", a=a).cell.array
    np.testing.assert_allclose(perpendicular_widths(primitive), [a / np.sqrt(3)] * 3)


def test_narrow_cells_warn_and_wide_enough_ones_do_not(cells):
    (caught,) = _small_cell_warnings(cells, 4.5)
    message = str(caught.message)
    assert "all 3 periodic training cells" in message and "9 Å wide" in message
    assert not _small_cell_warnings(cells, 3.5)  # 7.22 Å ≥ 2 × 3.5 Å


def test_one_wide_cell_or_no_periodic_cell_is_enough(cells):
    wide = cells[0].copy() * (2, 2, 2)  # 14.4 Å
    assert not _small_cell_warnings(AtomsDataset(list(cells) + [wide]), 4.5)
    molecule = ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]])
    assert not _small_cell_warnings(AtomsDataset([molecule]), 4.5)


def test_training_setup_warns(cells):
    model = MiniMLIP(("Cu",), cutoff=4.5, width=4, n_interactions=1, n_rbf=4, seed=0)
    with pytest.warns(SmallCellWarning, match="narrower than twice the model's cutoff"):
        fit_scales(model, cells, prepare_graphs(cells, model, need_forces=True))
