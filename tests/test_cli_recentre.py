"""``mlipuq fit deep --recentre``: the deep ensemble's recentring from the command
line, alone and before a latent-distance term."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mlipuq
from mlipuq import cli
from mlipuq.uq import load as load_wrapper

from conftest import ETHANOL_SMALL


@pytest.fixture(scope="module")
def files(tmp_path_factory, fitted_members):
    """train/val extxyz files of the small ethanol set and two trained members."""
    folder = tmp_path_factory.mktemp("recentre")
    data = mlipuq.load(ETHANOL_SMALL)
    paths = {"train": folder / "train.extxyz", "val": folder / "val.extxyz"}
    data[:14].write(paths["train"])
    data[14:].write(paths["val"])
    paths["models"] = []
    for k, model in enumerate(fitted_members[:2]):
        paths["models"].append(folder / f"m{k}.pt")
        model.save(paths["models"][-1])
    return paths


def _fit_deep(files, out, *extra) -> int:
    argv = ["fit", "deep", "--train", str(files["train"]), "--val", str(files["val"]),
            "--out", str(out), *extra]
    for path in files["models"]:
        argv += ["-m", str(path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few calibration structures
        return cli.main(argv)


def test_members_recentring_moves_each_member_onto_the_mean(files, tmp_path, capsys):
    """``--recentre members``: the offsets saved sum to zero over the members, and the
    summary names the largest; ``--recentre none``: no offsets."""
    out = tmp_path / "deep.pt"
    assert _fit_deep(files, out, "--recentre", "members") == 0
    offsets = load_wrapper(out).member_offsets_
    assert offsets is not None and np.abs(offsets).max() > 0
    np.testing.assert_allclose(offsets.sum(axis=0), 0.0, atol=1e-12)
    largest = f"{1e3 * np.abs(offsets).max():.3g} meV/atom"
    assert f"per-species offsets up to {largest}" in capsys.readouterr().out
    assert _fit_deep(files, tmp_path / "raw.pt", "--recentre", "none") == 0
    assert load_wrapper(tmp_path / "raw.pt").member_offsets_ is None


def test_latent_term_is_fitted_on_recentred_members(files, tmp_path):
    """With ``--latent forces`` the deep ensemble inside the combination is recentred:
    per atom by default, as ``--recentre`` says otherwise."""
    out = tmp_path / "latent.pt"
    assert _fit_deep(files, out, "--latent", "forces") == 0
    per_atom = load_wrapper(out).combine.member_offsets_
    assert per_atom is not None and abs(per_atom.sum(axis=0)).max() > 1e-9
    assert _fit_deep(files, tmp_path / "members.pt", "--latent", "forces",
                     "--recentre", "members") == 0
    members = load_wrapper(tmp_path / "members.pt").combine.member_offsets_
    np.testing.assert_allclose(members, per_atom - per_atom.mean(axis=0), atol=1e-12)


@pytest.mark.parametrize("method, extra, message", [
    ("llpr", ["--val", "{val}"], "--recentre is a deep option, not one of fit llpr"),
    ("deep", [], "--recentre fits offsets on --val: give --val"),
])
def test_recentre_user_errors(files, tmp_path, capsys, method, extra, message):
    argv = ["fit", method, "-m", str(files["models"][0]), "-m", str(files["models"][1]),
            "--train", str(files["train"]), "--out", str(tmp_path / "w.pt"),
            "--recentre", "members", *[a.format(val=files["val"]) for a in extra]]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_latent_both_is_the_documented_deep_combination(files, tmp_path):
    """``fit deep --latent both`` saves what docs/ensembles.md writes in Python,
    ``LatentDistance(models[0], combine=DeepEnsemble(models)).fit(train, val)
    .calibrate(val)``: the same energies, forces and variances on the validation
    structures, the members passed on."""
    from mlipuq.uq import DeepEnsemble, LatentDistance

    out = tmp_path / "both.pt"
    assert _fit_deep(files, out, "--latent", "both") == 0
    from_cli = load_wrapper(out)
    assert isinstance(from_cli.combine, DeepEnsemble) and from_cli.energy_distance == "structure"
    models = [mlipuq.models.load(path) for path in files["models"]]
    train, val = mlipuq.load(files["train"]), mlipuq.load(files["val"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few calibration structures
        by_hand = LatentDistance(models[0], combine=DeepEnsemble(models)).fit(
            train, val).calibrate(val)
        a, b = from_cli.predict(val), by_hand.predict(val)
    assert a.energy_members.shape[0] == len(models)
    for name in ("energy", "energy_var", "forces", "forces_var"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-12)
