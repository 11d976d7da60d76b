"""The small exception hierarchy of mlipuq.

Every error a user can cause by passing bad input is a ``ValueError`` (or
``TypeError``) so that ``except ValueError`` keeps working; the subclasses let
callers tell the cases apart.
"""

from __future__ import annotations


class MLIPUQError(Exception):
    """Base class of every mlipuq-specific error."""


class InvalidStructureError(MLIPUQError, ValueError):
    """A structure cannot be used: NaN/inf positions, unknown element, empty, ..."""


class MissingReferenceError(MLIPUQError, ValueError):
    """Training or evaluation needs reference energies/forces that a structure lacks."""


class NotFittedError(MLIPUQError, ValueError):
    """A wrapper or recalibrator was used before ``fit``."""


class FileFormatError(MLIPUQError, ValueError):
    """A saved file is not an mlipuq file, or has an unsupported format version."""
