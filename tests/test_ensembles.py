"""Tests of the committee wrappers: DeepEnsemble and ShallowEnsemble."""

from __future__ import annotations

import copy
import inspect
import os

import numpy as np
import pytest
import torch

import mlipuq
from mlipuq import data as mdata
from mlipuq.errors import NotFittedError
from mlipuq.models import MiniMLIP
from mlipuq.uq.base import load as load_wrapper
from mlipuq.uq import EvidentialHead, LastLayerLaplace, LatentDistance
from mlipuq.uq.ensembles import DeepEnsemble, ShallowEnsemble

from conftest import scaled_about_centroid

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = dict(batch_size=8, progress=False)


def _ethanol(n: int) -> mdata.AtomsDataset:
    for path in (
        os.path.join(HERE, "data", "ethanol_small.xyz"),
        os.path.join(HERE, "data", "ethanol_300.xyz.gz"),
        "/work/shared/data/ethanol/train.xyz",
    ):
        if os.path.exists(path):
            dataset = mdata.load(path, index=f":{n}")
            if len(dataset) >= n:
                return dataset
    from mlipuq.datasets import ethanol

    return ethanol("train")[:n]


def _tiny(species, seed: int = 0, dtype=torch.float32) -> MiniMLIP:
    model = MiniMLIP(species, cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                     n_readout_features=16, seed=seed)
    return model.to(dtype)




def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data():
    ds = _ethanol(20)
    return ds[:14], ds[14:20]


@pytest.fixture(scope="module")
def base_model(data):
    train, val = data
    model = _tiny(train.species, seed=0)
    mlipuq.train(model, train, val, epochs=8, lr=5e-3, seed=0, **FAST)
    return model


@pytest.fixture(scope="module")
def shallow(base_model, data):
    train, val = data
    # 16 heads: with fewer, which posterior directions the heads sample is too random
    # for a robust out-of-distribution check
    return ShallowEnsemble(base_model, n_heads=16).fit(train, val, epochs=2, seed=0, **FAST)


def _heads_alone(ensemble: ShallowEnsemble) -> ShallowEnsemble:
    """The same heads without the latent-distance force and energy terms."""
    alone = ensemble.copy()
    alone.distance, alone.distance_ = None, None
    alone.energy_combination, alone.energy_distance_ = None, None
    return alone


@pytest.fixture(scope="module")
def heads(shallow):
    return _heads_alone(shallow)


@pytest.fixture(scope="module")
def deep(data):
    train, val = data
    return DeepEnsemble.train(
        lambda s: _tiny(train.species, seed=s), train, val,
        n_members=3, epochs=6, lr=1e-2, energy_weight=100.0, **FAST,
    )


# ------------------------------------------------------------------ deep ensemble
def test_deep_mean_and_variance_are_member_statistics(data):
    _, val = data
    members = []
    for seed in range(3):
        m = _tiny(val.species, seed=seed)
        m.set_atomic_energies({1: -13.6, 6: -1029.0, 8: -2041.0})
        members.append(m)
    ensemble = DeepEnsemble(members)
    assert ensemble.fitted_ and len(ensemble) == 3
    assert all(a is not b for a, b in zip(ensemble.models, members))  # owns copies
    pred = ensemble.predict(val, batch_size=4)
    outs = [m.compute(val) for m in members]
    energies = np.stack([o["energy"] for o in outs])
    forces = np.stack([o["forces"] for o in outs])
    np.testing.assert_allclose(pred.energy_members, energies, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.forces_members, forces, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.energy, energies.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.energy_var, np.var(energies, axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pred.forces, forces.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.forces_var, np.var(forces, axis=0), rtol=1e-9, atol=1e-12)
    assert pred.energy_var.dtype == np.float64 and pred.n_members == 3
    # local energies: per-atom energies plus species reference energies
    batch = members[0].collate(list(val))
    offsets = np.array([members[0].atomic_energies[int(z)] for z in batch.numbers])
    local = np.stack([m(batch, forces=False)["per_atom_energy"].detach().double().numpy()
                      for m in members]) + offsets
    np.testing.assert_allclose(pred.atom_energy_var, np.var(local, axis=0), rtol=1e-6, atol=1e-12)


def test_deep_members_must_match():
    a = _tiny(["H", "C", "O"])
    with pytest.raises(ValueError, match="species"):
        DeepEnsemble([a, _tiny(["H", "C"])])
    b = MiniMLIP(["H", "C", "O"], cutoff=5.0, width=8, n_interactions=1, n_rbf=4)
    with pytest.raises(ValueError, match="cutoff"):
        DeepEnsemble([a, b])
    with pytest.raises(ValueError, match="at least 2"):
        DeepEnsemble([a])
    with pytest.raises(ValueError, match="more than once"):
        DeepEnsemble([a, a])
    with pytest.raises(TypeError):
        DeepEnsemble([a, torch.nn.Linear(2, 1)])
    with pytest.raises(ValueError, match="distinct"):
        DeepEnsemble.train(lambda s: _tiny(["H"], seed=s), [], seeds=[1, 1])
    with pytest.raises(ValueError, match="n_members"):
        DeepEnsemble.train(lambda s: _tiny(["H"], seed=s), [], n_members=1)


def test_deep_train_seeds_bootstrap_and_reproducibility(data):
    train, val = data
    small = train[:8]
    calls = []

    def make(seed):
        calls.append(seed)
        return _tiny(small.species, seed=seed)

    runs = [
        DeepEnsemble.train(make, small, seeds=[3, 7], bootstrap=True, epochs=1, **FAST)
        for _ in range(2)
    ]
    assert calls == [3, 7, 3, 7]
    assert runs[0].seeds_ == [3, 7]
    idx = runs[0].bootstrap_indices_
    assert len(idx) == 2 and all(len(i) == len(small) for i in idx)
    assert not np.array_equal(idx[0], idx[1])
    p0, p1 = (r.predict(val[:4]) for r in runs)
    np.testing.assert_array_equal(p0.energy_members, p1.energy_members)
    np.testing.assert_array_equal(p0.forces_var, p1.forces_var)


def test_deep_save_load_exact(deep, data, tmp_path):
    _, val = data
    path = tmp_path / "deep.pt"
    deep.save(path)
    loaded = load_wrapper(path)
    assert isinstance(loaded, DeepEnsemble) and loaded.seeds_ == deep.seeds_
    a, b = deep.predict(val), loaded.predict(val)
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.energy_var, b.energy_var)
    np.testing.assert_array_equal(a.forces_members, b.forces_members)


# --------------------------------------------------------------- shallow ensemble
def test_shallow_invalid_arguments(base_model, data):
    with pytest.raises(ValueError, match="n_heads"):
        ShallowEnsemble(base_model, n_heads=1)
    with pytest.raises(ValueError, match="init"):
        ShallowEnsemble(base_model, init="xavier")
    with pytest.raises(TypeError):
        ShallowEnsemble(torch.nn.Linear(3, 1))
    with pytest.raises(NotFittedError):
        ShallowEnsemble(base_model).predict(data[1][:1])


def test_shallow_forces_match_per_head_models(heads, data):
    """The vectorised forces equal each head used as the readout of its own model."""
    shallow = heads
    _, val = data
    structures = val[:3]
    pred = shallow.predict(structures)
    K = shallow.n_heads
    assert pred.energy_members.shape == (K, 3)
    assert pred.forces_members.shape == (K, int(structures.n_atoms.sum()), 3)
    local = []
    for k in range(K):
        model = copy.deepcopy(shallow.model)
        with torch.no_grad():
            model.readout.weight.copy_(shallow.head_weight_[k][None, :])
            model.readout.bias.copy_(shallow.head_bias_[k : k + 1])
        ref = model.compute(structures)
        batch = model.collate(list(structures))
        local.append(model(batch, forces=False)["per_atom_energy"].detach().double().numpy())
        # float32 model: the heads sum per-atom energies in float64, the model in float32
        np.testing.assert_allclose(pred.energy_members[k], ref["energy"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(pred.forces_members[k], ref["forces"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pred.energy_var, np.var(pred.energy_members, axis=0), rtol=1e-9)
    np.testing.assert_allclose(pred.atom_energy_var, np.var(local, axis=0), rtol=1e-4, atol=1e-10)
    # the wrapper's readout holds the mean head: its model predicts the ensemble mean
    mean = shallow.model.compute(structures)
    np.testing.assert_allclose(mean["forces"], pred.forces, rtol=0, atol=1e-5)


def test_shallow_forces_match_finite_differences(heads, data):
    wrapper = heads.copy().to(torch.float64)
    atoms = data[1][0].copy()
    pred = wrapper.predict(atoms)
    h = 1e-4
    for atom, axis in [(0, 0), (3, 2), (7, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        e_plus = wrapper.predict(plus).energy_members[:, 0]
        e_minus = wrapper.predict(minus).energy_members[:, 0]
        fd = -(e_plus - e_minus) / (2 * h)
        np.testing.assert_allclose(pred.forces_members[:, atom, axis], fd, rtol=1e-5, atol=1e-6)


def test_shallow_laplace_init_beats_random_and_nll_decreases(base_model, data):
    train, val = data
    runs = {
        init: ShallowEnsemble(base_model, n_heads=6, init=init).fit(
            train, val, epochs=3, seed=1, **FAST)
        for init in ("laplace", "random")
    }
    laplace, random = (runs[k].history_ for k in ("laplace", "random"))
    assert np.all(np.isfinite(laplace["train_loss"]))
    assert laplace["train_loss"][-1] < laplace["train_loss"][0]
    assert min(laplace["val_loss"]) < min(random["val_loss"])
    assert laplace["train_loss"][0] < random["train_loss"][0]
    # training lowers the NLL from the (badly scaled) random start
    assert random["train_loss"][-1] < random["train_loss"][0]
    assert random["val_loss"][-1] < random["val_loss"][0]


def test_shallow_seed_reproducible_and_user_model_untouched(base_model, data):
    train, val = data
    before = _state(base_model)
    grads = [p.requires_grad for p in base_model.parameters()]
    fits = [
        ShallowEnsemble(base_model, n_heads=4, train_backbone=True).fit(
            train[:8], epochs=1, seed=5, **FAST)
        for _ in range(2)
    ]
    assert _same_state(before, _state(base_model))
    assert [p.requires_grad for p in base_model.parameters()] == grads
    assert all(p.requires_grad for p in fits[0].model.parameters())  # restored after training
    # the backbone was trained (wrapper's copy only)
    changed = _state(fits[0].model)
    assert not torch.equal(changed["embedding.weight"], before["embedding.weight"])
    a, b = (f.predict(val[:4]) for f in fits)
    np.testing.assert_array_equal(a.energy_members, b.energy_members)
    np.testing.assert_array_equal(a.forces_var, b.forces_var)
    other = ShallowEnsemble(base_model, n_heads=4, train_backbone=True).fit(
        train[:8], epochs=1, seed=6, **FAST)
    assert not np.array_equal(other.predict(val[:4]).energy_members, a.energy_members)


def test_shallow_frozen_backbone_keeps_features(shallow, base_model):
    before, after = _state(base_model), _state(shallow.model)
    for key in before:
        if not key.startswith("readout"):
            assert torch.equal(before[key], after[key]), key


def test_shallow_heads_on_centred_features(base_model, data):
    """Head weights act on phi - mean(phi): moving a weight cannot shift the mean
    training energy per atom (which the offsets own), and the raw-feature bias
    they imply gives the same per-atom energies."""
    from mlipuq.uq.shallow_ensemble import _Heads, head_members, mean_feature

    train, _ = data
    center = mean_feature(base_model, train)
    (_, batch), = list(mdata.iter_batches(train, base_model.cutoff, len(train),
                                          species=base_model.species, dtype=base_model.dtype))
    phi = base_model.per_atom_features(batch).detach().to(torch.float64)
    assert torch.allclose(center, phi.mean(0), rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, phi.shape[1], generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    heads = _Heads(weight, bias, True, center)
    assert torch.allclose(heads.bias, bias, atol=1e-12)  # same heads, new parameters
    model64 = copy.deepcopy(base_model).double()
    out = head_members(model64, batch.to(dtype=torch.float64), heads.weight, heads.bias,
                       forces=False)
    assert torch.allclose(out["atom_energy"], (phi @ weight.T + bias).T, atol=1e-10)
    out["atom_energy"].mean().backward()
    # uncentred heads would get center / 4 here; float32 features leave ~1e-8
    assert heads.weight.grad.abs().max() < 1e-6 * center.abs().max()
    assert torch.allclose(heads.offset.grad, torch.full((4,), 0.25, dtype=torch.float64))


def test_shallow_save_load_exact(shallow, data, tmp_path):
    _, val = data
    path = tmp_path / "shallow.pt"
    shallow.save(path)
    loaded = load_wrapper(path)
    assert isinstance(loaded, ShallowEnsemble) and loaded.config() == shallow.config()
    a, b = shallow.predict(val), loaded.predict(val)
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.energy_var, b.energy_var)
    np.testing.assert_array_equal(a.forces_var, b.forces_var)
    np.testing.assert_array_equal(a.forces_members, b.forces_members)
    assert loaded.distance == "mahalanobis" and loaded.distance_ is not None


# ------------------------------------------------------ latent-distance term
def test_shallow_distance_term_is_the_latent_distance_combination(shallow, heads, data):
    """The default force term is ``LatentDistance(combine=heads, energy_distance=None)``
    fitted on the same data, bit for bit; the force members are stretched to the
    combined variance (the energies' term: tests/test_shallow_energy_term.py), so they
    are no energy gradients and member-wise MD is refused with a pointer to
    distance=None."""
    train, val = data
    composite = LatentDistance(heads.model, combine=heads, energy_distance=None,
                               features=shallow.distance_features).fit(train, val, batch_size=8)
    raw = dict(calibrated=False, composition=False)
    own, other, alone = (w.predict(val, **raw) for w in (shallow, composite, heads))
    for field in ("energy", "forces", "forces_var", "forces_members"):
        np.testing.assert_array_equal(getattr(own, field), getattr(other, field), err_msg=field)
    np.testing.assert_allclose(own.forces_members.var(axis=0), own.forces_var, rtol=1e-10)
    np.testing.assert_allclose(own.forces_members.mean(axis=0), alone.forces, rtol=0, atol=1e-12)
    term = shallow.distance_
    assert term.forces_a_ > 0  # the latent part is there, everywhere an atom has neighbours
    assert np.all(own.forces_var > term.forces_other_scale_ * alone.forces_var)
    assert not shallow.has_consistent_members and heads.has_consistent_members
    with pytest.raises(ValueError, match=r"distance=None"):
        shallow.members(val, forces=True)
    heads.members(val, forces=True)  # the heads alone: energy gradients


def test_shallow_distance_term_grows_where_the_heads_do_not(shallow, heads, data):
    """Away from the training data (bonds compressed by 10 and 20 %) the heads' force
    spread hardly grows, the latent term does: the default's force variance over the
    heads' rises with the compression (measured 0.77, 2.2, 15)."""
    _, val = data
    raw = dict(calibrated=False, composition=False)
    ratios = []
    for factor in (1.0, 0.9, 0.8):
        structures = val if factor == 1.0 else scaled_about_centroid(val, factor)
        own, alone = shallow.predict(structures, **raw), heads.predict(structures, **raw)
        ratios.append(np.mean(own.forces_var) / np.mean(alone.forces_var))
    assert ratios[0] < ratios[1] < ratios[2] and ratios[2] > 4 * ratios[0], ratios


def test_shallow_distance_none_trains_the_same_heads(shallow, base_model, data):
    train, val = data
    alone = ShallowEnsemble(base_model, n_heads=16, distance=None).fit(
        train, val, epochs=2, seed=0, **FAST)
    assert alone.distance_ is None and "distance" not in alone.config()
    np.testing.assert_array_equal(alone.head_weight_.numpy(), shallow.head_weight_.numpy())
    assert repr(alone).endswith("distance=None)") and "distance" not in repr(shallow)


def test_shallow_distance_term_needs_forces_and_held_out_data(base_model, data):
    train, val = data
    with pytest.raises(ValueError, match="distance must be"):
        ShallowEnsemble(base_model, distance="euclidean")
    with pytest.warns(UserWarning, match="forces_weight=0"):
        energies_only = ShallowEnsemble(base_model, n_heads=3, force_combination="max").fit(
            train, val, epochs=1, seed=0, forces_weight=0.0, **FAST)
    assert energies_only.distance is None and energies_only.distance_ is None
    # saved, and shown, as the heads alone are: the term's settings all fall back
    alone = ShallowEnsemble(base_model, n_heads=3, distance=None)
    assert energies_only.config() == alone.config()
    assert repr(energies_only) == repr(alone)
    with pytest.raises(ValueError, match="pass val or distance=None"):
        ShallowEnsemble(base_model, n_heads=3).fit(train[:1], epochs=1, seed=0, **FAST)


# ---------------------------------------------------------------- both wrappers
@pytest.mark.parametrize("name", ["deep", "shallow"])
def test_uncertainty_grows_far_from_training_data(name, request, data):
    wrapper = request.getfixturevalue(name)
    train, _ = data
    near = wrapper.predict(train)
    # compressed by 20 %: bonds far shorter than anything in the training set
    # (stretching lets pairs leave the 4 Å cutoff, which shrinks forces and their spread)
    far = wrapper.predict(scaled_about_centroid(train, 0.8))
    assert np.median(far.energy_std / far.n_atoms) > np.median(near.energy_std / near.n_atoms)
    assert np.mean(far.forces_std) > np.mean(near.forces_std)


def test_shallow_on_periodic_emt_copper():
    datasets = pytest.importorskip("mlipuq.datasets")
    cu = datasets.emt("Cu", n_structures=6, kinds="bulk", cache=False)
    model = MiniMLIP(["Cu"], cutoff=4.0, width=8, n_interactions=1, n_rbf=6,
                     n_readout_features=8, seed=0)
    wrapper = ShallowEnsemble(model, n_heads=4).fit(cu[:4], epochs=1, seed=0, **FAST)
    assert not model.atomic_energies_set  # the user's model got nothing from fit
    pred = wrapper.predict(cu[4:])
    assert np.all(pred.energy_var > 0) and np.all(pred.forces_var > 0)
    # translation invariance of energies and their spread under periodic images
    shifted = [a.copy() for a in cu[4:]]
    for a in shifted:
        a.positions += np.array([0.7, -0.3, 1.1])
    moved = wrapper.predict(shifted)
    np.testing.assert_allclose(moved.energy_members, pred.energy_members, rtol=0, atol=1e-3)
    # stress of the ensemble mean = mean of the heads' stresses (the energy is linear in heads)
    wrapper = wrapper.copy().to(torch.float64)  # float32 stresses are too noisy to compare
    stresses = []
    for k in range(wrapper.n_heads):
        head = copy.deepcopy(wrapper.model)
        with torch.no_grad():
            head.readout.weight.copy_(wrapper.head_weight_[k][None, :])
            head.readout.bias.copy_(wrapper.head_bias_[k : k + 1])
        stresses.append(head.compute(cu[4], stress=True)["stress"][0])
    np.testing.assert_allclose(wrapper.compute_stress(cu[4]), np.mean(stresses, axis=0),
                               rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------- one fit signature
@pytest.mark.parametrize("wrapper", [ShallowEnsemble, EvidentialHead, DeepEnsemble,
                                     LastLayerLaplace])
def test_every_wrapper_fit_has_one_signature(wrapper):
    """The shared signature; a wrapper's own extra arguments are keyword-only and
    optional (None), so ``fit(train, val)`` means the same for every wrapper."""
    params = inspect.signature(wrapper.fit).parameters
    extra = {"EvidentialHead": ["reference"]}.get(wrapper.__name__, [])
    for name in extra:
        assert params[name].kind == inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is None
    assert [(p.name, p.kind) for p in params.values() if p.name not in extra] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("train", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("val", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("seed", inspect.Parameter.KEYWORD_ONLY),
        ("progress", inspect.Parameter.KEYWORD_ONLY),
        ("method_options", inspect.Parameter.VAR_KEYWORD),
    ]
    assert params["val"].default is None and params["progress"].default is False


@pytest.mark.parametrize("wrapper", [ShallowEnsemble, EvidentialHead])
def test_head_fit_options_are_checked(base_model, data, wrapper):
    train, _ = data
    unfitted = wrapper(base_model)
    with pytest.raises(TypeError, match="unexpected option"):
        unfitted.fit(train[:4], epoch=1)
    for name in ("checkpoint", "parameters", "loss_fn"):
        with pytest.raises(ValueError, match=name):
            unfitted.fit(train[:4], **{name: None})
    with pytest.raises(ValueError, match="both be 0"):
        unfitted.fit(train[:4], energy_weight=0.0, forces_weight=0.0)
    assert wrapper.fit_defaults["epochs"] == {ShallowEnsemble: 50, EvidentialHead: 100}[wrapper]


def test_shallow_fit_attaches_nothing_to_the_model(base_model, data):
    train, val = data
    wrapper = ShallowEnsemble(base_model, n_heads=3)
    modules = [name for name, _ in wrapper.model.named_modules()]
    grads = [p.requires_grad for p in wrapper.model.parameters()]
    wrapper.fit(train[:8], val[:3], epochs=1, seed=0, **FAST)
    assert [name for name, _ in wrapper.model.named_modules()] == modules
    assert [p.requires_grad for p in wrapper.model.parameters()] == grads
    assert "_shallow_ensemble_heads" not in wrapper.model.state_dict()


def test_deep_fit_seed_offsets_member_seeds(data):
    train, _ = data
    ensemble = DeepEnsemble([_tiny(train.species, seed=s) for s in range(2)])
    ensemble.fit(train[:4], seed=3, epochs=1, **FAST)
    assert ensemble.seeds_ == [3, 4]
    with pytest.raises(ValueError, match="not both"):
        ensemble.fit(train[:4], seed=3, seeds=[1, 2], epochs=1, **FAST)
    built = DeepEnsemble.train(lambda s: _tiny(train.species, seed=s), train[:4], seed=7,
                               n_members=2, epochs=1, **FAST)
    assert built.seeds_ == [7, 8]
