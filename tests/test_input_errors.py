"""Bad structure files: every one raises an ``InputFileError`` naming the file,
the 0-based frame, the key and the problem; the CLI prints it as one line."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq import cli
from mlipuq.errors import InputFileError, InvalidStructureError

HEADER = 'Properties=species:S:1:pos:R:3:forces:R:3 energy={energy} pbc="F F F"'


def frame(energy="-1.5", symbol="H", last_line="H 0.0 0.0 0.74 0.0 0.0 -0.1", header=HEADER):
    return (f"2\n{header.format(energy=energy)}\n"
            f"{symbol} 0.0 0.0 0.0 0.0 0.0 0.1\n{last_line}\n")


GOOD = frame()

#: name -> (file text or bytes, frame, key, words the message must hold)
BAD_FILES = {
    "non_numeric_energy": (GOOD + frame(energy="abc"), 1, "energy", ["'abc'", "not a number"]),
    "boolean_energy": (GOOD + frame(energy="True"), 1, "energy", ["boolean"]),
    "vector_energy": (GOOD + GOOD + frame(energy='"1 2 3"'), 2, "energy",
                      ["shape (3,)", "scalar"]),
    "nan_energy": (GOOD + frame(energy="nan"), 1, "energy", ["not finite"]),
    "inf_energy": (frame(energy="inf"), 0, "energy", ["not finite"]),
    "unknown_symbol": (GOOD + frame(symbol="Xx"), 1, "species", ["unknown element", "'Xx'"]),
    "non_numeric_force": (GOOD + frame(last_line="H 0.0 0.0 0.74 0.0 0.0 oops"), 1, "forces",
                          ["atom 1", "'oops'"]),
    "non_numeric_position": (GOOD + frame(last_line="H 0.0 zero 0.74 0.0 0.0 0.0"), 1, "pos",
                             ["atom 1", "'zero'"]),
    "nan_position": (GOOD + frame(last_line="H 0.0 nan 0.74 0.0 0.0 0.0"), 1, "positions",
                     ["non-finite", "atoms [1]"]),
    "forces_wrong_shape": (
        GOOD + frame(header=HEADER.replace("forces:R:3", "forces:R:2"),
                     last_line="H 0.0 0.0 0.74 0.0 0.0").replace("0.0 0.0 0.1\n", "0.0 0.1\n"),
        1, "forces", ["shape (2, 2)", "expected (2, 3)"]),
    "stress_wrong_shape": (GOOD + frame(header=HEADER + ' stress="1 2"'), 1, "stress", ["stress"]),
    "truncated_frame": (GOOD + GOOD + "\n".join(GOOD.splitlines()[:3]) + "\n", 2, None,
                        ["truncated"]),
    "truncated_after_count_line": (GOOD + "2\n", 1, None, ["truncated"]),
    "short_atom_line": (GOOD + frame(last_line="H 0.0 0.0"), 1, None, ["short atom line"]),
    "bad_count_line": (GOOD + GOOD + "two\ncomment\nH 0 0 0\n", 2, None, ["header"]),
    "binary": (bytes(range(128, 256)) * 4, 0, None, ["binary", "UTF-8", "0x80", "offset 0"]),
    "binary_after_good_frames": (GOOD.encode() * 2 + b"2\n\xff\xfe\x00\x01\n", 2, None,
                                 ["binary", "0xff"]),
    "empty": ("", None, None, ["empty"]),
    "blank_lines_only": ("\n\n  \n", None, None, ["empty"]),
}


def _write(tmp_path, name, content):
    path = tmp_path / f"{name}.extxyz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_input_file_error_naming_file_frame_key(tmp_path, case):
    content, frame_index, key, words = BAD_FILES[case]
    path = _write(tmp_path, case, content)
    with pytest.raises(InputFileError) as info:
        mlipuq.load(path)
    error = info.value
    message = str(error)
    assert isinstance(error, ValueError) and isinstance(error, InvalidStructureError)
    assert error.file == str(path) and str(path) in message
    assert error.frame == frame_index and error.key == key
    if frame_index is not None:
        assert f"frame {frame_index}" in message
    if key is not None:
        assert repr(key) in message
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_boolean_energy_is_refused_not_read_as_one_ev(tmp_path):
    # ASE parses ``energy=True`` as a bool; float(True) would be a silent 1.0 eV
    path = _write(tmp_path, "bool", frame(energy="True"))
    assert ase.io.read(path).calc.results["energy"] is True
    with pytest.raises(InputFileError, match=r"frame 0, key 'energy': .*boolean"):
        mlipuq.load(path)


def test_custom_keys_are_checked_and_named(tmp_path):
    a = molecule("H2O")
    a.info["REF_energy"] = "high"
    b = molecule("H2O")
    ase.io.write(tmp_path / "custom.extxyz", [b, a], format="extxyz")
    with pytest.raises(InputFileError, match=r"frame 1, key 'REF_energy': .*'high'") as info:
        mlipuq.load(tmp_path / "custom.extxyz", energy_key="REF_energy")
    assert info.value.key == "REF_energy"


def test_frame_index_is_the_file_frame_with_a_selection(tmp_path):
    path = _write(tmp_path, "sel", GOOD * 3 + frame(energy="True") + GOOD)
    for index in (":", "2:", "1::2", 3, "-2", "::-1"):
        with pytest.raises(InputFileError) as info:
            mlipuq.load(path, index=index)
        assert info.value.frame == 3, index
    # frames outside the selection are not read
    assert len(mlipuq.load(path, index=":3")) == 3
    assert len(mlipuq.load(path, index="4:")) == 1


def test_error_chain_keeps_the_parser_exception(tmp_path):
    path = _write(tmp_path, "sym", GOOD + frame(symbol="Qq"))
    with pytest.raises(InputFileError) as info:
        mlipuq.load(path)
    assert isinstance(info.value.__cause__, KeyError)


def test_directory_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="directory"):
        mlipuq.load(tmp_path)


def test_good_files_still_load(tmp_path, ethanol_path):
    data = mlipuq.load(ethanol_path)
    assert len(data) == 20 and data.has_reference.all() and data.has_forces.all()
    path = _write(tmp_path, "good", GOOD + frame(energy="3"))  # an integer energy is a number
    np.testing.assert_array_equal(mlipuq.load(path).energies, [-1.5, 3.0])


# ----------------------------------------------------------- in-memory Atoms
@pytest.mark.parametrize(
    "value, words",
    [(True, "boolean"), ("abc", "not a number"), (np.array([1.0, 2.0]), "shape (2,)")],
)
def test_in_memory_bad_energy_names_structure(value, words):
    good = molecule("H2O")
    good.info["energy"] = -1.0
    bad = molecule("H2O")
    bad.info["energy"] = value
    with pytest.raises(InvalidStructureError, match="structure 1") as info:
        mlipuq.load([good, bad])
    assert words in str(info.value)
    assert not isinstance(info.value, InputFileError)


def test_in_memory_boolean_energy_in_calculator():
    atoms = molecule("H2O")
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    atoms.calc.results["energy"] = False
    with pytest.raises(InvalidStructureError, match="structure 0: reference energy is a boolean"):
        mlipuq.load(atoms)


# ------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("case", ["non_numeric_energy", "boolean_energy", "vector_energy",
                                  "unknown_symbol", "truncated_frame", "binary", "empty"])
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, case):
    content, frame_index, key, _ = BAD_FILES[case]
    path = _write(tmp_path, case, content)
    out = tmp_path / "model.pt"
    assert cli.main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and err.count("\n") == 1, err
    assert str(path) in err and "Traceback" not in err
    if frame_index is not None:
        assert f"frame {frame_index}" in err
    assert not out.exists()


def test_cli_debug_shows_the_traceback(tmp_path):
    path = _write(tmp_path, "sym", GOOD + frame(symbol="Xx"))
    with pytest.raises(InputFileError, match="unknown element symbol"):
        cli.main(["--debug", "train", str(path), "--out", str(tmp_path / "m.pt")])
    with pytest.raises(InputFileError):
        cli.main(["train", str(path), "--out", str(tmp_path / "m.pt"), "--debug"])


def test_cli_select_and_evaluate_report_bad_files(tmp_path, capsys):
    path = _write(tmp_path, "bad", GOOD + frame(energy="True"))
    argv = ["select", "--strategy", "random", "--pool", str(path), "-k", "1",
            "--out", str(tmp_path / "sel.extxyz")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and "frame 1" in err and err.count("\n") == 1
    assert cli.main(["evaluate", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlipuq: error: ") and "frame 1" in err and err.count("\n") == 1


def test_read_structures_returns_raw_frames_with_the_same_errors(tmp_path):
    from mlipuq.data import read_structures

    path = _write(tmp_path, "raw", GOOD + frame(energy="-2.5"))
    frames = read_structures(path)
    assert [a.calc.results["energy"] for a in frames] == [-1.5, -2.5]
    bad = _write(tmp_path, "raw_bad", GOOD + "\n".join(GOOD.splitlines()[:3]) + "\n")
    with pytest.raises(InputFileError, match="frame 1: truncated"):
        read_structures(bad)
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "nope.xyz")
