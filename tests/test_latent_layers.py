"""``LatentDistance(features="all_layers")``, the default where the model names its
layers: the features it measures distances in
(every message-passing layer's invariants, then the readout's, checked against the
layers run by hand), the models that cannot serve them, the shallow ensemble's and
the evidential head's terms with the option, and ``fit --features``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mlipuq
from mlipuq import cli
from mlipuq.models import wrap
from mlipuq.testing import check_uq_wrapper
from mlipuq.uq import EvidentialHead, LatentDistance, ShallowEnsemble, latent_features
from mlipuq.uq import load as load_wrapper


def _layers_by_hand(model, batch) -> list[torch.Tensor]:
    """MiniMLIP's invariant features after each message-passing layer, run step by step
    as ``per_atom_energy`` runs them (no hook)."""
    vectors = batch.edge_vectors()
    r = torch.linalg.norm(vectors, dim=-1)
    rbf, envelope = model.rbf(r), model.rbf.envelope(r)
    s = model.embedding(model.species_index(batch))
    v = torch.zeros(s.shape[0], 3, s.shape[1], dtype=s.dtype)
    layers = []
    for interaction, update in zip(model.interactions, model.updates):
        s, v = interaction(s, v, batch.edge_index, rbf, envelope,
                           vectors / r.unsqueeze(-1), 1.0 / model.avg_num_neighbors)
        s, v = update(s, v)
        layers.append(s)
    return layers


def test_features_are_every_layer_then_the_readout(base, ethanol):
    """The (N, n_layers × width + F) features: each layer's invariants in order, then
    the readout's input; ``"readout"`` is the readout's input alone."""
    wrapper = LatentDistance(base, features="all_layers")
    batch = base.collate(list(ethanol[:3]))
    _, phi = latent_features.model_pass(wrapper, batch, forces=False)
    with torch.no_grad():
        expected = torch.cat([*_layers_by_hand(base, batch), base.per_atom_features(batch)], 1)
    width = base.width
    assert phi.shape == (len(batch.numbers), 2 * width + base.n_features)
    np.testing.assert_allclose(phi, expected.double().numpy(), rtol=1e-6, atol=1e-7)
    _, readout = latent_features.model_pass(LatentDistance(base, features="readout"), batch,
                                            forces=True)
    np.testing.assert_allclose(readout, phi[:, 2 * width:], rtol=1e-6, atol=1e-7)


def test_passes_the_check_suite(base, ethanol):
    """Rotation invariance, batching, save/load and the rest, as for every wrapper."""
    check_uq_wrapper(LatentDistance(base, features="all_layers"), ethanol[:14],
                     fit_kwargs={})


def test_every_layer_is_the_default_saved_and_loaded(base, ethanol, tmp_path):
    """``features=None`` (the default since 2026-12-06) measures in every layer's
    features where the model names its layers; saved and loaded with them, while the
    readout's are saved without the key, as files saved before, which load with them."""
    wrapper = LatentDistance(base).fit(ethanol[:14], ethanol[14:])
    assert wrapper.features == "all_layers" and "features=" not in repr(wrapper)
    wrapper.save(tmp_path / "w.pt")
    loaded = load_wrapper(tmp_path / "w.pt")
    assert loaded.features == "all_layers" and repr(loaded) == repr(wrapper)
    np.testing.assert_array_equal(loaded.predict(ethanol[14:]).forces_std,
                                  wrapper.predict(ethanol[14:]).forces_std)
    readout = LatentDistance(base, features="readout")
    assert "features" not in readout.config()  # older files' fingerprint
    assert "features='readout'" in repr(readout)
    older = {k: v for k, v in wrapper.config().items() if k != "features"}
    assert LatentDistance._from_config([base], older).features == "readout"


class _Layered(nn.Module):
    """A per-atom energy linear in features, with one named 'layer' whose output is
    ``shape``-d: (N, 4) invariant, or (N, 3, 4) vector features (not invariant)."""

    def __init__(self, vector: bool):
        super().__init__()
        self.embed = nn.Embedding(2, 4)
        self.vector = vector
        self.layer = nn.Identity()
        self.readout = nn.Linear(4, 1)

    def forward(self, batch):
        s = self.embed((batch.numbers == 8).long())
        self.layer(s.unsqueeze(1).expand(-1, 3, -1) if self.vector else s)
        return self.readout(torch.tanh(s)).squeeze(-1)


def test_models_that_cannot_serve_it_are_refused(ethanol):
    """A model naming no layers, an unknown choice and a layer with non-invariant
    (N, 3, F) output: each a ValueError saying what to do."""
    plain = wrap(_Layered(False), species=["H", "C", "O"], cutoff=3.0, readout="readout")
    with pytest.raises(ValueError, match="layer_modules.*features='readout'"):
        LatentDistance(plain, features="all_layers")
    with pytest.raises(ValueError, match="features must be one of"):
        LatentDistance(plain, features="layers")
    assert LatentDistance(plain).features == "readout"  # the default where none are named
    vector = wrap(_Layered(True), species=["H", "C", "O"], cutoff=3.0, readout="readout")
    vector.layer_modules = lambda: [vector.module.layer]
    wrapper = LatentDistance(vector, features="all_layers")
    with pytest.raises(ValueError, match=r"one \(N=9, F\) invariant output per layer"):
        latent_features.model_pass(wrapper, vector.collate([ethanol[0]]), forces=False)


def _fit(files, method, out, *extra) -> int:
    argv = ["fit", method, "-m", str(files["model"]), "--train", str(files["train"]),
            "--val", str(files["val"]), "--out", str(out), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few structures
        return cli.main(argv)


def check_latent_flag(model, ethanol, tmp_path, capsys, flag, value, attribute,
                      terms: dict) -> None:
    """``fit latent FLAG VALUE`` saves a wrapper whose ``attribute`` is ``value``, as
    ``--latent`` does for the term it adds, ``fit llpr FLAG VALUE`` for LLPR's own term,
    and ``fit shallow|evidential FLAG V`` for their latent terms (``terms``: V of each,
    one that is not its default); elsewhere, and with ``--score none``, the flag is a
    user error."""
    files = {"model": tmp_path / "m.pt", "train": tmp_path / "train.extxyz",
             "val": tmp_path / "val.extxyz"}
    model.save(files["model"])
    ethanol[:14].write(files["train"])
    ethanol[14:].write(files["val"])
    assert _fit(files, "latent", tmp_path / "a.pt", flag, value) == 0
    assert getattr(load_wrapper(tmp_path / "a.pt"), attribute) == value
    assert _fit(files, "llpr", tmp_path / "b.pt", "--latent", "forces", flag, value) == 0
    assert getattr(load_wrapper(tmp_path / "b.pt"), attribute) == value
    assert _fit(files, "llpr", tmp_path / "c.pt", flag, value) == 0
    assert getattr(load_wrapper(tmp_path / "c.pt").distance_, attribute) == value
    assert _fit(files, "deep", tmp_path / "d.pt", flag, value) == 2
    assert f"{flag} is a latent or --latent option" in capsys.readouterr().err
    for method, term_value in terms.items():
        out = tmp_path / f"{method}.pt"
        assert _fit(files, method, out, flag, term_value, "--epochs", "2") == 0
        assert getattr(load_wrapper(out).distance_, attribute) == term_value
    assert _fit(files, "evidential", tmp_path / "none.pt", "--score", "none", flag, value) == 2
    assert f"{flag} is a latent or --latent option" in capsys.readouterr().err


def test_cli_features_flag(base, ethanol, tmp_path, capsys):
    check_latent_flag(base, ethanol, tmp_path, capsys, "--features", "all_layers", "features",
                      {"shallow": "readout", "evidential": "readout"})  # not their default


@pytest.mark.parametrize("cls", [ShallowEnsemble, EvidentialHead])
def test_wrappers_terms_measure_every_layer(cls, base, ethanol, tmp_path, monkeypatch):
    """With ``distance_features="all_layers"`` the shallow ensemble's and the evidential
    head's latent terms are fitted on every layer's features, and at predict the
    wrapper's own pass feeds them the features LatentDistance's pass reads; saved and
    loaded; files without the key (and wrappers without a term) keep the readout's."""
    train, val = ethanol[:14], ethanol[14:]
    wrapper = cls(base, distance_features="all_layers").fit(
        train, val, epochs=2, batch_size=8, seed=0, progress=False)
    terms = [t for t in (wrapper.distance_, getattr(wrapper, "energy_distance_", None)) if t]
    width = 2 * base.width + base.n_features
    assert all(t.features == "all_layers" for t in terms)
    assert all(g["means"].shape[-1] == width for g in wrapper.distance_.gmm_.values())
    seen, latent_parts = [], LatentDistance.latent_parts
    monkeypatch.setattr(LatentDistance, "latent_parts",
                        lambda self, phi, batch: seen.append(phi) or latent_parts(self, phi, batch))
    wrapper.predict(val[:2], batch_size=2)
    _, expected = latent_features.model_pass(terms[0], base.collate(list(val[:2])), False)
    assert len(seen) == len(terms) and expected.shape[1] == width
    for phi in seen:
        np.testing.assert_allclose(phi, expected, rtol=1e-6, atol=1e-7)
    monkeypatch.undo()
    wrapper.save(tmp_path / "w.pt")
    loaded = load_wrapper(tmp_path / "w.pt")
    assert cls(base).distance_features == "all_layers"  # the default since 2026-12-06
    # the evidential head's repr lists its term's settings that differ from the head alone's
    assert ("distance_features=" in repr(wrapper)) == (cls is EvidentialHead)
    assert repr(loaded) == repr(wrapper) and loaded.distance_features == "all_layers"
    np.testing.assert_array_equal(loaded.predict(val).forces_std, wrapper.predict(val).forces_std)
    older = {k: v for k, v in wrapper.config().items() if k != "distance_features"}
    assert cls._from_config([base], older).distance_features == "readout"
    assert "distance_features" not in cls(base, distance_features="readout").config()
    assert cls(base, distance=None, distance_features="all_layers").distance_features == "readout"
    with pytest.raises(ValueError, match="distance_features must be one of"):
        cls(base, distance_features="layers")
    plain = wrap(_Layered(False), species=["H", "C", "O"], cutoff=3.0, readout="readout")
    with pytest.raises(ValueError, match="distance_features='all_layers' needs a model"):
        cls(plain, distance_features="all_layers")


def atom_scores(wrapper, dataset) -> np.ndarray:
    """The latent scores u of ``dataset``'s atoms under ``wrapper`` (one batch)."""
    batch = wrapper.model.collate(list(dataset))
    _, phi = latent_features.model_pass(wrapper, batch, forces=False)
    return wrapper.scores(phi, batch.numbers.numpy())


def _median_score(wrapper, dataset) -> float:
    return float(np.median(atom_scores(wrapper, dataset)))


def test_wider_cells_score_farther_in_every_layer():
    """Trained on 32-atom Cu cells narrower than twice the cutoff (7.2 Å < 8 Å), the
    atoms of 108-atom cells at the same temperature lie farther from the training atoms
    in every layer's features than in the readout's alone (docs/latent.md: the
    shift the readout features hardly register)."""
    train = mlipuq.datasets.emt("Cu", 24, (300,), seed=0, kinds="bulk", cache=False)
    same = mlipuq.datasets.emt("Cu", 4, (300,), seed=1, kinds="bulk", cache=False)
    wide = mlipuq.datasets.emt("Cu", 2, (300,), seed=2, kinds="bulk", size=3, cache=False)
    from conftest import tiny_model
    model = tiny_model(train.species)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # narrow cells (the point), few structures
        mlipuq.train(model, train[:18], epochs=20, lr=1e-2, seed=0, batch_size=8,
                     progress=False)
        growth = {}
        for features in ("readout", "all_layers"):
            wrapper = LatentDistance(model, features=features).fit(train[:18], train[18:])
            growth[features] = _median_score(wrapper, wide) / _median_score(wrapper, same)
    assert growth["all_layers"] > 1.3 and growth["all_layers"] > 1.2 * growth["readout"], growth


@pytest.mark.parametrize("cls, all_layers, readout", [
    (ShallowEnsemble, {"energy": 0.5, "forces": 0.5}, {"energy": 1.0, "forces": 1.0}),
    (EvidentialHead, {"energy": 0.75, "forces": 0.5}, {"energy": 1.0, "forces": 1.0}),
    (LatentDistance, {"energy": 0.75, "forces": 0.5}, {"energy": 1.0, "forces": 0.75})])
def test_default_widening_follows_the_terms_features(cls, all_layers, readout, base, ethanol):
    """The wrappers' latent distances read every layer where the model names its layers
    (readout features otherwise), and ``calibrate`` then widens by the powers measured
    for them (the shallow ensemble's r ** 0.5, the evidential head's and latent
    distance's forces r ** 0.5 and energies r ** 0.75), by their readout powers
    otherwise (docs/shift.md, "Every layer's features for the wrappers' terms", "Every
    layer's features as latent distance's default", "A milder energy widening for
    every layer's features")."""
    plain = wrap(_Layered(False), species=["H", "C", "O"], cutoff=3.0, readout="readout")
    name = "features" if cls is LatentDistance else "distance_features"
    assert getattr(cls(plain), name) == "readout"
    if cls is not LatentDistance:
        assert cls(base, distance=None).distance_features == "readout"
    assert cls(base).default_widening() == all_layers
    options = {} if cls is LatentDistance else dict(epochs=2, batch_size=8, progress=False)
    for features, powers in {"all_layers": all_layers, "readout": readout}.items():
        wrapper = cls(base, **{name: features}).fit(ethanol[:14], ethanol[14:], seed=0,
                                                    **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few structures
            wrapper.calibrate(ethanol[14:])
        assert wrapper.recalibrator_.extrapolation == powers, features
