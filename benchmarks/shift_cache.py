"""The fits ``benchmarks/shift.py --cache`` keeps: where they live, how they are read
back, and what a fit saved before a change of ``mlipuq.train`` gets on reading."""

from __future__ import annotations

import os

from mlipuq.training_setup import measure_missing_drift, refit_reference_energies

#: The base models' epochs by default (``--epochs``): the cache folders' ``PART-EPOCHS``.
EPOCHS = 80


def cached(path, make, load):
    """``make()``, saved to ``path`` (None: no cache) the first time and read with
    ``load`` afterwards (mlipuq's own files: plain data, weights only)."""
    if path is not None and os.path.exists(path):
        return load(path)
    made = make()
    if path is not None:
        made.save(path)
    return made


def cache_folder(root, part: str, epochs: int, quick: bool = False):
    """The folder of ``--cache`` root for one part's fits (created; None without a root)."""
    if root is None:
        return None
    folder = os.path.join(root, f"{part}-{epochs}{'-quick' * quick}")
    os.makedirs(folder, exist_ok=True)
    return folder


def with_drift(model, train):
    """``model`` (a base model, or a wrapper's) as ``mlipuq.train`` leaves it since
    2026-12-02: a fit saved before gets its offset drift measured on ``train``."""
    measure_missing_drift(getattr(model, "base_model", model), train)
    return model


def with_refit(model, train):
    """A base model with its reference energies refitted to the trained network on
    ``train`` (what ``mlipuq.train(..., refit_references=True)`` does); idempotent."""
    refit_reference_energies(model, train)
    return model
