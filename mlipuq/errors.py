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


class InputFileError(InvalidStructureError):
    """A data file cannot be read: malformed frame, bad value for a key, unknown symbol, ...

    The message names the file, the frame index (0-based) and, where it applies,
    the key; the same are available as ``file``, ``frame`` and ``key``.
    """

    def __init__(self, message: str, *, file=None, frame=None, key=None):
        super().__init__(message)
        self.file, self.frame, self.key = file, frame, key


class ResumeError(MLIPUQError, ValueError):
    """A run cannot be resumed from a file: other settings or wrapper, or a damaged last frame."""


class ResourceError(InvalidStructureError):
    """A structure would need unreasonable memory or time (e.g. a cell far smaller than the cutoff)."""


class ZeroUncertaintyError(MLIPUQError, ValueError):
    """A prediction has zero std where its error is not zero (the structure is named)."""


class RankFailedError(MLIPUQError, RuntimeError):
    """Another rank of a distributed run failed; its message is quoted (``rank``: which)."""

    def __init__(self, message: str, *, rank=None):
        super().__init__(message)
        self.rank = rank
