"""The SevenNet adapter (mlipuq.models.from_sevennet) against sevenn's own calculator.

SevenNet-0 (11 Jul 2024) ships inside the sevenn wheel, so nothing is
downloaded. sevenn computes in float32; its calculator cannot run in float64
as it stands (its graph builder casts positions and edge vectors to float32 and
its one-hot embedding is always float32), so the float64 comparison uses a
small subclass of SevenNetCalculator that feeds sevenn's own network (and its
force/stress module) float64 inputs, nothing else changed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

pytest.importorskip("sevenn.calculator")

import sevenn._keys as KEY
from ase.calculators.calculator import Calculator, all_changes
from sevenn.atom_graph_data import AtomGraphData
from sevenn.calculator import SevenNetCalculator
from sevenn.train.dataload import unlabeled_atoms_to_graph

import mlipuq
from mlipuq.models import from_sevennet, load
from mlipuq.models.sevennet import SevenNetMLIP, _checkpoint_path
from mlipuq.testing import check_matches_calculator, check_uq_wrapper
from mlipuq.uq import LastLayerLaplace, ShallowEnsemble

warnings.filterwarnings("ignore", message="No tensor product accelerator")


class Float64SevenNetCalculator(SevenNetCalculator):
    """sevenn's calculator with its network in float64 (inputs kept in float64)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.double()
        onehot = self.model._modules["onehot_idx_to_onehot"]

        def to_double(module, inputs, data):
            for key in (module.key_output, module.key_additional_output):
                if key is not None:
                    data[key] = data[key].double()

        onehot.register_forward_hook(to_double)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        graph = unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=False)
        exact = {k: torch.as_tensor(graph[k], dtype=torch.float64)
                 for k in (KEY.POS, KEY.EDGE_VEC, KEY.CELL_VOLUME)}
        data = AtomGraphData.from_numpy_dict(graph)  # casts (in place) to float32
        for key, value in exact.items():
            data[key] = value
        self.results = self.output_to_results(self.model(data))


@pytest.fixture(scope="module")
def model():
    return from_sevennet("7net-0")


@pytest.fixture(scope="module")
def model64():
    return from_sevennet("7net-0", dtype=torch.float64)


@pytest.fixture(scope="module")
def calc32():
    return SevenNetCalculator("7net-0", device="cpu")


@pytest.fixture(scope="module")
def calc64():
    return Float64SevenNetCalculator("7net-0", device="cpu")


@pytest.fixture(scope="module")
def structures():
    """Three acac molecules and two rattled crystals (edges crossing the cell)."""
    test = mlipuq.datasets.acac("test")
    cu = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))  # 8 atoms, triclinic cell
    cu.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.rattle(0.05, seed=2)
    return [test[i] for i in (0, 7, 21)] + [cu, nacl]


@pytest.fixture(scope="module")
def acac():
    return mlipuq.datasets.acac("train")[:4]


def test_model_description(model):
    assert isinstance(model, SevenNetMLIP) and model.dtype == torch.float32
    assert model.cutoff == 5.0 and len(model.species) == 89
    assert {1, 6, 8, 11, 17, 29, 83}.issubset(model.species)
    assert model.n_features == 64 and not model.species_scales
    # SevenNet-0's species shifts are the atomic energies (e.g. H: -3.667 eV)
    assert model.atomic_energies[1] == pytest.approx(-3.667142152786255)


def test_float64_matches_sevenn_exactly(model64, calc64, structures):
    worst = check_matches_calculator(model64, calc64, structures, rtol=1e-6)
    assert worst["energy"] < 1e-12 and worst["forces"] < 1e-12, worst


def test_float32_matches_sevenn_calculator(model, calc32, structures):
    """In float32 (SevenNet's own precision) energies agree to ~1e-7 relative and
    forces to ~3e-6 of the largest component: float32 rounding (autograd through
    positions here, through edge vectors in sevenn)."""
    worst = check_matches_calculator(model, calc32, structures, rtol=2e-5)
    assert worst["energy"] < 1e-6, worst


def test_per_atom_energies_and_stress(model64, calc64, structures):
    """The folded readout plus the species shifts are sevenn's per-atom energies;
    mlipuq's strain-derivative stress is sevenn's virial stress."""
    calc = calc64
    for atoms in (structures[0], structures[3]):
        batch = model64.collate([atoms])
        out = model64(batch, forces=False, stress=False)
        shifts = np.array([model64.atomic_energies[int(z)] for z in atoms.numbers])
        ours = out["per_atom_energy"].detach().numpy() + shifts
        atoms = atoms.copy()
        atoms.calc = calc
        np.testing.assert_allclose(ours, atoms.get_potential_energies(), rtol=0, atol=1e-12)
    crystal = structures[3].copy()
    ours = model64.compute([crystal], stress=True)["stress"][0]
    crystal.calc = calc
    reference = crystal.get_stress(voigt=False)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10 * np.abs(reference).max())


def test_features_are_the_energy_linear_input(model64, structures):
    module = model64.module
    store = {}
    linear = module._modules["reduce_hidden_to_energy"]
    handle = linear.register_forward_pre_hook(
        lambda mod, inputs: store.__setitem__("h", inputs[0][mod.key_input]))
    try:
        batch = model64.collate(structures[:2])
        data = model64.sevenn_input(batch)
        data = module._preprocess(data)
        for name, sub in module._modules.items():
            if name == "onehot_idx_to_onehot":
                data = sub(data)
                data[sub.key_output] = data[sub.key_output].double()
                data[sub.key_additional_output] = data[sub.key_additional_output].double()
            else:
                data = sub(data)
            if name == "reduce_hidden_to_energy":
                break
    finally:
        handle.remove()
    phi = model64.per_atom_features(batch)
    torch.testing.assert_close(phi, store["h"], rtol=0, atol=0)
    assert not linear._forward_pre_hooks


def test_names_paths_and_errors(tmp_path, model):
    import sevenn._const as const
    from sevenn.util import pretrained_name_to_path

    for name in ("7net-0", "SevenNet-0", "7net-0_11Jul2024", "sevennet-0_11july2024"):
        assert _checkpoint_path(name) == pretrained_name_to_path(name) == const.SEVENNET_0_11Jul2024
    from_path = from_sevennet(const.SEVENNET_0_11Jul2024)  # a user's checkpoint file
    # the saved config names no file: a label and the architecture as plain data
    assert from_path.config()["model"] == "checkpoint_sevennet_0.pth"
    assert from_path.config()["architecture"] == model.config()["architecture"]
    assert from_path.atomic_energies == model.atomic_energies
    with pytest.raises(ValueError, match="7net-0"):
        from_sevennet("7net-42")
    with pytest.raises(ValueError, match="not a readable SevenNet checkpoint"):
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not a checkpoint")
        from_sevennet(str(bad))
    with pytest.raises(TypeError):
        from_sevennet(7)
    with pytest.raises(ValueError, match="dtype"):
        from_sevennet("7net-0", dtype=torch.float16)
    atoms = mlipuq.datasets.acac("test")[0].copy()
    atoms.numbers[0] = 100  # Fm: not in SevenNet-0
    with pytest.raises(ValueError, match="structure 1.*Fm"):
        model.compute([mlipuq.datasets.acac("test")[0], atoms])


def test_save_load_is_self_contained(tmp_path, model, monkeypatch):
    path = tmp_path / "7net.pt"
    model.save(path)
    import sevenn.util

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("loading a saved model read a SevenNet checkpoint")

    monkeypatch.setattr(sevenn.util, "load_checkpoint", no_checkpoint)
    loaded = load(path)
    assert isinstance(loaded, SevenNetMLIP) and loaded.atomic_energies == model.atomic_energies
    atoms = mlipuq.datasets.acac("test")[:2]
    a, b = model.compute(atoms), loaded.compute(atoms)
    np.testing.assert_array_equal(a["energy"], b["energy"])
    np.testing.assert_array_equal(a["forces"], b["forces"])


def test_format1_files_naming_a_wheel_checkpoint_upgrade_and_paths_are_refused(tmp_path, model):
    """Format 1 saved only the checkpoint's name and rebuilt from it. A name shipped in
    the sevenn wheel is upgraded (package data); a path would be a file the saved file
    names, and is refused before anything reads it."""
    import sevenn._const as const

    payload = model._payload()
    payload.update(format_version=1, config={"model": "7net-0"})
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    upgraded = load(old)
    assert upgraded.config() == model.config()
    atoms = mlipuq.datasets.acac("test")[:1]
    np.testing.assert_array_equal(upgraded.compute(atoms)["energy"], model.compute(atoms)["energy"])
    payload["config"] = {"model": const.SEVENNET_0_11Jul2024}
    torch.save(payload, old)
    with pytest.raises(mlipuq.errors.FileFormatError, match="names the checkpoint file") as info:
        load(old)
    assert str(old) in str(info.value)


# LLPR on SevenNet runs the common check suite in tests/test_check_suite.py.


@pytest.mark.slow  # ~1 min; CI's shallow ensemble over an adapter: test_models_chgnet.py
def test_uq_suite_shallow_ensemble(model, acac):
    # a one-epoch smoke fit of random heads: its std need not grow out of distribution
    check_uq_wrapper(ShallowEnsemble(model, n_heads=4, init="random"), acac,
                     fit_kwargs=dict(epochs=1, seed=0, batch_size=4, progress=False),
                     informative=False)


@pytest.mark.slow
def test_llpr_with_forces_exact_variance(model, acac):
    """LLPR's defaults (force rows in the fit, exact force variances through
    the per-feature Jacobians of SevenNet's network); about a minute."""
    exact = LastLayerLaplace(model).fit(acac[:2], batch_size=2)
    pred = exact.predict(acac[2:3])
    assert np.all(np.isfinite(pred.forces_std)) and np.all(pred.forces_std > 0)
    sampled = LastLayerLaplace(model, force_variance="samples", n_samples=64).fit(acac[:2])
    ratio = np.mean(sampled.predict(acac[2:3]).forces_std) / np.mean(pred.forces_std)
    assert 0.7 < ratio < 1.3, ratio
