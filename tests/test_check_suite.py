"""The common check suite (``mlipuq.testing.check_uq_wrapper``) on every wrapper.

Each wrapper starts unfitted (the deep ensemble is built from trained members,
so it starts fitted) and must pass every check: not-fitted errors, bad fit and
calibrate inputs, reproducibility, invariances, batching, save/load, corrupted
and crafted files, dtype round trips, informative stds and safe MD resumes.
"""

from __future__ import annotations

import importlib.util

import pytest

import mlipuq
from mlipuq.testing import check_uq_wrapper
from mlipuq.uq import (
    DeepEnsemble,
    EvidentialHead,
    LastLayerLaplace,
    LatentDistance,
    ShallowEnsemble,
)

from conftest import ETHANOL_SMALL

FAST = dict(batch_size=8, progress=False)


@pytest.fixture(scope="module")
def ethanol():
    return mlipuq.load(ETHANOL_SMALL)


@pytest.fixture(scope="module")
def members(fitted_members):
    return fitted_members


def _mini_cases(members, data):
    base = members[0]
    return {
        "llpr": (LastLayerLaplace(base, n_samples=8), {}),
        "llpr-samples": (LastLayerLaplace(base, n_samples=8, force_variance="samples"), {}),
        "shallow": (ShallowEnsemble(base, n_heads=8), dict(epochs=20, seed=0, **FAST)),
        "shallow-energy-term": (ShallowEnsemble(base, n_heads=8, energy_combination="max"),
                                dict(epochs=20, seed=0, **FAST)),
        "shallow-forces-max": (ShallowEnsemble(base, n_heads=8, force_combination="max"),
                               dict(epochs=20, seed=0, **FAST)),
        "evidential": (EvidentialHead(base), dict(epochs=4, lr=2e-2, seed=0, **FAST)),
        "evidential-separate": (EvidentialHead(base, energy_evidence="separate"),
                                dict(epochs=4, lr=2e-2, seed=0, **FAST)),
        "deep": (DeepEnsemble(members, distance=None), dict(epochs=1, lr=1e-3, **FAST)),
        # the default: its latent-distance term, fitted around the trained members
        "deep-term": (lambda: DeepEnsemble(members).fit_distance(data[:10], data[10:]), {}),
        "latent": (LatentDistance(base), dict(seed=0)),
    }


@pytest.mark.parametrize(
    "name",
    ["llpr", "llpr-samples", "shallow", "shallow-energy-term", "shallow-forces-max", "evidential",
     "evidential-separate", "deep", "deep-term", "latent"],
)
def test_every_wrapper_passes_the_check_suite(name, members, ethanol):
    wrapper, fit_kwargs = _mini_cases(members, ethanol[:14])[name]
    wrapper = wrapper() if callable(wrapper) else wrapper
    check_uq_wrapper(wrapper, ethanol[:14], fit_kwargs=fit_kwargs)


# SevenNet's suite (~45 s on 2 cores) is slow: CI runs the suite over an adapter with
# CHGNet's, and SevenNet's own checks (tests/test_models_sevennet.py) besides.
ADAPTERS = [
    pytest.param(name, marks=[pytest.mark.skipif(
        importlib.util.find_spec(package) is None, reason=f"{package} is not installed"),
        *([pytest.mark.slow] if name == "sevennet" else [])])
    for name, package in (("sevennet", "sevenn"), ("chgnet", "chgnet"), ("mace", "mace"))
]


def _adapter(name: str):
    from mlipuq import models

    if name == "sevennet":
        return models.from_sevennet("7net-0")
    if name == "chgnet":
        return models.from_chgnet()
    pytest.skip("the MACE adapter needs a user's model file; its tests run in docs' setup")


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_installed_adapter_passes_the_check_suite(name):
    model = _adapter(name)
    acac = mlipuq.datasets.acac("test")[:4]
    llpr = LastLayerLaplace(model, n_samples=4, include_forces=False, force_variance="samples")
    check_uq_wrapper(llpr, acac, fit_kwargs=dict(batch_size=4), md_resume=False)
