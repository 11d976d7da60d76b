"""``--model`` names on the command line: saved files and external MLIPs by name."""

from __future__ import annotations

import pytest

from mlipuq.models.spec import load_model_spec

from conftest import make_model


def test_a_saved_file_loads_even_with_a_colon_in_its_name(tmp_path):
    path = tmp_path / "mace:odd.pt"  # an existing file wins over the prefix
    model = make_model()
    model.save(path)
    loaded = load_model_spec(str(path))
    assert loaded.config() == model.config()


def test_external_models_by_name():
    pytest.importorskip("sevenn")
    from mlipuq.models.sevennet import SevenNetMLIP

    assert isinstance(load_model_spec("sevennet:7net-0"), SevenNetMLIP)


def test_mace_needs_a_file_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mace:FILE needs the path"):
        load_model_spec("mace:")
    with pytest.raises(FileNotFoundError):
        load_model_spec(str(tmp_path / "missing.pt"))
