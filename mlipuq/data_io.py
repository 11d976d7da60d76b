"""Reading structure files frame by frame, with errors a user can act on.

:func:`read_frames` lets ASE parse a file one frame at a time
(``ase.io.iread``) and turns every failure into an
:class:`~mlipuq.errors.InputFileError` naming the file, the 0-based frame and,
where it applies, the key: empty, binary or non-UTF-8 files, unknown formats,
truncated frames, malformed headers, unknown element symbols, non-numeric
values, non-finite positions or cells. The parsing is ASE's; the helpers here
only locate the failing frame and column for the message. Reference values
(energy, forces, stress) are checked by :mod:`mlipuq.data` as it attaches them.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import ase
import ase.io
import numpy as np

from mlipuq.errors import InputFileError


def file_error(path: str, frame, problem: str, *, key=None) -> InputFileError:
    """``InputFileError("<path>, frame <frame>, key '<key>': <problem>")``."""
    where = path if frame is None else f"{path}, frame {frame}"
    if key is not None:
        where += f", key {key!r}"
    return InputFileError(f"{where}: {problem}", file=path, frame=frame, key=key)


def _frame_problem(exc: BaseException) -> tuple[str, Optional[str]]:
    """``(problem, key)``: a reader exception from ASE, as a problem a user can act on."""
    text = str(exc).replace("ase.io.extxyz: ", "")
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return f"unknown element symbol {exc.args[0]!r}", "species"
    if "Frame has" in text or isinstance(exc, (EOFError, StopIteration, IndexError)) or (
        isinstance(exc, RuntimeError) and "StopIteration" in text
    ):
        return f"truncated frame: the file ends inside it ({text or type(exc).__name__})", None
    if "Expected xyz header" in text:
        return f"malformed frame header: expected the number of atoms ({text})", None
    if "could not assign tuple" in text:
        problem = f"truncated or short atom line: fewer columns than Properties declares ({text})"
        return problem, None
    if text.startswith("Got info item "):  # ASE: a Lattice/stress/... value of the wrong form
        return f"bad value: {text}", text[len("Got info item "):].split(",")[0].strip()
    if "could not convert string to float" in text or "invalid literal" in text:
        value = text.rsplit(":", 1)[-1].strip()
        return f"non-numeric value {value} where a number is expected", None
    return f"cannot be parsed ({type(exc).__name__}: {text})", None


def _xyz_frame_text(path: str, frame: int) -> Optional[tuple[str, list[str]]]:
    """``(comment line, atom lines)`` of (ext)xyz frame ``frame``, for error messages."""
    from ase.io.formats import open_with_compression

    try:
        with open_with_compression(path, "rb") as fh:
            for k in range(frame + 1):
                n_atoms = int(fh.readline())
                lines = [fh.readline() for _ in range(n_atoms + 1)]
                if k == frame:
                    text = [line.decode("utf-8", "replace") for line in lines]
                    return text[0], text[1:]
    except Exception:
        return None
    return None


def _bad_column(path: str, frame: int) -> Optional[tuple[str, int, str]]:
    """``(key, atom, text)`` of the first per-atom field of ``frame`` that its
    ``Properties`` column type cannot convert (ASE's own converters)."""
    from ase.io.extxyz import key_val_str_to_dict, parse_properties

    found = _xyz_frame_text(path, frame)
    if found is None:
        return None
    comment, atom_lines = found
    try:
        info = key_val_str_to_dict(comment)
        properties, names, _, converters = parse_properties(
            info.get("Properties", "species:S:1:pos:R:3")
        )
        columns = [name for name in names for _ in range(properties[name][1])]
        for atom, line in enumerate(atom_lines):
            for key, convert, field in zip(columns, converters, line.split()):
                try:
                    convert(field)
                except ValueError:
                    return key, atom, field
    except Exception:
        return None
    return None


def _blank_file(path: str) -> bool:
    """True for an empty or whitespace-only file (checks at most 64 kB)."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    if size > 65536:
        return False
    with open(path, "rb") as fh:
        return not fh.read().strip()


def _xyz_frame_at(path: str, byte_offset: Optional[int] = None) -> Optional[int]:
    """Index of the (ext)xyz frame holding ``byte_offset``, or of the first frame
    whose atom-count line is not an integer; ``None`` if it cannot tell.

    Only locates frames for error messages (count line, comment line, that many
    atom lines); the parsing itself is ASE's.
    """
    from ase.io.formats import open_with_compression

    frame = 0
    try:
        with open_with_compression(path, "rb") as fh:
            while True:
                line = fh.readline()
                if not line.strip():
                    return frame if byte_offset is not None else None
                try:
                    n_atoms = int(line)
                except ValueError:
                    return frame
                for _ in range(n_atoms + 1):
                    fh.readline()
                if byte_offset is not None and fh.tell() > byte_offset:
                    return frame
                frame += 1
    except Exception:
        return None


def _first_undecodable_byte(path: str) -> Optional[tuple[int, int]]:
    """``(offset, byte)`` of the first byte that is not UTF-8 text, if any."""
    import codecs

    from ase.io.formats import open_with_compression

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open_with_compression(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            data = decoder.getstate()[0] + chunk  # bytes held back from the last chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset - (len(data) - len(chunk)) + exc.start, data[exc.start]
            offset += len(chunk)
    return None


def _selection(index) -> slice:
    """``index`` (ASE syntax: int, slice or string like ``":100"``) as a slice."""
    from ase.io.formats import string2index

    if isinstance(index, str):
        index = string2index(index)
    if isinstance(index, (int, np.integer)):
        index = int(index)
        return slice(index, (index + 1) or None)
    if not isinstance(index, slice):
        raise TypeError(f"index must be an int, a slice or a string, got {type(index).__name__}")
    return index


def read_frames(path: str, index) -> list[tuple[int, ase.Atoms]]:
    """``(frame, Atoms)`` for the selected frames of a structure file.

    ASE parses the file one frame at a time; any failure becomes an
    :class:`InputFileError` naming the file and the 0-based frame.
    """
    import ase.io.formats

    if os.path.isdir(path):
        raise file_error(path, None, "is a directory, not a structure file")
    if _blank_file(path):
        raise file_error(path, None, "empty file (no structures)")
    selection = _selection(index)
    forward = (selection.step is None or selection.step > 0) and (
        selection.start is None or selection.start >= 0
    ) and (selection.stop is None or selection.stop >= 0)
    read_as = selection if forward else slice(None)
    start, step = (selection.start or 0), (selection.step or 1)
    frames: list[tuple[int, ase.Atoms]] = []
    iterator = ase.io.iread(path, index=read_as, do_not_split_by_at_sign=True)
    try:
        while True:
            frame = start + len(frames) * step if forward else len(frames)
            try:
                atoms = next(iterator)
            except StopIteration:
                break
            except UnicodeDecodeError:
                bad = _first_undecodable_byte(path)
                located = _xyz_frame_at(path, bad[0]) if bad and not frames else frame
                detail = f": byte 0x{bad[1]:02x} at offset {bad[0]}" if bad else ""
                raise file_error(
                    path, located, f"binary or undecodable file, not UTF-8 text{detail}"
                ) from None
            except ase.io.formats.UnknownFileTypeError as exc:
                raise file_error(path, None, f"unknown file format ({exc})") from None
            except Exception as exc:
                problem, key = _frame_problem(exc)
                if not frames and "header" in problem:
                    frame = _xyz_frame_at(path)  # ASE scans every header before the first frame
                elif key is None and "non-numeric" in problem and frame is not None:
                    bad = _bad_column(path, frame)
                    if bad is not None:
                        key = bad[0]
                        problem = f"atom {bad[1]}: non-numeric value {bad[2]!r}"
                raise file_error(path, frame, problem, key=key) from exc
            frames.append((frame, atoms))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    if not forward:
        frames = frames[selection]
    if not frames and selection == slice(None):
        raise file_error(path, None, "no structures found")
    for frame, atoms in frames:
        if not isinstance(atoms, ase.Atoms):
            raise file_error(path, frame, f"the reader returned {type(atoms).__name__}")
        if not np.all(np.isfinite(atoms.positions)):
            bad_atoms = np.where(~np.all(np.isfinite(atoms.positions), axis=1))[0]
            raise file_error(
                path, frame, f"non-finite (NaN/inf) positions for atoms {bad_atoms.tolist()}",
                key="positions",
            )
        if np.any(atoms.pbc) and not np.all(np.isfinite(np.asarray(atoms.cell))):
            raise file_error(path, frame, "non-finite cell", key="Lattice")
    return frames


def read_structures(path: Union[str, os.PathLike], index: Union[str, int, slice] = ":") -> list:
    """The ``ase.Atoms`` of a structure file, as ASE reads them (calculators and
    ``info`` untouched), with every read failure an :class:`InputFileError`.

    For code that needs the raw frames (trajectories, MD output) rather than an
    :class:`AtomsDataset`; :func:`load` reads files through it. Raises
    ``FileNotFoundError`` for a missing file and :class:`InputFileError` naming
    the file and 0-based frame for an empty, binary, truncated or malformed file
    (unknown element, non-numeric value, non-finite positions or cell).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    return [atoms for _, atoms in read_frames(path, index)]


