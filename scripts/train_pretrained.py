"""Train the pretrained MiniMLIPs packaged in ``mlipuq/data_files/pretrained``.

    python scripts/train_pretrained.py --overwrite       # all of them (~30 min on 1 core)
    python scripts/train_pretrained.py --only ethanol --out /tmp/pretrained

Every model is trained for a fixed number of epochs (no time budget) with a
fixed seed on one CPU thread, so a rerun with the same torch, NumPy and ASE
gives the same weights. The script writes each model with ``MLIP.save`` and
``manifest.json`` with, per model, its file's SHA-256 and size, the data
(generator arguments, split and a fingerprint of every split), the
architecture, the training settings and what the run did, and its test-set
errors (``mlipuq.training.errors``: energies in eV/atom, forces in eV/Å).
``mlipuq.pretrained.load_pretrained`` checks the SHA-256; ``tests/test_demo.py``
reproduces the recorded test errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import ase
import numpy as np
import torch

import mlipuq
from mlipuq import pretrained
from mlipuq.models import MiniMLIP
from mlipuq.training import errors, train

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(pretrained.__file__)),
                           *pretrained.PRETRAINED)

#: Per system: the data, the architecture, the training settings and the member seeds.
SYSTEMS = {
    "cu_emt": {
        "description": "EMT Cu (bulk, vacancy, (111) surface, strained; 300 and 600 K), "
                       "the data of `mlipuq demo`",
        "data": {
            "source": "mlipuq.datasets.emt",
            "arguments": {"elements": ["Cu"], "n_structures": 200, "temperatures": [300, 600],
                          "seed": 0, "kinds": ["bulk", "vacancy", "surface", "strained"],
                          "size": 2},
            "split": {"fractions": [0.7, 0.1, 0.2], "seed": 0},
        },
        "model": {"species": ["Cu"], "cutoff": 4.5, "width": 32, "n_interactions": 2,
                  "n_rbf": 12, "n_readout_features": 32},
        "training": {"epochs": 150, "batch_size": 8, "lr": 2e-3, "energy_weight": 1.0,
                     "forces_weight": 100.0, "patience": 30},
        "seeds": [0, 1, 2],
    },
    "ethanol": {
        "description": "DFT ethanol (PBE/def2-SVP, rMD17 configurations; packaged "
                       "BOTNet-datasets files), `mlipuq.datasets.ethanol`",
        "data": {
            "source": "mlipuq.datasets.ethanol",
            "split": {"train": "train", "val": "val", "test": "test"},
        },
        "model": {"species": ["H", "C", "O"], "cutoff": 5.0, "width": 32, "n_interactions": 2,
                  "n_rbf": 12, "n_readout_features": 32},
        "training": {"epochs": 300, "batch_size": 8, "lr": 2e-3, "energy_weight": 1.0,
                     "forces_weight": 100.0, "patience": 40},
        "seeds": [0],
    },
}


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def train_system(name: str, spec: dict, out: str, overwrite: bool) -> tuple[dict, dict]:
    """Train every member of one system; returns its manifest entries (system, models)."""
    data = dict(spec["data"])
    train_set, val_set, test_set = pretrained.build_data(data)
    splits = {"train": train_set, "val": val_set, "test": test_set}
    data["sizes"] = {k: len(v) for k, v in splits.items()}
    data["fingerprints"] = {k: pretrained.dataset_fingerprint(v) for k, v in splits.items()}
    if data["source"] == "mlipuq.datasets.emt":  # generated here: last digits vary by processor
        data["energies"] = {k: pretrained.structure_energies(v) for k, v in splits.items()}
    print(f"{name}: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test", flush=True)
    models = {}
    for k, seed in enumerate(spec["seeds"]):
        member = f"{name}_{k}"
        model = MiniMLIP(**spec["model"], seed=seed)
        start = time.perf_counter()
        history = train(model, train_set, val_set, seed=seed, progress=False, **spec["training"])
        seconds = time.perf_counter() - start
        path = os.path.join(out, f"{member}.pt")
        model.save(path, overwrite=overwrite)
        test = errors(model, test_set)
        val = errors(model, val_set)
        models[member] = {
            "file": os.path.basename(path),
            "sha256": pretrained._sha256(path),
            "bytes": os.path.getsize(path),
            "system": name,
            "member": k,
            "class": type(model).__name__,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "model": dict(spec["model"], seed=seed),
            "training": dict(spec["training"], seed=seed, max_time=None,
                             reference_energies="least squares on the training energies "
                                                "(mlipuq.train's default)"),
            "history": {"epochs_run": len(history), "best_epoch": history.best_epoch,
                        "stopped_early": history.stopped_early,
                        "best_val_loss": history.best_val_loss,
                        "seconds": round(seconds, 1)},
            "test_errors": test,
            "val_errors": val,
        }
        print(f"  {member}: {len(history)} epochs (best {history.best_epoch}) in {seconds:.0f} s; "
              f"test energy MAE {1000 * test['energy_mae']:.2f} meV/atom, forces MAE "
              f"{1000 * test['forces_mae']:.1f} meV/Å; {models[member]['bytes']} bytes",
              flush=True)
    system = {"description": spec["description"], "data": data,
              "members": list(models)}
    return system, models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder of the models and manifest")
    parser.add_argument("--only", choices=sorted(SYSTEMS), action="append",
                        help="train only this system (repeatable); the manifest keeps the "
                             "others' entries")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, pretrained.MANIFEST)
    manifest = {"systems": {}, "models": {}}
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    for name in args.only or sorted(SYSTEMS):
        system, models = train_system(name, SYSTEMS[name], args.out, args.overwrite)
        manifest["systems"][name] = system
        manifest["models"] = {k: v for k, v in manifest["models"].items()
                              if v["system"] != name}
        manifest["models"].update(models)
    manifest.update({
        "format": pretrained.MANIFEST_FORMAT,
        "version": pretrained.MANIFEST_VERSION,
        "generated_by": "scripts/train_pretrained.py",
        "units": {"energy_mae": "eV/atom", "energy_rmse": "eV/atom",
                  "forces_mae": "eV/Å", "forces_rmse": "eV/Å"},
        "environment": {"mlipuq": mlipuq.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "ase": ase.__version__,
                        "python": platform.python_version(), "threads": args.threads},
    })
    ordered = {k: manifest[k] for k in ("format", "version", "generated_by", "units",
                                        "environment", "systems", "models")}
    ordered["models"] = dict(sorted(ordered["models"].items()))
    _write_text(manifest_path, json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
