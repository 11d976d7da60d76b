"""The base-MLIP contract and the ``wrap()`` adapter.

A base MLIP maps a :class:`~mlipuq.data.Batch` to per-atom energies whose last
operation is linear in per-atom features,

.. math:: \\varepsilon_i = w \\cdot \\phi_i + b, \\qquad
          E = \\sum_i \\varepsilon_i + \\sum_i e_{Z_i}, \\qquad F = -\\partial E / \\partial r,

with per-species reference energies :math:`e_Z` (eV) kept in float64 outside the
network. :class:`MLIP` implements energies, forces, stresses and the capture of
the readout's input :math:`\\phi_i` (a forward hook, registered only for the
duration of a call) on top of one method, :meth:`MLIP.per_atom_energy`.
:func:`wrap` makes any such torch module an :class:`MLIP` without editing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError, InvalidStructureError

FORMAT = "mlipuq.model"
FORMAT_VERSION = 1


def _get_submodule(module: nn.Module, name: str) -> nn.Module:
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n]
        raise ValueError(
            f"readout layer {name!r} not found in {type(module).__name__}; "
            f"its submodules are {names[:20]}{' ...' if len(names) > 20 else ''}"
        ) from None


class MLIP(nn.Module):
    """Base class of every model mlipuq can wrap (energies in eV, lengths in Å).

    Subclasses implement :meth:`per_atom_energy` and name their readout layer in
    ``readout_name``; they must compute geometry through
    ``batch.edge_vectors()`` (or ``batch.positions``/``batch.cell``) so that
    forces and stresses follow from autograd.
    """

    readout_name: str = "readout"

    def __init__(self, species: Iterable[Union[int, str]], cutoff: float):
        super().__init__()
        species = mdata._as_species(species)
        if not species:
            raise ValueError("a model needs at least one species")
        if not (float(cutoff) > 0):
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.species = species
        self.cutoff = float(cutoff)
        self.register_buffer(
            "species_table", mdata.species_index_table(species), persistent=False
        )
        self._atomic_energies = {z: 0.0 for z in species}
        self.atomic_energies_set = False

    # ----------------------------------------------------------- subclass API
    def per_atom_energy(self, batch: mdata.Batch) -> torch.Tensor:
        """(N,) per-atom energies without the species offsets (eV)."""
        raise NotImplementedError

    @property
    def readout_layer(self) -> nn.Linear:
        """The final linear layer whose input are the per-atom features."""
        return _get_submodule(self, self.readout_name)

    def config(self) -> dict:
        """Constructor arguments needed to rebuild the model (see :meth:`save`)."""
        raise NotImplementedError

    # ------------------------------------------------------ species offsets
    @property
    def atomic_energies(self) -> dict[int, float]:
        """Per-species reference energies (eV), keyed by atomic number."""
        return dict(self._atomic_energies)

    def set_atomic_energies(self, energies: Mapping[Union[int, str], float]) -> None:
        """Set per-species reference energies (eV); missing species raise."""
        given = {mdata._as_species([k])[0]: float(v) for k, v in energies.items()}
        missing = [z for z in self.species if z not in given]
        if missing:
            raise ValueError(f"atomic energies missing for atomic numbers {missing}")
        self._atomic_energies = {z: given[z] for z in self.species}
        self.atomic_energies_set = True

    def get_extra_state(self):
        return {
            "atomic_energies": dict(self._atomic_energies),
            "atomic_energies_set": self.atomic_energies_set,
        }

    def set_extra_state(self, state) -> None:
        self._atomic_energies = {int(k): float(v) for k, v in state["atomic_energies"].items()}
        self.atomic_energies_set = bool(state["atomic_energies_set"])

    def offsets(self, batch: mdata.Batch) -> torch.Tensor:
        """(B,) float64 sum of species reference energies per structure (eV)."""
        table = torch.zeros(119, dtype=torch.float64, device=batch.numbers.device)
        for z, e in self._atomic_energies.items():
            table[z] = e
        out = torch.zeros(batch.n_structures, dtype=torch.float64, device=batch.numbers.device)
        return out.index_add_(0, batch.batch, table[batch.numbers])

    # ---------------------------------------------------------------- helpers
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def species_index(self, batch: mdata.Batch) -> torch.Tensor:
        """(N,) index of each atom's species in ``self.species``; raises if unknown."""
        index = self.species_table[batch.numbers]
        if bool((index < 0).any()):
            atom = int(torch.nonzero(index < 0)[0, 0])
            z = int(batch.numbers[atom])
            raise InvalidStructureError(
                f"structure {int(batch.batch[atom])} of the batch: element "
                f"{mdata.chemical_symbols[z]} unknown to the model (it knows "
                f"{[mdata.chemical_symbols[s] for s in self.species]})"
            )
        return index

    def collate(self, structures, *, start_index: int = 0) -> mdata.Batch:
        """Check structures against this model and collate them in its dtype."""
        return mdata.collate(
            structures, self.cutoff, species=self.species, dtype=self.dtype, start_index=start_index
        ).to(device=self.device)

    @contextlib.contextmanager
    def capture_features(self):
        """Context in which forward passes record the readout's input in ``store["features"]``."""
        store: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output):
            store["features"] = inputs[0]
            store["readout_output"] = output

        handle = self.readout_layer.register_forward_hook(hook)
        try:
            yield store
        finally:
            handle.remove()

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        batch: mdata.Batch,
        *,
        forces: bool = True,
        stress: bool = False,
        features: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies (B,) in eV (float64, offsets included), and on request
        forces (N, 3) in eV/Å, stress (B, 3, 3) in eV/Å^3 and the per-atom
        features (N, F) feeding the readout.

        ``create_graph=True`` keeps the graph of the forces (training).
        """
        positions = batch.positions
        cell = batch.cell
        strain = None
        need_grad = forces or stress
        if need_grad:
            positions = positions.detach().requires_grad_(True)
        if stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions_in = positions + torch.einsum("ni,nij->nj", positions, sym[batch.batch])
            cell = cell + torch.bmm(cell, sym)
        else:
            positions_in = positions
        work = dataclasses.replace(batch, positions=positions_in, cell=cell)
        with torch.enable_grad() if need_grad else contextlib.nullcontext():
            with self.capture_features() if features else contextlib.nullcontext() as store:
                eps = self.per_atom_energy(work)
            if eps.dim() == 2 and eps.shape[1] == 1:
                eps = eps.squeeze(1)
            if eps.shape != (batch.numbers.shape[0],):
                raise ValueError(
                    f"{type(self).__name__} returned per-atom energies of shape "
                    f"{tuple(eps.shape)}; expected ({batch.numbers.shape[0]},), one per atom"
                )
            interaction = torch.zeros(batch.n_structures, dtype=eps.dtype, device=eps.device)
            interaction = interaction.index_add(0, batch.batch, eps)
            out = {
                "energy": interaction.to(torch.float64) + self.offsets(batch),
                "per_atom_energy": eps,
            }
            if need_grad:
                inputs = [positions] + ([strain] if stress else [])
                grads = torch.autograd.grad(
                    interaction.sum(),
                    inputs,
                    create_graph=create_graph,
                    retain_graph=create_graph or features,
                    allow_unused=True,
                )
                if forces:
                    g = grads[0] if grads[0] is not None else torch.zeros_like(positions)
                    out["forces"] = -g
                if stress:
                    g = grads[1] if grads[1] is not None else torch.zeros_like(cell)
                    volume = torch.abs(torch.linalg.det(batch.cell))
                    periodic = batch.pbc.all(dim=1)
                    volume = torch.where(periodic, volume, torch.ones_like(volume))
                    out["stress"] = torch.where(
                        periodic[:, None, None], g / volume[:, None, None], torch.zeros_like(g)
                    )
            if features:
                out["features"] = store["features"]
                out["positions"] = positions
        return out

    def per_atom_features(self, batch: mdata.Batch) -> torch.Tensor:
        """(N, F) input of the readout layer for every atom."""
        return self.forward(batch, forces=False, features=True)["features"]

    @property
    def readout_weight(self) -> torch.Tensor:
        """(F,) weights of the linear readout."""
        return self.readout_layer.weight.detach().reshape(-1)

    @property
    def readout_bias(self) -> float:
        """Bias of the linear readout (eV per atom), 0 if it has none."""
        bias = self.readout_layer.bias
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])

    @property
    def n_features(self) -> int:
        return int(self.readout_layer.in_features)

    # ------------------------------------------------------------ convenience
    def compute(
        self,
        structures,
        *,
        batch_size: int = 32,
        stress: bool = False,
    ) -> dict[str, np.ndarray]:
        """Energies (B,) eV, forces (N, 3) eV/Å (and stress (B, 3, 3) eV/Å^3)
        for an AtomsDataset, a list of Atoms or one Atoms, as float64 NumPy."""
        dataset = mdata.as_dataset(structures)
        energies, forces, stresses = [], [], []
        for start, batch in mdata.iter_batches(
            dataset, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        ):
            out = self.forward(batch.to(device=self.device), forces=True, stress=stress)
            energies.append(out["energy"].detach().cpu().double().numpy())
            forces.append(out["forces"].detach().cpu().double().numpy())
            if stress:
                stresses.append(out["stress"].detach().cpu().double().numpy())
        result = {
            "energy": np.concatenate(energies),
            "forces": np.concatenate(forces),
            "n_atoms": dataset.n_atoms,
        }
        if stress:
            result["stress"] = np.concatenate(stresses)
        return result

    # ------------------------------------------------------------ persistence
    def _payload(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "config": self.config(),
            "state_dict": self.state_dict(),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def save(self, path: Union[str, os.PathLike], *, overwrite: bool = False) -> None:
        """Save to ``path`` (a torch file with a format version).

        Refuses to replace an existing file unless ``overwrite=True``.
        """
        save_payload(self._payload(), path, overwrite=overwrite)


def save_payload(payload: dict, path, *, overwrite: bool = False) -> None:
    """Write a payload with ``torch.save``, refusing to clobber; atomic replace."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


class WrappedMLIP(MLIP):
    """Any torch module computing per-atom energies, seen through the MLIP contract.

    Built by :func:`wrap`; the wrapped module is stored as ``self.module`` and is
    not modified (hooks live only for the duration of a call).
    """

    pickles_module = True  # saved files carry the user's code (load with weights_only=False)

    def __init__(
        self,
        module: nn.Module,
        readout: str,
        species: Iterable[Union[int, str]],
        cutoff: float,
        atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
    ):
        super().__init__(species, cutoff)
        if not isinstance(module, nn.Module):
            raise TypeError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
        layer = _get_submodule(module, readout)
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"readout layer {readout!r} is a {type(layer).__name__}, not torch.nn.Linear: "
                "the last operation of the per-atom energy must be linear"
            )
        if layer.out_features != 1:
            raise ValueError(
                f"readout layer {readout!r} has {layer.out_features} outputs; "
                "it must map per-atom features to one per-atom energy"
            )
        self.module = module
        self.readout_name = "module." + readout
        self._readout_path = readout
        self._checked = False
        if atomic_energies is not None:
            self.set_atomic_energies(atomic_energies)

    def per_atom_energy(self, batch: mdata.Batch) -> torch.Tensor:
        if self._checked:
            return self.module(batch)
        with self.capture_features() as store:
            out = self.module(batch)
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"the wrapped module returned {type(out).__name__}; it must return a tensor of "
                "per-atom energies"
            )
        flat = out.squeeze(-1) if out.dim() == 2 and out.shape[1] == 1 else out
        if flat.shape != (batch.numbers.shape[0],):
            raise ValueError(
                f"the wrapped module returned shape {tuple(out.shape)}; expected per-atom "
                f"energies of shape ({batch.numbers.shape[0]},) or ({batch.numbers.shape[0]}, 1)"
            )
        if "readout_output" not in store:
            raise ValueError(
                f"readout layer {self._readout_path!r} was not called during the forward pass"
            )
        readout_out = store["readout_output"].reshape(-1)
        if readout_out.shape != flat.shape or not torch.allclose(readout_out, flat):
            raise ValueError(
                f"the module's per-atom energies differ from the output of {self._readout_path!r}: "
                "the readout must be the last operation"
            )
        self._checked = True
        return out

    def config(self) -> dict:
        return {"readout": self._readout_path, "species": self.species, "cutoff": self.cutoff}

    def _payload(self) -> dict:
        payload = super()._payload()
        payload["module"] = self.module  # the user's code travels with the weights
        return payload


def wrap(
    module: nn.Module,
    readout: str,
    *,
    species: Iterable[Union[int, str]],
    cutoff: float,
    atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
) -> MLIP:
    """Make any per-atom-energy torch module usable by every mlipuq wrapper.

    Parameters
    ----------
    module
        A ``torch.nn.Module`` mapping a :class:`~mlipuq.data.Batch` to per-atom
        energies (N,) or (N, 1) in eV, computing geometry from
        ``batch.edge_vectors()`` so that forces come from autograd.
    readout
        Dotted name of the final ``torch.nn.Linear`` (one output) whose input
        are the per-atom features.
    species, cutoff
        Elements the module knows (symbols or atomic numbers) and its cutoff (Å).
    atomic_energies
        Per-species reference energies (eV) added to the module's output; if
        omitted, :func:`mlipuq.train` fits them by least squares.

    Returns an :class:`MLIP` whose ``module`` attribute is ``module`` itself;
    an :class:`MLIP` passed in is returned unchanged.
    """
    if isinstance(module, MLIP):
        return module
    return WrappedMLIP(module, readout, species, cutoff, atomic_energies)


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Make a model class loadable by :func:`load` (by its class name)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def load(path: Union[str, os.PathLike], *, weights_only: bool = True) -> MLIP:
    """Load a model saved with :meth:`MLIP.save`.

    Built-in models load with ``weights_only=True`` (no code is unpickled).
    Models made by :func:`wrap` pickle the user's module and need
    ``weights_only=False``; only do that for files you trust.
    """
    path = os.fspath(path)
    payload = load_payload(path, weights_only=weights_only, what="model")
    return model_from_payload(payload, path)


def load_payload(path: str, *, weights_only: bool, what: str):
    """``torch.load`` a saved mlipuq file with clear errors (missing, not torch, pickled code)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if not is_torch_file(path):
        raise FileFormatError(f"{path}: not an mlipuq {what} file (not a torch archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises UnpicklingError and friends
        if weights_only:
            raise FileFormatError(
                f"{path}: cannot be loaded with weights_only=True ({exc.__class__.__name__}). "
                "Models made by wrap() or from a user's MACE model contain pickled code: pass "
                "weights_only=False if you "
                "trust the file"
            ) from None
        raise FileFormatError(f"{path}: not a readable mlipuq {what} file ({exc})") from None


def is_torch_file(path: str) -> bool:
    """Whether ``path`` looks like a file written by ``torch.save`` (a zip archive)."""
    import zipfile

    return zipfile.is_zipfile(path)


def model_from_payload(payload, path: str = "<memory>") -> MLIP:
    """Rebuild a model from the dictionary :meth:`MLIP.save` writes."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not an mlipuq model file")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise FileFormatError(
            f"{path}: model format version {version} is not supported "
            f"(this mlipuq reads version {FORMAT_VERSION})"
        )
    name = payload["class"]
    dtype = getattr(torch, payload.get("dtype", "float32"))
    if name == "WrappedMLIP":
        config = payload["config"]
        model = WrappedMLIP(payload["module"], config["readout"], config["species"], config["cutoff"])
    else:
        if name not in _REGISTRY:
            raise FileFormatError(f"{path}: unknown model class {name!r}")
        cls = _REGISTRY[name]
        rebuild = getattr(cls, "from_payload", None)
        model = rebuild(payload) if rebuild is not None else cls(**payload["config"])
    model.to(dtype)
    model.load_state_dict(payload["state_dict"])
    return model


