"""MiniMLIP's constructor: width vs the readout feature dimension, the deprecated keyword."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from mlipuq.models import MiniMLIP, load


def test_width_and_n_features_mean_what_they_say():
    model = MiniMLIP(["H"], width=24, n_readout_features=12)
    assert model.width == 24 and model.n_features == 12  # n_features: readout dimension F
    assert model.config()["width"] == 24 and "n_features" not in model.config()


def test_n_features_keyword_is_a_deprecated_width():
    with pytest.warns(DeprecationWarning, match="width"):
        model = MiniMLIP(["H"], n_features=24)
    assert model.width == 24 and model.n_features == 32
    with pytest.raises(TypeError, match="width"):
        MiniMLIP(["H"], width=8, n_features=8)
    with pytest.raises(ValueError, match="n_features must be >= 1"), pytest.warns(DeprecationWarning):
        MiniMLIP(["H"], n_features=0)


def test_files_saved_with_n_features_load_without_warning():
    path = Path(__file__).parent / "data" / "formats" / "model_v1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = load(path)
    assert isinstance(model, MiniMLIP) and model.width == model.config()["width"]
