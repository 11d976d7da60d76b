"""run_md resume: it refuses other settings, and damaged files, before writing anything."""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixAtoms
from test_propagation_md import A_MORSE, MORSE, QUICK, Morse, morse_committee

from mlipuq.errors import ResumeError
from mlipuq.propagation import MDTrajectory, run_md
from mlipuq.propagation import md as mdmod
from mlipuq.propagation.trajectory import RECORD_KEYS, TIMESTEP_KEY, WRAPPER_KEY
from mlipuq.uq import DeepEnsemble

SUFFIXES = [(".traj", 1e-12), (".extxyz", 1e-5)]
MD = dict(log_every=3, **QUICK)


@pytest.fixture(scope="module")
def committee():
    return morse_committee()


@pytest.fixture
def cu4():
    return bulk("Cu", "fcc", a=A_MORSE, cubic=True)


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _refused(path, match, call):
    """``call`` raises ResumeError matching ``match`` and leaves ``path`` byte-identical."""
    before = _bytes(path)
    with pytest.raises(ResumeError, match=match) as info:
        call()
    assert _bytes(path) == before
    assert str(path) in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------- records
@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_every_frame_records_the_settings(committee, cu4, tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=6, trajectory=path, **MD)
    frames = ase.io.read(path, ":")
    want = {WRAPPER_KEY: "sha256:" + committee.fingerprint(), "mlipuq_ensemble": "nvt",
            TIMESTEP_KEY: 5.0, "mlipuq_temperature_K": 300.0, "mlipuq_friction": 0.01,
            "mlipuq_seed": 0}
    assert set(want) <= set(RECORD_KEYS)
    for frame in frames:
        assert {k: frame.info[k] for k in want} == want


# ------------------------------------------------- finding 1: another wrapper
@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_other_wrapper_refused_before_writing(committee, cu4, tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=6, trajectory=path, **MD)
    other = morse_committee(scales=(0.8, 1.2))
    for _ in range(2):  # a second attempt neither: the file never grows
        msg = _refused(path, "wrapper differs",
                       lambda: run_md(cu4, other, steps=12, trajectory=path, **MD))
    assert committee.fingerprint()[:16] in msg and other.fingerprint()[:16] in msg
    assert len(MDTrajectory.read(path)) == 3  # still readable
    # a wrapper with the same members but another weight is another wrapper too
    same_size = morse_committee(scales=(0.9, 1.0, 1.2))
    _refused(path, "wrapper", lambda: run_md(cu4, same_size, steps=12, trajectory=path, **MD))


def test_saved_and_loaded_wrapper_resumes(committee, cu4, tmp_path):
    path = tmp_path / "md.traj"
    full = run_md(cu4, committee, steps=12, trajectory=tmp_path / "full.traj", **MD)
    run_md(cu4, committee, steps=6, trajectory=path, **MD)
    committee.save(tmp_path / "committee.pt")
    loaded = DeepEnsemble.load(tmp_path / "committee.pt", module=Morse(**MORSE))
    resumed = run_md(cu4, loaded, steps=12, trajectory=path, **MD)
    np.testing.assert_array_equal(resumed.step, full.step)
    np.testing.assert_allclose(resumed.energies, full.energies, atol=1e-10)


def test_other_base_model_refused(committee, cu4, tmp_path):
    path = tmp_path / "md.extxyz"
    run_md(cu4, committee.models[0], steps=3, trajectory=path, **MD)
    _refused(path, "wrapper differs",
             lambda: run_md(cu4, committee.models[1], steps=6, trajectory=path, **MD))
    assert len(run_md(cu4, committee.models[0], steps=6, trajectory=path, **MD)) == 3


# ------------------------------------------------------ finding 2: settings
@pytest.mark.parametrize(
    "first, change, name, recorded, requested",
    [
        ({}, dict(timestep_fs=2.0), "timestep_fs", "5.0", "2.0"),
        ({}, dict(temperature_K=600.0), "temperature_K", "300.0", "600.0"),
        ({}, dict(ensemble="nve"), "ensemble", "'nvt'", "'nve'"),
        ({}, dict(friction=0.05), "friction", "0.01", "0.05"),
        ({}, dict(seed=3), "seed", "0", "3"),
        (dict(ensemble="nve"), dict(ensemble="nvt"), "ensemble", "'nve'", "'nvt'"),
        (dict(ensemble="npt"), dict(ensemble="npt", pressure_GPa=1.0), "pressure_GPa",
         "0.0", "1.0"),
        (dict(ensemble="npt"), dict(ensemble="npt", tdamp_fs=100.0), "tdamp_fs", "500.0",
         "100.0"),
        (dict(ensemble="npt", pdamp_fs=200.0), dict(pdamp_fs=None), "pdamp_fs", "200.0",
         "5000.0"),
    ],
)
@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_other_settings_refused_before_writing(committee, cu4, tmp_path, suffix, first,
                                               change, name, recorded, requested):
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=3, trajectory=path, **dict(MD, **first))
    msg = _refused(path, name, lambda: run_md(cu4, committee, steps=6, trajectory=path,
                                              **{**MD, **first, **change}))
    assert f"recorded {recorded}" in msg and f"requested {requested}" in msg
    # the same settings still resume
    assert len(run_md(cu4, committee, steps=6, trajectory=path, **dict(MD, **first))) == 3


def _legacy(path, tmp_path, committee, cu4):
    """A file as the code before the records wrote it: no wrapper, ensemble, ... keys."""
    run_md(cu4, committee, steps=6, trajectory=tmp_path / f"new{path.suffix}", **MD)
    frames = ase.io.read(tmp_path / f"new{path.suffix}", ":")
    for frame in frames:
        for key in RECORD_KEYS:
            if key != "mlipuq_temperature_K":  # the old frames recorded this one
                frame.info.pop(key, None)
    ase.io.write(path, frames)


@pytest.mark.filterwarnings("ignore:.*without checking")
@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_file_without_records_needs_allow_unrecorded(committee, cu4, tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    _legacy(path, tmp_path, committee, cu4)
    full = run_md(cu4, committee, steps=12, trajectory=tmp_path / f"full{suffix}", **MD)
    _refused(path, "allow_unrecorded", lambda: run_md(cu4, committee, steps=12,
                                                      trajectory=path, **MD))
    # what old frames record (temperature, time/step) is checked even then
    _refused(path, "timestep_fs", lambda: run_md(cu4, committee, steps=12, trajectory=path,
                                                 allow_unrecorded=True, **dict(MD, timestep_fs=1)))
    _refused(path, "temperature_K", lambda: run_md(
        cu4, committee, steps=12, trajectory=path, allow_unrecorded=True,
        **dict(MD, temperature_K=500.0)))
    # and another committee size would make the file unreadable: refused too
    _refused(path, "committee size", lambda: run_md(
        cu4, morse_committee(scales=(0.8, 1.2)), steps=12, trajectory=path,
        allow_unrecorded=True, **MD))
    with pytest.warns(UserWarning, match="without checking wrapper, ensemble"):
        resumed = run_md(cu4, committee, steps=9, trajectory=path, allow_unrecorded=True, **MD)
    np.testing.assert_array_equal(resumed.step, [0, 3, 6, 9])
    # the new frames record the settings: later resumes are checked without the override
    _refused(path, "wrapper", lambda: run_md(cu4, morse_committee(scales=(0.8, 1.2)),
                                             steps=12, trajectory=path, **MD))
    resumed = run_md(cu4, committee, steps=12, trajectory=path, **MD)
    np.testing.assert_allclose(resumed.energies, full.energies, atol=1e-8)


# ---------------------------------------------------- finding 3: partial frame
def _truncate_last(path, fraction):
    """Cut the file inside its last frame (``fraction`` of the way into it)."""
    frames = ase.io.read(path, ":")
    shorter = path.with_name("shorter" + path.suffix)
    ase.io.write(shorter, frames[:-1])
    start, size = os.path.getsize(shorter), os.path.getsize(path)
    os.remove(shorter)
    cut = start + max(1, int(fraction * (size - start)))
    with open(path, "r+b") as f:
        f.truncate(min(cut, size - 1))
    return len(frames) - 1


def _crash(path, kind):
    """Damage the last frame: truncated mid-frame, or an unindexed write (bytes past the end)."""
    if kind == "garbage":
        n_frames = len(ase.io.read(path, ":"))
        with open(path, "ab") as f:
            f.write(b"\0" * 100 if path.suffix == ".traj" else b"4\nLattice=\"3.7 0")
        return n_frames
    return _truncate_last(path, {"early": 0.05, "middle": 0.5, "late": 0.97}[kind])


@pytest.mark.parametrize("kind", ["early", "middle", "late", "garbage"])
@pytest.mark.parametrize("suffix, atol", SUFFIXES)
def test_partial_last_frame_reported_then_repaired(committee, cu4, tmp_path, suffix, atol,
                                                   kind):
    full = run_md(cu4, committee, steps=12, trajectory=tmp_path / f"full{suffix}", **MD)
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=9 if kind != "garbage" else 6, trajectory=path, **MD)
    damaged = _crash(path, kind)
    original = _bytes(path)
    msg = _refused(path, f"frame {damaged} is damaged",
                   lambda: run_md(cu4, committee, steps=12, trajectory=path, **MD))
    assert "repair=True" in msg
    with pytest.raises(ResumeError, match=f"frame {damaged}"):
        MDTrajectory.read(path)
    with pytest.warns(UserWarning, match=f"frame {damaged}"):
        assert len(MDTrajectory.read(path, complete_only=True)) == damaged
    # a failing check comes before the repair: the file is still untouched
    _refused(path, "timestep_fs", lambda: run_md(cu4, committee, steps=12, trajectory=path,
                                                 repair=True, **dict(MD, timestep_fs=1.0)))
    resumed = run_md(cu4, committee, steps=12, trajectory=path, repair=True, **MD)
    side = f"{path}.partial-{damaged}"
    kept = _bytes(side)
    assert len(kept) > 0 and original.endswith(kept)  # the dropped bytes, kept aside
    np.testing.assert_array_equal(resumed.step, full.step)  # none duplicated, none missing
    again = MDTrajectory.read(path)
    np.testing.assert_array_equal(again.step, full.step)
    np.testing.assert_allclose(again.frames[-1].positions, full.frames[-1].positions, atol=atol)
    np.testing.assert_allclose(again.frames[-1].get_momenta(), full.frames[-1].get_momenta(),
                               atol=atol)
    np.testing.assert_allclose(again.energies, full.energies, atol=atol * 100)


@pytest.mark.filterwarnings("ignore:.*without checking")
def test_repair_waits_for_every_check(committee, cu4, tmp_path):
    """Even the committee size, known only once the model ran, is checked before a repair."""
    path = tmp_path / "old.extxyz"
    _legacy(path, tmp_path, committee, cu4)
    damaged = _truncate_last(path, 0.5)
    _refused(path, "committee size", lambda: run_md(
        cu4, morse_committee(scales=(0.8, 1.2)), steps=12, trajectory=path,
        allow_unrecorded=True, repair=True, **MD))
    assert not os.path.exists(f"{path}.partial-{damaged}")


def test_repair_never_overwrites_a_side_file(committee, cu4, tmp_path):
    path = tmp_path / "md.extxyz"
    run_md(cu4, committee, steps=9, trajectory=path, **MD)
    damaged = _truncate_last(path, 0.5)
    existing = tmp_path / f"md.extxyz.partial-{damaged}"
    existing.write_bytes(b"an earlier repair")
    run_md(cu4, committee, steps=9, trajectory=path, repair=True, **MD)
    assert existing.read_bytes() == b"an earlier repair"
    assert os.path.getsize(f"{path}.partial-{damaged}.1") > 0


@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_only_frame_damaged(committee, cu4, tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=0, trajectory=path, **MD)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    _refused(path, "frame 0 is damaged",
             lambda: run_md(cu4, committee, steps=6, trajectory=path, **MD))
    full = run_md(cu4, committee, steps=6, **MD)
    resumed = run_md(cu4, committee, steps=6, trajectory=path, repair=True, **MD)
    np.testing.assert_array_equal(resumed.step, full.step)
    np.testing.assert_allclose(resumed.energies, full.energies, atol=1e-8)


def test_corrupt_middle_frame_is_not_repaired(committee, cu4, tmp_path):
    path = tmp_path / "md.extxyz"
    run_md(cu4, committee, steps=9, trajectory=path, **MD)
    lines = _bytes(path).split(b"\n")
    lines[len(lines) // 2] = b"Cu not-a-number"
    path.write_bytes(b"\n".join(lines))
    _refused(path, r"frame \d is corrupt",
             lambda: run_md(cu4, committee, steps=12, trajectory=path, repair=True, **MD))


def test_unreadable_traj_header(committee, cu4, tmp_path):
    path = tmp_path / "md.traj"
    run_md(cu4, committee, steps=3, trajectory=path, **MD)
    with open(path, "r+b") as f:
        f.write(b"garbage!")
    _refused(path, "header", lambda: run_md(cu4, committee, steps=6, trajectory=path,
                                            repair=True, **MD))


# ------------------------------------------------------- harmless resumes
@pytest.mark.parametrize("suffix", [".traj", ".extxyz"])
def test_resume_with_steps_reached_writes_nothing(committee, cu4, tmp_path, suffix, monkeypatch):
    path = tmp_path / f"md{suffix}"
    run_md(cu4, committee, steps=6, trajectory=path, **MD)
    before = _bytes(path)
    monkeypatch.setattr(mdmod, "_Writer", None)  # nothing may even open the file to write
    for steps in (6, 3, 0):
        run = run_md(cu4, committee, steps=steps, trajectory=path, **MD)
        np.testing.assert_array_equal(run.step, [0, 3, 6])
    assert _bytes(path) == before
    # a mismatch is refused even then
    _refused(path, "timestep_fs", lambda: run_md(cu4, committee, steps=6, trajectory=path,
                                                 **dict(MD, timestep_fs=1.0)))


def test_resume_from_the_first_frame_does_not_repeat_it(committee, cu4, tmp_path):
    path = tmp_path / "md.traj"
    run_md(cu4, committee, steps=0, trajectory=path, **MD)
    resumed = run_md(cu4, committee, steps=6, trajectory=path, **MD)
    full = run_md(cu4, committee, steps=6, **MD)
    np.testing.assert_array_equal(resumed.step, [0, 3, 6])
    np.testing.assert_allclose(resumed.energies, full.energies, atol=1e-10)


def test_resume_keeps_constraints(committee, cu4, tmp_path):
    atoms = cu4.copy()
    atoms.set_constraint(FixAtoms([0]))
    path = tmp_path / "md.traj"
    full = run_md(atoms, committee, steps=12, **MD)
    run_md(atoms, committee, steps=6, trajectory=path, **MD)
    resumed = run_md(atoms, committee, steps=12, trajectory=path, **MD)
    np.testing.assert_allclose(resumed.frames[-1].positions[0], atoms.positions[0], atol=1e-12)
    np.testing.assert_allclose(resumed.frames[-1].positions, full.frames[-1].positions,
                               atol=1e-12)
