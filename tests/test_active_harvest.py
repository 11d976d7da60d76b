"""Harvesting MD frames as active-learning candidates, on real run_md frames."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from conftest import ETHANOL_SMALL, make_model

import mlipuq
from mlipuq import active, schema
from mlipuq.propagation import run_md
from mlipuq.uq import LastLayerLaplace


@pytest.fixture(scope="module")
def llpr():
    data = mlipuq.load(ETHANOL_SMALL)
    return LastLayerLaplace(make_model(), prior_precision=1.0, energy_noise=0.01,
                            forces_noise=0.1, n_samples=4).fit(data[:8])


@pytest.fixture(scope="module")
def frames(llpr):
    start = mlipuq.load(ETHANOL_SMALL)[0]
    run = run_md(start, llpr, ensemble="nve", steps=10, log_every=1, temperature_K=300.0,
                 timestep_fs=0.2, seed=0, progress=False)
    return run.frames


def test_info_keys_are_the_schema():
    assert active.INFO_KEYS is schema.FRAME_UNCERTAINTY
    assert active.INFO_KEYS["max_force_std"] == schema.MAX_FORCE_STD


def test_run_md_frames_carry_the_harvest_keys(frames):
    assert len(frames) == 11
    for key in schema.FRAME_UNCERTAINTY.values():
        assert all(np.isfinite(a.info[key]) and a.info[key] >= 0 for a in frames)


@pytest.mark.parametrize("quantity", ["max_force_std", "energy_std_per_atom"])
def test_stored_scores_need_no_wrapper_and_match_rescoring(llpr, frames, quantity):
    stored = np.array([a.info[schema.FRAME_UNCERTAINTY[quantity]] for a in frames])
    threshold = float(np.median(stored))
    got = active.harvest(frames, None, threshold, quantity=quantity)  # no wrapper needed
    assert [a.info[schema.HARVEST_FRAME] for a in got] == list(np.flatnonzero(stored > threshold))
    np.testing.assert_allclose([a.info[schema.HARVEST_SCORE] for a in got],
                               stored[stored > threshold])
    assert all(a.calc is None for a in got)
    # frames without the key are scored by the wrapper: the same numbers run_md logged
    bare = [a.copy() for a in frames]
    for a in bare:
        a.info.pop(schema.FRAME_UNCERTAINTY[quantity])
    rescored = active.score_pool(llpr, bare, quantity)
    np.testing.assert_allclose(rescored, stored, rtol=1e-6)


def test_harvest_from_a_trajectory_file(frames, tmp_path):
    path = tmp_path / "md.extxyz"
    ase.io.write(path, frames)
    stored = np.array([a.info[schema.MAX_FORCE_STD] for a in frames])
    threshold = float(np.quantile(stored, 0.7))
    got = active.harvest(path, None, threshold)
    assert len(got) == int(np.sum(stored > threshold)) > 0


def test_harvest_validation(llpr, frames):
    with pytest.raises(ValueError, match="threshold"):
        active.harvest(frames, llpr, -1.0)
    with pytest.raises(ValueError, match="quantity"):
        active.harvest(frames, llpr, 0.1, quantity="stress")
    with pytest.raises(ValueError, match="no frames"):
        active.harvest([], llpr, 0.1)
    bare = [a.copy() for a in frames]
    for a in bare:
        a.info.pop(schema.MAX_FORCE_STD)
    with pytest.raises(ValueError, match="uq_model"):
        active.harvest(bare, None, 0.1)
