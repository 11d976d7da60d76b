"""Two processes (torch.distributed, gloo) give what one process gives.

One worker script (``tests/helpers/distributed_worker.py``) fits an LLPR,
calibrates it, predicts and evaluates a pool and runs every selection
strategy, fits LatentDistance alone and combined with the LLPR, and takes
mean stresses; it is run once as a single process and once under
``torchrun`` with two ranks. Everything is compared: the covariance and hyperparameters to
1e-10 relative, predictions and metrics likewise, the selected indices
exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlipuq
from mlipuq import distributed

from conftest import ETHANOL_SMALL, make_model, unlabelled

WORKER = Path(__file__).parent / "helpers" / "distributed_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, folder, world):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        env.pop(key, None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [dict(np.load(folder / f"out_{world}_{r}.npz")) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    make_model().save(folder / "model.pt")
    data = mlipuq.load(ETHANOL_SMALL)
    data[:11].write(folder / "train.xyz")
    data[11:16].write(folder / "val.xyz")
    # an odd-sized pool with repeated structures (ties, and copies batch_llpr removes)
    pool = mlipuq.AtomsDataset(list(data) + list(data[:5]) + list(data[16:]))
    unlabelled(pool).write(folder / "pool.xyz")
    data.write(folder / "test.xyz")  # no copies: rank metrics need no ties
    single = run([sys.executable, str(WORKER), str(folder)], folder, 1)
    double = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                  str(WORKER), str(folder)], folder, 2)
    metrics = {w: [json.loads((folder / f"metrics_{w}_{r}.json").read_text()) for r in range(w)]
               for w in (1, 2)}
    return single[0], double, metrics, pool


def close(a, b, rtol=1e-10):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or not np.array_equal(np.isinf(a), np.isinf(b)):
        return False
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]  # fps scores its random first pick inf
    scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-300)
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0.0)) <= rtol * scale


def test_llpr_covariance_and_hyperparameters_equal_one_process(runs):
    single, double, _, _ = runs
    for rank in double:
        for key in ("gn_energy", "gn_forces", "precision", "covariance", "hyper",
                    "energy_hyper", "energy_covariance"):
            assert close(single[key], rank[key]), key


def test_calibrated_predictions_equal_one_process(runs):
    single, double, _, _ = runs
    for rank in double:
        for key in ("energy", "energy_var", "forces", "forces_var", "forces_t"):
            assert close(single[key], rank[key]), key


@pytest.mark.parametrize("combination", ["sum", "max"])
def test_llpr_with_its_term_equals_one_process(runs, combination):
    """LLPR's latent term fitted on shards (its energies jointly or apart) predicts what
    one process's does, on both ranks alike."""
    single, double, _, _ = runs
    for target in ("energy_var", "forces_var"):
        key = f"llpr_{combination}_{target}"
        np.testing.assert_array_equal(double[0][key], double[1][key])
        assert close(single[key], double[0][key], 1e-9), key


def test_evaluate_metrics_equal_one_process(runs):
    _, _, metrics, _ = runs
    one = metrics[1][0]
    for rank in metrics[2]:
        for target, values in one.items():
            for name, value in values.items():
                other = rank[target][name]
                if value is None:
                    assert other is None, (target, name)
                else:
                    assert other == pytest.approx(value, rel=1e-9, abs=1e-12), (target, name)


LATENT_KEYS = ("features", "scales", "means", "structure", "maps", "energy_var", "forces_var")


@pytest.mark.parametrize("name", ["latent", "latent_llpr", "latent_held_out"])
def test_latent_distance_fit_shards_equal_one_process(runs, name):
    # each rank computes the features of its share of the reference and held-out
    # structures; the gathered fit equals one process's, bit for bit on both ranks
    single, double, _, _ = runs
    for key in LATENT_KEYS:
        np.testing.assert_array_equal(double[0][f"{name}_{key}"], double[1][f"{name}_{key}"])
        assert close(single[f"{name}_{key}"], double[0][f"{name}_{key}"], 1e-9), key
    assert single[f"{name}_maps"][-1] == 11  # every training structure is in the reference
    # the 11 reference and 5 held-out structures: all in one process, shares on two ranks
    # (with the held-out covariance the held-out structures twice: descriptors, then map)
    twice = name == "latent_held_out"
    np.testing.assert_array_equal(single[f"{name}_seen"], [11, 5] + [5] * twice)
    np.testing.assert_array_equal(double[0][f"{name}_seen"], [5, 2] + [2] * twice)
    np.testing.assert_array_equal(double[1][f"{name}_seen"], [6, 3] + [3] * twice)
    if twice:
        assert single[f"{name}_structure"][-1] > 0  # the chosen diagonal term


def test_latent_distance_bad_structure_in_one_share_fails_every_rank(runs):
    # the 10th reference structure has no forces: one process names it; on two ranks
    # rank 1 (whose share holds it) names it too, and rank 0 raises instead of waiting
    single, double, _, _ = runs
    assert str(single["latent_error"]) == \
        "MissingReferenceError: structure 9: no reference forces"
    assert str(double[1]["latent_error"]) == str(single["latent_error"])
    assert str(double[0]["latent_error"]).startswith("RankFailedError: rank 1 failed: ")
    assert "structure 9: no reference forces" in str(double[0]["latent_error"])


def test_mean_stress_shards_equal_one_process(runs):
    """``mean_stress`` (calibrate's strain pass) shards like ``predict``; a structure
    without a stress in rank 1's share fails every rank, rank 1 naming it."""
    single, double, _, _ = runs
    for rank in double:
        assert close(single["mean_stress"], rank["mean_stress"])
    assert single["mean_stress"].shape == (5, 3, 3)
    assert str(single["stress_error"]).startswith("InvalidStructureError: structure 4: ")
    assert str(double[1]["stress_error"]) == str(single["stress_error"])
    assert str(double[0]["stress_error"]).startswith("RankFailedError: rank 1 failed: ")


@pytest.mark.parametrize("strategy", ["random", "max_energy_std", "max_force_std",
                                      "trust_window", "fps", "fps_labelled", "batch_llpr",
                                      "batch_llpr_fitted"])
def test_every_strategy_selects_the_same_indices(runs, strategy):
    single, double, _, pool = runs
    # an exact copy ties with its original; which of the two a process picks first
    # depends on the last bit of its score, so picks are compared up to copies
    first = {}
    canonical = np.array([first.setdefault(a.positions.tobytes() + a.numbers.tobytes(), i)
                          for i, a in enumerate(pool)])
    expected = single[f"select_{strategy}"]
    assert len(expected) > 0
    for rank in double:
        picked = rank[f"select_{strategy}"]
        np.testing.assert_array_equal(canonical[picked], canonical[expected])
        assert close(single[f"scores_{strategy}"], rank[f"scores_{strategy}"], 1e-9)


def test_batch_llpr_skips_copies_in_both(runs):
    # the pool holds frames 0-4 twice; a pick's copy is never picked again
    single, _, _, pool = runs
    picks = single["select_batch_llpr"]
    positions = [tuple(np.round(pool[int(i)].positions.ravel()[:6], 8)) for i in picks]
    assert len(set(positions)) == len(picks)


def test_shards_cover_the_data_in_order():
    for n in (0, 1, 5, 41):
        for world in (1, 2, 3, 7):
            bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_single_process_is_untouched():
    assert not distributed.init()  # no launcher variables here
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    np.testing.assert_array_equal(distributed.all_reduce_sum([1.0, 2.0]), [1.0, 2.0])
    assert distributed.global_argmax(np.array([1.0, 3.0, 3.0]), offset=4) == (5, 3.0)
