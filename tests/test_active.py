"""Active-learning selection: strategies, pool scoring, harvesting and the CLI."""

from __future__ import annotations

import argparse

import ase.io
import numpy as np
import pytest
from conftest import make_model, unlabelled

import mlipuq
from mlipuq import active, schema
from mlipuq.active import cli as active_cli
from mlipuq.uq import DeepEnsemble, LastLayerLaplace


@pytest.fixture(scope="module")
def data():
    from conftest import ETHANOL_SMALL

    return mlipuq.load(ETHANOL_SMALL)


@pytest.fixture(scope="module")
def llpr(data):
    # fixed small noise so that labelling a structure visibly shrinks its variance
    return LastLayerLaplace(make_model(), prior_precision=1.0, energy_noise=0.01,
                            forces_noise=0.1, n_samples=4, distance=None).fit(data[:8])


# ------------------------------------------------------------------ batch_llpr
def test_rank_one_updates_equal_explicit_bayesian_update():
    rng = np.random.default_rng(0)
    n, d, noise = 40, 6, 0.3
    feats = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    a = rng.normal(size=(d, d))
    precision = a @ a.T + 0.5 * np.eye(d)
    idx, var, initial = active.greedy_llpr(feats, np.linalg.inv(precision), noise, 8)
    p = precision.copy()
    np.testing.assert_allclose(initial, np.einsum("ij,jk,ik->i", feats, np.linalg.inv(p), feats))
    taken = []
    for j, v in zip(idx, var):
        cov = np.linalg.inv(p)  # re-invert the Gauss-Newton precision from scratch
        scores = np.einsum("ij,jk,ik->i", feats, cov, feats)
        scores[taken] = -np.inf
        assert j == int(np.argmax(scores))
        np.testing.assert_allclose(v, scores[j], rtol=1e-9)
        p = p + np.outer(feats[j], feats[j]) / noise
        taken.append(j)
    assert len(set(idx.tolist())) == len(idx)


def test_batch_llpr_scores_are_the_llpr_energy_std(llpr, data):
    pool = unlabelled(data[8:])
    sel = active.select(llpr, pool, 3, strategy="batch_llpr", batch_size=5)
    pred = llpr.predict(pool, calibrated=False)
    np.testing.assert_allclose(sel.pool_scores, pred.energy_std, rtol=1e-8)
    assert sel.indices[0] == np.argmax(pred.energy_std)
    np.testing.assert_allclose(sel.scores[0], pred.energy_std.max(), rtol=1e-8)
    assert np.all(np.diff(sel.scores) <= 1e-12)  # a greedy pick never has a larger variance
    assert sel.scores.dtype == np.float64 and sel.unit == "eV"


def test_batch_llpr_avoids_duplicates_where_max_std_does_not(llpr, data):
    pool = unlabelled(data[8:])
    top = int(np.argmax(llpr.predict(pool).energy_std))
    copies = unlabelled([pool[top]] * 10)
    pool = copies + pool
    greedy = active.select(llpr, pool, 4, strategy="batch_llpr")
    naive = active.select(llpr, pool, 4, strategy="max_energy_std")
    same = set(range(10)) | {10 + top}  # the copies and the original
    assert sum(int(i) in same for i in greedy.indices) == 1
    assert all(int(i) in same for i in naive.indices)


def _copies_picked(sel, same) -> int:
    return sum(int(i) in same for i in sel.indices)


def test_noise_free_conditioning_drops_copies_to_zero():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(12, 5))
    feats = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:]])  # 6 copies of row 0
    cov = np.eye(5)
    scale = np.einsum("ij,jk,ik->i", feats, cov, feats).max()
    idx, var, initial = active.greedy_llpr(feats, cov, 1e-8 * scale, 5)
    assert var[0] == pytest.approx(initial.max()) and np.all(np.diff(var) <= 1e-12)
    remaining = initial.copy()
    # by hand: after conditioning on row j without noise, copies of j have no variance
    f = feats[idx[0]]
    post = cov - np.outer(cov @ f, cov @ f) / (f @ cov @ f + 1e-8 * scale)
    assert f @ post @ f <= 1e-6 * remaining[idx[0]]
    assert sum(int(i) < 6 for i in idx) <= 1 and len(set(idx.tolist())) == 5
    # more picks than distinct rows (12): never a second copy, fewer picks returned
    idx, _, _ = active.greedy_llpr(feats, cov, 1e-8 * scale, 14)
    assert len(idx) == 12 and sum(int(i) < 6 for i in idx) == 1


@pytest.fixture(scope="module")
def emt_pool():
    """The issue's set-up: 40 EMT Cu structures scored by an LLPR on a MiniMLIP
    trained 3 epochs on 60 structures; returns (llpr, pool, most uncertain index)."""
    from mlipuq import datasets
    from mlipuq.models import MiniMLIP

    train = datasets.emt("Cu", 60, (300, 900), seed=5, kinds=("bulk", "vacancy"))
    model = MiniMLIP(["Cu"], seed=0, cutoff=4.5, width=8, n_interactions=1, n_rbf=6,
                     n_readout_features=8)
    mlipuq.train(model, train, None, epochs=3, batch_size=8, lr=3e-3, seed=0, progress=False)
    llpr = LastLayerLaplace(model.double().eval(), n_samples=4, distance=None).fit(train)
    pool = unlabelled(datasets.emt("Cu", 40, (300, 900, 1500), seed=6,
                                   kinds=("bulk", "vacancy", "surface")))
    return llpr, pool, int(np.argmax(llpr.predict(pool).energy_std))


def _with_copies(pool, top, rattle=0.0):
    copies = []
    for seed in range(9):
        atoms = pool[top].copy()
        if rattle:
            atoms.rattle(rattle, seed=seed)
        copies.append(atoms)
    return pool + unlabelled(copies), {top} | set(range(len(pool), len(pool) + 9))


def test_batch_llpr_never_picks_two_copies(emt_pool):
    llpr, pool, top = emt_pool
    pool, same = _with_copies(pool, top)
    for noise in ("none", "fitted"):  # exact copies are excluded in both modes
        sel = active.select(llpr, pool, 10, strategy="batch_llpr", label_noise=noise)
        assert _copies_picked(sel, same) == 1 and len(set(sel.indices.tolist())) == 10
    # conditioned on the first pick's noise-free label, its copies have ~0 variance
    rows, cov = llpr.design_matrix(pool), llpr.energy_covariance_
    f = rows[top]
    s0 = f @ cov @ f
    post = cov - np.outer(cov @ f, cov @ f) / (s0 * (1 + 1e-8))
    assert all(rows[i] @ post @ rows[i] <= 1e-6 * s0 for i in same)


def test_noise_free_labels_skip_near_copies_fitted_noise_does_not(emt_pool):
    llpr, pool, top = emt_pool
    pool, same = _with_copies(pool, top, rattle=1e-3)  # near-duplicates, as MD frames are
    sel = active.select(llpr, pool, 10, strategy="batch_llpr")
    assert _copies_picked(sel, same) == 1 and sel.indices[0] in same
    noisy = active.select(llpr, pool, 10, strategy="batch_llpr", label_noise="fitted")
    assert _copies_picked(noisy, same) >= 5  # each copy keeps s σ²/(σ² + s) with σ² >> s


def test_fitted_label_noise_is_the_noisy_update(emt_pool):
    llpr, pool, _ = emt_pool
    rows = llpr.design_matrix(pool)
    cov, sigma2 = llpr.energy_covariance_, float(llpr.energy_posterior_["energy_noise"]) ** 2
    idx, var, _ = active.greedy_llpr(rows, cov, sigma2, 10)
    sel = active.select(llpr, pool, 10, strategy="batch_llpr", label_noise="fitted")
    assert list(sel.indices) == list(idx)
    np.testing.assert_allclose(sel.scores, np.sqrt(var))
    with pytest.raises(ValueError, match="label_noise"):
        active.select(llpr, pool, 2, strategy="batch_llpr", label_noise="dft")


# ---------------------------------------------------------------------- scores
def test_max_force_std_is_the_dpgen_model_deviation(data):
    ens = DeepEnsemble([make_model(seed=s) for s in range(3)])
    pool = data[:6]
    pred = ens.predict(pool)
    members = pred.forces_members  # (K, N, 3)
    hand = []
    for b in range(len(pool)):
        f = members[:, pred.batch == b]
        dev = np.sqrt(np.mean(np.sum((f - f.mean(axis=0)) ** 2, axis=2), axis=0))  # per atom
        hand.append(dev.max())
    np.testing.assert_allclose(active.force_deviation(pred), hand, rtol=1e-10)
    sel = active.select(ens, pool, 2, strategy="max_force_std", chunk_size=4, batch_size=3)
    np.testing.assert_allclose(sel.pool_scores, hand, rtol=1e-10)
    assert list(sel.indices) == list(np.argsort(hand)[::-1][:2])


def test_streaming_chunks_do_not_change_scores(llpr, data):
    a = active.score_pool(llpr, data, "energy_std_per_atom", chunk_size=3, batch_size=2)
    b = active.score_pool(llpr, data, "energy_std_per_atom", chunk_size=512)
    np.testing.assert_allclose(a, b, rtol=1e-8)  # batching only changes rounding
    np.testing.assert_allclose(b, llpr.predict(data).energy_std / data.n_atoms, rtol=1e-8)


def test_random_is_reproducible(data):
    a = active.select(None, data, 7, strategy="random", seed=3)
    b = active.select(None, data, 7, strategy="random", seed=3)
    c = active.select(None, data, 7, strategy="random", seed=4)
    assert list(a.indices) == list(b.indices) != list(c.indices)
    assert len(set(a.indices.tolist())) == 7 and a.indices.dtype == np.int64


# ------------------------------------------------------------------------- fps
def test_farthest_points_by_hand():
    x = np.array([[0.0], [1.0], [10.0], [4.0], [6.0]])
    idx, d = active.farthest_points(x, 4, reference=np.array([[0.0]]))
    assert list(idx) == [2, 4, 3, 1] or list(idx) == [2, 3, 4, 1]
    np.testing.assert_allclose(d[:2], [10.0, 4.0])


def test_farthest_points_maximise_the_min_distance():
    x = np.random.default_rng(1).normal(size=(60, 3))
    idx, d = active.farthest_points(x, 10, seed=2)
    assert np.isinf(d[0]) and len(set(idx.tolist())) == 10
    for m in range(1, 10):
        dist = np.linalg.norm(x[:, None] - x[idx[:m]][None], axis=2).min(axis=1)
        assert np.isclose(d[m], dist.max()) and np.isclose(dist[idx[m]], dist.max())
    assert list(active.farthest_points(x, 10, seed=2)[0]) == list(idx)


def test_fps_on_a_pool_starts_from_the_labelled_set(llpr, data):
    sel = active.select(llpr, data[8:], 4, strategy="fps", labelled=data[:8])
    feats = active.pool_features(llpr, data, "mean")
    np.testing.assert_allclose(active.pool_features(llpr, data, "llpr"), llpr.design_matrix(data))
    first = np.linalg.norm(feats[8:, None] - feats[None, :8], axis=2).min(axis=1)
    assert sel.indices[0] == np.argmax(first)
    np.testing.assert_allclose(sel.scores[0], first.max())


# ---------------------------------------------------------------- trust window
def test_trust_window_bounds(llpr, data):
    dev = active.score_pool(llpr, data, "max_force_std")
    lo, hi = np.quantile(dev, 0.25), np.quantile(dev, 0.75)
    sel = active.select(llpr, data, 5, strategy="trust_window", lo=lo, hi=hi, seed=1)
    inside = np.where((dev >= lo) & (dev < hi))[0]
    assert set(sel.indices.tolist()) <= set(inside.tolist()) and len(sel) == 5
    assert np.all((sel.scores >= lo) & (sel.scores < hi))
    few = active.select(llpr, data, 15, strategy="trust_window", lo=lo, hi=hi)
    assert sorted(few.indices.tolist()) == sorted(inside.tolist())  # fewer than k in window


def test_trust_levels_from_calibration(llpr, data):
    lo, hi = active.trust_levels(llpr, data[:8])
    np.testing.assert_allclose(lo, np.quantile(active.score_pool(llpr, data[:8]), 0.95))
    assert hi == pytest.approx(4 * lo)
    sel = active.select(llpr, data[8:], 2, strategy="trust_window", calibration=data[:8])
    assert np.all((sel.scores >= lo) & (sel.scores < hi))
    with pytest.raises(ValueError, match="calibration"):
        active.select(llpr, data, 2, strategy="trust_window")
    with pytest.raises(ValueError, match="lo < hi"):
        active.select(llpr, data, 2, strategy="trust_window", lo=0.5, hi=0.1)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("k", [0, -1, 21, 2.5, True])
def test_bad_k(llpr, data, k):
    with pytest.raises(ValueError, match="k must be"):
        active.select(llpr, data, k, strategy="max_force_std")


def test_bad_strategy_and_unfitted(data):
    with pytest.raises(ValueError, match="unknown strategy"):
        active.select(None, data, 2, strategy="best")
    with pytest.raises(ValueError, match="fitted"):
        active.select(LastLayerLaplace(make_model()), data, 2, strategy="max_force_std")
    with pytest.raises(ValueError, match="quantity"):
        active.score_pool(None, data, "nonsense")


# harvesting: tests/test_active_harvest.py (on real run_md frames)


# ------------------------------------------------------------------------- CLI
def test_cli_writes_and_refuses_to_clobber(llpr, data, tmp_path, capsys):
    model, pool, out = tmp_path / "llpr.pt", tmp_path / "pool.extxyz", tmp_path / "sel.extxyz"
    llpr.save(model)
    unlabelled(data[8:]).write(pool)
    parser = argparse.ArgumentParser()
    active_cli.add_parser(parser.add_subparsers(dest="command"))
    argv = ["select", "--model", str(model), "--pool", str(pool), "-k", "3",
            "--strategy", "batch_llpr", "--out", str(out)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    expected = active.select(llpr, unlabelled(data[8:]), 3, strategy="batch_llpr")
    written = ase.io.read(out, ":")
    assert [a.info[schema.POOL_INDEX] for a in written] == list(expected.indices)
    np.testing.assert_allclose([a.info[schema.SCORE] for a in written], expected.scores)
    assert str(expected.indices[0]) in capsys.readouterr().out
    args = parser.parse_args(argv)
    with pytest.raises(FileExistsError, match="exists"):
        args.func(args)
    args = parser.parse_args(argv + ["--overwrite", "--strategy", "random"])
    assert args.func(args) == 0


def test_mlipuq_command_has_select():
    from mlipuq import cli as main_cli

    args = main_cli.build_parser().parse_args(
        ["select", "--model", "m.pt", "--pool", "p.extxyz", "-k", "5", "--strategy",
         "batch_llpr", "--out", "s.extxyz"])
    assert args.command == "select" and args.k == 5 and args.strategy == "batch_llpr"
