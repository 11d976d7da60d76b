"""The i-PI driver (mlipuq.engines.ipi) against a real i-PI server.

i-PI (the ``ipi`` package, installed in CI) runs as a subprocess with the
example input of examples/ipi (shortened to 10 steps) on a Unix socket of a
unique name; the driver connects as ``python -m mlipuq ipi-driver`` or, in
the periodic test, in a thread through :func:`mlipuq.engines.ipi.serve`. The
numbers i-PI prints (eV, Hartree) are checked against the wrapper's
prediction of the initial structure.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.geometry import cellpar_to_cell

pytest.importorskip("ipi", reason="the i-PI driver tests need the ipi package (pip install ipi)")

from ipi.utils.units import unit_to_internal  # noqa: E402

import mlipuq  # noqa: E402
import mlipuq.cli  # noqa: E402
from mlipuq.engines import ipi as mipi  # noqa: E402
from mlipuq.uq import DeepEnsemble, LastLayerLaplace, LatentDistance, load  # noqa: E402

from conftest import ETHANOL_SMALL, make_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ipi"
TIMEOUT = 120  # s, for i-PI and the driver together


def hartree(x):
    return np.asarray(unit_to_internal("energy", "electronvolt", np.asarray(x, float)))


def au_force(x):
    return np.asarray(unit_to_internal("force", "ev/ang", np.asarray(x, float)))


def bohr(x):
    return np.asarray(unit_to_internal("length", "angstrom", np.asarray(x, float)))


def _script(name: str) -> str:
    """An ipi console script, run with this Python (not a shell shim)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"the ipi package is importable but its {name} script is not installed")
    return found


def _address() -> str:
    return f"mlipuq-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _driver_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlipuq", "ipi-driver", *args]


@pytest.fixture
def cli_main():
    return mlipuq.cli.main


def _edit_input(src: Path, dst: Path, *, steps: int, address: str, edit=None) -> None:
    """Copy an i-PI input, with ``steps`` steps, the socket ``address`` and
    full-precision numbers; ``edit(root)`` changes more."""
    root = ET.parse(src).getroot()
    root.set("floatformat", "%25.16e")
    root.find("total_steps").text = f" {steps} "
    root.find(".//ffsocket/address").text = f" {address} "
    if edit is not None:
        edit(root)
    ET.ElementTree(root).write(dst)


class _Run:
    """i-PI and one driver; everything they wrote is in ``folder``."""

    def __init__(self, folder: Path, driver_output: str):
        self.folder, self.driver_output = folder, driver_output

    def read(self, name: str) -> np.ndarray:
        return np.loadtxt(self.folder / name, ndmin=2)


def _run_ipi(folder: Path, driver) -> _Run:
    """Start ``i-pi input.xml`` in ``folder`` and the driver (a command list, or
    a callable run in a thread); wait for both to end (TIMEOUT s)."""
    log = open(folder / "ipi.log", "w")
    server = subprocess.Popen([sys.executable, _script("i-pi"), "input.xml"], cwd=folder,
                              stdout=log, stderr=subprocess.STDOUT)
    client, thread, failure = None, None, []
    try:
        if callable(driver):
            def target():
                try:
                    driver()
                except BaseException as exc:  # reported below
                    failure.append(exc)

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
        else:
            client = subprocess.Popen(driver, cwd=folder, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        try:
            server.wait(timeout=TIMEOUT)
            if client is not None:
                out, _ = client.communicate(timeout=30)
            else:
                thread.join(timeout=30)
                out = ""
        except subprocess.TimeoutExpired:
            pytest.fail(f"i-PI and the driver did not finish in {TIMEOUT} s; i-PI log:\n"
                        + (folder / "ipi.log").read_text()[-3000:])
    finally:
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
    ipi_log = (folder / "ipi.log").read_text()
    assert server.returncode == 0, ipi_log[-3000:]
    if client is not None:
        assert client.returncode == 0, out
    else:
        assert not thread.is_alive(), "the driver thread did not end"
        if failure:
            raise failure[0]
    assert "Exiting cleanly" in ipi_log, ipi_log[-3000:]
    return _Run(folder, out)


# ---------------------------------------------------------------- real i-PI runs
def test_committee_nvt_ethanol(tmp_path, fitted_members):
    """The example input (committee NVT MD of ethanol, 10 steps): i-PI's potential
    and committee on the first frame are the wrapper's; reweighting and the
    active-learning dump work on the output."""
    DeepEnsemble(fitted_members).save(tmp_path / "ensemble.pt")
    shutil.copy(EXAMPLE / "init.xyz", tmp_path / "init.xyz")
    address = _address()

    def low_threshold(root):  # every structure goes to the active-learning file
        root.find(".//ffcommittee/active_thresh").text = " 1e-6 "

    _edit_input(EXAMPLE / "input.xml", tmp_path / "input.xml", steps=10, address=address,
                edit=low_threshold)
    run = _run_ipi(tmp_path, _driver_command(
        "--model", "ensemble.pt", "--template", "init.xyz", "--address", address, "--unix"))
    assert "11 structures evaluated" in run.driver_output, run.driver_output

    wrapper = load(tmp_path / "ensemble.pt").to(torch.float64)  # the CLI's default dtype
    atoms = ase.io.read(tmp_path / "init.xyz")
    pred = wrapper.predict(atoms, distributed=False)
    members = pred.energy_members[:, 0]

    out = run.read("simulation.out")
    assert out.shape == (11, 6)
    assert out[0, 0] == 0
    assert out[0, 5] == pytest.approx(pred.energy[0], rel=0, abs=1e-8)  # eV
    # the committee, step 0: one row of K member energies (Hartree)
    pots = run.read("simulation.committee_pot_0")
    assert pots.shape == (11, 3)
    np.testing.assert_allclose(pots[0], hartree(members), rtol=0, atol=1e-11)
    # FFCommittee's uncertainty: the std over members with ddof=1 (mlipuq's is ddof=0)
    std = run.read("simulation.committee_std_0")[:, 0]
    assert std[0] == pytest.approx(float(hartree(np.std(members, ddof=1))), rel=1e-9)
    assert std[0] == pytest.approx(float(hartree(pred.energy_std[0])) * math.sqrt(3 / 2),
                                   rel=1e-9)
    assert std[0] > 1e-5  # a real spread, not a vacuous comparison
    # the dynamics follows the committee mean: later frames differ from the first
    assert np.ptp(out[:, 5]) > 1e-4

    # active learning: i-PI dumped every structure (threshold 1e-6 eV)
    dumped = mipi.read_active_output(tmp_path / "simulation.active", tmp_path / "init.xyz")
    assert len(dumped) == 11
    np.testing.assert_allclose(dumped[0].positions, atoms.positions, atol=1e-8)
    assert dumped[0].get_chemical_symbols() == atoms.get_chemical_symbols()
    assert dumped[0].info["committee_uncertainty"] == pytest.approx(
        float(np.std(members, ddof=1)), rel=1e-6)

    # committee reweighting of an observable (the potential, eV) with i-PI's tool
    np.savetxt(tmp_path / "obs.dat", out[:, 5])
    done = subprocess.run(
        [sys.executable, _script("i-pi-committee-reweight"), "simulation.committee_pot_0",
         "obs.dat", "--input", "input.xml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = np.loadtxt(done.stdout.splitlines(), ndmin=2)
    assert rows.shape == (1, 2 + 3)  # mean, error, one reweighted mean per member
    kt = float(unit_to_internal("temperature", "kelvin", 300.0))  # Hartree, as i-PI reads it
    h = (pots - pots.mean(axis=1, keepdims=True)) / kt
    obs = out[:, 5]
    expected = obs.mean() - (obs @ h) / len(obs) + obs.mean() * h.mean(axis=0)  # CEA
    np.testing.assert_allclose(rows[0, 2:], expected, rtol=1e-7)
    assert rows[0, 0] == pytest.approx(expected.mean(), rel=1e-7)


def test_periodic_cell_virial_and_plain_ffsocket(tmp_path):
    """A triclinic Cu cell served by ``serve`` in a thread to a plain <ffsocket>:
    i-PI's potential, virial (virial_md = -σ) and the extras' energy_std are the
    wrapper's."""
    wrapper = DeepEnsemble([make_model(seed=s) for s in range(2)])
    atoms = _cu_cell()
    ase.io.write(tmp_path / "cu.extxyz", atoms)
    address = _address()

    def periodic(root):
        ff = root.find("ffcommittee")
        socket = ff.find("ffsocket")
        root.remove(ff)  # a plain socket force field, no committee
        socket.set("name", "committee")
        root.insert(list(root).index(root.find("system")), socket)
        file = root.find(".//initialize/file")
        file.set("mode", "ase")
        file.text = " cu.extxyz "
        output = root.find("output")
        output.find("properties").text = (
            " [ step, potential{electronvolt}, virial_md{ev/ang3} ] ")
        for traj in output.findall("trajectory"):
            if traj.get("filename") == "committee_pot":
                output.remove(traj)
            elif traj.get("filename") == "committee_std":
                traj.set("filename", "energy_std")
                traj.set("extra_type", "energy_std")

    _edit_input(EXAMPLE / "input.xml", tmp_path / "input.xml", steps=2, address=address,
                edit=periodic)
    served = []
    run = _run_ipi(tmp_path, lambda: served.append(mipi.serve(
        wrapper, tmp_path / "cu.extxyz", address, unix=True, dtype="float64")))
    assert served[0].n_structures == 3

    template = ase.io.read(tmp_path / "cu.extxyz")
    pred = _predict_with_stress(wrapper, template)
    stress = (pred.stress[0] if getattr(pred, "stress", None) is not None
              else wrapper.compute_stress(template))
    out = run.read("simulation.out")
    # i-PI reads an extxyz file with ASE's Bohr, not its own: ~1e-9 relative in positions
    assert out[0, 1] == pytest.approx(pred.energy[0], rel=1e-7)
    voigt = -stress[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]  # i-PI: xx yy zz xy xz yz
    assert np.abs(voigt[3:]).max() > 1e-4  # the shear components are tested too
    np.testing.assert_allclose(out[0, 2:8], voigt, rtol=1e-5, atol=1e-8)
    std = run.read("simulation.energy_std_0")[0, 0]
    assert std == pytest.approx(float(hartree(pred.energy_std[0])), rel=1e-7)


def _cu_cell():
    """Rattled triclinic 4-atom Cu cell in i-PI's orientation (a along x, b in xy)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_cell(cellpar_to_cell([3.6, 3.7, 3.55, 87.0, 94.0, 91.5]), scale_atoms=True)
    atoms.rattle(stdev=0.08, seed=3)
    return atoms


# ------------------------------------------------------- the PES, without i-PI
def _predict_with_stress(wrapper, atoms):
    """The prediction with the stress (and stress members) where ``predict`` has them."""
    options = {"stress": True} if "stress" in inspect.signature(wrapper.predict).parameters else {}
    return wrapper.predict(atoms, distributed=False, **options)


def _au(atoms):
    """(cell, positions) as i-PI sends them: h (cell vectors as columns), Bohr."""
    return bohr(np.asarray(atoms.cell).T), bohr(atoms.positions)


def test_driver_units_virial_and_committee_periodic():
    wrapper = DeepEnsemble([make_model(seed=s) for s in range(3)])
    atoms = _cu_cell()
    driver = mipi.MLIPUQDriver(wrapper, atoms)
    pot, force, vir, extras = driver.compute(*_au(atoms))
    extras = json.loads(extras)
    pred = _predict_with_stress(wrapper, atoms)
    assert pot == pytest.approx(float(hartree(pred.energy[0])), rel=1e-14)
    np.testing.assert_allclose(force, au_force(pred.forces), rtol=1e-12, atol=1e-15)
    stress = (pred.stress[0] if getattr(pred, "stress", None) is not None
              else wrapper.compute_stress(atoms))
    np.testing.assert_allclose(vir, hartree(-stress * atoms.get_volume()).T, atol=1e-12)
    assert np.abs(vir).max() > 1e-4
    np.testing.assert_allclose(extras["committee_pot"], hartree(pred.energy_members[:, 0]))
    np.testing.assert_allclose(np.array(extras["committee_force"]),
                               au_force(pred.forces_members).reshape(3, -1))
    assert np.mean(extras["committee_force"], axis=0) == pytest.approx(force.reshape(-1))
    if getattr(pred, "stress_members", None) is not None:
        assert np.shape(extras["committee_virial"]) == (3, 9)
        np.testing.assert_allclose(np.mean(extras["committee_virial"], axis=0),
                                   vir.reshape(9), atol=1e-12)
    else:  # no member stresses yet: FFCommittee then uses the mean virial
        assert "committee_virial" not in extras
    assert extras["energy_std"] == pytest.approx(float(hartree(pred.energy_std[0])))
    np.testing.assert_allclose(extras["forces_std"], au_force(pred.forces_std))
    assert extras["max_force_std"] == pytest.approx(float(au_force(pred.max_force_std[0])))
    # a batched request (i-PI's batch_size) is the same, structure by structure
    other = atoms.copy()
    other.rattle(stdev=0.05, seed=9)
    batch = driver.compute(*[list(x) for x in zip(_au(atoms), _au(other))])
    single = driver.compute(*_au(other))
    assert batch[0][0] == pot and batch[1][0] == pytest.approx(single[0], rel=1e-13)
    np.testing.assert_allclose(batch[1][1], single[1], atol=1e-13)
    assert driver.n_structures == 4 and driver.n_calls == 3


def test_driver_molecule_ignores_cell_and_has_no_virial(fitted_members):
    wrapper = LastLayerLaplace(copy.deepcopy(fitted_members[0])).fit(
        mlipuq.load(ETHANOL_SMALL)[:14])
    atoms = ase.io.read(EXAMPLE / "init.xyz")
    driver = mipi.MLIPUQDriver(wrapper, EXAMPLE / "init.xyz")
    cell, pos = _au(atoms)
    pot, force, vir, extras = driver.compute(cell, pos)
    pot2, force2, _, _ = driver.compute(cell * 3.0, pos)
    assert pot == pot2 and np.array_equal(force, force2)
    assert not vir.any()
    extras = json.loads(extras)
    # LLPR samples give energy members; with the default (exact) force variance no
    # force members, and FFCommittee then uses the mean force
    assert len(extras["committee_pot"]) == wrapper.n_members
    assert "committee_force" not in extras
    assert "committee_virial" not in extras


def test_driver_without_members_sends_the_std(fitted_members):
    data = mlipuq.load(ETHANOL_SMALL)
    wrapper = LatentDistance(copy.deepcopy(fitted_members[0])).fit(data[:14], data[14:])
    driver = mipi.MLIPUQDriver(wrapper, EXAMPLE / "init.xyz")
    atoms = ase.io.read(EXAMPLE / "init.xyz")
    extras = json.loads(driver.compute(*_au(atoms))[3])
    assert set(extras) == {"energy_std", "forces_std", "max_force_std"}
    pred = wrapper.predict(atoms, distributed=False)
    assert extras["energy_std"] == pytest.approx(float(hartree(pred.energy_std[0])))


def test_driver_errors(tmp_path):
    wrapper = DeepEnsemble([make_model(seed=s) for s in range(2)])
    atoms = _cu_cell()
    driver = mipi.MLIPUQDriver(wrapper, atoms)
    cell, pos = _au(atoms)
    with pytest.raises(mipi.IPIDriverError, match="i-PI sent 3 atoms; the template has 4"):
        driver.compute(cell, pos[:3])
    iron = atoms.copy()
    iron.symbols[0] = "Fe"
    with pytest.raises(mipi.IPIDriverError, match="Fe, which the wrapper does not know"):
        mipi.MLIPUQDriver(wrapper, iron)
    with pytest.raises(FileNotFoundError, match="template structure"):
        mipi.MLIPUQDriver(wrapper, tmp_path / "missing.xyz")
    (tmp_path / "bad.xyz").write_text("not a structure\n")
    with pytest.raises(mipi.IPIDriverError, match="cannot read the template"):
        mipi.MLIPUQDriver(wrapper, tmp_path / "bad.xyz")
    with pytest.raises(ValueError, match="float64 or float32"):
        mipi.MLIPUQDriver(wrapper, atoms, dtype="int8")
    with pytest.raises(mipi.IPIDriverError, match="no i-PI at the Unix socket"):
        mipi.serve(wrapper, atoms, _address(), wait=0)
    with pytest.raises(mipi.IPIDriverError, match="TCP port"):
        mipi.serve(wrapper, atoms, "localhost", unix=False, port=70000)
    (tmp_path / "active").write_text('{"position": [0, 0, 0], "cell": [1, 0, 0')
    with pytest.raises(mipi.IPIDriverError, match="structure 0 is not an i-PI active"):
        mipi.read_active_output(tmp_path / "active", atoms)


def test_cli_errors_are_one_line(tmp_path, capsys, cli_main):
    wrapper = DeepEnsemble([make_model(seed=s) for s in range(2)])
    wrapper.save(tmp_path / "w.pt")
    atoms = _cu_cell()
    ase.io.write(tmp_path / "cu.extxyz", atoms)
    cases = [
        (["--model", str(tmp_path / "nope.pt"), "--template", str(tmp_path / "cu.extxyz")],
         "nope.pt"),
        (["--model", str(tmp_path / "w.pt"), "--template", str(tmp_path / "nope.xyz")],
         "nope.xyz"),
        (["--model", str(tmp_path / "w.pt"), "--template", str(tmp_path / "cu.extxyz"),
          "--wait", "0"], "no i-PI at the Unix socket"),
    ]
    for argv, message in cases:
        code = cli_main(["ipi-driver", *argv, "--address", _address(), "--unix"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("mlipuq: error: ") and message in err
        assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        cli_main(["ipi-driver", "--help"])
    assert "--template" in capsys.readouterr().out
