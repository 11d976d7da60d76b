"""Stds beyond the calibration data's range (mlipuq.calibration.extrapolation).

Hand-derived values for the widening σ' = scale · σ · r ** power of a structure
whose per-atom energy std or RMS force std exceeds the largest of the
calibration structures (r: the larger of the two ratios), bounded at 10 x the
largest plausible error; nothing changes inside the range; the range
survives save/load and files without it predict as before. On data: an EMT Cu
model trained at 300 K, asked about 1500 K, is beyond its calibration range on
every structure and its force intervals cover more than without the widening.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq import schema
from mlipuq.calibration import metrics
from mlipuq.calibration.extrapolation import (
    DEFAULT_POWER,
    check_power,
    check_range,
    excess,
    structure_scales,
)
from mlipuq.calibration.recalibrate import PredictionRecalibrator
from mlipuq.prediction import Prediction, read_prediction
from mlipuq.propagation.md import run_md
from mlipuq.uq import LastLayerLaplace, load


def _prediction(energy_std, forces_std, n_atoms, level=0.0):
    """Predictions with energy stds (B,) and one force std per structure (B,);
    energies and forces ``level`` x the structure's index."""
    n_atoms = np.asarray(n_atoms)
    batch = np.repeat(np.arange(len(n_atoms)), n_atoms)
    forces_std = np.repeat(np.asarray(forces_std, float)[batch][:, None], 3, axis=1)
    return Prediction(energy=level * np.arange(len(n_atoms)),
                      energy_var=np.asarray(energy_std) ** 2,
                      forces=level * np.repeat(batch[:, None], 3, axis=1).astype(float),
                      forces_var=forces_std**2, n_atoms=n_atoms, batch=batch)


def _reference(pred, factor=2.0):
    """H structures whose reference energies and forces lie ``factor`` stds from ``pred``."""
    out = []
    for k, n in enumerate(pred.n_atoms):
        atoms = Atoms("H" * int(n), positions=[[0, 0, 1.5 * i] for i in range(int(n))])
        mine = pred.batch == k
        atoms.calc = SinglePointCalculator(
            atoms, energy=pred.energy[k] + factor * pred.energy_std[k],
            forces=pred.forces[mine] + factor * pred.forces_std[mine])
        out.append(atoms)
    return mlipuq.data.AtomsDataset(out)


def test_structure_scales_by_hand():
    # structure 0: 2 atoms, component stds 1 and 3 -> RMS sqrt((1 + 9) / 2) = sqrt(5)
    scales = structure_scales([4.0, 3.0], [2, 1], np.array([[1.0] * 3, [3.0] * 3, [2.0] * 3]),
                              np.array([0, 0, 1]))
    np.testing.assert_allclose(scales["energy"], [2.0, 3.0])
    np.testing.assert_allclose(scales["forces"], [np.sqrt(5.0), 2.0])
    ratios = excess(scales, {"energy": 2.5, "forces": 2.0})
    np.testing.assert_allclose(ratios["energy"], [1.0, 1.2])
    np.testing.assert_allclose(ratios["forces"], [np.sqrt(5.0) / 2.0, 1.0])
    assert excess(scales, None) is None
    np.testing.assert_array_equal(excess(scales, {"energy": 0.0, "forces": 0.0})["forces"], 1.0)


def test_widening_by_hand():
    # calibration: two 1-atom structures with errors of 2 std -> scalar factor 2;
    # reference energies 2 and 54 eV (spread 26 eV/atom), largest force component 50.4 eV/Å
    # (its work over 1 Å, 50.4 eV, bounds the energies: larger than the spread)
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1], level=50.0)
    rec = PredictionRecalibrator("scalar").fit(val, _reference(val))
    assert rec.std_range_ == pytest.approx({"energy": 2.0, "forces": 0.2,
                                            "energy_bound": 504.0, "forces_bound": 504.0})
    # test: inside the range, and 4x (energy per atom 16 / 2 over 2) / 9x (forces) beyond
    # it: the larger ratio, 9, widens both targets
    test = _prediction([1.5, 16.0], [0.15, 1.8], [1, 2])
    out = rec.transform(test)
    scale_e, scale_f = rec.energy_.scale_, rec.forces_.scale_
    assert scale_e == pytest.approx(2.0) and scale_f == pytest.approx(2.0)
    np.testing.assert_allclose(out.calibration_excess, [1.0, 9.0])
    np.testing.assert_allclose(out.energy_std, [scale_e * 1.5, scale_e * 16.0 * 9**0.5])
    np.testing.assert_allclose(out.forces_std[0], scale_f * 0.15)
    np.testing.assert_allclose(out.forces_std[1:], scale_f * 1.8 * 9**0.5)
    # power 1: (s / s_max) ** 1; power 0: the plain recalibration
    one = PredictionRecalibrator("scalar", extrapolation=1).fit(val, _reference(val))
    np.testing.assert_allclose(one.transform(test).forces_std[1:], scale_f * 1.8 * 9)
    none = PredictionRecalibrator("scalar", extrapolation=0).fit(val, _reference(val))
    np.testing.assert_allclose(none.transform(test).forces_std[1:], scale_f * 1.8)
    # one power per target (the deep ensemble's default: energies 0.25, forces 0)
    per = PredictionRecalibrator("scalar", extrapolation={"energy": 0.25, "forces": 0})
    per_out = per.fit(val, _reference(val)).transform(test)
    np.testing.assert_allclose(per_out.energy_std[1], scale_e * 16.0 * 9**0.25)
    np.testing.assert_allclose(per_out.forces_std[1:], scale_f * 1.8)
    # the energy-only path (LLPR's predict_energy) sees the energy ratio alone
    np.testing.assert_allclose(rec.transform_energy_std(test.energy_std, test.n_atoms),
                               [scale_e * 1.5, scale_e * 16.0 * 4**0.5])
    assert DEFAULT_POWER == 0.5


def test_widening_stops_at_the_bound():
    # references 2 and 4 eV (spread 1 eV/atom: bound 10), largest force 0.4 eV/Å (bound 4)
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1])
    rec = PredictionRecalibrator("scalar").fit(val, _reference(val))
    assert rec.std_range_["energy_bound"] == pytest.approx(10.0)
    assert rec.std_range_["forces_bound"] == pytest.approx(4.0)
    # ratios: energies 1.5 and 4, forces 7.5 and 1.25: both targets widened by 7.5 and 4
    # (** 0.5): energies 6 * 2.74 and 16 * 2, forces 3 * 2.74 and 0.5 * 2; then every
    # std s under the soft bound b (energies 10, forces 4): s (1 + (s/b)^16)^(-1/16)
    test = _prediction([3.0, 8.0], [1.5, 0.25], [1, 1])
    out = rec.transform(test)
    np.testing.assert_allclose(out.calibration_excess, [7.5, 4.0])
    widened_e, widened_f = np.array([6.0 * 7.5**0.5, 32.0]), 3.0 * 7.5**0.5
    np.testing.assert_allclose(
        out.energy_std, widened_e * (1 + (widened_e / 10.0) ** 16) ** (-1 / 16))
    np.testing.assert_allclose(out.forces_std[0],
                               widened_f * (1 + (widened_f / 4.0) ** 16) ** (-1 / 16))
    assert np.all(out.energy_std < 10.0) and out.forces_std[0, 0] < 4.0
    np.testing.assert_allclose(out.forces_std[1], 1.0, rtol=1e-9)  # far below: untouched


def test_every_calibrated_std_stays_below_the_bound_in_order():
    # a scalar recalibration (factor 2) maps raw stds up to 1e12 times the
    # calibration's to stds as far out; the bound (energies 10 eV/atom, forces 4 eV/Å)
    # holds for all, the order is kept, with the widening and without it
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1])
    raw = np.concatenate([np.geomspace(0.5, 30.0, 12), [1e6, 1e12]])
    for extrapolation in (0.5, None):
        rec = PredictionRecalibrator("scalar", extrapolation=extrapolation).fit(
            val, _reference(val))
        out = rec.transform(_prediction(raw, raw / 10, np.ones(raw.size, dtype=int)))
        e_std, f_std = out.energy_std, out.forces_std[:, 0]
        assert np.all(e_std <= 10.0) and np.all(f_std <= 4.0)
        assert np.all(np.diff(e_std) >= 0) and np.all(np.diff(f_std) >= 0)
        # strictly increasing while float64 resolves the difference (σ < 5 bounds)
        assert np.all(np.diff(e_std[:8]) > 0) and np.all(np.diff(f_std[:8]) > 0)
        assert e_std[-1] == pytest.approx(10.0) and f_std[-1] == pytest.approx(4.0)
        assert e_std[0] == pytest.approx(1.0, rel=1e-9)  # far below the bound: untouched
        assert np.all(np.isfinite(out.energy_var)) and np.all(np.isfinite(out.forces_var))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "x", {"energy": 0.5},
                                 {"energy": 0.5, "forces": -1}])
def test_bad_power_is_refused(bad):
    with pytest.raises(ValueError, match="extrapolation"):
        PredictionRecalibrator("scalar", extrapolation=bad)


def test_widening_cap_by_hand():
    # the calibration of test_widening_by_hand; the test structure 9x beyond its range:
    # power 1 widens by 9, a cap of 4 stops that at 4 (for every force of the structure
    # and its energy); one cap per target; the energy-only path too; inside the range
    # (ratio 1) nothing changes
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1], level=50.0)
    test = _prediction([1.5, 16.0], [0.15, 1.8], [1, 2])
    capped = PredictionRecalibrator("scalar", extrapolation=1, widening_cap=4).fit(
        val, _reference(val))
    assert capped.widening_cap == {"energy": 4.0, "forces": 4.0}
    out = capped.transform(test)
    np.testing.assert_allclose(out.calibration_excess, [1.0, 9.0])
    np.testing.assert_allclose(out.energy_std, [2.0 * 1.5, 2.0 * 16.0 * 4])
    np.testing.assert_allclose(out.forces_std[0], 2.0 * 0.15)
    np.testing.assert_allclose(out.forces_std[1:], 2.0 * 1.8 * 4)
    per = PredictionRecalibrator("scalar", extrapolation=1,
                                 widening_cap={"energy": None, "forces": 3}).fit(
        val, _reference(val))
    assert per.widening_cap == {"energy": np.inf, "forces": 3.0}
    per_out = per.transform(test)
    np.testing.assert_allclose(per_out.energy_std[1], 2.0 * 16.0 * 9)
    np.testing.assert_allclose(per_out.forces_std[1:], 2.0 * 1.8 * 3)
    np.testing.assert_allclose(capped.transform_energy_std(test.energy_std, test.n_atoms),
                               [2.0 * 1.5, 2.0 * 16.0 * 4])  # energy ratio 4: at the cap
    assert PredictionRecalibrator("scalar").widening_cap == {"energy": np.inf,
                                                            "forces": np.inf}


@pytest.mark.parametrize("bad", [0.5, -1.0, float("nan"), float("inf"), "x", {"forces": 2},
                                 {"energy": 2, "forces": 0.9}])
def test_bad_widening_cap_is_refused(bad):
    with pytest.raises(ValueError, match="widening_cap"):
        PredictionRecalibrator("scalar", widening_cap=bad)


def test_damaged_range_is_refused():
    good = {"energy": 1.0, "forces": 1.0, "energy_bound": 10.0, "forces_bound": 10.0}
    assert check_range(good) == good
    for bad in ({"energy": 1.0}, {**good, "energy": -1.0}, {**good, "forces_bound": np.nan},
                {**good, "energy_bound": 0.0}, {**good, "forces_bound": 0.0},
                [1.0, 2.0]):
        with pytest.raises(ValueError, match="std_range"):
            check_range(bad)


def test_excess_column_round_trips(tmp_path):
    val = _prediction([1.0, 2.0], [0.1, 0.2], [1, 1])
    rec = PredictionRecalibrator("scalar").fit(val, _reference(val))
    out = rec.transform(_prediction([1.5, 16.0], [0.15, 1.8], [1, 2]))
    structures = _reference(out)
    path = tmp_path / "pred.extxyz"
    structures.write(path, prediction=out)
    back, _ = read_prediction(path)
    np.testing.assert_allclose(back.calibration_excess, out.calibration_excess)
    np.testing.assert_allclose(back.structure(1).calibration_excess, [9.0])


# ------------------------------------------------------------------ on data


def test_beyond_the_range_on_hot_copper(copper_llpr, tmp_path):
    llpr, val, hot = copper_llpr
    widened = llpr.copy().calibrate(val)
    plain = llpr.copy().calibrate(val, extrapolation=0)
    # the calibration structures are inside their own range: nothing changes there
    a, b = widened.predict(val), plain.predict(val)
    np.testing.assert_array_equal(a.calibration_excess, 1.0)
    np.testing.assert_allclose(a.forces_var, b.forces_var, rtol=1e-12)
    # 1500 K: beyond the range on every structure, wider intervals, more covered
    a, b = widened.predict(hot), plain.predict(hot)
    assert np.all(a.calibration_excess > 1.0)
    cover = [float(metrics.coverage(p.forces, p.forces_std, hot.forces, levels=[0.95])[0])
             for p in (a, b)]
    assert cover[0] > cover[1], cover
    ratio = a.forces_std / b.forces_std
    # one factor per structure, over the stds within a third of the soft bound (which
    # touches those by under 2e-9, (1 + 3^-16)^(-1/16): extrapolation.saturate)
    inside = a.forces_std < widened.recalibrator_.std_range_["forces_bound"] / 3
    assert inside.mean() > 0.5
    top = np.where(inside, ratio, -np.inf).max(axis=1)
    low = np.where(inside, ratio, np.inf).min(axis=1)
    some = inside.any(axis=1)
    np.testing.assert_allclose(top[some], low[some], rtol=2e-9)
    # the ASE calculator reports it with each structure
    atoms = hot[0].copy()
    atoms.calc = mlipuq.Calculator(widened)
    atoms.get_potential_energy()
    assert atoms.calc.results["calibration_excess"] == pytest.approx(  # float32 features,
        a.calibration_excess[0], rel=1e-5)  # computed alone rather than in a batch
    # and ν of the default Student-t for the forces (energies: Gaussian, no ν)
    assert atoms.calc.results["forces_dof"] == pytest.approx(a.forces_dof, rel=1e-12)
    assert "energy_dof" not in atoms.calc.results and a.energy_dof is None
    # reports say how many structures are beyond the range
    report = mlipuq.calibration.evaluate(a, hot)
    assert report.settings["beyond_calibration"]["n"] == len(hot)
    assert f"Beyond the calibration range: {len(hot)} of {len(hot)}" in report.to_markdown()
    assert "Beyond the calibration" not in mlipuq.calibration.evaluate(
        widened.predict(val), val).to_markdown()
    # and every logged MD frame carries it
    run = run_md(hot[0], widened, ensemble="nve", steps=2, log_every=1, temperature_K=1500.0,
                 timestep_fs=1.0, seed=0, progress=False)
    assert all(f.info[schema.CALIBRATION_EXCESS] > 1.0 for f in run.frames)
    # saved and loaded: the same range and widening; an older file without it does not widen
    widened.save(tmp_path / "llpr.pt")
    loaded = load(tmp_path / "llpr.pt")
    np.testing.assert_array_equal(loaded.predict(hot).forces_var, a.forces_var)
    del loaded.recalibrator_.std_range_
    np.testing.assert_allclose(loaded.predict(hot).forces_var, b.forces_var, rtol=1e-12)
    assert loaded.predict(hot).calibration_excess is None


def test_widening_cap_on_hot_copper(copper_llpr, tmp_path):
    """1500 K, far beyond a 300 K calibration: with ``widening_cap`` c (the median of
    the structures' uncapped factors r ** p, p LLPR's default force power) each
    structure's force stds are the plain calibration's times min(r ** p, c), under
    the bound; saved and loaded, the cap stays."""
    llpr, val, hot = copper_llpr
    power = llpr.default_widening()["forces"]
    uncapped = llpr.copy().calibrate(val, widening_cap=None).predict(hot).calibration_excess
    uncapped = uncapped ** power
    cap = float(np.median(uncapped))
    capped = llpr.copy().calibrate(val, widening_cap=cap)
    plain = llpr.copy().calibrate(val, extrapolation=0).predict(hot)
    out = capped.predict(hot)
    factor = np.minimum(out.calibration_excess ** power, cap)
    assert np.any(uncapped > cap) and np.any(uncapped < cap) and cap > 1.0
    inside = out.forces_std < capped.recalibrator_.std_range_["forces_bound"] / 3
    assert inside.mean() > 0.5
    expected = plain.forces_std * factor[out.batch][:, None]
    np.testing.assert_allclose(out.forces_std[inside], expected[inside], rtol=2e-9)
    capped.save(tmp_path / "capped.pt")
    loaded = load(tmp_path / "capped.pt")
    assert loaded.recalibrator_.widening_cap == {"energy": cap, "forces": cap}
    np.testing.assert_array_equal(loaded.predict(hot).forces_var, out.forces_var)


def test_default_cap_on_copper_surfaces(copper_llpr):
    """Surfaces lie ~130-150x beyond a 300 K bulk calibration: by default (the wrappers'
    ``default_widening_cap``: forces 10, energies 30) their force stds are the unwidened
    calibration's times min(r ** p, 10), at 10 where r ** p is larger, and their energy
    stds min(r ** q, 30) times; ``widening_cap=None`` lifts the cap."""
    from mlipuq import datasets
    from mlipuq.uq.base import UQWrapper

    llpr, val, _ = copper_llpr
    surfaces = datasets.emt("Cu", n_structures=4, temperatures=(300,), kinds="surface", seed=5)
    power = llpr.default_widening()["forces"]
    capped = llpr.copy().calibrate(val)
    assert capped.recalibrator_.widening_cap == UQWrapper.default_widening_cap == {
        "energy": 30.0, "forces": 10.0}
    plain = llpr.copy().calibrate(val, extrapolation=0).predict(surfaces)
    out = capped.predict(surfaces)
    uncapped = out.calibration_excess ** power
    assert np.any(uncapped > 10.0)
    inside = out.forces_std < capped.recalibrator_.std_range_["forces_bound"] / 3
    assert inside[uncapped[out.batch] > 10.0].any()
    expected = plain.forces_std * np.minimum(uncapped, 10.0)[out.batch][:, None]
    np.testing.assert_allclose(out.forces_std[inside], expected[inside], rtol=2e-9)
    lifted = llpr.copy().calibrate(val, widening_cap=None).predict(surfaces)
    far = inside & (uncapped[out.batch] > 10.0)[:, None]
    assert np.all(lifted.forces_std[far] > out.forces_std[far])
    # the energies' own cap, 30 (before the composition variance: compare without it)
    plain, out = (w.predict(surfaces, composition=False) for w in (
        llpr.copy().calibrate(val, extrapolation=0), capped))
    energy = out.calibration_excess ** llpr.default_widening()["energy"]
    assert np.any(energy > 30.0)  # (at 30, not at the forces' 10)
    bound = capped.recalibrator_.std_range_["energy_bound"] * np.asarray(out.n_atoms)
    inside = out.energy_std < bound / 3
    assert inside[energy > 30.0].any()
    np.testing.assert_allclose(out.energy_std[inside],
                               (plain.energy_std * np.minimum(energy, 30.0))[inside], rtol=2e-9)


def test_defaults_agree():
    from mlipuq.cli import build_parser
    from mlipuq.uq import DeepEnsemble, ShallowEnsemble

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    fit = sub.choices["fit"]
    assert next(a.default for a in fit._actions if a.dest == "extrapolation") is None
    from mlipuq.uq import EvidentialHead, LatentDistance

    # the powers chosen on the shift benchmark's nine systems (extrapolation.py), valid;
    # the evidential head's and the shallow ensemble's forces r ** 1 and the deep
    # ensemble's r ** 0.75 since their rounds (2026-12-05)
    for cls in (LastLayerLaplace, LatentDistance, DeepEnsemble):
        assert check_power(cls.default_extrapolation) == {"energy": 1.0, "forces": 0.75}
    for cls in (EvidentialHead, ShallowEnsemble):
        assert check_power(cls.default_extrapolation) == {"energy": 1.0, "forces": 1.0}
    # the help of `mlipuq fit --extrapolation` states them (it had gone stale twice)
    help_ = " ".join(next(a.help for a in fit._actions if a.dest == "extrapolation").split())
    assert "forces 0.75 (evidential, shallow 1), energies 1;" in help_


def test_soft_cap_saturates_without_overflow_in_float32():
    # (var/cap)^8 overflows float32 beyond ~6.5e4 x the cap: the bound must not turn
    # a huge variance into 0 (the evidential head's variances may be float32)
    import torch

    from mlipuq.calibration.extrapolation import soft_cap
    var = torch.tensor([1e-30, 0.5, 1.0, 1e5, 1e30], dtype=torch.float32)
    capped = var * soft_cap(var, torch.tensor(1.0))
    expected = [1e-30, 0.5 * (1 + 0.5**8) ** (-1 / 8), 2 ** (-1 / 8), 1.0, 1.0]
    np.testing.assert_allclose(capped.numpy(), expected, rtol=1e-6)
    assert capped.dtype == torch.float32
