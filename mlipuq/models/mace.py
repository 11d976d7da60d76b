"""Adapter for mace models (work in progress)."""


def from_mace(*args, **kwargs):
    raise NotImplementedError("from_mace is not written yet")
