"""The packaged pretrained MiniMLIPs the demo starts from, and the data they were trained on.

Pretrained models
-----------------
``mlipuq/data_files/pretrained/`` holds small MiniMLIPs saved with
:meth:`mlipuq.models.MLIP.save` (plain data and weights, checksummed, read
with ``weights_only=True``) and ``manifest.json``, which records for every file
its SHA-256, the system and data it was trained on (generator arguments, split,
a fingerprint of the structures), the architecture, the training settings
(seed, epochs, batch size, learning rate, force weight, threads), what the run
did (epochs run, best epoch) and its test-set errors. They were made by
``scripts/train_pretrained.py`` (epoch counts, no time budget: deterministic
on CPU for a thread count).

* ``cu_emt_0``, ``cu_emt_1``, ``cu_emt_2``: three members (seeds 0, 1, 2) for
  the built-in EMT Cu data the demo uses (``datasets.emt(("Cu",), 200,
  (300, 600), seed=0)``, split 70/10/20 % with seed 0);
* ``ethanol_0``: the packaged DFT ethanol data (``datasets.ethanol``, its
  train/val/test splits).

:func:`load_pretrained` checks a file against the manifest's SHA-256 and
loads it with :func:`mlipuq.models.load`; :func:`system_data` rebuilds the
recorded train/val/test split of a system.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from typing import Optional

import numpy as np

__all__ = [
    "DEMO_SYSTEM",
    "ENERGY_TOLERANCE",
    "MANIFEST",
    "PRETRAINED",
    "DataMismatchWarning",
    "build_data",
    "dataset_fingerprint",
    "load_pretrained",
    "manifest",
    "pretrained_path",
    "structure_energies",
    "system_data",
]

#: Folder of the packaged pretrained models, inside the ``mlipuq`` package.
PRETRAINED = ("data_files", "pretrained")
#: Name of the manifest file in :data:`PRETRAINED`.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlipuq-pretrained"
MANIFEST_VERSION = 1

#: What ``mlipuq demo`` runs on without ``--train``: the system and its members.
DEMO_SYSTEM = "cu_emt"
#: eV: a rebuilt structure whose energy is this close to the recorded one is the
#: same structure (floating-point noise is ~1e-12 eV; any real change is far larger)
ENERGY_TOLERANCE = 1e-6


class DataMismatchWarning(UserWarning):
    """The rebuilt data differ from those a pretrained model was trained on."""


def _folder():
    root = resources.files("mlipuq")
    for part in PRETRAINED:
        root = root / part
    return root


def manifest() -> dict:
    """The manifest of the packaged pretrained models (``manifest.json``)."""
    text = (_folder() / MANIFEST).read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
        raise RuntimeError(f"{MANIFEST}: not a version-{MANIFEST_VERSION} "
                           f"{MANIFEST_FORMAT} manifest")  # pragma: no cover - packaging error
    return data


def _entry(name: str, info: Optional[dict] = None) -> dict:
    info = manifest() if info is None else info
    if name not in info["models"]:
        raise ValueError(f"no pretrained model {name!r}; packaged: {', '.join(info['models'])}")
    return info["models"][name]


def pretrained_path(name: str) -> str:
    """Filesystem path of the packaged pretrained model ``name`` (e.g. ``"cu_emt_0"``)."""
    path = _folder() / _entry(name)["file"]
    return os.fspath(path)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(name: str, *, device=None):
    """The packaged pretrained model ``name`` (a :class:`~mlipuq.models.MiniMLIP`).

    The file's SHA-256 is checked against the manifest first
    (:class:`~mlipuq.errors.FileFormatError` on a mismatch), then it is read by
    :func:`mlipuq.models.load` (plain data, its own checksum verified).
    ``device``: where to move it (default: CPU).
    """
    from mlipuq.errors import FileFormatError
    from mlipuq.models import load

    entry = _entry(name)
    path = pretrained_path(name)
    found = _sha256(path)
    if found != entry["sha256"]:
        raise FileFormatError(f"{path}: SHA-256 {found} differs from the manifest's "
                              f"{entry['sha256']}: a damaged or replaced pretrained file")
    model = load(path)
    return model if device is None else model.to(device=device)


def dataset_fingerprint(dataset) -> str:
    """SHA-256 of a dataset's structures and reference data (numbers, positions,
    cells, periodicity, energies, forces; float64 bytes in order)."""
    digest = hashlib.sha256()
    for atoms in dataset:
        digest.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(atoms.pbc, dtype=np.int8).tobytes())
        digest.update(np.float64(atoms.get_potential_energy()).tobytes())
        digest.update(np.ascontiguousarray(atoms.get_forces(), dtype=np.float64).tobytes())
    return digest.hexdigest()


def structure_energies(dataset) -> list:
    """The reference energy (eV) of every structure of ``dataset``, in order: the
    manifest records them beside the fingerprint, to recognise the same structures
    rebuilt with last-digit differences (:func:`system_data`)."""
    return [float(atoms.get_potential_energy()) for atoms in dataset]


def _same_split(part, spec: dict, name: str) -> bool:
    """Whether a rebuilt split holds the recorded structures: bitwise (the SHA-256
    fingerprint) or, where the manifest records the energies, up to floating-point
    noise (every energy within :data:`ENERGY_TOLERANCE`). EMT data built on another
    processor differ in the last digits (2026-12-03: an AMD EPYC rebuilt the Cu
    splits with other SHA-256s, and the pretrained models' test errors to 2e-8)."""
    if len(part) != spec["sizes"][name]:
        return False
    if dataset_fingerprint(part) == spec["fingerprints"][name]:
        return True
    recorded = spec.get("energies", {}).get(name)
    return recorded is not None and bool(np.allclose(
        structure_energies(part), recorded, rtol=0.0, atol=ENERGY_TOLERANCE))


def build_data(spec: dict) -> tuple:
    """``(train, val, test)`` described by a manifest ``data`` entry (without checks)."""
    from mlipuq import datasets

    source = spec["source"]
    if source == "mlipuq.datasets.emt":
        args = spec["arguments"]
        data = datasets.emt(tuple(args["elements"]), n_structures=args["n_structures"],
                            temperatures=tuple(args["temperatures"]), seed=args["seed"],
                            kinds=tuple(args["kinds"]), size=args["size"])
        train, val, test = data.split(spec["split"]["fractions"], seed=spec["split"]["seed"])
        return train, val, test
    if source == "mlipuq.datasets.ethanol":
        return tuple(datasets.ethanol(split) for split in ("train", "val", "test"))
    raise ValueError(f"unknown data source {source!r}")  # pragma: no cover - packaging error


def system_data(system: str = DEMO_SYSTEM, *, check: bool = True) -> tuple:
    """``(train, val, test)`` of a pretrained system, as recorded in the manifest.

    With ``check`` a :class:`DataMismatchWarning` says when the rebuilt
    structures differ from those the models were trained on (e.g. the EMT data
    generated by another ASE version): the models still load and work, but the
    recorded errors and the README's table no longer apply exactly. Last-digit
    differences (the same data built on another processor) are not a mismatch:
    every structure's energy within :data:`ENERGY_TOLERANCE` of the recorded one.
    """
    info = manifest()
    if system not in info["systems"]:
        raise ValueError(f"no pretrained system {system!r}; packaged: "
                         f"{', '.join(info['systems'])}")
    spec = info["systems"][system]["data"]
    splits = build_data(spec)
    if check:
        for name, part in zip(("train", "val", "test"), splits):
            if not _same_split(part, spec, name):
                warnings.warn(
                    f"the {system} {name} data rebuilt here differ from those the pretrained "
                    f"models were trained on (made with ASE {info['environment']['ase']}); "
                    "the recorded test errors do not apply exactly",
                    DataMismatchWarning, stacklevel=2,
                )
                break
    return splits
