"""WideCellWarning: calibrated predictions for cells at least twice the cutoff wide,
when every calibration cell was narrower (mlipuq.uq.wide_cells)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

import mlipuq
from mlipuq.checks import narrowest_widths
from mlipuq.errors import FileFormatError
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble, load)
from mlipuq.uq.wide_cells import WideCellWarning, calibration_width

from conftest import make_model

CUTOFF = 4.0  # make_model's: cells at least 8 Å wide are "wide"


def _labelled(atoms_list):
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return mlipuq.load(out)


def _cubic(n: int, seed: int, repeat: int = 1):
    """Rattled cubic Cu cells, 3.6 Å × ``repeat`` wide."""
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=100 * seed + k)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def narrow():
    """An LLPR fitted and calibrated on 3.6 Å cells (narrower than 2 × 4 Å)."""
    train, val = _labelled(_cubic(6, 0)), _labelled(_cubic(6, 1))
    return LastLayerLaplace(make_model()).fit(train).calibrate(val), train, val


def _warnings(call) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, WideCellWarning)]


def test_narrowest_widths_by_hand():
    """A cubic cell of side a is a wide; the fcc primitive cell a/√3 (its (111)
    spacing); a molecule and a degenerate cell have none (NaN)."""
    a = 3.6
    cells = [np.eye(3) * a, bulk("Cu", "fcc", a=a).cell.array, np.eye(3) * a,
             np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])]
    pbc = [[True] * 3, [True] * 3, [True, True, False], [True] * 3]
    widths = narrowest_widths(cells, pbc)
    np.testing.assert_allclose(widths[:2], [a, a / np.sqrt(3)], rtol=1e-12)
    assert np.isnan(widths[2:]).all()


def test_calibration_records_the_widest_periodic_cell(narrow):
    llpr, _, val = narrow
    assert llpr.calibration_width_ == pytest.approx(calibration_width(val))
    assert 3.5 < llpr.calibration_width_ < 3.7  # rattled atoms, the cell is 3.6 Å
    assert calibration_width(mlipuq.load([molecule("CH4")])) is None


def test_wide_cells_warn_and_narrow_ones_do_not(narrow):
    """A 3 × 3 × 3 supercell (10.8 Å ≥ 8 Å) is named by its index across batches;
    the narrow cells, a 2 × 2 × 2 supercell (7.2 Å < 8 Å) and uncalibrated
    predictions give no warning; it changes no number."""
    llpr = narrow[0]
    structures = _cubic(2, 2) + _cubic(1, 3, repeat=2) + _cubic(2, 4, repeat=3)
    found = _warnings(lambda: llpr.predict(structures, batch_size=2))
    assert len(found) == 1
    assert found[0].startswith("LastLayerLaplace: structure 3 and 1 more is at least twice "
                               "the cutoff (4 Å) wide")
    assert f"(widest {llpr.calibration_width_:.3g} Å)" in found[0]
    assert _warnings(lambda: llpr.predict(structures[:3])) == []
    assert _warnings(lambda: llpr.predict(structures, calibrated=False)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WideCellWarning)
        warned = llpr.predict(structures)
    silent = llpr.copy()
    silent.calibration_width_ = None  # as loaded from a file without one: no check
    assert _warnings(lambda: silent.predict(structures)) == []
    for field in ("energy_var", "forces_var", "energy", "forces"):
        np.testing.assert_array_equal(getattr(warned, field),
                                      getattr(silent.predict(structures), field))


def test_no_warning_when_calibration_saw_wide_cells_or_none(narrow):
    llpr, train, val = narrow
    wide = _cubic(1, 5, repeat=3)
    with_wide = llpr.copy().calibrate(mlipuq.AtomsDataset(list(val) + list(_labelled(wide))))
    assert with_wide.calibration_width_ >= 2 * CUTOFF
    assert _warnings(lambda: with_wide.predict(wide)) == []
    uncalibrated = LastLayerLaplace(make_model()).fit(train)
    assert _warnings(lambda: uncalibrated.predict(wide)) == []


def test_every_single_model_wrapper_warns(narrow):
    """Latent distance (alone and over the LLPR: its own predict), the shallow
    ensemble and the evidential head warn as the LLPR does."""
    llpr, train, val = narrow
    quick = dict(epochs=1, seed=0, batch_size=4, progress=False)
    wrappers = {
        "LatentDistance": LatentDistance(make_model()).fit(train, val),
        "LatentDistance + LLPR": LatentDistance(llpr.base_model, combine=llpr).fit(train, val),
        "ShallowEnsemble": ShallowEnsemble(make_model(), n_heads=3).fit(train, val, **quick),
        "EvidentialHead": EvidentialHead(make_model()).fit(train, val, **quick)}
    wide = _cubic(1, 8, repeat=3)
    for name, wrapper in wrappers.items():
        wrapper.calibrate(val)
        found = _warnings(lambda: wrapper.predict(wide))
        assert len(found) == 1 and found[0].startswith(
            f"{name.split(' ')[0]}: structure 0 is at least twice"), name


def test_the_deep_ensemble_does_not_warn(narrow):
    """Its members' spread was measured to grow there (docs/shift.md)."""
    _, train, val = narrow
    torch.manual_seed(0)
    deep = DeepEnsemble([make_model(seed=s) for s in range(2)], distance=None).calibrate(val)
    assert deep.calibration_width_ < 2 * CUTOFF
    assert _warnings(lambda: deep.predict(_cubic(1, 6, repeat=3))) == []


def test_the_width_is_saved_and_checked(narrow, tmp_path):
    """Saved and loaded with the wrapper; absent from files without one (their
    fingerprint unchanged); a damaged value is refused, naming the file."""
    llpr = narrow[0]
    llpr.save(tmp_path / "w.pt")
    back = load(tmp_path / "w.pt")
    assert back.calibration_width_ == llpr.calibration_width_
    assert _warnings(lambda: back.predict(_cubic(1, 7, repeat=3)))
    without = llpr.copy()
    without.calibration_width_ = None
    assert "calibration_width" not in without.payload()
    assert "calibration_width" in llpr.payload()
    from mlipuq.fileio import read_payload, save_payload

    payload = read_payload(tmp_path / "w.pt", format="mlipuq.uq", what="UQ-wrapper")
    payload.pop("checksum", None)
    payload["calibration_width"] = -1.0
    save_payload(payload, tmp_path / "bad.pt")
    with pytest.raises(FileFormatError, match="bad.pt: damaged calibration width"):
        load(tmp_path / "bad.pt")
