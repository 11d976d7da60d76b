"""Safe persistence of mlipuq files: writing, reading, checksums, format upgrades.

Every saved mlipuq file is a ``torch.save`` archive of a plain-data payload
(dicts, lists, strings, numbers, tensors) with a format tag and version:

* :func:`payload_digest` hashes such a payload canonically (independent of
  dict order and of how ``torch.save`` lays out the archive); the digest of a
  payload without its ``checksum`` entry is the file's integrity checksum and a
  wrapper's identity (:meth:`mlipuq.uq.UQWrapper.fingerprint`).
* :func:`save_payload` writes atomically: a temporary file created exclusively
  in the target folder, then ``os.replace``; it never follows a symbolic link
  and never replaces a file without ``overwrite=True``.
* :func:`read_payload` loads with ``torch.load(weights_only=True)`` only (no
  code is ever unpickled), verifies the checksum and upgrades older format
  versions through :data:`UPGRADES`, the one place where old formats are
  translated. Format-1 files predate checksums: they cannot be checked and
  are accepted as they are.

Nothing in a payload may make mlipuq read another file: adapters save their
architecture as plain data and their weights as tensors, and refuse configs
that name a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import struct
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

from mlipuq.errors import FileFormatError


def payload_digest(payload: Any) -> str:
    """SHA-256 hex digest of a plain-data payload, stable across dict orders."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        _feed(h, torch.from_numpy(np.ascontiguousarray(value)))
    elif isinstance(value, dict):
        h.update(b"D" + struct.pack("<q", len(value)))
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<q", len(value)))
        for item in value:
            _feed(h, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        h.update(b"S" + type(value).__name__.encode() + b":" + repr(value).encode())
    else:
        raise TypeError(f"cannot digest a {type(value).__name__} in a saved payload")


# --------------------------------------------------------------------------
# Writing and reading files
# --------------------------------------------------------------------------

#: Key of the integrity checksum in a saved payload (format version 2 on).
CHECKSUM = "checksum"

#: Current format version of each file kind (``payload["format"]``).
CURRENT = {"mlipuq.model": 2, "mlipuq.uq": 5}

CODE_HINT = (
    "mlipuq never unpickles code from a file. A model made by wrap() (or from_mace) is "
    "saved as weights plus plain configuration: build the module in code and pass it, e.g. "
    "mlipuq.models.load(path, module=MyNetwork(...)) or mlipuq.uq.load(path, module=...)"
)


def check_weights_only(weights_only, where: str) -> None:
    """The deprecated ``weights_only`` keyword: ``None``/``True`` are accepted, ``False`` refused."""
    if weights_only is None or bool(weights_only):
        return
    raise ValueError(
        f"{where}(weights_only={weights_only!r}) is no longer supported: every mlipuq file "
        f"loads as plain data (torch weights_only=True). {CODE_HINT}"
    )


def refuse_existing(path, overwrite: bool, what: str = "") -> None:
    """``FileExistsError`` if something (a file, or a link even dangling) is at
    ``path`` and ``overwrite`` is false; ``what`` names it (e.g. ``"--out"``)."""
    if path is not None and os.path.lexists(path) and not overwrite:
        name = f"{what} {path}" if what else str(path)
        hint = "--overwrite" if what.startswith("--") else "overwrite=True"
        raise FileExistsError(f"{name} exists; pass {hint} to replace it")


def save_payload(payload: dict, path, *, overwrite: bool = False) -> None:
    """Write ``payload`` with ``torch.save`` plus its checksum, atomically.

    The data go to a new temporary file created exclusively (``mkstemp``) in the
    target folder, which then replaces ``path`` (``os.replace``); the temporary
    file is removed if anything fails. An existing ``path`` is refused unless
    ``overwrite=True``; a symbolic link at ``path`` is itself replaced, never
    written through.
    """
    path = os.fspath(path)
    refuse_existing(path, overwrite)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path} is a folder, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    data = {k: v for k, v in payload.items() if k != CHECKSUM}
    data[CHECKSUM] = payload_digest(data)
    atomic_write(path, lambda fh: torch.save(data, fh), replace=overwrite)


def new_temporary(folder: str, name: str) -> tuple[int, str]:
    """``(fd, path)`` of a new file in ``folder`` named after ``name``, created
    exclusively (``mkstemp``: O_CREAT | O_EXCL, so nothing existing is followed),
    with the permissions ``open()`` would give rather than mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + name[:100] + ".", suffix=".tmp")
    if hasattr(os, "fchmod"):
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write(path, write, *, replace: bool = True) -> str:
    """Write a file through a temporary one next to it, then move it to ``path``.

    ``write(fh)`` fills the binary file object. A reader never sees a partial
    file, a link at ``path`` is replaced rather than written through, and the
    temporary file is removed if anything fails. ``replace=False``: the move
    fails (``FileExistsError``) if something appeared at ``path`` meanwhile.
    """
    path = os.fspath(path)
    fd, tmp = new_temporary(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fd = None
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _link_new(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` only if nothing appeared at ``path`` meanwhile."""
    try:
        os.link(tmp, path)  # atomic, fails if path exists (even as a dangling link)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def read_payload(path, *, format: str, what: str) -> dict:
    """Read, verify and upgrade a saved mlipuq file; returns the current-format payload.

    The file is read with ``torch.load(weights_only=True)``: plain data only,
    no code is ever unpickled. From format version 2 on, the checksum stored
    in the file must match its content (:class:`FileFormatError` otherwise).
    Format-1 files carry no checksum and cannot be checked: they are accepted
    as they are and upgraded (:data:`UPGRADES`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        archive = zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # a damaged end record
        raise FileFormatError(f"{path}: damaged or not an mlipuq {what} file ({exc})") from None
    if not archive:
        raise FileFormatError(
            f"{path}: not an mlipuq {what} file (not a torch archive: another kind of file, "
            "or a damaged or truncated one)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise FileFormatError(
                f"{path}: holds pickled Python objects (code), not plain data; it cannot be "
                f"loaded. Files written by older mlipuq versions from models made by wrap() or "
                f"from_mace carried the module's code: save the model again with this version. "
                f"{CODE_HINT}"
            ) from None
        raise FileFormatError(f"{path}: damaged or not an mlipuq {what} file ({exc})") from None
    except Exception as exc:  # a damaged archive: zip, record or storage errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FileFormatError(
            f"{path}: damaged or not an mlipuq {what} file ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != format:
        raise FileFormatError(f"{path}: not an mlipuq {what} file")
    version = payload.get("format_version")
    current = CURRENT[format]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= current:
        raise FileFormatError(
            f"{path}: {what} format version {version!r} is not supported "
            f"(this mlipuq reads versions 1 to {current})"
        )
    if version >= 2:
        verify_checksum(payload, path)
    payload = {k: v for k, v in payload.items() if k != CHECKSUM}
    return upgrade(payload, path)


def verify_checksum(payload: dict, path: str) -> None:
    """Raise :class:`FileFormatError` unless ``payload[CHECKSUM]`` matches the rest."""
    stored = payload.get(CHECKSUM)
    if not isinstance(stored, str):
        raise FileFormatError(f"{path}: has no checksum (damaged or not written by mlipuq)")
    try:
        actual = payload_digest({k: v for k, v in payload.items() if k != CHECKSUM})
    except TypeError as exc:
        raise FileFormatError(f"{path}: not plain data ({exc})") from None
    if actual != stored:
        raise FileFormatError(
            f"{path}: checksum mismatch: the file is damaged (or was edited); "
            "it is not loaded"
        )


def upgrade(payload: dict, path: str) -> dict:
    """Apply :data:`UPGRADES` until ``payload`` has the current format version."""
    format = payload["format"]
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CURRENT[format]:
        raise FileFormatError(f"{path}: {format} format version {version!r} is not supported")
    while payload["format_version"] < CURRENT[format]:
        step = UPGRADES[(format, payload["format_version"])]
        payload = step(dict(payload), path)
    return payload


def check_plain(value: Any, path: str, where: str = "config") -> None:
    """Raise :class:`FileFormatError` unless ``value`` is plain data (no tensors either)."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_plain(k, path, where)
            check_plain(v, path, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            check_plain(v, path, f"{where}[{k}]")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise FileFormatError(f"{path}: {where} holds a {type(value).__name__}, not plain data")


# --------------------------------------------------------------------------
# Format upgrades: ONE place. UPGRADES[(format, v)] turns a version-v payload
# into a version-(v + 1) one (a new dict; the input may be modified).
# --------------------------------------------------------------------------

def _uq_1_to_2(payload: dict, path: str) -> dict:
    """Format 1 -> 2 of a UQ wrapper: its base models are upgraded (models 1 -> 2)."""
    models = payload.get("models")
    if not isinstance(models, list):
        raise FileFormatError(f"{path}: not an mlipuq UQ-wrapper file (no models)")
    payload["models"] = [
        upgrade(m, path) if isinstance(m, dict) and m.get("format") == "mlipuq.model" else m
        for m in models
    ]
    payload["format_version"] = 2
    return payload


def _uq_2_to_3(payload: dict, path: str) -> dict:
    """Format 2 -> 3 of a UQ wrapper: nothing to translate (version 3 only adds the
    shallow ensemble's shared energy term, which no version-2 file holds)."""
    payload["format_version"] = 3
    return payload


def _uq_3_to_4(payload: dict, path: str) -> dict:
    """Format 3 -> 4 of a UQ wrapper: nothing to translate (version 4 only adds LLPR's
    energy term fitted apart, which no version-3 file holds)."""
    return {**_uq_2_to_3(payload, path), "format_version": 4}


def _uq_4_to_5(payload: dict, path: str) -> dict:
    """Format 4 -> 5 of a UQ wrapper: nothing to translate (version 5 only adds the deep
    ensemble's latent-distance term, which no version-4 file holds)."""
    return {**_uq_2_to_3(payload, path), "format_version": 5}


#: ``(format, version) -> upgrade(payload, path)`` to the next version: the one
#: place where old formats are translated. ``mlipuq.models.base`` registers the
#: model upgrade (it dispatches to each model class's ``upgrade_config``).
UPGRADES = {
    ("mlipuq.uq", 1): _uq_1_to_2,
    ("mlipuq.uq", 2): _uq_2_to_3,
    ("mlipuq.uq", 3): _uq_3_to_4,
    ("mlipuq.uq", 4): _uq_4_to_5,
}


def register_upgrade(format: str, version: int, step) -> None:
    """Add ``step(payload, path)`` upgrading ``format`` files from ``version``."""
    UPGRADES[(format, version)] = step
