"""The small exception hierarchy of mlipuq.

Every error a user can cause by passing bad input is a ``ValueError`` (or
``TypeError``) so that ``except ValueError`` keeps working; the subclasses let
callers tell the cases apart. Warnings point at the user's line
(:func:`user_stacklevel`), however deep inside mlipuq they are raised.
"""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point
    at the first frame outside mlipuq (the user's call), however deep the call; the
    outermost frame when every frame is mlipuq's (the command line)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(
            frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    return level


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
