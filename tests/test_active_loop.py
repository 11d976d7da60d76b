"""Active-learning loop, learning curves, oracles and the plot."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from conftest import ETHANOL_SMALL, make_model, unlabelled

import mlipuq
from mlipuq import active
from mlipuq.active import (
    LabelledPoolOracle,
    LearningCurve,
    Loop,
    label,
    plot_learning_curves,
)
from mlipuq.calibration import metrics
from mlipuq.uq import LastLayerLaplace


@pytest.fixture(scope="module")
def data():
    return mlipuq.load(ETHANOL_SMALL)


def _refit(model):
    # refit only the LLPR on a fixed base model: cheap and deterministic
    return lambda train: LastLayerLaplace(model, n_samples=4, force_variance="samples").fit(train)


@pytest.mark.parametrize("strategy", ["batch_llpr", "random"])
def test_loop_two_rounds_grows_labels_by_k(data, strategy):
    pool, initial, test = unlabelled(data[5:17]), data[:5], data[17:]
    loop = Loop(_refit(make_model()), LabelledPoolOracle(data), pool, initial, k=3, rounds=2,
                test=test, strategy=strategy)
    curve = loop.run()
    assert curve.n_labels == [5, 8, 11]
    for name in LearningCurve.METRICS:
        values = getattr(curve, name)
        assert len(values) == 3 and np.all(np.isfinite(values))
    picked = [i for r in curve.selected for i in r]
    assert len(curve.selected) == 2 and len(set(picked)) == 6
    # the oracle attached the known labels of the picked pool structures
    np.testing.assert_allclose(loop.labelled_[5:].energies, data[5:17][picked].energies)
    np.testing.assert_allclose(loop.labelled_[5:].forces, data[5:17][picked].forces)
    assert len(initial) == 5  # the user's initial set is not modified


def _spying(make, sizes):
    """make_uq whose wrappers record the size of every calibration set."""
    def make_uq(train):
        uq = make(train)
        calibrate = uq.calibrate

        def spy(val, **options):
            sizes.append(len(val))
            return calibrate(val, **options)

        uq.calibrate = spy
        return uq
    return make_uq


def test_loop_calibrates_every_round_on_val(data):
    pool, initial, val, test = unlabelled(data[5:14]), data[:5], data[14:17], data[17:]
    sizes = []
    loop = Loop(_spying(_refit(make_model()), sizes), LabelledPoolOracle(data), pool, initial,
                k=2, rounds=2, test=test, val=val, strategy="max_force_std")
    curve = loop.run()
    assert sizes == [3, 3, 3] and loop.uq_.calibrated_
    # the curve reports the calibrated wrapper's metrics (of its default predictive, a
    # Student-t for the forces), and the raw ones beside them
    pred = loop.uq_.predict(test)
    std, dof = np.maximum(pred.forces_std, 1e-12), pred.forces_dof
    assert dof is not None
    assert curve.forces_miscal_area[-1] == pytest.approx(
        metrics.miscalibration_area(pred.forces, std, test.forces, dof=dof))
    assert curve.forces_nll[-1] == pytest.approx(metrics.nll(pred.forces, std, test.forces, dof=dof))
    assert curve.forces_nll[-1] != pytest.approx(metrics.nll_gaussian(pred.forces, std, test.forces))
    raw = loop.uq_.predict(test, calibrated=False)
    assert curve.forces_miscal_area_uncalibrated[-1] == pytest.approx(
        metrics.miscalibration_area(raw.forces, np.maximum(raw.forces_std, 1e-12), test.forces))
    assert curve.forces_miscal_area != curve.forces_miscal_area_uncalibrated


def test_loop_can_also_calibrate_on_the_new_labels(data):
    pool, initial, val, test = unlabelled(data[5:14]), data[:5], data[14:17], data[17:]
    sizes = []
    Loop(_spying(_refit(make_model()), sizes), LabelledPoolOracle(data), pool, initial, k=2,
         rounds=2, test=test, val=val, calibrate_on_selected=True, strategy="random").run()
    assert sizes == [3, 5, 3, 5, 3]  # val, then val + the round's 2 picks; none in the last


def test_loop_without_val_does_not_calibrate(data):
    loop = Loop(_refit(make_model()), LabelledPoolOracle(data), unlabelled(data[5:9]), data[:5],
                k=2, rounds=1, test=data[17:], strategy="random")
    curve = loop.run()
    assert not loop.uq_.calibrated_
    assert curve.forces_miscal_area == curve.forces_miscal_area_uncalibrated


def test_loop_with_an_ase_calculator_oracle():
    cells = []
    for seed in range(8):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(stdev=0.05 + 0.02 * seed, seed=seed)
        cells.append(a)
    initial = label(cells[:3], EMT())
    pool = mlipuq.AtomsDataset(cells[3:])
    reference = EMT()
    loop = Loop(_refit(make_model()), EMT(), pool, initial, k=2, rounds=1, test=initial,
                strategy="max_force_std")
    curve = loop.run()
    assert curve.n_labels == [3, 5]
    for a in loop.labelled_[3:]:
        b = a.copy()
        b.calc = reference
        np.testing.assert_allclose(a.get_forces(), b.get_forces())
    assert all(a.calc is None for a in pool)  # the pool is not labelled in place


def test_loop_validation(data):
    make = _refit(make_model())
    with pytest.raises(ValueError, match="exceeds the pool"):
        Loop(make, LabelledPoolOracle(data), data[5:10], data[:5], k=3, rounds=2)
    with pytest.raises(ValueError, match="k must be"):
        Loop(make, LabelledPoolOracle(data), data[5:10], data[:5], k=0, rounds=2)
    with pytest.raises(ValueError, match="unknown strategy"):
        Loop(make, LabelledPoolOracle(data), data[5:10], data[:5], k=1, rounds=1, strategy="x")
    with pytest.raises(ValueError, match="not found"):
        LabelledPoolOracle(data[:3])(data[4])
    with pytest.raises(ValueError, match="reference"):
        LabelledPoolOracle(unlabelled(data[:3]))
    with pytest.raises(ValueError):
        Loop(make, LabelledPoolOracle(data), data[5:10], data[:5], k=1, rounds=1,
             val=unlabelled(data[10:12]))
    with pytest.raises(ValueError):
        Loop(make, LabelledPoolOracle(data), data[5:10], data[:5], k=1, rounds=1,
             val=data[10:12], calibration="magic")


def test_learning_curve_interpolation_and_average():
    c = LearningCurve("x", n_labels=[10, 20, 30], forces_rmse=[0.4, 0.2, 0.1],
                      energy_rmse=[1, 1, 1], forces_miscal_area=[0, 0, 0], forces_nll=[0, 0, 0],
                      seconds=[1, 1, 1])
    assert c.labels_to_reach(0.3) == pytest.approx(15.0)
    assert c.labels_to_reach(0.5) == 10.0
    assert c.labels_to_reach(0.05) == float("inf")
    d = LearningCurve("x", n_labels=[10, 20, 30], forces_rmse=[0.2, 0.2, 0.3],
                      energy_rmse=[1, 1, 1], forces_miscal_area=[0, 0, 0], forces_nll=[0, 0, 0],
                      seconds=[1, 1, 1])
    np.testing.assert_allclose(LearningCurve.average([c, d]).forces_rmse, [0.3, 0.2, 0.2])


def test_plot_learning_curves_returns_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = LearningCurve("random", n_labels=[5, 10], forces_rmse=[0.3, 0.2], energy_rmse=[1, 1],
                      forces_miscal_area=[0.1, 0.1], forces_nll=[1, 1], seconds=[1, 1])
    fig, ax = plt.subplots()
    assert plot_learning_curves({"random": c}, ax=ax) is ax
    assert len(ax.get_lines()) == 1
    with pytest.raises(ValueError, match="metric"):
        plot_learning_curves({"random": c}, metric="accuracy")
    plt.close(fig)


def test_reexports():
    assert active.Loop is Loop and active.plot_learning_curves is plot_learning_curves
