"""Safe persistence (mlipuq.fileio): no code runs on load, corruption is detected,
saves are atomic and never follow links, old formats keep loading.

The attacks are real: a crafted file names a pickle whose unpickling writes a
marker file; the marker must never appear.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlipuq
import mlipuq.models.base as models_base
import mlipuq.uq.base as uq_base
from mlipuq import fileio
from mlipuq.errors import FileFormatError
from mlipuq.fileio import UPGRADES, payload_digest, save_payload
from mlipuq.models import MiniMLIP, WrappedMLIP, wrap
from mlipuq.testing import tensor_record_span
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble

FORMATS = Path(__file__).parent / "data" / "formats"
ETHANOL = Path(__file__).parent / "data" / "ethanol_small.xyz"
FAST = dict(batch_size=4, progress=False)


# ------------------------------------------------------------------ fixtures
def _tiny(seed: int = 0) -> MiniMLIP:
    return MiniMLIP(
        ("H", "C", "O"), cutoff=3.5, width=4, n_interactions=1, n_rbf=4,
        n_readout_features=4, avg_num_neighbors=6.0,
        atomic_energies={"H": -13.6, "C": -1029.0, "O": -2041.0}, seed=seed,
    ).double()


@pytest.fixture(scope="module")
def data():
    ds = mlipuq.load(ETHANOL)
    return ds[:8], ds[8:12], ds[12:15]


@pytest.fixture(scope="module")
def wrappers(data):
    train, val, _ = data
    base = _tiny(0)
    return {
        "llpr": LastLayerLaplace(base, energy_posterior="joint").fit(train, batch_size=4),
        "llpr_calibrated": LastLayerLaplace(base).fit(train, batch_size=4).calibrate(val),
        "shallow": ShallowEnsemble(base, n_heads=3).fit(train, val, epochs=1, seed=0, **FAST),
        "evidential": EvidentialHead(base, hidden=4).fit(train, val, epochs=2, seed=0, **FAST),
        "deep": DeepEnsemble([_tiny(s) for s in range(3)]),
    }


class Tiny(nn.Module):
    """A user's module for wrap() (as in tests/data/formats/make_v1.py)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(9, 3, dtype=torch.float64)
        self.out = nn.Linear(3, 1, dtype=torch.float64)

    def forward(self, batch):
        return self.out(torch.tanh(self.embed(batch.numbers) + batch.positions.sum(1, keepdim=True)))


def _wrapped(seed: int = 0) -> WrappedMLIP:
    return wrap(Tiny(seed), "out", species=("H", "C", "O"), cutoff=3.0,
                atomic_energies={"H": -1.0, "C": -2.0, "O": -3.0})


# ------------------------------------------------ finding 1: no code on load
def write_marker(path: str) -> int:
    """Runs when the evil pickle is unpickled."""
    Path(path).write_text("code from a file ran")
    return 0


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


def _evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"config": _Evil(marker), "model_state_dict": {}}, evil)
    return evil, marker


def _model_payload(class_name: str, config: dict, version: int) -> dict:
    return {"format": "mlipuq.model", "format_version": version, "class": class_name,
            "config": config, "state_dict": {}, "dtype": "float32"}


def _write(payload: dict, path: Path, version: int) -> Path:
    if version >= 2:
        save_payload(payload, path, overwrite=True)  # a valid checksum: only the content is evil
    else:
        torch.save(payload, path)  # format 1 had no checksum
    return path


def _uq_payload(model_payload: dict, version: int) -> dict:
    return {"format": "mlipuq.uq", "format_version": version, "class": "LastLayerLaplace",
            "config": {}, "models": [model_payload], "state": {}, "recalibrator": None}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kind", ["models.load", "uq.load", "cli select"])
def test_a_file_naming_a_checkpoint_never_runs_its_code(tmp_path, capsys, version, kind):
    """Finding 1: the file passes weights_only=True but names a pickled checkpoint."""
    evil, marker = _evil_checkpoint(tmp_path)
    model = _model_payload("SevenNetMLIP", {"model": str(evil)}, version)
    if kind == "models.load":
        path = _write(model, tmp_path / "model.pt", version)
        with pytest.raises(FileFormatError) as info:
            mlipuq.models.load(path)
        assert str(path) in str(info.value)
    elif kind == "uq.load":
        path = _write(_uq_payload(model, version), tmp_path / "wrapper.pt", version)
        with pytest.raises(FileFormatError) as info:
            mlipuq.uq.load(path)
        assert str(path) in str(info.value)
    else:
        from mlipuq.cli import main

        path = _write(_uq_payload(model, version), tmp_path / "wrapper.pt", version)
        pool = tmp_path / "pool.extxyz"
        mlipuq.load(ETHANOL)[:3].write(pool)
        code = main(["select", "--model", str(path), "--pool", str(pool), "-k", "1",
                     "--out", str(tmp_path / "out.extxyz")])
        assert code != 0 and str(path) in capsys.readouterr().err
    assert not marker.exists(), "loading a saved file executed code from a file it named"


def test_chgnet_composition_model_by_name_is_refused(tmp_path):
    """A CHGNet config naming a reference-energy table would make chgnet read a file."""
    config = {"version": "0.3.0", "model_args": {"composition_model": str(tmp_path / "x.npy")}}
    path = _write(_model_payload("CHGNetMLIP", config, 2), tmp_path / "m.pt", 2)
    with pytest.raises((FileFormatError, ImportError)) as info:
        mlipuq.models.load(path)
    if isinstance(info.value, FileFormatError):
        assert str(path) in str(info.value)


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_pickled_files_are_refused_without_bad_advice(tmp_path, monkeypatch, force_unsafe):
    if force_unsafe:  # mace sets this on import; an explicit weights_only=True still wins
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    path = tmp_path / "pickled.pt"
    payload = _model_payload("MiniMLIP", {}, 2)
    payload["module"] = _Evil(marker)
    torch.save(payload, path)
    for load in (mlipuq.models.load, mlipuq.uq.load):
        with pytest.raises(FileFormatError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "module=" in message
        assert "weights_only=False" not in message and "trust" not in message
    assert not marker.exists()


@pytest.mark.parametrize("load", [mlipuq.models.load, mlipuq.uq.load, LastLayerLaplace.load])
def test_weights_only_false_is_refused_with_the_new_way(tmp_path, load):
    with pytest.raises(ValueError, match=r"weights_only=False\) is no longer supported.*module="):
        load(tmp_path / "anything.pt", weights_only=False)


def test_weights_only_true_is_still_accepted(tmp_path, data):
    model = _tiny(0)
    model.save(tmp_path / "m.pt")
    assert isinstance(mlipuq.models.load(tmp_path / "m.pt", weights_only=True), MiniMLIP)


def test_wrap_saves_weights_not_code(tmp_path, data):
    _, _, test = data
    wrapped = _wrapped(1)
    path = tmp_path / "wrapped.pt"
    wrapped.save(path)
    raw = torch.load(path, weights_only=True)  # plain data: loads without any allow-list
    assert "module" not in raw and raw["config"]["module_class"].endswith("Tiny")
    with pytest.raises(ValueError, match=r"module=") as info:
        mlipuq.models.load(path)
    assert str(path) in str(info.value)
    fresh = Tiny(seed=5)
    loaded = mlipuq.models.load(path, module=fresh)
    assert loaded.module is fresh
    a, b = wrapped.compute(test), loaded.compute(test)
    np.testing.assert_array_equal(a["energy"], b["energy"])
    np.testing.assert_array_equal(a["forces"], b["forces"])
    assert loaded.atomic_energies == wrapped.atomic_energies
    with pytest.raises(ValueError, match="do not fit"):
        mlipuq.models.load(path, module=nn.Sequential(nn.Linear(2, 1)))


def test_uq_load_rebuilds_wrapped_members_from_modules(tmp_path, data):
    _, _, test = data
    ensemble = DeepEnsemble([_wrapped(s) for s in range(3)])
    path = tmp_path / "deep.pt"
    ensemble.save(path)
    expected = ensemble.predict(test)
    one = mlipuq.uq.load(path, module=Tiny())  # one module: a copy per member
    several = mlipuq.uq.load(path, module=[Tiny(), Tiny(), Tiny()])
    for loaded in (one, several):
        pred = loaded.predict(test)
        np.testing.assert_array_equal(pred.energy_members, expected.energy_members)
        np.testing.assert_array_equal(pred.forces_var, expected.forces_var)
    assert len({id(m.module) for m in one.models}) == 3
    with pytest.raises(ValueError, match="3 base model.*2 given"):
        mlipuq.uq.load(path, module=[Tiny(), Tiny()])
    with pytest.raises(ValueError, match="module="):
        mlipuq.uq.load(path)


# --------------------------------------------------- finding 2: corruption
def _flip(path: Path, positions) -> None:
    raw = bytearray(path.read_bytes())
    for p in positions:
        raw[p] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["llpr", "evidential"])
def test_flipped_bytes_in_weights_are_detected(tmp_path, wrappers, name):
    """Finding 2: flipped bytes inside tensor data load silently without a checksum."""
    path = tmp_path / f"{name}.pt"
    wrappers[name].save(path)
    start, stop = tensor_record_span(path)
    rng = np.random.default_rng(0)
    _flip(path, rng.choice(np.arange(start, stop), size=min(200, stop - start), replace=False))
    torch.load(path, weights_only=True)  # the archive itself is still readable
    with pytest.raises(FileFormatError, match="checksum") as info:
        mlipuq.uq.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("seed", range(4))
def test_flipped_bytes_anywhere_are_detected(tmp_path, wrappers, seed):
    path = tmp_path / "llpr.pt"
    wrappers["llpr"].save(path)
    rng = np.random.default_rng(seed)
    _flip(path, rng.choice(path.stat().st_size, size=200, replace=False))
    with pytest.raises(FileFormatError) as info:
        mlipuq.uq.load(path)
    assert str(path) in str(info.value)


def test_model_corruption_and_truncation_are_detected(tmp_path):
    path = tmp_path / "model.pt"
    _tiny(0).save(path)
    good = path.read_bytes()
    start, stop = tensor_record_span(path)
    _flip(path, range(start, min(stop, start + 200)))
    with pytest.raises(FileFormatError, match="checksum"):
        mlipuq.models.load(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(FileFormatError) as info:
        mlipuq.models.load(path)
    assert str(path) in str(info.value)


def test_a_current_file_without_checksum_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    _tiny(0).save(path)
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save(payload, path)
    with pytest.raises(FileFormatError, match="no checksum"):
        mlipuq.models.load(path)


@pytest.mark.parametrize("name", ["llpr", "llpr_calibrated", "shallow", "evidential", "deep"])
def test_fingerprint_is_the_checksum_and_survives_save_load(tmp_path, wrappers, name):
    wrapper = wrappers[name]
    path = tmp_path / "w.pt"
    wrapper.save(path)
    stored = torch.load(path, weights_only=True)
    assert stored["checksum"] == wrapper.fingerprint()
    assert payload_digest({k: v for k, v in stored.items() if k != "checksum"}) == wrapper.fingerprint()
    assert "checksum" not in wrapper.payload()
    loaded = mlipuq.uq.load(path)
    assert loaded.fingerprint() == wrapper.fingerprint()
    changed = copy.deepcopy(wrapper)
    with torch.no_grad():
        next(changed.base_model.parameters()).add_(1e-3)
    assert changed.fingerprint() != wrapper.fingerprint()


# --------------------------------------------- finding 3: atomic, no links
def test_save_never_writes_through_a_link_at_the_old_temp_name(tmp_path):
    """Finding 3: the old save wrote to the fixed ``<path>.tmp``, following a link there."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "model.pt"
    os.symlink(victim, str(target) + ".tmp")
    _tiny(0).save(target)
    assert victim.read_text() == "precious"
    assert os.path.islink(str(target) + ".tmp")  # left alone
    assert isinstance(mlipuq.models.load(target), MiniMLIP)


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "model.pt"
    os.symlink(victim, target)
    with pytest.raises(FileExistsError):
        _tiny(0).save(target)
    dangling = tmp_path / "dangling.pt"
    os.symlink(tmp_path / "nowhere", dangling)
    with pytest.raises(FileExistsError):
        _tiny(0).save(dangling)
    assert not (tmp_path / "nowhere").exists()
    _tiny(0).save(target, overwrite=True)
    assert victim.read_text() == "precious"
    assert not os.path.islink(target) and isinstance(mlipuq.models.load(target), MiniMLIP)


def test_save_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    _tiny(0).save(target)
    before = target.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        _tiny(1).save(target, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        _tiny(1).save(tmp_path / "new.pt")
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert target.read_bytes() == before


def test_saved_files_get_the_usual_permissions(tmp_path):
    target = tmp_path / "model.pt"
    _tiny(0).save(target)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------ versioned formats
def test_format_versions_and_upgrade_table():
    assert models_base.FORMAT_VERSION == 2 and uq_base.FORMAT_VERSION == 5
    assert fileio.CURRENT == {"mlipuq.model": 2, "mlipuq.uq": 5}
    assert set(UPGRADES) == {("mlipuq.model", 1), ("mlipuq.uq", 1), ("mlipuq.uq", 2),
                             ("mlipuq.uq", 3), ("mlipuq.uq", 4)}


def test_version_2_wrapper_files_load_through_the_upgrade(tmp_path, data):
    """A wrapper file at version 2 (what a wrapper without a latent-distance term writes)
    reads back through the 2 -> 3 -> 4 -> 5 steps unchanged."""
    train, _, test = data
    wrapper = LastLayerLaplace(_tiny(0), distance=None).fit(train)  # a version-2 file
    path = tmp_path / "w.pt"
    wrapper.save(path)
    assert torch.load(path, weights_only=True)["format_version"] == 2
    assert fileio.read_payload(path, format="mlipuq.uq", what="UQ")["format_version"] == 5
    np.testing.assert_array_equal(mlipuq.uq.load(path).predict(test).energy_var,
                                  wrapper.predict(test).energy_var)


@pytest.mark.parametrize("name", ["llpr", "llpr_calibrated", "shallow", "evidential", "deep"])
def test_frozen_v1_wrappers_load_with_identical_predictions(tmp_path, data, name):
    _, _, test = data
    path = FORMATS / f"{name}_v1.pt"
    assert torch.load(path, weights_only=True)["format_version"] == 1
    loaded = mlipuq.uq.load(path)
    reference = np.load(FORMATS / f"{name}_v1.npz")
    pred = loaded.predict(test)
    for key in reference.files:
        np.testing.assert_allclose(getattr(pred, key), reference[key], rtol=1e-12, atol=1e-12,
                                   err_msg=key)
    # and re-saved at version 2 (the lowest that holds them), with a checksum
    again = tmp_path / "again.pt"
    loaded.save(again)
    raw = torch.load(again, weights_only=True)
    assert raw["format_version"] == 2 and raw["models"][0]["format_version"] == 2
    np.testing.assert_array_equal(mlipuq.uq.load(again).predict(test).energy, pred.energy)


def test_frozen_v3_llpr_with_its_term_loads_unchanged(tmp_path, data):
    """LLPR with its latent-distance term saved at format 3 (before its energies could
    be fitted apart) loads with identical predictions and fingerprint, and is saved
    again at version 3 with the joint fit."""
    _, _, test = data
    path = FORMATS / "llpr_term_v3.pt"
    assert torch.load(path, weights_only=True)["format_version"] == 3
    loaded = mlipuq.uq.load(path)
    reference = np.load(FORMATS / "llpr_term_v3.npz")
    pred = loaded.predict(test)
    for key in ("energy", "energy_var", "forces", "forces_var"):
        np.testing.assert_allclose(getattr(pred, key), reference[key], rtol=1e-12,
                                   atol=1e-12, err_msg=key)
    assert loaded.fingerprint() == str(reference["fingerprint"])
    assert loaded.energy_combination == "sum" and loaded.energy_distance_ is None
    loaded.save(tmp_path / "again.pt")
    assert torch.load(tmp_path / "again.pt", weights_only=True)["format_version"] == 3


def test_frozen_v1_model_loads_with_identical_predictions(data):
    _, _, test = data
    model = mlipuq.models.load(FORMATS / "model_v1.pt")
    reference = np.load(FORMATS / "model_v1.npz")
    result = model.compute(test)
    np.testing.assert_allclose(result["energy"], reference["energy"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result["forces"], reference["forces"], rtol=1e-12, atol=1e-12)


def test_frozen_v1_wrap_file_is_refused_without_running_code():
    """Format 1 pickled wrap()'s module: it cannot load without unpickling code."""
    path = FORMATS / "wrapped_v1.pt"
    with pytest.raises(FileFormatError) as info:
        mlipuq.models.load(path, module=Tiny())
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)


def test_future_versions_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    payload = _tiny(0)._payload()
    payload["format_version"] = 3
    save_payload(payload, path)
    with pytest.raises(FileFormatError, match="format version 3 is not supported") as info:
        mlipuq.models.load(path)
    assert str(path) in str(info.value)
