"""Adapter for the pretrained CHGNet models shipped in the ``chgnet`` wheel.

CHGNet (Deng et al., Nat. Mach. Intell. 2023) predicts an *intensive* energy
(eV/atom) as the mean of per-atom network outputs plus a composition model
(``AtomRef``: one linear reference energy per element, also averaged over the
atoms). Its ASE calculator multiplies that energy per atom by the number of
atoms ``n``, so the total energy it returns is

.. math:: E = n \\Big(\\frac1n \\sum_i m(h_i) + \\frac1n \\sum_i a_{Z_i}\\Big)
            = \\sum_i \\big(w \\cdot \\phi_i + b\\big) + \\sum_i a_{Z_i},

where ``m`` is the readout MLP applied to the (layer-normalised) atom features
of the last convolution, ``phi_i`` is the input of its final ``Linear(64, 1)``
(the output of the last SiLU) and ``a_Z`` are the AtomRef weights. The adapter's
features are ``phi_i``, its readout is that final linear layer (copied, not
refitted) and ``a_Z`` become mlipuq's float64 per-species atomic energies.

Geometry: CHGNet's own graph converter (pymatgen neighbour list, atom graph
within the model's cutoff, bond graph within 3 Å for the angles) is run on a
detached copy of each structure to obtain the *topology* (pairs, periodic
images, bond pairs). All lengths and angles are then recomputed from
``batch.positions`` and ``batch.cell`` through CHGNet's own basis-expansion
layers, so mlipuq's forward gets forces and stresses from autograd. Molecules
(no periodic direction) are placed in a box larger than the structure plus
twice the cutoff, with periodicity switched off, so no image is ever a neighbour.
"""

from __future__ import annotations

import contextlib
import io
from typing import Optional, Union

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError
from mlipuq.models.base import load_module_state, register
from mlipuq.models.external import ExternalMLIP, check_dtype, require, saved_config

#: Pretrained CHGNet versions whose weights ship inside the chgnet wheel.
VERSIONS = ("0.3.0", "0.2.0")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _load_chgnet(version: str):
    """CHGNet ``version`` from the weights inside the wheel (no download), on CPU."""
    model_mod = require("chgnet.model", "chgnet", "chgnet")
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        module = model_mod.CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    module.eval()
    # Structures whose atoms have no neighbour are legal inputs (one isolated atom
    # then has the energy of its embedding alone); do not print warnings for them.
    module.graph_converter.set_isolated_atom_response("ignore")
    return module


def _model_args(module) -> dict:
    """CHGNet's constructor arguments (``model_args``) as plain data; the composition
    model is saved by its weights (a name would make CHGNet read a reference file)."""
    args = {}
    for key, value in module.model_args.items():
        if key == "composition_model":
            value = None if value is None else "AtomRef"
        elif not (value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))):
            raise ValueError(
                f"CHGNet argument {key}={type(value).__name__} cannot be saved as plain data"
            )
        args[key] = list(value) if isinstance(value, tuple) else value
    return args


def _build_chgnet(model_args: dict, path: str):
    """A CHGNet network (random weights) from saved ``model_args``; reads no file."""
    model_mod = require("chgnet.model", "chgnet", "chgnet")
    from chgnet.model.composition_model import AtomRef

    args = dict(model_args)
    # only the composition model could make CHGNet read a file (a reference-energy
    # table by name); every other argument is a size, a flag or a name of a layer
    composition = args.get("composition_model")
    if composition not in (None, "AtomRef"):
        raise FileFormatError(
            f"{path}: CHGNet composition model {composition!r}: only saved weights are read"
        )
    if composition is not None:  # weights come with the state dict, not from a file
        args["composition_model"] = AtomRef(is_intensive=bool(args.get("is_intensive", True)))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            module = model_mod.CHGNet(**args)
    except Exception as exc:
        raise FileFormatError(
            f"{path}: cannot rebuild CHGNet from the saved arguments ({type(exc).__name__}: {exc})"
        ) from None
    module.eval()
    module.graph_converter.set_isolated_atom_response("ignore")
    return module


def pretrained_config(version: str) -> dict:
    """``config()`` of a CHGNet version shipped in the chgnet wheel (upgrades
    format-1 files, which named the version; package data, never a user's file)."""
    return {"version": version, "model_args": _model_args(_load_chgnet(version))}


def _final_linear(module) -> torch.nn.Linear:
    """The last ``Linear(F, 1)`` of CHGNet's readout MLP."""
    layers = module.mlp.layers if hasattr(module.mlp, "layers") else module.mlp
    last = layers[-1]
    if not isinstance(last, torch.nn.Linear) or last.out_features != 1:
        raise ValueError(f"unexpected CHGNet readout: {module.mlp}")
    return last


@register
class CHGNetMLIP(ExternalMLIP):
    """A pretrained CHGNet behind mlipuq's :class:`~mlipuq.models.MLIP` contract.

    Built by :func:`from_chgnet`. ``features(batch)`` are the 64 per-atom inputs
    of CHGNet's final readout layer; ``readout`` is that layer; the AtomRef
    composition energies are the ``atomic_energies`` (eV).
    """

    def __init__(self, module, version: str):
        n_elements = int(module.atom_embedding.embedding.num_embeddings)
        super().__init__(module, range(1, n_elements + 1), float(module.graph_converter.atom_graph_cutoff))
        self.version = version
        if not (module.mlp_first and module.is_intensive):
            raise ValueError("only CHGNet models with per-atom readout (mlp_first) are supported")
        last = _final_linear(module)
        reference = module.composition_model.fc.weight.detach().reshape(-1).double()
        energies = {z: float(reference[z - 1]) for z in self.species}
        self._set_readout_from(last.weight, last.bias, energies)

    def config(self) -> dict:
        """The version (a label) and CHGNet's constructor arguments as plain data:
        a saved file rebuilds the network from them and its own weights, reading
        no file (not even the wheel's)."""
        return {"version": self.version, "model_args": _model_args(self.module)}

    @classmethod
    def upgrade_config(cls, config: dict, version: int, path: str) -> dict:
        """Format 1 named a CHGNet version shipped in the wheel: it becomes that
        version's architecture (package data)."""
        if version != 1:
            return config
        if config.get("version") not in VERSIONS:
            raise FileFormatError(
                f"{path}: unknown CHGNet version {config.get('version')!r} in a format-1 file"
            )
        return pretrained_config(config["version"])

    @classmethod
    def from_payload(cls, payload: dict, *, module=None, path: str = "<memory>") -> "CHGNetMLIP":
        config = saved_config(payload, "version", "model_args", "CHGNet", path)
        network = _build_chgnet(config["model_args"], path)
        network.to(getattr(torch, payload.get("dtype", "float32")))
        load_module_state(network, payload["state_dict"], path, "CHGNet network")
        return cls(network, str(config["version"]))

    # ------------------------------------------------------------------ graphs
    def _topology(self, batch: mdata.Batch) -> tuple[dict, torch.Tensor]:
        """CHGNet's atom and bond graphs of every structure, concatenated with
        global indices, and the (B, 3, 3) lattice each structure's images use."""
        from pymatgen.core import Lattice, Structure

        numbers = batch.numbers.detach().cpu().numpy()
        positions = batch.positions.detach().cpu().double().numpy()
        cells = batch.cell.detach().cpu().double().numpy()
        pbc = batch.pbc.detach().cpu().numpy()
        n_atoms = batch.n_atoms.cpu().numpy()
        parts = {k: [] for k in ("atom_graph", "image", "d2u", "u2d", "bond_graph")}
        lattices = []
        atom_offset = n_directed = n_undirected = 0
        for k, n in enumerate(n_atoms):
            sl = slice(atom_offset, atom_offset + int(n))
            cell, periodic = cells[k], pbc[k]
            if not periodic.any():
                # a molecule: a box larger than the structure plus twice the cutoff
                extent = np.ptp(positions[sl], axis=0)
                cell = np.diag(extent + 2.0 * self.cutoff + 1.0)
            elif abs(np.linalg.det(cell)) < 1e-9:
                raise ValueError(
                    f"structure {k}: CHGNet needs a non-singular cell for a (partly) periodic "
                    f"structure (pbc={periodic.tolist()})"
                )
            structure = Structure(
                Lattice(cell, pbc=tuple(bool(p) for p in periodic)),
                [int(z) for z in numbers[sl]],
                positions[sl],
                coords_are_cartesian=True,
            )
            graph = self.module.graph_converter(structure)
            atom_graph = graph.atom_graph.long().reshape(-1, 2)
            bond_graph = graph.bond_graph.long().reshape(-1, 5)
            parts["atom_graph"].append(atom_graph + atom_offset)
            parts["image"].append(graph.neighbor_image.double().reshape(-1, 3))
            parts["d2u"].append(graph.directed2undirected.long() + n_undirected)
            parts["u2d"].append(graph.undirected2directed.long() + n_directed)
            shift = torch.tensor([atom_offset, n_undirected, n_directed, n_undirected, n_directed])
            parts["bond_graph"].append(bond_graph + shift)
            lattices.append(torch.as_tensor(cell) if not periodic.any() else None)
            atom_offset += int(n)
            n_directed += atom_graph.shape[0]
            n_undirected += graph.undirected2directed.shape[0]
        topology = {k: torch.cat(v).to(batch.positions.device) for k, v in parts.items()}
        dtype = batch.positions.dtype
        lattice = torch.stack([
            batch.cell[k] if box is None else box.to(batch.cell.device, dtype)
            for k, box in enumerate(lattices)
        ])
        topology["image"] = topology["image"].to(dtype)
        return topology, lattice

    def _batched_graph(self, batch: mdata.Batch):
        """CHGNet's ``BatchedGraph`` with every geometric quantity computed
        (differentiably) from ``batch.positions`` and ``batch.cell``."""
        from chgnet.model.model import BatchedGraph

        top, lattice = self._topology(batch)
        positions = batch.positions
        centre, neighbour = top["atom_graph"][:, 0], top["atom_graph"][:, 1]
        owner = batch.batch[centre]
        shift = torch.einsum("ek,ekl->el", top["image"], lattice[owner])
        # periodic shift added to the neighbour first, as CHGNet's BondEncoder does
        basis_ag, basis_bg, unit_vectors = self.module.bond_basis_expansion(
            center=positions[centre],
            neighbor=positions[neighbour] + shift,
            undirected2directed=top["u2d"],
            image=torch.zeros_like(shift),
            lattice=torch.eye(3, dtype=positions.dtype, device=positions.device),
        )
        bonds = top["bond_graph"]
        if bonds.shape[0]:
            angle_bases = self.module.angle_basis_expansion(
                unit_vectors[bonds[:, 2]], unit_vectors[bonds[:, 4]]
            )
            bond_graph = bonds[:, [0, 1, 3]]
        else:
            angle_bases = positions.new_zeros(0)
            bond_graph = positions.new_zeros(0)
        return BatchedGraph(
            atomic_numbers=batch.numbers,
            bond_bases_ag=basis_ag,
            bond_bases_bg=basis_bg,
            angle_bases=angle_bases,
            batched_atom_graph=top["atom_graph"],
            batched_bond_graph=bond_graph,
            atom_owners=batch.batch,
            directed2undirected=top["d2u"],
            atom_positions=[positions],
            strains=[None] * batch.n_structures,
            volumes=positions.new_zeros(batch.n_structures),
        )

    def features(self, batch: mdata.Batch) -> torch.Tensor:
        """(N, 64) inputs of CHGNet's final readout layer (CHGNet's own forward
        pass, forces and stresses switched off: mlipuq differentiates itself)."""
        self.species_index(batch)  # raises on elements CHGNet does not know
        store = {}

        def hook(layer, inputs):
            store["phi"] = inputs[0]

        handle = _final_linear(self.module).register_forward_pre_hook(hook)
        try:
            self.module._compute(self._batched_graph(batch), compute_force=False, compute_stress=False)
        finally:
            handle.remove()
        return store["phi"]


def from_chgnet(version: str = "0.3.0", *, dtype: Optional[Union[str, torch.dtype]] = None) -> CHGNetMLIP:
    """Wrap a pretrained CHGNet whose weights ship inside the ``chgnet`` wheel.

    Parameters
    ----------
    version
        ``"0.3.0"`` (default; cutoff 6 Å) or ``"0.2.0"`` (cutoff 5 Å).
    dtype
        ``torch.float32`` (default, what CHGNet uses) or ``torch.float64``
        (or their names).

    Returns a :class:`CHGNetMLIP` whose per-atom energies (eV) are the final
    readout layer applied to the 64 per-atom features feeding it, plus the
    AtomRef composition energies as per-species atomic energies; summed, they
    equal the total energy of CHGNet's ASE calculator. Nothing is downloaded.
    Needs ``pip install 'mlipuq[chgnet]' -c constraints.txt``.
    """
    if not isinstance(version, str) or version not in VERSIONS:
        raise ValueError(f"unknown CHGNet version {version!r}; accepted: {list(VERSIONS)}")
    if dtype is None:
        dtype = torch.float32
    if isinstance(dtype, str):
        dtype = _DTYPES.get(dtype.replace("torch.", ""), dtype)
    check_dtype(dtype)
    model = CHGNetMLIP(_load_chgnet(version), version)
    return model.to(dtype)
