"""Built-in reference data sets.

Two sources:

* :func:`emt` generates periodic metal structures (bulk, vacancies, surfaces,
  strained cells, random alloys) by short Langevin MD with ASE's EMT
  calculator and labels them with EMT energies (eV) and forces (eV/Å). It
  needs nothing but ASE, is deterministic for a seed and is cached on disk.
* :func:`ethanol` and :func:`acac` return real DFT data (isolated molecules)
  from the BOTNet-datasets collection, packaged in ``mlipuq/data_files``;
  :func:`isolated_atom_energies` gives their isolated-atom reference energies.

Every function returns an :class:`~mlipuq.data.AtomsDataset` whose structures
carry the reference energy and forces in a ``SinglePointCalculator``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from importlib import resources
from typing import Mapping, Sequence, Union

import ase
import ase.io
import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.calculators.emt import parameters as _EMT_PARAMETERS
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_masses, atomic_numbers

from mlipuq.data import AtomsDataset, atomic_energies_from, load

__all__ = ["EMT_ELEMENTS", "EMT_KINDS", "GENERATOR_VERSION", "acac", "emt", "ethanol",
           "isolated_atom_energies"]

#: Bumped whenever :func:`emt` would produce different structures for the same
#: arguments; it is part of the cache key, so old cache files are not reused.
GENERATOR_VERSION = 1

#: Elements ASE's EMT calculator has parameters for.
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O")
_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")

#: Structure kinds :func:`emt` can generate. Their position in this tuple
#: seeds their random stream, so new kinds must only ever be appended.
EMT_KINDS = ("bulk", "vacancy", "vacancy_cluster", "surface", "strained")

_EQUILIBRATION_STEPS = 100  # MD steps discarded at the start of each run
_STRIDE = 15  # MD steps between stored frames
_FRICTION = 0.02  # Langevin friction, 1/fs (relaxation time 50 fs)
_ALLOY_SEGMENT = 20  # frames per MD run for alloys (new random decoration each run)
_VACUUM = 5.0  # Å on each side of a slab (10 Å between periodic images)
_ISO_STRAIN = 0.03  # isotropic strain drawn from U(-0.03, 0.03)
_ANISO_STRAIN = 0.02  # each independent component of the deviatoric part from U(-0.02, 0.02)

_MOLECULES = {
    "ethanol": ("train.xyz.gz", "test_MD.xyz.gz"),
    "acac": ("train_300K.xyz.gz", "test_MD_300K.xyz.gz"),
}
_SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------- arguments
def _composition(elements) -> tuple[tuple[str, ...], np.ndarray]:
    """Element symbols and (normalised) fractions from ``elements``."""
    if isinstance(elements, str):
        elements = (elements,)
    if isinstance(elements, Mapping):
        symbols = tuple(elements.keys())
        try:
            fractions = np.array([float(v) for v in elements.values()])
        except (TypeError, ValueError):
            raise ValueError(
                f"composition fractions must be numbers, got {dict(elements)}"
            ) from None
    else:
        symbols = tuple(elements)
        fractions = np.ones(len(symbols))
    if not symbols:
        raise ValueError("elements is empty: give at least one element, e.g. ('Cu',)")
    for s in symbols:
        if not isinstance(s, str) or s not in EMT_ELEMENTS:
            raise ValueError(
                f"element {s!r} is not supported by ASE's EMT calculator; "
                f"supported: {', '.join(EMT_ELEMENTS)}"
            )
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"elements contains duplicates: {symbols}")
    if not any(s in _METALS for s in symbols):
        raise ValueError(
            f"elements {symbols} contain no metal; the fcc structures need at least one of "
            f"{', '.join(_METALS)} (EMT's H, C, N, O only make sense as minority species)"
        )
    if not np.all(np.isfinite(fractions)) or np.any(fractions <= 0):
        raise ValueError(f"composition fractions must be positive, got {fractions.tolist()}")
    return symbols, fractions / fractions.sum()


def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence, got {value!r}") from None
    if not out:
        raise ValueError(f"{name} is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} contains duplicates: {out}")
    return out


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------- structures
def _emt_lattice_constant(symbol: str) -> float:
    """fcc lattice constant (Å) at which EMT's reference for ``symbol`` sits."""
    s0 = _EMT_PARAMETERS[symbol][1] * units.Bohr  # Wigner-Seitz radius
    return s0 * (16 * math.pi / 3) ** (1 / 3)


def _vegard(symbols: Sequence[str], fractions: np.ndarray) -> float:
    """Composition-weighted lattice constant (Å) of the metal components."""
    metal = np.array([s in _METALS for s in symbols])
    a = np.array([_emt_lattice_constant(s) for s in symbols])
    return float(np.sum(fractions[metal] * a[metal]) / np.sum(fractions[metal]))


def _template(kind: str, size: int, a: float) -> ase.Atoms:
    """Undecorated lattice (Cu placeholder) for ``kind``."""
    from ase.build import bulk, fcc111

    if kind == "surface":
        return fcc111("Cu", size=(size, size, 2 * size), a=a, vacuum=_VACUUM, periodic=False)
    return bulk("Cu", "fcc", a=a, cubic=True).repeat((size, size, size))


def _decorate(atoms: ase.Atoms, symbols, fractions, rng: np.random.Generator) -> None:
    """Random substitutional occupation of the sites with the given fractions."""
    n = len(atoms)
    counts = np.floor(fractions * n).astype(int)
    remainder = fractions * n - counts
    for k in np.argsort(-remainder, kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in np.where(counts == 0)[0]:  # every requested element appears at least once
        counts[k] += 1
        counts[int(np.argmax(counts))] -= 1
    numbers = np.repeat([atomic_numbers[s] for s in symbols], counts)
    atoms.numbers = numbers if len(symbols) == 1 else rng.permutation(numbers)


def _remove_atoms(kind: str, atoms: ase.Atoms, a: float, rng: np.random.Generator) -> ase.Atoms:
    """Remove one atom ("vacancy") or a nearest-neighbour tetrahedron ("vacancy_cluster")."""
    n = len(atoms)
    if kind == "vacancy":
        del atoms[int(rng.integers(n))]
    elif kind == "vacancy_cluster":
        d = atoms.get_all_distances(mic=True)
        near = (d > 0.1) & (d < 0.5 * (1 + 2**-0.5) * a)  # between 1st and 2nd shell
        cluster = [int(rng.integers(n))]
        for _ in range(3):  # grow a tetrahedron of mutual nearest neighbours
            common = np.where(np.all(near[cluster], axis=0))[0]
            cluster.append(int(rng.choice(common)))
        del atoms[cluster]
    return atoms


def _strain(rng: np.random.Generator) -> np.ndarray:
    """Symmetric strain tensor: isotropic part plus a random anisotropic part."""
    aniso = rng.uniform(-_ANISO_STRAIN, _ANISO_STRAIN, size=(3, 3))
    aniso = np.triu(aniso) + np.triu(aniso, 1).T
    return rng.uniform(-_ISO_STRAIN, _ISO_STRAIN) * np.eye(3) + aniso


def _quantize(positions: np.ndarray) -> np.ndarray:
    """Round positions exactly as extxyz stores them (``%16.8f``).

    Labels are computed on the rounded positions, so freshly generated and
    cached structures are bitwise identical and the labels belong to them.
    """
    return np.array([float(f"{x:.8f}") for x in positions.ravel()]).reshape(positions.shape)


def _labelled(atoms: ase.Atoms, info: dict, deform=None) -> ase.Atoms:
    """Labelled copy of the current MD frame, deformed by ``deform`` if given."""
    if deform is None:
        # Round the MD positions in place and reuse the MD calculator (and its
        # neighbour list); the trajectory goes on from the rounded positions.
        atoms.positions = _quantize(atoms.positions)
        frame = ase.Atoms(
            numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
        )
        calc = atoms
    else:
        frame = ase.Atoms(
            numbers=atoms.numbers, positions=_quantize(atoms.positions @ deform),
            cell=np.asarray(atoms.cell) @ deform, pbc=atoms.pbc,
        )
        frame.calc = EMT()
        calc = frame
    energy = calc.get_potential_energy()
    forces = calc.get_forces()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=np.array(forces))
    frame.info.update(info)
    return frame


def _thermalize(atoms: ase.Atoms, temperature: float, rng: np.random.Generator) -> None:
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature, rng=rng)
    else:  # pragma: no cover - older ASE, same random draws
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)


def _run(kind, temperature, n_frames, size, symbols, fractions, rng) -> list[ase.Atoms]:
    """One Langevin MD run: equilibrate, then store ``n_frames`` labelled frames."""
    from ase.md.langevin import Langevin

    a = _vegard(symbols, fractions)
    atoms = _template(kind, size, a)
    _decorate(atoms, symbols, fractions, rng)
    atoms = _remove_atoms(kind, atoms, a, rng)
    atoms.calc = EMT()
    _thermalize(atoms, temperature, rng)
    lightest = float(min(atomic_masses[atomic_numbers[s]] for s in symbols))
    timestep = min(4.0, 0.5 * math.sqrt(lightest)) * units.fs  # 4 fs for Cu, 0.5 fs for H
    dyn = Langevin(
        atoms, timestep, temperature_K=temperature, friction=_FRICTION / units.fs,
        fixcm=False, rng=rng,
    )
    dyn.run(_EQUILIBRATION_STEPS)
    info = {"kind": kind, "temperature": float(temperature),
            "config_type": f"{kind}_{temperature:g}K"}
    frames = []
    for _ in range(n_frames):
        dyn.run(_STRIDE)
        if kind == "strained":
            eps = _strain(rng)
            voigt = np.array([eps[0, 0], eps[1, 1], eps[2, 2], eps[1, 2], eps[0, 2], eps[0, 1]])
            frames.append(_labelled(atoms, {**info, "strain": voigt}, deform=np.eye(3) + eps))
        else:
            frames.append(_labelled(atoms, info))
    return frames


def _split_evenly(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


def _generate(symbols, fractions, n_structures, temperatures, seed, kinds, size) -> list[ase.Atoms]:
    combos = [(kind, t) for kind in kinds for t in temperatures]
    structures: list[ase.Atoms] = []
    for (kind, t), n in zip(combos, _split_evenly(n_structures, len(combos))):
        if n == 0:
            continue
        # One independent stream per (kind, temperature): adding a kind or a
        # temperature does not change the others.
        stream = np.random.SeedSequence([seed, EMT_KINDS.index(kind), int(round(t * 1000))])
        rng = np.random.default_rng(stream)
        n_runs = 1 if len(symbols) == 1 else math.ceil(n / _ALLOY_SEGMENT)
        for n_frames in _split_evenly(n, n_runs):
            structures.extend(_run(kind, t, n_frames, size, symbols, fractions, rng))
    return structures


# ---------------------------------------------------------------------- cache
def _cache_dir(cache_dir) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    default = os.path.join(os.path.expanduser("~"), ".cache", "mlipuq")
    return os.environ.get("MLIPUQ_CACHE") or default


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".extxyz")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def emt(
    elements: Union[str, Sequence[str], Mapping[str, float]] = ("Cu",),
    n_structures: int = 200,
    temperatures: Union[float, Sequence[float]] = (300,),
    seed: int = 0,
    kinds: Union[str, Sequence[str]] = ("bulk", "vacancy", "surface", "strained"),
    *,
    size: int = 2,
    cache: bool = True,
    cache_dir: Union[str, os.PathLike, None] = None,
) -> AtomsDataset:
    """Metal structures sampled by Langevin MD and labelled with ASE's EMT.

    For every (kind, temperature) combination a structure is built, given
    Maxwell-Boltzmann velocities and run with a Langevin thermostat (time step
    4 fs for Cu, shorter for light elements; friction 0.02 fs⁻¹); after 100
    equilibration steps a frame is stored every 15 steps (60 fs). Each frame's
    EMT energy and forces become its reference data.

    Parameters
    ----------
    elements
        EMT elements (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O); at least one
        metal. Several elements give random substitutional alloys, equiatomic
        for a sequence, or with the fractions of a mapping such as
        ``{"Cu": 0.75, "Au": 0.25}``. The fcc lattice constant (Å) is the
        composition-weighted mean (Vegard's law) of the metals' EMT lattice
        constants. Alloys get a new random decoration every 20 frames.
    n_structures
        Total number of structures, split as evenly as possible over the
        (kind, temperature) combinations (earlier combinations get the extras).
    temperatures
        MD temperatures in K (positive).
    seed
        Non-negative integer; drives every random choice (decoration, vacancy
        sites, velocities, Langevin noise, strains).
    kinds
        Any of ``"bulk"`` (fcc supercell of ``size`` cubic cells per side,
        ``4 size³`` atoms, periodic), ``"vacancy"`` (bulk minus one atom),
        ``"vacancy_cluster"`` (bulk minus a tetrahedron of four nearest
        neighbours; out of distribution for the defaults), ``"surface"``
        (fcc(111) slab, ``size × size`` surface cells, ``2 size`` layers,
        10 Å of vacuum along z, ``pbc=(True, True, False)``) and
        ``"strained"`` (bulk frames deformed by a random symmetric strain: an
        isotropic part up to ±3 % plus anisotropic components up to ±2 %;
        stored as Voigt ``atoms.info["strain"]``).
    size
        Supercell size (>= 2): ``size=2`` gives 32-atom bulk cells, ``size=3``
        108 atoms.
    cache
        Reuse / store the result as extxyz in ``cache_dir``.
    cache_dir
        Cache folder; default ``$MLIPUQ_CACHE`` or ``~/.cache/mlipuq``. The file
        name holds a hash of all arguments, :data:`GENERATOR_VERSION` and the
        ASE version.

    Returns
    -------
    AtomsDataset
        Grouped by kind, then temperature, in MD order. Each structure's
        ``info`` has ``"kind"``, ``"temperature"`` (K) and ``"config_type"``
        (e.g. ``"bulk_300K"``); energies in eV, forces in eV/Å. Positions
        are rounded to 1e-8 Å (as stored in extxyz) before labelling, so
        cached and fresh results are bitwise identical.

    Raises
    ------
    ValueError
        For unsupported elements, ``n_structures < 1``, unknown kinds,
        non-positive temperatures, ``size < 2`` or a negative seed.
    """
    symbols, fractions = _composition(elements)
    n_structures = _check_int(n_structures, "n_structures", 1)
    size = _check_int(size, "size", 2)
    seed = _check_int(seed, "seed", 0)
    kinds = _as_tuple(kinds, "kinds")
    for kind in kinds:
        if kind not in EMT_KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(EMT_KINDS)}")
    temps = []
    for t in _as_tuple(temperatures, "temperatures"):
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"temperature {t!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"temperatures must be positive and finite (K), got {t!r}")
        temps.append(value)

    path = None
    if cache:
        key = json.dumps(dict(
            generator_version=GENERATOR_VERSION, ase=ase.__version__, elements=list(symbols),
            fractions=[float(f) for f in fractions], n_structures=n_structures,
            temperatures=temps, seed=seed, kinds=list(kinds), size=size,
        ), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        name = f"emt_{''.join(symbols)}_{n_structures}_{digest}.extxyz"
        path = os.path.join(_cache_dir(cache_dir), name)
        if os.path.exists(path):
            try:
                dataset = load(path)
                if len(dataset) == n_structures:
                    return dataset
            except (ValueError, OSError) as err:  # damaged cache (InputFileError): regenerate
                warnings.warn(f"ignoring unreadable cache file: {err}")

    structures = _generate(symbols, fractions, n_structures, temps, seed, kinds, size)
    buffer = io.StringIO()
    ase.io.write(buffer, structures, format="extxyz")
    text = buffer.getvalue()
    if path is not None:
        try:
            _write_atomic(path, text)
        except OSError as err:
            warnings.warn(f"could not write the cache file {path}: {err}")
    # Read back from the same text as the cache, so both paths agree bitwise.
    return load(ase.io.read(io.StringIO(text), index=":", format="extxyz"))


# ------------------------------------------------------------ packaged DFT data
@functools.lru_cache(maxsize=None)
def _packaged_structures(name: str, filename: str) -> tuple[ase.Atoms, ...]:
    """Parsed structures of a packaged file (read once per process).

    The file is decompressed in memory: ``ase.io.read`` on a ``.gz`` path
    works too, but seeking in the gzip stream makes it ~30x slower.
    """
    data = (resources.files("mlipuq") / "data_files" / name / filename).read_bytes()
    if filename.endswith(".gz"):
        data = gzip.decompress(data)
    return tuple(ase.io.read(io.StringIO(data.decode()), index=":", format="extxyz"))


def _read_packaged(name: str, filename: str) -> AtomsDataset:
    """Fresh copies (``load`` copies) of a packaged file's structures."""
    return load(list(_packaged_structures(name, filename)))


def _molecule(name: str, split: str) -> AtomsDataset:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    train_file, test_file = _MOLECULES[name]
    if split == "test":
        return _read_packaged(name, test_file)
    dataset = _read_packaged(name, train_file)
    spec = json.loads((resources.files("mlipuq") / "data_files" / name / "split.json").read_text())
    if spec["n_structures"] != len(dataset):  # pragma: no cover - packaging error
        raise RuntimeError(f"{name}: split.json describes {spec['n_structures']} structures, "
                           f"the file holds {len(dataset)}")
    is_val = np.zeros(len(dataset), dtype=bool)
    is_val[spec["val"]] = True
    return dataset.subset(np.where(is_val if split == "val" else ~is_val)[0])


def ethanol(split: str = "train") -> AtomsDataset:
    """Ethanol (C2H6O, 9 atoms) with DFT energies (eV) and forces (eV/Å).

    PBE/def2-SVP (ORCA 4.2) on configurations from the revised MD17 data set
    (Christensen & von Lilienfeld 2020), from the BOTNet-datasets collection
    (Kovács et al., MIT licence). Isolated molecules, non-periodic.

    Parameters
    ----------
    split
        ``"train"`` (900 structures), ``"val"`` (100) or ``"test"`` (1000, an
        MD test set disjoint from the training file). ``train`` and ``val``
        partition the 1000-structure training file; ``val`` holds the indices
        listed in ``mlipuq/data_files/ethanol/split.json``, both in file order.

    Returns
    -------
    AtomsDataset

    Raises
    ------
    ValueError
        For an unknown split.
    """
    return _molecule("ethanol", split)


def acac(split: str = "train") -> AtomsDataset:
    """Acetylacetone (C5H8O2, 15 atoms) with DFT energies (eV) and forces (eV/Å).

    UHF PBE+D3/def2-SVP (ORCA 5.0) on geometries from 300 K xTB MD, from the
    BOTNet-datasets collection (Kovács et al., MIT licence). Isolated
    molecules, non-periodic.

    Parameters
    ----------
    split
        ``"train"`` (450 structures), ``"val"`` (50) or ``"test"`` (650, a
        300 K MD test set disjoint from the training file). ``train`` and
        ``val`` partition the 500-structure training file; ``val`` holds the
        indices listed in ``mlipuq/data_files/acac/split.json``.

    Returns
    -------
    AtomsDataset

    Raises
    ------
    ValueError
        For an unknown split.
    """
    return _molecule("acac", split)


def isolated_atom_energies(name: str) -> dict[int, float]:
    """Isolated-atom DFT energies of a packaged data set.

    Parameters
    ----------
    name
        ``"ethanol"`` (H, C, O and N) or ``"acac"`` (H, C, O), computed at the
        level of theory of that data set.

    Returns
    -------
    dict
        ``{atomic_number: energy}`` in eV.

    Raises
    ------
    ValueError
        For an unknown data set name.
    """
    if name not in _MOLECULES:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(_MOLECULES)}")
    return atomic_energies_from(list(_packaged_structures(name, "isolated_atoms.xyz.gz")))
