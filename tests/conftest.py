"""Shared fixtures: a small real-DFT ethanol set, a rattled Cu cell, small models.

Everything here is deterministic (fixed seeds) and small enough that the whole
suite runs in well under a minute and a half on two CPU cores.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

import mlipuq
from mlipuq.models import MiniMLIP

DATA = Path(__file__).parent / "data"

#: 20 ethanol frames (every 50th of the BOTNet/rMD17 training file), PBE energies and forces.
ETHANOL_SMALL = DATA / "ethanol_small.xyz"

#: The benchmark scripts, imported by the tests of their comparisons.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_modules(*names: str) -> list:
    """The scripts ``names`` of benchmarks/ imported as modules: benchmarks/ on sys.path
    meanwhile, and MKL_CBWR (which the benchmarks set for their own runs) left as it was."""
    before = os.environ.get("MKL_CBWR")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(BENCHMARKS))
        if before is None:
            os.environ.pop("MKL_CBWR", None)
        else:
            os.environ["MKL_CBWR"] = before


#: Species of the small test models: ethanol's elements plus Cu for periodic cells.
SPECIES = ("H", "C", "O", "Cu")


def make_model(dtype: torch.dtype = torch.float64, *, seed: int = 0) -> MiniMLIP:
    """A small MiniMLIP with non-trivial outputs.

    The default readout initialisation (std 0.01) makes energies and forces so
    small that any comparison would pass; the readout weights are redrawn with
    std 1 so forces are O(0.1-1) eV/Å and the tests can fail.
    """
    model = MiniMLIP(
        SPECIES,
        cutoff=4.0,
        width=16,
        n_interactions=2,
        n_rbf=8,
        avg_num_neighbors=6.0,
        atomic_energies={"H": -13.5, "C": -1025.0, "O": -2035.5, "Cu": -3.5},
        seed=seed,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.readout.weight.copy_(torch.randn(model.readout.weight.shape, generator=generator))
        model.readout.bias.fill_(0.1)
    return model.to(dtype).eval()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared two-core machine: intra-op threads only fight each
    other (a forward pass is ~15x slower with two threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ethanol_path() -> Path:
    return ETHANOL_SMALL


@pytest.fixture
def ethanol() -> mlipuq.AtomsDataset:
    """The 20-frame ethanol dataset, loaded fresh for every test."""
    return mlipuq.load(ETHANOL_SMALL)


@pytest.fixture
def cu_cell():
    """Rattled 4-atom cubic Cu cell (a = 3.6 Å), smaller than the 4 Å model cutoff."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.1, seed=1)
    return atoms


@pytest.fixture
def model_factory():
    """``model_factory(dtype=torch.float64, seed=0)``: a fresh :func:`make_model`."""
    return make_model


@pytest.fixture
def model64() -> MiniMLIP:
    """Small float64 MiniMLIP (H, C, O, Cu; cutoff 4 Å) with non-trivial outputs."""
    return make_model(torch.float64)


@pytest.fixture
def model32() -> MiniMLIP:
    """The same model in float32 (the training precision)."""
    return make_model(torch.float32)


@pytest.fixture
def fd_forces():
    """``fd_forces(energy, atoms, h)``: forces -dE/dr by central differences.

    ``energy(atoms) -> float`` is evaluated on displaced copies of ``atoms``.
    """

    def compute(energy, atoms, h=1e-4):
        out = np.zeros((len(atoms), 3))
        for k in range(len(atoms)):
            for c in range(3):
                shifted = atoms.copy()
                shifted.positions[k, c] += h
                e_plus = energy(shifted)
                shifted.positions[k, c] -= 2 * h
                e_minus = energy(shifted)
                out[k, c] = -(e_plus - e_minus) / (2 * h)
        return out

    return compute


@pytest.fixture
def fd_stress():
    """``fd_stress(energy, atoms, h)``: (1/V) dE/d(eps) under symmetric strain (ASE convention)."""

    def compute(energy, atoms, h=1e-5):
        volume = atoms.get_volume()
        cell = np.asarray(atoms.cell)
        out = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                values = []
                for sign in (1, -1):
                    eps = np.zeros((3, 3))
                    eps[a, b] += sign * h / 2
                    eps[b, a] += sign * h / 2
                    strained = atoms.copy()
                    strained.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
                    values.append(energy(strained))
                out[a, b] = (values[0] - values[1]) / (2 * h) / volume
        return out

    return compute


def synthetic_prediction(n_structures=30, seed=0, miscal=1.5, members=False):
    """Random molecules with reference data and a Gaussian prediction whose errors are
    ``miscal`` times its predicted std (used by the calibration tests)."""
    import ase
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlipuq import data as mdata
    from mlipuq.prediction import Prediction

    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n_structures):
        n = int(rng.integers(3, 8))
        atoms = ase.Atoms(
            numbers=rng.choice([1, 6, 8], size=n), positions=rng.uniform(0, 4, size=(n, 3))
        )
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(rng.normal(-100, 3)), forces=rng.normal(size=(n, 3))
        )
        structures.append(atoms)
    ref = mdata.load(structures)
    n_atoms = ref.n_atoms
    e_std = np.exp(rng.normal(-2, 0.5, size=len(ref)))
    f_std = np.exp(rng.normal(-2, 0.5, size=(int(n_atoms.sum()), 3)))
    kwargs = {}
    energy = ref.energies + miscal * e_std * rng.standard_normal(len(ref))
    if members:
        kwargs["energy_members"] = energy + e_std * rng.standard_normal((4, len(ref)))
    pred = Prediction(
        energy=energy,
        energy_var=e_std**2,
        forces=ref.forces + miscal * f_std * rng.standard_normal(f_std.shape),
        forces_var=f_std**2,
        n_atoms=n_atoms,
        batch=np.repeat(np.arange(len(ref)), n_atoms),
        **kwargs,
    )
    return pred, ref


def scaled_about_centroid(dataset, factor: float) -> list:
    """Copies of the structures scaled about their centroid by ``factor`` (bonds
    compressed below 1), without reference data: structures away from the data."""
    out = []
    for atoms in dataset:
        a = atoms.copy()
        centre = a.positions.mean(axis=0)
        a.positions = centre + factor * (a.positions - centre)
        out.append(a)
    return out


def unlabelled(dataset):
    """Copies of the structures without reference data (an unlabelled pool)."""
    out = []
    for a in dataset:
        b = a.copy()
        b.calc = None
        out.append(b)
    return mlipuq.AtomsDataset(out)


def tiny_model(species, seed: int = 0) -> MiniMLIP:
    """A small MiniMLIP (width 16, 2 interactions, 4 Å) for wrapper tests."""
    return MiniMLIP(species, cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                    n_readout_features=16, seed=seed)


@pytest.fixture(scope="session")
def fitted_members():
    """Three tiny models trained (60 epochs) on the first 14 small-ethanol frames,
    well enough that those frames are fitted (barely trained models have a
    spread that is the same everywhere). Shared: never modify them."""
    data = mlipuq.load(ETHANOL_SMALL)
    models = []
    for seed in range(3):
        model = tiny_model(data.species, seed)
        mlipuq.train(model, data[:14], epochs=60, lr=1e-2, seed=seed, batch_size=8,
                     progress=False)
        models.append(model)
    return models


@pytest.fixture(scope="session")
def base(fitted_members):
    """The first of ``fitted_members``: a model trained on the small ethanol set
    (shared: never modify it)."""
    return fitted_members[0]


# ------------------------------------------------------------------ PostgreSQL
def _postgres_bin() -> "Path | None":
    """Folder holding ``initdb`` and ``pg_ctl`` (PATH, then /usr/lib/postgresql/*/bin)."""
    import glob
    import shutil

    found = shutil.which("initdb")
    candidates = [str(Path(found).resolve().parent)] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """URL of an empty PostgreSQL database for this test session.

    ``MLIPUQ_TEST_POSTGRES_URL`` if set (``.ci/run`` starts a server and sets
    it); else a throw-away server started here (``initdb`` + ``pg_ctl`` on a
    free localhost port, socket and data in a temporary folder; as root it
    runs as the ``postgres`` user) and stopped at the end of the session. The
    tests using it are skipped, with the reason, only when no server can be
    started.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    url = os.environ.get("MLIPUQ_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="mlipuq-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]
    data, log, port = base / "data", base / "server.log", _free_port()

    def run(*command: str) -> subprocess.CompletedProcess:
        argv = list(command)
        if as_user[-1:] == ["-c"]:  # su -c takes one shell string
            import shlex

            argv = as_user + [shlex.join(argv)]
        else:
            argv = as_user + argv
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    try:
        steps = [
            (str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlipuq",
             "--no-sync", "-E", "UTF8"),
            (str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -F", "start"),
        ]
        for step in steps:
            done = run(*step)
            if done.returncode != 0:
                server_log = log.read_text()[-2000:] if log.exists() else ""
                pytest.skip(f"cannot start a PostgreSQL server: {Path(step[0]).name} failed: "
                            f"{(done.stderr or done.stdout).strip()[-500:]} {server_log}")
        created = run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                      "mlipuq", "mlipuq_test")
        if created.returncode != 0:
            pytest.skip(f"cannot create a PostgreSQL database: {created.stderr.strip()[-500:]}")
        yield f"postgresql://mlipuq:mlipuq@127.0.0.1:{port}/mlipuq_test"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def copper_llpr():
    """LLPR on a small MiniMLIP trained on 35 EMT Cu 300 K bulk structures; its 15
    validation structures and 6 structures at 1500 K (beyond the calibration range)."""
    from mlipuq import datasets
    from mlipuq.uq import LastLayerLaplace

    data = datasets.emt("Cu", n_structures=50, temperatures=(300,), kinds="bulk", seed=3)
    train, val = data[:35], data[35:]
    hot = datasets.emt("Cu", n_structures=6, temperatures=(1500,), kinds="bulk", seed=4)
    model = MiniMLIP(["Cu"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                     n_readout_features=16, seed=0)
    mlipuq.train(model, train, val, epochs=40, lr=5e-3, seed=0, batch_size=8, progress=False)
    return LastLayerLaplace(model).fit(train), val, hot
