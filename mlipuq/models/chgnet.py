"""Adapter for chgnet models (work in progress)."""


def from_chgnet(*args, **kwargs):
    raise NotImplementedError("from_chgnet is not written yet")
