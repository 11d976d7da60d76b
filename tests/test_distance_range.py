"""The widening's range with a latent-distance term's own std (``distance_range``).

Hand-derived: a structure whose total energy std lies inside the calibration
range but whose term part lies three times beyond the term's largest is widened
by 3 ** power by default (``distance_range=True``) and not at all with False; ranges saved
without the term's key still load and widen by the two stds alone; the term's
part survives ``structure``, ``concatenate``, recalibration and files. (That
the evidential head reports its term's own variance: test_evidential_max.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlipuq.calibration.extrapolation import DISTANCE_KEY, check_range, excess
from mlipuq.calibration.recalibrate import PredictionRecalibrator
from mlipuq.prediction import Prediction, read_prediction
from test_extrapolation import _prediction, _reference


def _with_term(pred: Prediction, term_std) -> Prediction:
    return dataclasses.replace(pred, energy_distance_var=np.asarray(term_std, float) ** 2)


def test_the_terms_own_range_widens_by_hand():
    # calibration: totals 1 and 2 eV (1-atom structures), the term's parts 0.5 and 0.25
    val = _with_term(_prediction([1.0, 2.0], [0.1, 0.2], [1, 1], level=50.0), [0.5, 0.25])
    on = PredictionRecalibrator("scalar", extrapolation=1).fit(val, _reference(val))  # default
    off = PredictionRecalibrator("scalar", extrapolation=1, distance_range=False)
    off.fit(val, _reference(val))
    assert on.std_range_[DISTANCE_KEY] == pytest.approx(0.5)
    assert DISTANCE_KEY not in off.std_range_
    # test: total 1.5 (inside), term 1.5 = 3 x its largest; a 2-atom structure with
    # total 2 eV (1 eV/atom, inside) and term 2 eV (1 eV/atom, 2 x its largest)
    test = _with_term(_prediction([1.5, 2.0], [0.1, 0.1], [1, 2]), [1.5, 2.0])
    scale = on.energy_.scale_
    out = on.transform(test)
    np.testing.assert_allclose(out.calibration_excess, [3.0, 2.0])
    np.testing.assert_allclose(out.energy_std, scale * np.array([1.5, 2.0]) * [3.0, 2.0])
    np.testing.assert_allclose(out.forces_std[0], on.forces_.scale_ * 0.1 * 3.0)
    # the term's part is scaled with the energy variance it belongs to
    np.testing.assert_allclose(out.energy_distance_var,
                               test.energy_distance_var * (out.energy_std / test.energy_std) ** 2)
    np.testing.assert_allclose(off.transform(test).calibration_excess, [1.0, 1.0])


def test_a_range_without_the_terms_key():
    # a file fitted before the option (or on a prediction without the term's part):
    # its range has no DISTANCE_KEY, and a term part at predict time changes nothing
    good = {"energy": 1.0, "forces": 1.0, "energy_bound": 10.0, "forces_bound": 10.0}
    assert check_range(good) == good and check_range({**good, DISTANCE_KEY: 0.5})
    for bad in ({**good, DISTANCE_KEY: -1.0}, {**good, "extra": 1.0}):
        with pytest.raises(ValueError, match="std_range"):
            check_range(bad)
    scales = {"energy": np.array([0.5]), "forces": np.array([2.0]),
              DISTANCE_KEY: np.array([100.0])}
    out = excess(scales, good)
    assert set(out) == {"energy", "forces"} and out["forces"] == pytest.approx([2.0])
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1])
    rec = PredictionRecalibrator("scalar").fit(val, _reference(val))
    test = _prediction([1.5], [0.1], [1])
    np.testing.assert_allclose(rec.transform(_with_term(test, [50.0])).energy_std,
                               rec.transform(test).energy_std)


@pytest.mark.parametrize("bad", ["yes", 1.5, None])
def test_bad_distance_range_is_refused(bad):
    with pytest.raises(ValueError, match="distance_range"):
        PredictionRecalibrator("scalar", distance_range=bad)


def test_the_terms_part_survives_slicing_and_files(tmp_path):
    pred = _with_term(_prediction([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [1, 2, 1]), [0.5, 0.6, 0.7])
    np.testing.assert_allclose(pred.structure(1).energy_distance_var, [0.36])
    joined = Prediction.concatenate([pred.structure(0), pred.structure(2)])
    np.testing.assert_allclose(joined.energy_distance_var, [0.25, 0.49])
    with pytest.raises(ValueError, match="only some have energy_distance_var"):
        Prediction.concatenate([pred, _prediction([1.0], [0.1], [1])])
    path = tmp_path / "pred.extxyz"
    _reference(pred).write(path, prediction=pred)
    back, _ = read_prediction(path)
    np.testing.assert_allclose(back.energy_distance_var, pred.energy_distance_var)

