"""mlipuq.train: reproducibility, learning, best-weight restoration, early stopping,
checkpoints and the reference-data checks."""

from __future__ import annotations

import copy
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq import data as mdata
from mlipuq.errors import MissingReferenceError
from mlipuq.models import MiniMLIP, load
from mlipuq.training import batch_loss, errors

# the loop's mechanics, its weights as training left them (the refit, on by default for
# fitted references, moves only those: tests/test_reference_refit.py)
SETTINGS = dict(epochs=6, batch_size=4, lr=1e-2, seed=1, progress=False, refit_references=False)


def fresh_model(seed: int = 0) -> MiniMLIP:
    return MiniMLIP(
        ["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=seed
    )


@pytest.fixture(scope="module")
def splits():
    dataset = mlipuq.load(Path(__file__).parent / "data" / "ethanol_small.xyz")
    return dataset[:8], dataset[8:12]


@pytest.fixture(scope="module")
def run(splits, tmp_path_factory):
    """One reference training run, with a checkpoint."""
    train_set, val_set = splits
    model = fresh_model()
    initial = copy.deepcopy(model)
    checkpoint = tmp_path_factory.mktemp("ckpt") / "best.pt"
    history = mlipuq.train(model, train_set, val_set, checkpoint=checkpoint, **SETTINGS)
    return model, history, checkpoint, initial


def _rows_without_time(history):
    return [{k: v for k, v in row.items() if k != "time"} for row in history.epochs]


def _val_loss(model, val_set, batch_size):
    """The trainer's validation loss, recomputed from scratch."""
    total = 0.0
    for start in range(0, len(val_set), batch_size):
        chunk = list(val_set)[start : start + batch_size]
        batch = mdata.collate(chunk, model.cutoff, dtype=model.dtype)
        loss, _ = batch_loss(model, batch, 1.0, 100.0, create_graph=False)
        total += float(loss.detach()) * len(chunk)
    return total / len(val_set)


def test_history_records_every_epoch(run):
    model, history, _, _ = run
    assert len(history) == SETTINGS["epochs"]
    assert history["epoch"] == list(range(SETTINGS["epochs"]))
    for key in ("train_loss", "val_loss", "train_energy_mae", "val_forces_rmse", "lr", "time"):
        values = history[key]
        assert all(v is not None and np.isfinite(v) for v in values), key
    assert not history.stopped_early
    assert history.wall_time > 0
    assert not model.training  # left in eval mode


def test_training_is_deterministic(run, splits):
    model, history, _, _ = run
    again = fresh_model()
    history2 = mlipuq.train(again, *splits, **SETTINGS)
    assert _rows_without_time(history2) == _rows_without_time(history)
    assert history2.best_epoch == history.best_epoch
    state, state2 = model.state_dict(), again.state_dict()
    for key in state:
        if isinstance(state[key], torch.Tensor):
            assert torch.equal(state[key], state2[key]), key
    assert again.atomic_energies == model.atomic_energies
    assert again.avg_num_neighbors == model.avg_num_neighbors


def test_different_seed_gives_different_run(run, splits):
    _, history, _, _ = run
    other = fresh_model()
    history2 = mlipuq.train(other, *splits, **{**SETTINGS, "epochs": 2, "seed": 2})
    assert history2["train_loss"] != history["train_loss"][:2]


def test_loss_decreases(run, splits):
    model, history, _, initial = run
    train_set, _ = splits
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0]
    assert min(history["val_loss"]) < history["val_loss"][0]
    # the trained model beats the initial one with the same species offsets
    initial.set_atomic_energies(model.atomic_energies)
    initial.avg_num_neighbors = model.avg_num_neighbors
    before, after = errors(initial, train_set), errors(model, train_set)
    assert after["forces_mae"] < 0.9 * before["forces_mae"]


def test_fit_scales_sets_offsets_and_neighbour_count(run, splits):
    model, _, _, _ = run
    train_set, _ = splits
    assert model.atomic_energies_set
    fitted = mdata.fit_atomic_energies(train_set, model.species)
    assert model.atomic_energies == pytest.approx(fitted)
    graphs = [mdata.to_graph(a, model.cutoff) for a in train_set]
    edges = sum(g.edge_index.shape[1] for g in graphs)
    assert model.avg_num_neighbors == pytest.approx(edges / int(train_set.n_atoms.sum()))


def test_best_weights_restored_and_checkpointed(run, splits):
    model, history, checkpoint, _ = run
    _, val_set = splits
    val_losses = history["val_loss"]
    assert history.best_val_loss == min(val_losses)
    assert history.best_epoch == int(np.argmin(val_losses))
    recomputed = _val_loss(model, val_set, SETTINGS["batch_size"])
    assert recomputed == pytest.approx(min(val_losses), rel=1e-6)
    # the checkpoint holds the best model, i.e. the one returned
    assert checkpoint.exists()
    saved = load(checkpoint)
    out, out_saved = model.compute(val_set), saved.compute(val_set)
    np.testing.assert_array_equal(out["energy"], out_saved["energy"])
    np.testing.assert_array_equal(out["forces"], out_saved["forces"])


def _shifted(dataset, per_atom):
    """Copies of ``dataset`` whose reference energies are raised by ``per_atom`` eV/atom."""
    out = []
    for atoms in dataset:
        a = atoms.copy()
        a.calc = SinglePointCalculator(
            a,
            energy=atoms.get_potential_energy() + per_atom * len(a),
            forces=atoms.get_forces(),
        )
        out.append(a)
    return mlipuq.load(out)


def test_early_stopping_restores_earlier_best(splits, tmp_path):
    """Only the readout bias trains, on energies; validation wants a bias 5 eV/atom
    higher than training does and the bias starts there, so validation gets worse
    every epoch: training must stop after ``patience`` epochs and hand back the
    weights of epoch 0, not the last ones."""
    train_set, _ = splits
    val_set = _shifted(train_set, 5.0)
    model = fresh_model()
    model.set_atomic_energies(mdata.fit_atomic_energies(train_set, model.species))
    with torch.no_grad():
        model.readout.bias.fill_(5.0)
    checkpoint = tmp_path / "best.pt"
    history = mlipuq.train(
        model,
        train_set,
        val_set,
        epochs=20,
        batch_size=4,
        lr=0.05,
        forces_weight=0.0,
        patience=2,
        parameters=[model.readout.bias],
        checkpoint=checkpoint,
        progress=False,
    )
    assert history.stopped_early
    assert len(history) == 3
    assert history.best_epoch == 0
    val = history["val_loss"]
    assert val[0] < val[1] < val[2]
    # restored: the model's validation loss is the epoch-0 one, not the last
    batch = mdata.collate(list(val_set), model.cutoff, dtype=model.dtype)
    loss, _ = batch_loss(model, batch, 1.0, 0.0, create_graph=False)
    assert float(loss.detach()) == pytest.approx(val[0], rel=1e-6)
    assert float(load(checkpoint).readout.bias.detach()) == float(model.readout.bias.detach())


def test_checkpoint_not_overwritten_without_permission(splits, tmp_path):
    train_set, val_set = splits
    path = tmp_path / "exists.pt"
    path.write_bytes(b"precious")
    model = fresh_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FileExistsError):
        mlipuq.train(model, train_set, val_set, checkpoint=path, epochs=1, progress=False)
    assert path.read_bytes() == b"precious"
    after = model.state_dict()
    tensors = [k for k in before if isinstance(before[k], torch.Tensor)]
    assert all(torch.equal(before[k], after[k]) for k in tensors)
    mlipuq.train(
        model, train_set, val_set, checkpoint=path, overwrite=True, epochs=1,
        forces_weight=0.0, progress=False,
    )
    assert isinstance(load(path), MiniMLIP)


def test_train_without_val_uses_train_loss(splits):
    train_set, _ = splits
    model = fresh_model()
    history = mlipuq.train(
        model, train_set, epochs=2, batch_size=8, forces_weight=0.0, progress=False
    )
    assert history["val_loss"] == [None, None]
    assert history.best_val_loss == min(history["train_loss"])


# ------------------------------------------------------------ reference data
def _without_forces(dataset):
    out = []
    for atoms in dataset:
        a = atoms.copy()
        a.info["energy"] = atoms.get_potential_energy()
        out.append(a)
    return mlipuq.load(out)


def test_train_needs_forces(splits):
    train_set, val_set = splits
    mixed = train_set[:3] + _without_forces(train_set[3:5])
    with pytest.raises(MissingReferenceError, match="structure 3: no reference forces"):
        mlipuq.train(fresh_model(), mixed, val_set, epochs=1, progress=False)
    with pytest.raises(ValueError, match="structure 0: no reference forces"):
        mlipuq.train(fresh_model(), train_set, _without_forces(val_set), epochs=1, progress=False)
    # energy-only training does not need them
    history = mlipuq.train(
        fresh_model(), _without_forces(train_set), epochs=1, forces_weight=0.0, progress=False
    )
    assert len(history) == 1 and "train_forces_mae" not in history.epochs[0]


def test_train_needs_energies(splits):
    train_set, _ = splits
    bare = ase.Atoms(train_set[0].symbols, positions=train_set[0].positions)
    data = train_set[:2] + mlipuq.load(bare)
    with pytest.raises(MissingReferenceError, match="structure 2: no reference energy"):
        mlipuq.train(fresh_model(), data, epochs=1, forces_weight=0.0, progress=False)


def test_train_rejects_unknown_elements(splits):
    train_set, _ = splits
    odd = train_set[1].copy()
    odd.symbols[0] = "N"
    odd.calc = SinglePointCalculator(odd, energy=-1.0, forces=np.zeros((9, 3)))
    with pytest.raises(ValueError, match=r"structure 1: element\(s\) \['N'\] unknown"):
        mlipuq.train(fresh_model(), [train_set[0], odd], epochs=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs and batch_size must be >= 1"),
        (dict(batch_size=0), "epochs and batch_size must be >= 1"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(forces_weight=-1.0), "non-negative"),
    ],
)
def test_train_rejects_bad_settings(splits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlipuq.train(fresh_model(), splits[0], **{"progress": False, **kwargs})


def test_errors_match_manual_computation(run, splits):
    model, _, _, _ = run
    _, val_set = splits
    out = model.compute(val_set)
    de = (out["energy"] - val_set.energies) / val_set.n_atoms
    df = out["forces"] - val_set.forces
    result = errors(model, val_set)
    assert result["energy_mae"] == pytest.approx(np.mean(np.abs(de)))
    assert result["forces_rmse"] == pytest.approx(np.sqrt(np.mean(df**2)))
    with pytest.raises(MissingReferenceError):
        errors(model, val_set[:1] + mlipuq.load(ase.Atoms("H", positions=[[0, 0, 0]])))


# ------------------------------------------------------------- Trainable protocol
class OffsetOnly:
    """A minimal Trainable: one energy shift per atom on top of a frozen model."""

    def __init__(self, model):
        self.model = model
        self.shift = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.saved = []

    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    def prepare(self, train, val):
        graphs = [mdata.to_graph(a, self.model.cutoff, k, self.model.species)
                  for k, a in enumerate(train)]
        return graphs, None if val is None else graphs[:1]

    def trainable_parameters(self):
        return [self.shift]

    def loss(self, batch, *, create_graph):
        n = batch.n_atoms.to(torch.float64)
        with torch.no_grad():
            energy = self.model(batch, forces=False)["energy"]
        de = (energy - batch.energy.to(torch.float64)) / n + self.shift
        return (de**2).mean(), mlipuq.training.error_statistics(de)

    def train_mode(self, mode):
        self.model.train(mode)

    def snapshot(self):
        return self.shift.detach().clone()

    def restore(self, state):
        with torch.no_grad():
            self.shift.copy_(state)


def test_train_accepts_any_trainable(run, splits):
    model = copy.deepcopy(run[0])
    trainable = OffsetOnly(model)
    assert isinstance(trainable, mlipuq.training.Trainable)
    assert not isinstance(model, mlipuq.training.Trainable)  # MLIPs go through EnergyForceMSE
    history = mlipuq.train(trainable, splits[0], epochs=30, lr=0.05, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert float(trainable.shift.detach()) == pytest.approx(
        -float(np.mean((model.compute(splits[0])["energy"] - splits[0].energies)
                       / splits[0].n_atoms)), abs=0.05)
    for kw in (dict(forces_weight=1.0), dict(parameters=[trainable.shift])):
        with pytest.raises(ValueError, match="MLIPs only"):
            mlipuq.train(trainable, splits[0], epochs=1, progress=False, **kw)
    with pytest.raises(ValueError, match="save"):
        mlipuq.train(trainable, splits[0], epochs=1, progress=False, checkpoint="x.pt")
    with pytest.raises(ValueError, match="refit_references applies to MLIPs"):
        mlipuq.train(trainable, splits[0], epochs=1, progress=False, refit_references=True)
    with pytest.raises(TypeError, match="Trainable"):
        mlipuq.train(object(), splits[0], epochs=1, progress=False)


def test_energy_force_mse_is_what_train_runs_for_a_model(splits):
    a, b = fresh_model(), fresh_model()
    ha = mlipuq.train(a, *splits, **SETTINGS)
    hb = mlipuq.train(mlipuq.training.EnergyForceMSE(b, forces_weight=100.0), *splits, **SETTINGS)
    assert _rows_without_time(ha) == _rows_without_time(hb)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
               if torch.is_tensor(x))


def test_loss_fn_is_deprecated_but_works(splits):
    model = fresh_model()

    def loss_fn(m, batch, create_graph):
        return batch_loss(m, batch, 1.0, 0.0, create_graph=create_graph)

    with pytest.warns(DeprecationWarning, match="Trainable"):
        history = mlipuq.train(model, splits[0], epochs=2, batch_size=4, progress=False,
                               loss_fn=loss_fn)
    assert "train_forces_mae" not in history.epochs[0]
