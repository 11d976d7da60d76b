"""The CHGNet adapter: agreement with CHGNet's own ASE calculator, the folded
readout, argument checks and the common UQ suite (needs ``mlipuq[chgnet]``)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

pytest.importorskip("chgnet")

import chgnet.graph.converter as chgnet_converter
import chgnet.graph.crystalgraph as chgnet_crystalgraph
import chgnet.model.model as chgnet_model
from chgnet.model.composition_model import AtomRef
from chgnet.model.dynamics import CHGNetCalculator

import mlipuq
from mlipuq.models import from_chgnet
from mlipuq.testing import check_matches_calculator, check_uq_wrapper
from mlipuq.uq import LastLayerLaplace, ShallowEnsemble

# chgnet's own BatchedGraph.from_graphs (used by its calculator) warns about this
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _rattled(atoms: Atoms, seed: int, scale: float = 0.08) -> Atoms:
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(scale=scale, size=atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def structures():
    return [
        _rattled(bulk("Cu", "fcc", a=3.6).repeat(2), 0),  # the 2x2x2 primitive fcc cell
        _rattled(bulk("NaCl", "rocksalt", a=5.64), 1),
        _rattled(bulk("Si", "diamond", a=5.43), 2),
        _rattled(bulk("MgO", "rocksalt", a=4.21, cubic=True), 3),
    ]


@pytest.fixture(scope="module")
def model32():
    return from_chgnet()


@pytest.fixture(scope="module")
def model64():
    return from_chgnet(dtype=torch.float64)


def _calculator(dtype):
    """CHGNet's own ASE calculator around a fresh copy of the wheel's 0.3.0 model."""
    with contextlib.redirect_stdout(io.StringIO()):
        module = chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        calc = CHGNetCalculator(module.to(dtype), use_device="cpu", return_site_energies=True)
    return calc


@pytest.fixture
def calculator64(monkeypatch):
    """The calculator running in float64: chgnet hard-codes float32 for its graph
    tensors (a module constant, patched here) and for composition fractions."""
    for mod in (chgnet_converter, chgnet_crystalgraph, chgnet_model):
        monkeypatch.setattr(mod, "TORCH_DTYPE", torch.float64)
    monkeypatch.setattr(AtomRef, "_get_energy",
                        lambda self, x: self.fc(x.to(self.fc.weight.dtype)).view(-1))
    return _calculator(torch.float64)


def test_matches_chgnet_calculator_float64(model64, calculator64, structures):
    worst = check_matches_calculator(model64, calculator64, structures, rtol=1e-6)
    print("float64 worst relative deviations:", worst)
    assert worst["energy"] < 1e-10 and worst["forces"] < 1e-10, worst


def test_matches_chgnet_calculator_float32(model32, structures):
    # float32 (CHGNet's own precision): forces agree to float32 round-off only
    worst = check_matches_calculator(model32, _calculator(torch.float32), structures, rtol=1e-4)
    print("float32 worst relative deviations:", worst)
    assert worst["energy"] < 1e-6, worst


def test_stress_matches_calculator(model64, calculator64, structures):
    ours = model64.compute(structures, stress=True)["stress"]
    for k, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = calculator64
        ref = atoms.get_stress(voigt=False)  # eV/Å^3 (the calculator converts from GPa)
        # ASE's stress sign convention equals mlipuq's (dE/dstrain / V)
        np.testing.assert_allclose(ours[k], ref, rtol=0, atol=1e-7 * max(np.abs(ref).max(), 1e-3))


def test_folded_readout_gives_site_energies(model64, calculator64, structures):
    """readout(phi_i) + AtomRef(Z_i) is CHGNet's site energy; the sum its total energy."""
    atoms = structures[1].copy()
    atoms.calc = calculator64
    site = np.asarray(calculator64.get_property("energies", atoms))
    batch = model64.collate([atoms])
    out = model64(batch, forces=False, features=True)
    eps = model64.readout(out["features"]).squeeze(-1).detach().numpy()
    offsets = np.array([model64.atomic_energies[int(z)] for z in atoms.numbers])
    np.testing.assert_allclose(eps + offsets, site, rtol=1e-7, atol=1e-7)
    assert out["features"].shape == (len(atoms), 64)
    assert model64.species == list(range(1, 95)) and model64.cutoff == 6.0
    assert model64.atomic_energies[11] == pytest.approx(
        float(calculator64.model.composition_model.fc.weight[0, 10]))


def test_molecule_in_a_box_and_isolated_atom(model64):
    water = molecule("H2O")
    out = model64.compute([water, Atoms("Cu", positions=[[0, 0, 0]])])
    assert np.all(np.isfinite(out["energy"])) and np.all(np.isfinite(out["forces"]))
    np.testing.assert_allclose(out["forces"][:3].sum(0), 0.0, atol=1e-10)  # no image forces
    # the same molecule far from the origin, rotated: same energy
    moved = water.copy()
    moved.rotate(37, "z")
    moved.positions += [40.0, -12.0, 3.0]
    np.testing.assert_allclose(model64.compute(moved)["energy"], out["energy"][0], rtol=1e-10)


def test_bad_arguments(model64, structures):
    with pytest.raises(ValueError, match="0.3.0"):
        from_chgnet("9.9.9")
    with pytest.raises(ValueError, match="dtype"):
        from_chgnet(dtype=torch.float16)
    bad = structures[0].copy()
    bad.numbers[0] = 95  # Am: beyond CHGNet's 94 elements
    with pytest.raises(ValueError, match="structure 0"):
        model64.compute(bad)


def test_save_load_is_self_contained(model64, structures, monkeypatch):
    """A saved file rebuilds CHGNet from plain arguments and its own weights: neither
    the wheel's checkpoint nor a reference-energy table is read."""
    def no_file(*args, **kwargs):
        raise AssertionError("loading a saved model read a CHGNet file")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "chgnet.pt")
        model64.save(path)
        with monkeypatch.context() as patch:
            patch.setattr(chgnet_model.CHGNet, "load", no_file)
            patch.setattr(chgnet_model.CHGNet, "from_file", no_file)
            patch.setattr(AtomRef, "initialize_from", no_file)
            loaded = mlipuq.models.load(path)
        # a format-1 file named the wheel's version: upgraded from the wheel's own arguments
        payload = torch.load(path, weights_only=True)
        payload.pop("checksum")
        payload.update(format_version=1, config={"version": "0.3.0"})
        old = os.path.join(tmp, "chgnet_v1.pt")
        torch.save(payload, old)
        upgraded = mlipuq.models.load(old)
    assert loaded.dtype == torch.float64 and loaded.version == "0.3.0"
    assert upgraded.config() == loaded.config() == model64.config()
    a, b, c = (m.compute(structures[:2]) for m in (model64, loaded, upgraded))
    np.testing.assert_array_equal(a["energy"], b["energy"])
    np.testing.assert_array_equal(a["forces"], b["forces"])
    np.testing.assert_array_equal(a["energy"], c["energy"])


@pytest.fixture(scope="module")
def copper():
    """Five rattled, strained 2-atom Cu cells labelled with ASE's EMT (CHGNet's
    6 Å cutoff already gives each atom ~80 neighbours and ~130 angles)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(7)
    data = []
    for k in range(5):
        atoms = _rattled(bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)), 10 + k, scale=0.1)
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        data.append(atoms)
    return data


def test_common_checks_llpr(model32, copper):
    # energy-only Gauss-Newton matrix and sampled force variances keep the
    # number of backward passes through CHGNet small (4 instead of 64 per batch)
    check_uq_wrapper(LastLayerLaplace(model32, include_forces=False, force_variance="samples",
                                      n_samples=4), copper)


@pytest.mark.slow
def test_common_checks_llpr_exact(model32, copper):
    check_uq_wrapper(LastLayerLaplace(model32, n_samples=4), copper)


def test_common_checks_shallow(model32, copper):
    # random head init (the Laplace init needs all 64 feature Jacobians per fit)
    # a one-epoch smoke fit of random heads: its std need not grow out of distribution.
    # The heads' energy variance: the default energy term's structure distance, on 4
    # training structures of 64 descriptor features, turns CHGNet's float32 batch-to-batch
    # feature noise into energy variances that differ by 3e-4 between batchings, beyond
    # the check's 2e-4 (docs/shift.md, "What stays out of reach")
    check_uq_wrapper(ShallowEnsemble(model32, n_heads=3, init="random",
                                     energy_combination=None), copper,
                     fit_kwargs={"epochs": 1, "seed": 0, "batch_size": 8, "progress": False},
                     informative=False)


@pytest.mark.slow
def test_common_checks_shallow_laplace_init(model32, copper):
    check_uq_wrapper(ShallowEnsemble(model32, n_heads=3), copper,
                     fit_kwargs={"epochs": 2, "seed": 0, "batch_size": 8, "progress": False})
