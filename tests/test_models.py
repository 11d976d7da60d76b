"""Base MLIPs: physics (forces, stress, symmetry, extensivity), batching,
persistence, and the ``wrap()`` adapter for foreign architectures."""

from __future__ import annotations

from collections import OrderedDict

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule
from torch import nn

import mlipuq
from mlipuq import data as mdata
from mlipuq.errors import FileFormatError, InvalidStructureError
from mlipuq.models import MiniMLIP, WrappedMLIP, load, wrap
from mlipuq.models.base import FORMAT_VERSION


def random_rotation(rng) -> np.ndarray:
    """A random proper rotation (Haar measure, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def energy_of(model):
    return lambda atoms: float(model.compute(atoms)["energy"][0])


def _slab():
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=4.0)
    slab.rattle(stdev=0.05, seed=6)
    return slab


def _triclinic_cu():
    atoms = ase.Atoms(
        "Cu3",
        scaled_positions=np.random.default_rng(3).uniform(0, 1, size=(3, 3)),
        cell=[[3.3, 0.0, 0.0], [1.2, 3.0, 0.0], [0.6, -0.8, 3.4]],
        pbc=True,
    )
    return atoms


# ------------------------------------------------------------ forces, stress
def test_forces_are_minus_energy_gradient_molecule(model64, ethanol, fd_forces):
    atoms = ethanol[0]
    forces = model64.compute(atoms)["forces"]
    assert np.abs(forces).max() > 1e-2  # non-trivial
    reference = fd_forces(energy_of(model64), atoms)
    np.testing.assert_allclose(forces, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: None, _triclinic_cu, _slab], ids=["cubic", "triclinic", "slab_TTF"]
)
def test_forces_are_minus_energy_gradient_periodic(model64, cu_cell, fd_forces, make):
    atoms = make() or cu_cell
    forces = model64.compute(atoms)["forces"]
    assert np.abs(forces).max() > 1e-2
    reference = fd_forces(energy_of(model64), atoms)
    np.testing.assert_allclose(forces, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: None, _triclinic_cu], ids=["cubic", "triclinic"])
def test_stress_is_strain_derivative(model64, cu_cell, fd_stress, make):
    atoms = make() or cu_cell
    stress = model64.compute(atoms, stress=True)["stress"][0]
    assert np.abs(stress).max() > 1e-3
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    reference = fd_stress(energy_of(model64), atoms)
    np.testing.assert_allclose(stress, reference, rtol=0, atol=1e-7)


def test_stress_zero_for_non_periodic(model64, ethanol):
    out = model64.compute([ethanol[0], _slab()], stress=True)
    assert np.all(out["stress"] == 0.0)


def test_forces_sum_to_zero(model64, ethanol, cu_cell):
    out = model64.compute([ethanol[0], cu_cell], batch_size=2)
    np.testing.assert_allclose(out["forces"][:9].sum(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(out["forces"][9:].sum(axis=0), 0.0, atol=1e-10)


def test_atoms_beyond_cutoff_do_not_interact(model64):
    """Locality: fragments further apart than the cutoff add up exactly."""
    water, methane = molecule("H2O"), molecule("CH4")
    methane.positions += [0.0, 0.0, 3 * model64.cutoff]
    both = water + methane
    e_water, e_methane, e_both = model64.compute([water, methane, both])["energy"]
    assert e_both == pytest.approx(e_water + e_methane, abs=1e-10)
    single = ase.Atoms("H", positions=[[0.0, 0.0, 0.0]])
    pair = ase.Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, model64.cutoff + 0.01]])
    out = model64.compute([single, pair])
    assert out["energy"][1] == pytest.approx(2 * out["energy"][0], abs=1e-12)
    assert np.all(out["forces"] == 0.0)


def test_energy_includes_atomic_energies(model64, ethanol):
    e = model64.compute(ethanol[0])["energy"][0]
    shifted = MiniMLIP(**model64.config())
    shifted.load_state_dict(model64.state_dict())
    shifted.double()
    ae = {z: e_z + 1.0 for z, e_z in model64.atomic_energies.items()}
    shifted.set_atomic_energies(ae)
    assert shifted.compute(ethanol[0])["energy"][0] == pytest.approx(e + 9.0, abs=1e-9)
    with pytest.raises(ValueError, match="missing"):
        shifted.set_atomic_energies({"H": 0.0})


# ------------------------------------------------------------------ symmetry
def _structures(ethanol, cu_cell):
    return {"molecule": ethanol[3], "cubic": cu_cell, "triclinic": _triclinic_cu(), "slab": _slab()}


@pytest.mark.parametrize("kind", ["molecule", "cubic", "triclinic", "slab"])
def test_rotation_invariance(model64, ethanol, cu_cell, kind):
    rng = np.random.default_rng(42)
    atoms = _structures(ethanol, cu_cell)[kind]
    ref = model64.compute(atoms, stress=True)
    for _ in range(2):
        rot = random_rotation(rng)
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rot.T
        rotated.set_cell(np.asarray(atoms.cell) @ rot.T, scale_atoms=False)
        out = model64.compute(rotated, stress=True)
        assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-9)
        np.testing.assert_allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-9)
        np.testing.assert_allclose(out["stress"][0], rot @ ref["stress"][0] @ rot.T, atol=1e-10)


@pytest.mark.parametrize("kind", ["molecule", "cubic", "triclinic", "slab"])
def test_translation_invariance(model64, ethanol, cu_cell, kind):
    atoms = _structures(ethanol, cu_cell)[kind]
    ref = model64.compute(atoms)
    # a large shift moves periodic atoms out of the cell (no wrapping)
    for shift in ([0.37, -1.2, 2.9], [17.3, -23.1, 11.7]):
        moved = atoms.copy()
        moved.positions += shift
        out = model64.compute(moved)
        assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-9)
        np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-9)
    if atoms.pbc.all():
        wrapped = atoms.copy()
        wrapped.positions += [1.9, 2.7, -0.8]
        wrapped.wrap()
        out = model64.compute(wrapped)
        assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-9)
        np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-9)


@pytest.mark.parametrize("kind", ["molecule", "cubic", "triclinic", "slab"])
def test_permutation_invariance(model64, ethanol, cu_cell, kind):
    rng = np.random.default_rng(7)
    atoms = _structures(ethanol, cu_cell)[kind]
    ref = model64.compute(atoms)
    perm = rng.permutation(len(atoms))
    while np.all(perm == np.arange(len(atoms))):
        perm = rng.permutation(len(atoms))
    out = model64.compute(atoms[perm])
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-9)
    np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=1e-9)


def test_distinct_structures_give_distinct_energies(model64, ethanol):
    # guards the invariance tests against a model that ignores geometry
    e = model64.compute(ethanol[:3])["energy"]
    assert len(set(np.round(e, 8))) == 3


# ------------------------------------------------------- batching, extensivity
def test_batch_equals_one_by_one(model64, ethanol, cu_cell):
    structures = [ethanol[0], cu_cell, molecule("H2O"), _slab(), _triclinic_cu(), ethanol[5]]
    together = model64.compute(structures, batch_size=len(structures), stress=True)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    assert together["energy"].shape == (6,)
    assert together["forces"].shape == (offsets[-1], 3)
    np.testing.assert_array_equal(together["n_atoms"], [len(a) for a in structures])
    for k, atoms in enumerate(structures):
        alone = model64.compute(atoms, stress=True)
        assert together["energy"][k] == pytest.approx(alone["energy"][0], abs=1e-10)
        np.testing.assert_allclose(
            together["forces"][offsets[k] : offsets[k + 1]], alone["forces"], atol=1e-10
        )
        np.testing.assert_allclose(together["stress"][k], alone["stress"][0], atol=1e-12)
    # and for other batch sizes
    for batch_size in (1, 4):
        out = model64.compute(structures, batch_size=batch_size, stress=True)
        np.testing.assert_allclose(out["energy"], together["energy"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["forces"], together["forces"], rtol=0, atol=1e-10)


def test_batch_features_equal_one_by_one(model64, ethanol, cu_cell):
    structures = [ethanol[1], cu_cell]
    together = model64.per_atom_features(model64.collate(structures))
    first = model64.per_atom_features(model64.collate(structures[0]))
    second = model64.per_atom_features(model64.collate(structures[1]))
    np.testing.assert_allclose(
        together.detach().numpy(), torch.cat([first, second]).detach().numpy(), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("cubic", [True, False], ids=["cubic4", "primitive1"])
def test_supercell_is_extensive(model64, cubic):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=cubic)
    atoms.rattle(stdev=0.1, seed=11)
    assert max(atoms.cell.lengths()) < model64.cutoff  # periodic images matter
    cell = model64.compute(atoms, stress=True)
    supercell = model64.compute(atoms.repeat((2, 2, 2)), stress=True)
    assert supercell["energy"][0] == pytest.approx(8 * cell["energy"][0], rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(supercell["forces"], np.tile(cell["forces"], (8, 1)), atol=1e-10)
    np.testing.assert_allclose(supercell["stress"][0], cell["stress"][0], atol=1e-12)
    assert np.abs(cell["stress"]).max() > 1e-3
    if len(atoms) > 1:  # one atom per primitive cell feels no force by symmetry
        assert np.abs(cell["forces"]).max() > 1e-2


def test_float32_model_close_to_float64(model64, model32, ethanol, cu_cell):
    a = model64.compute([ethanol[0], cu_cell])
    b = model32.compute([ethanol[0], cu_cell])
    assert model32.dtype == torch.float32
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-6)
    np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-4)


# -------------------------------------------------------------- bad input
def test_compute_unknown_element_names_structure(model64, ethanol):
    gold = ethanol[0].copy()
    gold.symbols[3] = "Au"
    with pytest.raises(InvalidStructureError, match=r"structure 2: element\(s\) \['Au'\] unknown"):
        model64.compute([ethanol[0], ethanol[1], gold], batch_size=2)


def test_forward_unknown_element_names_structure(model64, ethanol):
    gold = ethanol[0].copy()
    gold.symbols[3] = "Au"
    batch = mdata.collate([ethanol[0], gold], model64.cutoff)  # no species check here
    with pytest.raises(ValueError, match="structure 1 of the batch: element Au unknown"):
        model64(batch)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_compute_non_finite_positions(model64, ethanol, value):
    bad = ethanol[2].copy()
    bad.positions[5, 2] = value
    match = r"structure 1: non-finite \(NaN/inf\) positions for atoms \[5\]"
    with pytest.raises(ValueError, match=match):
        model64.compute([ethanol[0], bad])


def test_compute_empty_structure(model64, ethanol):
    with pytest.raises(ValueError, match="structure 3: empty structure"):
        model64.compute([ethanol[0], ethanol[1], ethanol[2], ase.Atoms()])


def test_compute_zero_volume_cell(model64, cu_cell):
    flat = cu_cell.copy()
    flat.set_cell([[3.6, 0, 0], [0, 3.6, 0], [1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="structure 1: periodic cell has zero volume"):
        model64.compute([cu_cell, flat])


def test_compute_overlapping_atoms_raises(model64, ethanol):
    overlap = ase.Atoms("H2O", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.96, 0.0, 0.0]])
    with pytest.raises(ValueError, match="structure 1"):
        out = model64.compute([ethanol[0], overlap])
        assert np.all(np.isfinite(out["energy"]))  # if no error: at least no silent NaN


def test_compute_ignores_stale_calculator_results(model64, ethanol):
    from ase.calculators.emt import EMT

    atoms = ethanol[0].copy()
    atoms.calc = EMT()
    atoms.get_forces()  # results cached for 9 atoms
    del atoms[8]  # the user edits the structure; ASE treats the cached results as stale
    expected = model64.compute(atoms.copy())  # Atoms.copy() drops the calculator
    out = model64.compute(atoms)
    np.testing.assert_array_equal(out["energy"], expected["energy"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(species=[]), "at least one species"),
        (dict(species=["H"], cutoff=0.0), "cutoff must be positive"),
        (dict(species=["H"], n_features=0), "n_features must be >= 1"),
        (dict(species=["Hx"]), "unknown element symbol"),
    ],
)
def test_model_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MiniMLIP(**kwargs)


# -------------------------------------------------------------- persistence
def _assert_same_model(a, b, structures):
    assert type(a) is type(b)
    assert a.config() == b.config()
    assert a.atomic_energies == b.atomic_energies
    assert a.atomic_energies_set == b.atomic_energies_set
    assert a.dtype == b.dtype
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
    oa, ob = a.compute(structures, stress=True), b.compute(structures, stress=True)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_array_equal(oa[key], ob[key])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_load_round_trip(tmp_path, model_factory, ethanol, cu_cell, dtype):
    model = model_factory(dtype, seed=3)
    model.avg_num_neighbors = 7.25
    model.set_atomic_energies({"H": -1.5, "C": -2.5, "O": -3.5, "Cu": -4.5})
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load(path)
    assert isinstance(loaded, MiniMLIP)
    assert loaded.avg_num_neighbors == 7.25
    assert loaded.atomic_energies == {1: -1.5, 6: -2.5, 8: -3.5, 29: -4.5}
    assert loaded.cutoff == model.cutoff and loaded.species == model.species
    _assert_same_model(model, loaded, [ethanol[0], cu_cell])
    # a second save/load of the loaded model is identical as well
    loaded.save(tmp_path / "again.pt")
    _assert_same_model(model, load(tmp_path / "again.pt"), [ethanol[1]])


def test_save_refuses_to_overwrite(tmp_path, model_factory, ethanol):
    path = tmp_path / "model.pt"
    first, second = model_factory(seed=0), model_factory(seed=1)
    first.save(path)
    with pytest.raises(FileExistsError):
        second.save(path)
    _assert_same_model(first, load(path), [ethanol[0]])
    second.save(path, overwrite=True)
    _assert_same_model(second, load(path), [ethanol[0]])


def test_load_rejects_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(FileFormatError):
        load(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(FileFormatError, match="not an mlipuq model file") as info:
        load(other)
    assert isinstance(info.value, ValueError)
    plain_tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain_tensor)
    with pytest.raises(FileFormatError, match="not an mlipuq model file"):
        load(plain_tensor)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


def test_load_rejects_wrong_format_version(tmp_path, model64):
    path = tmp_path / "model.pt"
    model64.save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    match = f"format version {FORMAT_VERSION + 1} is not supported"
    with pytest.raises(FileFormatError, match=match):
        load(future)
    del payload["format_version"]
    torch.save(payload, future)
    with pytest.raises(ValueError, match="format version None"):
        load(future)


# ------------------------------------------------------------------- wrap()
class PairMLP(nn.Module):
    """An independent architecture: radial descriptors (Gaussians times a cosine
    cutoff, mixed with neighbour embeddings) fed to an MLP whose last layer is
    ``head.out``."""

    def __init__(self, cutoff: float = 4.0, n_rbf: int = 8, width: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_rbf))
        self.embed = nn.Embedding(119, width)
        self.radial = nn.Linear(n_rbf, width)
        self.head = nn.Sequential(
            OrderedDict(hidden=nn.Linear(width, width), act=nn.Tanh(), out=nn.Linear(width, 1))
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))

    def features(self, batch):
        vectors = batch.edge_vectors()
        r = torch.linalg.norm(vectors, dim=-1)
        envelope = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0) * (r < self.cutoff)
        rbf = torch.exp(-((r[:, None] - self.centers) ** 2)) * envelope[:, None]
        i, j = batch.edge_index
        own = self.embed(batch.numbers)
        messages = self.radial(rbf) * own[j]
        descriptor = own + torch.zeros_like(own).index_add(0, i, messages)
        return self.head.act(self.head.hidden(descriptor))

    def forward(self, batch):
        return self.head.out(self.features(batch))  # (N, 1)


class PerStructure(PairMLP):
    """Misuse: returns per-structure energies."""

    def forward(self, batch):
        eps = super().forward(batch).squeeze(-1)
        out = torch.zeros(batch.n_structures, dtype=eps.dtype, device=eps.device)
        return out.index_add(0, batch.batch, eps)


class ScaledAfterReadout(PairMLP):
    """Misuse: an operation after the readout."""

    def forward(self, batch):
        return 2.0 * super().forward(batch)


class TwoOutputs(PairMLP):
    def __init__(self):
        super().__init__()
        self.head.out = nn.Linear(16, 2)

    def forward(self, batch):
        return self.head.out(self.features(batch)).sum(-1)


def _wrap(module, **kwargs):
    return wrap(module, "head.out", species=["H", "C", "O", "Cu"], cutoff=4.0, **kwargs)


def _no_hooks(module):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in module.modules()
    )


def test_wrap_features_and_readout_weight(ethanol, cu_cell):
    module = PairMLP().double()
    wrapped = _wrap(module)
    assert isinstance(wrapped, WrappedMLIP) and wrapped.module is module
    batch = wrapped.collate([ethanol[0], cu_cell])
    features = wrapped.per_atom_features(batch)
    with torch.no_grad():
        manual = module.features(batch)
    assert features.shape == (13, 16)
    assert torch.equal(features.detach(), manual)
    assert torch.equal(wrapped.readout_weight, module.head.out.weight.detach().reshape(-1))
    assert wrapped.readout_bias == float(module.head.out.bias.detach())
    assert wrapped.n_features == 16
    # per-atom energies are the readout applied to those features
    out = wrapped(batch, forces=False)
    np.testing.assert_allclose(
        out["per_atom_energy"].detach().numpy(),
        (manual @ wrapped.readout_weight + wrapped.readout_bias).numpy(),
        rtol=0,
        atol=1e-12,
    )
    assert _no_hooks(module)


def test_wrap_energy_and_forces(ethanol, cu_cell, fd_forces):
    module = PairMLP().double()
    wrapped = _wrap(module, atomic_energies={"H": -1.0, "C": -2.0, "O": -3.0, "Cu": -4.0})
    for atoms in (ethanol[0], cu_cell):
        out = wrapped.compute(atoms)
        batch = wrapped.collate(atoms)
        with torch.no_grad():
            direct = float(module(batch).sum()) + sum(
                wrapped.atomic_energies[int(z)] for z in atoms.numbers
            )
        assert out["energy"][0] == pytest.approx(direct, abs=1e-10)
        assert np.abs(out["forces"]).max() > 1e-2
        reference = fd_forces(energy_of(wrapped), atoms)
        np.testing.assert_allclose(out["forces"], reference, rtol=0, atol=1e-6)


def test_wrap_leaves_module_untouched(ethanol, cu_cell):
    module = PairMLP().double()
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in module.parameters()]
    wrapped = _wrap(module)
    wrapped.compute([ethanol[0], cu_cell], stress=True)
    wrapped.per_atom_features(wrapped.collate(ethanol[1]))
    calc_atoms = ethanol[2].copy()
    calc_atoms.calc = mlipuq.Calculator(wrapped)
    calc_atoms.get_forces()
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())
    assert _no_hooks(module)
    assert dict(module.named_children()).keys() == {"embed", "radial", "head"}


def test_wrap_mlip_returns_it_unchanged(model64):
    assert wrap(model64, "readout", species=["H"], cutoff=1.0) is model64


@pytest.mark.parametrize(
    "make, readout, match",
    [
        (PairMLP, "head.missing", r"readout layer 'head.missing' not found"),
        (PairMLP, "head.act", r"'head.act' is a Tanh, not torch.nn.Linear"),
        (PairMLP, "radial", r"'radial' has 16 outputs"),
        (TwoOutputs, "head.out", r"'head.out' has 2 outputs"),
    ],
)
def test_wrap_rejects_bad_readout(make, readout, match):
    with pytest.raises(ValueError, match=match):
        wrap(make(), readout, species=["H", "C", "O"], cutoff=4.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (PerStructure, r"returned shape \(2,\); expected per-atom energies of shape \(18,\)"),
        (ScaledAfterReadout, r"the readout must be the last operation"),
    ],
)
def test_wrap_rejects_bad_forward(ethanol, make, match):
    module = make().double()
    wrapped = _wrap(module)
    with pytest.raises(ValueError, match=match):
        wrapped.compute([ethanol[0], ethanol[1]])
    assert _no_hooks(module)


def test_wrap_rejects_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        wrap(lambda batch: batch, "head.out", species=["H"], cutoff=3.0)


def test_wrap_save_load_round_trip(tmp_path, ethanol, cu_cell):
    module = PairMLP(seed=4).double()
    wrapped = _wrap(module, atomic_energies={"H": -1.0, "C": -2.0, "O": -3.0, "Cu": -4.0})
    path = tmp_path / "wrapped.pt"
    wrapped.save(path)
    # the file holds weights and plain config, never the module's code
    with pytest.raises(ValueError, match=r"made by wrap\(\) around a .*PairMLP.*module=") as info:
        load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="weights_only=False.* no longer supported"):
        load(path, weights_only=False)
    fresh = PairMLP(seed=9).double()  # same architecture, other weights: they are replaced
    loaded = load(path, module=fresh)
    assert isinstance(loaded, WrappedMLIP) and loaded.module is fresh
    assert loaded.readout_name == wrapped.readout_name
    _assert_same_model(wrapped, loaded, [ethanol[0], cu_cell])
    assert torch.equal(loaded.readout_weight, wrapped.readout_weight)
