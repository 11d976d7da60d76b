"""Offset-dominated errors: calibrate warns instead of silently stretching σ."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from mlipuq.calibration.bias import (MIN_TARGETS, OffsetWarning, offset_message, offset_report,
                                     z_statistics)
from mlipuq.calibration.recalibrate import PredictionRecalibrator

from conftest import synthetic_prediction


def test_z_statistics_by_hand():
    # z = (pred - true)/std = [1, 3, -1] / [1, 1, 1]... with one zero std left out
    z_mean, z_std, n = z_statistics([1.0, 4.0, 0.0, 9.0], [1.0, 1.0, 1.0, 0.0],
                                    [0.0, 1.0, 1.0, 0.0])
    assert n == 3
    assert z_mean == pytest.approx(1.0)
    assert z_std == pytest.approx(np.sqrt(((1 - 1) ** 2 + (3 - 1) ** 2 + (-1 - 1) ** 2) / 3))


def test_message_only_when_the_offset_dominates():
    assert offset_message("energy", 0.98, 0.20, 50) is not None
    assert offset_message("energy", -0.98, 0.20, 50) is not None
    assert offset_message("energy", 0.5, 1.0, 50) is None  # scatter dominates
    assert offset_message("energy", 0.98, 0.20, MIN_TARGETS - 1) is None  # too few


def _shifted(pred, shift_in_std):
    return dataclasses.replace(pred, energy=pred.energy + shift_in_std * pred.energy_std)


def test_calibrate_warns_on_an_energy_offset_and_records_it():
    pred, ref = synthetic_prediction(n_structures=60, miscal=0.2, seed=3)
    biased = _shifted(pred, 1.0)  # z-mean ≈ 1, z-std ≈ 0.2
    with pytest.warns(OffsetWarning, match="energy: the errors share a mean offset"):
        recal = PredictionRecalibrator().fit(biased, ref)
    stats = recal.offsets_["energy"]
    assert stats["dominated"] and stats["z_mean"] == pytest.approx(1.0, abs=0.1)
    assert not recal.offsets_["forces"]["dominated"]


def test_unbiased_errors_do_not_warn():
    pred, ref = synthetic_prediction(n_structures=200, miscal=1.5, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OffsetWarning)
        PredictionRecalibrator().fit(pred, ref)
    report = offset_report(pred, ref.energies, ref.forces)
    assert abs(report["energy"]["z_mean"]) < 0.3 and report["energy"]["z_std"] > 1.0


def test_evaluate_reports_and_warns_about_the_offset():
    from mlipuq.calibration import evaluate

    pred, ref = synthetic_prediction(n_structures=60, miscal=0.2, seed=3)
    with pytest.warns(OffsetWarning, match="evaluate: energy"):
        report = evaluate(_shifted(pred, 1.0), ref)
    assert report.settings["offsets"]["energy"]["dominated"]
    assert "**Warning.** energy: the errors share a mean offset" in report.to_markdown()
