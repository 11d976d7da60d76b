"""Progress bars name what they run, count in units and advance per structure."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ETHANOL_SMALL, make_model, unlabelled

import mlipuq
from mlipuq import active, progress
from mlipuq.active import scoring
from mlipuq.training import _postfix
from mlipuq.uq import DeepEnsemble, ShallowEnsemble


@pytest.fixture(scope="module")
def data():
    return mlipuq.load(ETHANOL_SMALL)


def _trainable(seed: int = 0):
    """A small float32 model with reference energies set (no composition warning)."""
    return make_model(torch.float32, seed=seed)


@pytest.fixture(scope="module")
def ensemble():
    """A fitted two-member committee (no training needed)."""
    return DeepEnsemble([make_model(seed=0), make_model(seed=1)])


def _final_line(err: str, desc: str) -> str:
    """The last state tqdm wrote of the bar whose description starts with ``desc``."""
    states = [s for s in re.split(r"[\r\n]", err) if s.strip().startswith(desc)]
    assert states, f"no bar {desc!r} in {err!r}"
    return states[-1]


def _recording(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` (a bar factory) so that each bar's updates are recorded."""
    made, factory = [], getattr(module, name)

    def record(*args, **kwargs):
        shown = factory(*args, **kwargs)
        steps, update = [], shown.update
        shown.update = lambda n=1: (steps.append(n), update(n))[1]
        made.append((shown, steps))
        return shown

    monkeypatch.setattr(module, name, record)
    return made


def test_bar_counts_integer_units_and_can_be_disabled(capsys):
    with progress.bar(3, "work (Thing)", "step", initial=5) as shown:
        assert shown.n == 3 and shown.unit == "step" and not shown.disable
    assert progress.bar(3, "quiet", enabled=False).disable
    assert "3/3" in _final_line(capsys.readouterr().err, "work (Thing)")


def test_predict_bar_names_wrapper_and_counts_structures(ensemble, data, capsys,
                                                          monkeypatch):
    made = _recording(monkeypatch, progress, "bar")
    ensemble.predict(data[:5], batch_size=2, progress=True)
    line = _final_line(capsys.readouterr().err, "predict (DeepEnsemble)")
    assert "5/5" in line and "structure" in line
    (shown, steps), = made
    assert steps == [2, 2, 1] and shown.n == shown.total == 5


def test_predict_without_progress_writes_nothing(ensemble, data, capsys):
    ensemble.predict(data[:3], batch_size=2)
    assert "predict" not in capsys.readouterr().err


def test_scoring_bar_advances_per_forward_pass_not_per_chunk(ensemble, data, capsys,
                                                             monkeypatch):
    made = _recording(monkeypatch, scoring, "progress_bar")
    pool = unlabelled(data[:7])
    scores = active.score_pool(ensemble, pool, chunk_size=3, batch_size=2, progress=True)
    assert scores.shape == (7,)
    err = capsys.readouterr().err
    line = _final_line(err, "scoring max_force_std (DeepEnsemble)")
    assert "7/7" in line and "structure" in line
    assert "predict (" not in err  # the chunks' predict calls open no bars of their own
    (shown, steps), = made
    # chunks of 3, 3, 1 structures, each predicted in batches of at most 2
    assert steps == [2, 1, 2, 1, 1] and shown.n == 7


def test_feature_bar_counts_structures(ensemble, data, capsys, monkeypatch):
    made = _recording(monkeypatch, progress, "bar")
    scoring.mean_features(ensemble, data[:5], batch_size=2, progress=True)
    line = _final_line(capsys.readouterr().err, "mean features (DeepEnsemble)")
    assert "5/5" in line and "structure" in line
    assert made[0][1] == [2, 2, 1]


def test_training_bar_names_model_and_shows_mev(data, capsys):
    model = _trainable()
    mlipuq.train(model, data[:4], epochs=2, batch_size=4, progress=True)
    line = _final_line(capsys.readouterr().err, "training MiniMLIP")
    assert "2/2" in line and "epoch" in line
    assert re.search(r"train E MAE=[-+.\de]+ meV/atom", line)
    assert re.search(r"train F MAE=[-+.\de]+ meV/Å", line)


def test_training_desc_overrides_and_deep_members_are_named(data, capsys):
    model = _trainable()
    mlipuq.train(model, data[:2], epochs=1, progress=True, desc="my run")
    assert "1/1" in _final_line(capsys.readouterr().err, "my run")
    DeepEnsemble.train(lambda s: _trainable(seed=s), data[:2], n_members=2,
                       epochs=1, progress=True)
    err = capsys.readouterr().err
    for k in (1, 2):
        assert "1/1" in _final_line(err, f"training DeepEnsemble member {k}/2 (MiniMLIP)")


def test_shallow_ensemble_heads_are_named(data, capsys):
    base = _trainable()
    mlipuq.train(base, data[:4], epochs=1, progress=False)
    ShallowEnsemble(base, n_heads=2).fit(data[:4], data[4:6], epochs=1, progress=True)
    line = _final_line(capsys.readouterr().err, "training ShallowEnsemble heads")
    assert re.search(r"val E MAE=[-+.\de]+ meV/atom", line)
    assert re.search(r"val F MAE=[-+.\de]+ meV/Å", line)


def test_postfix_converts_to_mev():
    row = {"val_energy_mae": 0.0032, "val_forces_mae": 0.041, "train_forces_mae": 2.5,
           "train_energy_mae": 1.0}
    shown = _postfix(row, 0.5)
    assert shown == {"loss": "0.5", "val E MAE": "3.2 meV/atom", "val F MAE": "41 meV/Å",
                     "train F MAE": "2500 meV/Å"}
