"""Adapter for sevennet models (work in progress)."""


def from_sevennet(*args, **kwargs):
    raise NotImplementedError("from_sevennet is not written yet")
