"""A Student-t with one scale per element (``per_species=True``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlipuq import datasets, demo
from mlipuq.calibration import metrics
from mlipuq.calibration.recalibrate import PredictionRecalibrator
from mlipuq.calibration.student_t import StudentTRecalibrator, std_factor
from mlipuq.predictive import ROBUST_MAX_DOF
from mlipuq.uq import LastLayerLaplace


def _two_elements(n=30000, seed=0, dof=4.0):
    """Errors of element 1 are 2.5 raw stds wide, of element 8 0.6: one t, two scales."""
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 8], size=n)
    sigma = rng.uniform(0.2, 3.0, n)
    width = np.where(numbers == 1, 2.5, 0.6)
    y = width * sigma * rng.standard_t(dof, n)
    return numbers, sigma, y


def test_per_element_scales_are_recovered_with_one_dof():
    numbers, sigma, y = _two_elements()
    rec = StudentTRecalibrator(per_species=True).fit(np.zeros_like(y), sigma, y, numbers=numbers)
    np.testing.assert_array_equal(rec.species_, [1, 8])
    np.testing.assert_allclose(rec.species_t_scale_, [2.5, 0.6], rtol=0.04)
    assert rec.dof_ == pytest.approx(4.0, rel=0.15)
    np.testing.assert_array_equal(rec.species_count_, np.bincount(numbers)[[1, 8]])
    expected = rec.species_t_scale_[(numbers == 8).astype(int)] * std_factor(rec.dof_) * sigma
    np.testing.assert_allclose(rec.transform(sigma, numbers=numbers), expected, rtol=1e-12)


def test_per_element_coverage_where_one_scale_misses_both():
    """One common scale covers the mixture at 95 % but neither element; a scale per
    element covers each (held-out draws of the same law)."""
    numbers, sigma, y = _two_elements(seed=1)
    test_numbers, test_sigma, test_y = _two_elements(seed=2)
    common = StudentTRecalibrator().fit(np.zeros_like(y), sigma, y)
    own = StudentTRecalibrator(per_species=True).fit(np.zeros_like(y), sigma, y, numbers=numbers)
    for element in (1, 8):
        m = test_numbers == element
        cover = {name: float(metrics.coverage(np.zeros(m.sum()), rec.transform(test_sigma[m], **kw),
                                              test_y[m], levels=[0.95], dof=rec.dof_)[0])
                 for name, rec, kw in (("common", common, {}),
                                       ("own", own, {"numbers": test_numbers[m]}))}
        assert abs(cover["own"] - 0.95) < 0.01
        assert abs(cover["common"] - 0.95) > 0.03


def test_one_element_is_the_common_fit():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.2, 3.0, 5000)
    y = 1.3 * sigma * rng.standard_t(3.0, sigma.size)
    common = StudentTRecalibrator().fit(np.zeros_like(y), sigma, y)
    own = StudentTRecalibrator(per_species=True).fit(np.zeros_like(y), sigma, y,
                                                     numbers=np.full(y.size, 29))
    assert own.dof_ == pytest.approx(common.dof_, rel=1e-9)
    assert own.species_t_scale_[0] == pytest.approx(common.t_scale_, rel=1e-10)


def test_rare_and_unseen_elements_get_the_largest_scale():
    numbers, sigma, y = _two_elements(n=4000, seed=4)
    numbers[:10] = 6  # ten targets of carbon: too few for a scale of its own
    rec = StudentTRecalibrator(per_species=True).fit(np.zeros_like(y), sigma, y, numbers=numbers)
    np.testing.assert_array_equal(rec.species_, [1, 8])
    assert rec.t_scale_ == rec.species_t_scale_.max()
    out = rec.transform(np.ones(3), numbers=[6, 79, 8])
    largest = rec.species_t_scale_.max() * std_factor(rec.dof_)
    np.testing.assert_allclose(out, [largest, largest, rec.species_t_scale_[1] * std_factor(rec.dof_)])


def test_numbers_are_required_and_checked():
    numbers, sigma, y = _two_elements(n=200, seed=5)
    rec = StudentTRecalibrator(per_species=True)
    with pytest.raises(ValueError, match="needs the atomic number"):
        rec.fit(np.zeros_like(y), sigma, y)
    with pytest.raises(ValueError, match="numbers has shape"):
        rec.fit(np.zeros_like(y), sigma, y, numbers=numbers[:5])
    y[numbers == 8] = 0.0  # every error of oxygen zero: no scale of its own (the largest)
    with pytest.warns(UserWarning, match="Z=8: half their validation force errors"):
        rec.fit(np.zeros_like(y), sigma, y, numbers=numbers)
    np.testing.assert_array_equal(rec.species_, [1])
    with pytest.raises(ValueError, match="of the validation errors are zero"):
        StudentTRecalibrator(per_species=True).fit(np.zeros_like(y), sigma, np.zeros_like(y),
                                                   numbers=numbers)


def test_a_file_without_per_species_predicts_as_before():
    """Recalibrators saved before the option have no ``per_species`` attribute."""
    numbers, sigma, y = _two_elements(n=2000, seed=6)
    rec = StudentTRecalibrator().fit(np.zeros_like(y), sigma, y)
    old = StudentTRecalibrator.__new__(StudentTRecalibrator)
    old.__dict__.update({k: v for k, v in vars(rec).items()
                         if k not in ("per_species", "species_", "species_t_scale_",
                                      "species_count_")})
    np.testing.assert_array_equal(old.transform(sigma), rec.transform(sigma))


@pytest.fixture(scope="module")
def ethanol_llpr():
    model = demo.load_pretrained("ethanol_0")
    return LastLayerLaplace(model, distance=None).fit(datasets.ethanol("train")[:300])


def test_wrapper_per_species_t_on_dft_round_trips(ethanol_llpr, tmp_path):
    """``calibrate(val, per_species=True)`` with ν as the data say (``dof_bounds`` up to
    1000; the default caps ν at 3, wider on purpose) on packaged DFT data: H, C and O
    each within 0.93–0.97 force coverage on held-out frames, and a save/load keeps it
    (and keeps the default's capped ν)."""
    val, test = datasets.ethanol("val")[:300], datasets.ethanol("test")[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = ethanol_llpr.copy().calibrate(val, per_species=True, dof_bounds=(1.0, 1000.0))
        default = ethanol_llpr.copy().calibrate(val)
    assert isinstance(wrapper.recalibrator_, PredictionRecalibrator)
    np.testing.assert_array_equal(wrapper.recalibrator_.forces_.species_, [1, 6, 8])
    pred = wrapper.predict(test)
    ref = test.forces
    for element in (1, 6, 8):
        m = pred.numbers == element
        cover = metrics.coverage(pred.forces[m], pred.forces_std[m], ref[m], levels=[0.95],
                                 dof=pred.forces_dof)[0]
        assert 0.93 <= cover <= 0.97, (element, cover)
    wrapper.save(tmp_path / "w.pt")
    again = LastLayerLaplace.load(tmp_path / "w.pt").predict(test)
    np.testing.assert_allclose(again.forces_std, pred.forces_std, rtol=1e-12)
    default.save(tmp_path / "d.pt")
    loaded = LastLayerLaplace.load(tmp_path / "d.pt")
    assert tuple(loaded.recalibrator_.options["dof_bounds"]) == (1.0, ROBUST_MAX_DOF)
    assert loaded.predict(test[:3]).forces_dof == pytest.approx(ROBUST_MAX_DOF)


def test_zero_error_warning_points_at_the_calibrate_call(ethanol_llpr):
    """Oxygen's validation force labels set to what the model predicts (its errors
    zero): ``calibrate`` warns that O gets the largest scale, and the warning names
    this file's line, not one inside mlipuq (it did until 2026-12-05)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlipuq import data as mdata

    val = datasets.ethanol("val")[:60]
    pred = ethanol_llpr.predict(val, calibrated=False, progress=False)
    frames, start = [], 0
    for atoms in val:
        forces = atoms.get_forces().copy()
        own = pred.forces[start:start + len(atoms)]
        oxygen = atoms.numbers == 8
        forces[oxygen] = own[oxygen]
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=forces)
        frames.append(copy)
        start += len(atoms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ethanol_llpr.copy().calibrate(mdata.as_dataset(frames))
    zero = [w for w in caught if "Z=8: half their validation force errors" in str(w.message)]
    assert zero and {w.filename for w in zero} == {__file__}
