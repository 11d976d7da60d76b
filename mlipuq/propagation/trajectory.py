"""Reading, checking and repairing :func:`~mlipuq.propagation.run_md` trajectories.

Before a resume appends anything, :func:`scan` reads every complete frame of
the file and locates a damaged tail (a frame cut short by a crash or a
truncated copy), and :func:`check_records` compares the settings the frames
record (``mlipuq_wrapper``, ``mlipuq_timestep_fs``, ...) with the requested
ones. Both raise :class:`~mlipuq.errors.ResumeError` and never modify the
file; only :func:`drop_damaged_tail` does, after moving the dropped bytes to a
new side file ``<path>.partial-<frame>`` so that nothing is lost.

A frame is damaged when it is incomplete or cannot be parsed. A damaged tail is
a damaged frame with no readable frame after it; a damaged frame followed by a
readable one is corruption that no repair here undoes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Optional

import ase.io
import numpy as np

from mlipuq import schema
from mlipuq.errors import ResumeError, user_stacklevel

log = logging.getLogger(__name__)

FORMATS = {".traj": "traj", ".xyz": "extxyz", ".extxyz": "extxyz"}

# Settings every frame of a run_md trajectory records (``atoms.info`` keys, see
# mlipuq.schema).
WRAPPER_KEY = schema.WRAPPER
ENSEMBLE_KEY = schema.ENSEMBLE
TIMESTEP_KEY = schema.TIMESTEP_FS
TEMPERATURE_KEY = schema.TEMPERATURE_K
SEED_KEY = schema.SEED
FRICTION_KEY = schema.FRICTION
PRESSURE_KEY = schema.PRESSURE_GPA
TDAMP_KEY = schema.TDAMP_FS
PDAMP_KEY = schema.PDAMP_FS
RECORD_KEYS = (WRAPPER_KEY, ENSEMBLE_KEY, TIMESTEP_KEY, TEMPERATURE_KEY, FRICTION_KEY,
               PRESSURE_KEY, TDAMP_KEY, PDAMP_KEY, SEED_KEY)

_ULM_HEADER = 48  # magic (8) + tag (16) + version, nitems, position of the offsets (3 x 8)
_ULM_FANOUT = 42  # ase.io.ulm.N1: the offset table grows by this factor


def trajectory_format(path: str) -> str:
    """``"traj"`` or ``"extxyz"`` from the extension; ``ValueError`` for any other."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(
            f"trajectory {path!r}: unknown extension {ext!r}; use .traj (ASE trajectory) "
            "or .xyz/.extxyz (extended XYZ)"
        )
    return FORMATS[ext]


@dataclass
class Scan:
    """What :func:`scan` found in a trajectory file.

    ``frames`` are the complete frames; when the file ends in a damaged tail,
    ``damaged`` is the index of its first frame, ``cut`` the byte offset where
    that frame starts and ``reason`` what is wrong with it.
    """

    path: str
    fmt: str
    frames: list = field(default_factory=list)
    damaged: Optional[int] = None
    cut: Optional[int] = None
    reason: str = ""
    size: int = 0

    def describe(self) -> str:
        return (f"{self.path}: frame {self.damaged} is damaged ({self.reason}); "
                f"{self.damaged} complete frame(s) before it")

    def error(self) -> ResumeError:
        return ResumeError(
            f"{self.describe()}. Pass repair=True to run_md to move the "
            f"{self.size - self.cut} damaged bytes to a side file and resume from the last "
            "complete frame"
        )


def scan(path: str) -> Scan:
    """Read the complete frames of ``path`` and locate a damaged tail (read only).

    A missing or empty file gives no frames. Raises ``ResumeError`` (naming the
    file and the frame) for a damaged frame followed by readable ones, and for a
    ``.traj`` file whose header or offset table is unreadable.
    """
    fmt = trajectory_format(path)
    if not os.path.exists(path):
        return Scan(path, fmt)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return Scan(path, fmt)
    result = _scan_traj(path, data) if fmt == "traj" else _scan_extxyz(path, data)
    result.size = len(data)
    return result


def _corrupt(path: str, index: int, reason: str) -> ResumeError:
    return ResumeError(
        f"{path}: frame {index} is corrupt ({reason}) and more data follows it; it "
        "cannot be repaired by dropping a damaged tail (repair=True does only that)"
    )


# ------------------------------------------------------------------ extxyz
def _extxyz_starts(data: bytes) -> tuple[list, Optional[tuple]]:
    """Byte offsets of the complete frames, and (offset, reason, more lines follow)
    of a frame that is incomplete or whose atom-count line is unreadable."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    starts, pos, line = [], 0, 0  # line: index in newlines of the end of the count line
    while pos < len(data):
        end = int(newlines[line]) if line < len(newlines) else len(data)
        try:
            n_atoms = int(data[pos:end])
            if n_atoms < 0:
                raise ValueError
        except ValueError:
            more = b"\n" in data[pos:].rstrip(b"\n")
            return starts, (pos, "unreadable atom-count line", more)
        last = line + n_atoms + 1  # the comment line, then one line per atom
        if last >= len(newlines):
            return starts, (pos, f"incomplete: fewer than {n_atoms} atom lines", False)
        starts.append(pos)
        pos, line = int(newlines[last]) + 1, last + 1
    return starts, None


def _parse_extxyz(text: bytes) -> list:
    return ase.io.read(io.StringIO(text.decode()), ":", format="extxyz")


def _scan_extxyz(path: str, data: bytes) -> Scan:
    starts, tail = _extxyz_starts(data)
    if tail is not None and tail[2]:
        raise _corrupt(path, len(starts), tail[1])
    bounds = starts + [tail[0] if tail else len(data)]
    try:
        frames = _parse_extxyz(data[:bounds[-1]])
    except Exception:  # find the frame that does not parse  # noqa: BLE001
        frames = []
        for i in range(len(starts)):
            try:
                frames += _parse_extxyz(data[bounds[i]:bounds[i + 1]])
            except Exception as exc:  # noqa: BLE001
                if i < len(starts) - 1:
                    raise _corrupt(path, i, f"{type(exc).__name__}: {exc}") from exc
                return Scan(path, "extxyz", frames, i, bounds[i], "cannot be parsed")
    if tail is not None:
        return Scan(path, "extxyz", frames, len(frames), tail[0], tail[1])
    return Scan(path, "extxyz", frames)


# -------------------------------------------------------------------- traj
def _ulm_table(path: str, data: bytes) -> tuple[int, int, np.ndarray]:
    """(nitems, end of the offset table, offsets) of an ASE ``.traj`` (ULM) file."""
    from ase.io.ulm import read_header

    try:
        with io.BytesIO(data) as fd:
            _, _, nitems, pos0, offsets = read_header(fd)
        if len(offsets) != nitems:
            raise ValueError(f"{len(offsets)} offsets for {nitems} frames")
    except Exception as exc:  # noqa: BLE001
        raise ResumeError(
            f"{path}: the header or frame index of this ASE trajectory is unreadable "
            f"({type(exc).__name__}: {exc}); no frame can be located, so it cannot be "
            "resumed or repaired"
        ) from exc
    n_table = 1
    while nitems > n_table:
        n_table *= _ULM_FANOUT
    if int(pos0) + 8 * n_table > len(data):
        raise ResumeError(f"{path}: the frame index of this ASE trajectory is cut short: the "
                          "file lost more than its last frame; it cannot be resumed or repaired")
    return int(nitems), int(pos0) + 8 * n_table, offsets


def _json_end(data: bytes, offset: int) -> int:
    """End of the item whose JSON data starts at ``offset``; ``ValueError`` past the file."""
    if not 0 < offset <= len(data) - 8:
        raise ValueError("frame data beyond the end of the file")
    (n,) = struct.unpack_from("<q", data, int(offset))
    if int(offset) + 8 + n > len(data):
        raise ValueError("frame data beyond the end of the file")
    return int(offset) + 8 + n


def _traj_reader(path: str, data: bytes, nitems: int):
    """An ASE trajectory reader (it reads frame 0 at once), or a damaged-tail Scan."""
    from ase.io.trajectory import TrajectoryReader

    try:
        return TrajectoryReader(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        if nitems != 1:
            raise _corrupt(path, 0, f"{type(exc).__name__}: {exc}") from exc
        return Scan(path, "traj", [], 0, 0, f"{type(exc).__name__}: {exc}")


def _scan_traj(path: str, data: bytes) -> Scan:
    nitems, table_end, offsets = _ulm_table(path, data)
    reader = _traj_reader(path, data, nitems)
    if isinstance(reader, Scan):
        return reader

    def start(i):  # where frame i's bytes begin: after frame i-1 and the offset table
        return 0 if i == 0 else max(_json_end(data, offsets[i - 1]), table_end)

    frames, bad = [], None
    with reader:
        for i in range(nitems):
            try:
                _json_end(data, offsets[i])
                atoms = reader[i]
            except Exception as exc:  # noqa: BLE001
                bad = (i, f"{type(exc).__name__}: {exc}") if bad is None else bad
                continue
            if bad is not None:
                raise _corrupt(path, *bad)
            frames.append(atoms)
    if bad is not None:
        return Scan(path, "traj", frames, bad[0], start(bad[0]), bad[1])
    end = start(nitems) if nitems else _ULM_HEADER + 8
    if len(data) > end:
        return Scan(path, "traj", frames, nitems, start(nitems) if nitems else 0,
                    "incomplete: written past the last indexed frame")
    return Scan(path, "traj", frames)


# ------------------------------------------------------------------ repair
def _side_path(path: str, index: int) -> str:
    side, k = f"{path}.partial-{index}", 1
    while os.path.lexists(side):
        side, k = f"{path}.partial-{index}.{k}", k + 1
    return side


def drop_damaged_tail(found: Scan) -> str:
    """Move the damaged tail of ``found.path`` into a new side file; return its path.

    The side file is created exclusively (never overwriting) and synced before
    the trajectory is shortened to its complete frames (for ``.traj`` the frame
    count in its header is lowered first, so a crash in between leaves a
    readable file).
    """
    path, cut = found.path, found.cut
    side = _side_path(path, found.damaged)
    with open(path, "rb") as f:
        f.seek(cut)
        tail = f.read()
    with open(side, "xb") as f:
        f.write(tail)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        if found.fmt == "traj" and cut > 0:
            f.seek(32)  # nitems
            f.write(struct.pack("<q", len(found.frames)))
            f.flush()
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return side


# ----------------------------------------------------------------- records
def _same(recorded, requested) -> bool:
    if isinstance(requested, str) or isinstance(recorded, str):
        return str(recorded) == str(requested)
    try:
        return bool(np.isclose(float(recorded), float(requested), rtol=1e-12, atol=0.0))
    except (TypeError, ValueError):
        return False


def _show(value) -> str:
    """A recorded or requested value for a message (wrapper digests shortened)."""
    if isinstance(value, str) and value.startswith("sha256:") and len(value) > 23:
        return repr(value[:23] + "...")
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer,)):
        return repr(int(value))
    return repr(value)


def _recorded(frame, key):
    """The frame's record of ``key``; the timestep of pre-record files from time/step."""
    if key in frame.info:
        return frame.info[key]
    if key == TIMESTEP_KEY and frame.info.get(schema.STEP, 0) > 0:
        return float(frame.info[schema.TIME_FS]) / int(frame.info[schema.STEP])
    return None


def check_records(path: str, frames: list, requested: dict) -> list:
    """Refuse (``ResumeError``) when a frame records another value than ``requested``.

    ``requested`` maps record keys to the values of the new call. Returns the
    keys the last frame does not record (files written before the records, or
    a run without a wrapper fingerprint); the caller decides what to do.
    """
    for key, want in requested.items():
        for i, frame in enumerate(frames):
            have = _recorded(frame, key)
            if have is not None and not _same(have, want):
                name = key[len(schema.PREFIX):]
                raise ResumeError(
                    f"{path}: cannot resume: {name} differs: recorded {_show(have)} "
                    f"(frame {i}), requested {_show(want)}. Use a new trajectory file for "
                    "a new setting"
                )
    return [key for key in requested if _recorded(frames[-1], key) is None]


# ------------------------------------------------ run_md: records, resume, writing
def frame_records(model_id, ensemble, temperature_K, timestep_fs, seed, friction, pressure_GPa,
             tdamp_fs, pdamp_fs) -> dict:
    """The settings every frame records and a resume must match, in checking order."""
    records = {WRAPPER_KEY: model_id} if model_id is not None else {}
    records.update({ENSEMBLE_KEY: ensemble, TIMESTEP_KEY: float(timestep_fs),
                    TEMPERATURE_KEY: float(temperature_K)})
    if ensemble == "nvt":  # the seed matters after a resume only through the Langevin noise
        records.update({FRICTION_KEY: float(friction), SEED_KEY: int(seed)})
    if ensemble == "npt":
        records.update({PRESSURE_KEY: float(pressure_GPa),
                        TDAMP_KEY: float(tdamp_fs or 100 * timestep_fs),
                        PDAMP_KEY: float(pdamp_fs or 1000 * timestep_fs)})
    return records


def check_previous(path: str, frames: list, atoms, records: dict, allow_unrecorded: bool):
    """Refuse (``ResumeError``) frames that ``run_md`` cannot continue with these settings."""
    foreign = [i for i, a in enumerate(frames)
               if schema.STEP not in a.info or schema.ENERGY not in a.info]
    if foreign:
        raise ResumeError(f"{path}: frames {foreign[:5]} lack mlipuq_* data: the file was not "
                          "written by run_md; cannot resume from it")
    if list(frames[-1].numbers) != list(atoms.numbers):
        raise ResumeError(f"{path} holds a different system than atoms ({len(frames[-1])} vs "
                          f"{len(atoms)} atoms); cannot resume")
    unrecorded = [k[len(schema.PREFIX):] for k in check_records(path, frames, records)]
    if unrecorded and not allow_unrecorded:
        raise ResumeError(
            f"{path}: its frames do not record {', '.join(unrecorded)} (written by an older "
            "mlipuq), so a resume cannot check them; pass allow_unrecorded=True to resume "
            "anyway, or start a new trajectory file"
        )
    if unrecorded:
        warnings.warn(f"{path}: resuming without checking {', '.join(unrecorded)} "
                      "(not recorded in the file); new frames record them",
                      stacklevel=user_stacklevel())


def scan_for_resume(path, atoms, records, *, repair: bool, allow_unrecorded: bool):
    """The existing trajectory, checked for a resume (read only)."""
    found = scan(path)
    if found.frames:
        check_previous(path, found.frames, atoms, records, allow_unrecorded)
    if found.damaged is not None and not repair:
        raise found.error()
    return found


def repair_tail(found) -> None:
    """Drop a damaged tail (every check has passed), keeping its bytes in a side file."""
    if found is None or found.damaged is None:
        return
    side = drop_damaged_tail(found)
    log.warning("%s: dropped damaged frame %d (%s); its %d bytes are kept in %s",
                found.path, found.damaged, found.reason, found.size - found.cut, side)


def check_members(path: str, last, results: dict) -> None:
    """The resumed model has as many committee members as the file's frames."""
    recorded = int(np.size(last.info.get(schema.ENERGIES, [])))
    now = int(np.size(results.get(schema.RESULT_ENERGIES, [])))
    if recorded != now:
        raise ResumeError(f"{path}: cannot resume: committee size differs: recorded "
                          f"{recorded}, requested model has {now}")


class TrajectoryWriter:
    def __init__(self, path: Optional[str]):
        self.path = path
        self.fmt = None if path is None else trajectory_format(path)
        self._traj = None

    def write(self, frame) -> None:
        if self.path is None:
            return
        if self.fmt == "traj":
            if self._traj is None:
                from ase.io.trajectory import Trajectory

                self._traj = Trajectory(self.path, "a")
            self._traj.write(frame)
        else:
            ase.io.write(self.path, frame, format="extxyz", append=True)

    def close(self) -> None:
        if self._traj is not None:
            self._traj.close()
