"""The base-MLIP contract, model persistence and the model registry.

A base MLIP maps a :class:`~mlipuq.data.Batch` to per-atom energies whose last
operation is linear in per-atom features,

.. math:: \\varepsilon_i = w \\cdot \\phi_i + b, \\qquad
          E = \\sum_i \\varepsilon_i + \\sum_i e_{Z_i}, \\qquad F = -\\partial E / \\partial r,

with per-species reference energies :math:`e_Z` (eV) kept in float64 outside the
network. :class:`MLIP` implements energies, forces, stresses and the capture of
the readout's input :math:`\\phi_i` (a forward hook, registered only for the
duration of a call) on top of one method, :meth:`MLIP.per_atom_energy`.
:func:`mlipuq.models.wrap` (in :mod:`mlipuq.models.wrapped`) makes any such
torch module an :class:`MLIP` without editing it.

Direct (non-conservative) forces, optional, from a *direct force head*, and
the strain leaf behind stresses: :mod:`mlipuq.models.forces` (the contract's
force part; its names are importable from here too).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError, InvalidStructureError
from mlipuq.params import positive
from mlipuq.fileio import (  # noqa: F401  (save_payload re-exported)
    CODE_HINT,
    check_plain,
    check_weights_only,
    read_payload,
    register_upgrade,
    save_payload,
)
from mlipuq.models.forces import (  # noqa: F401  (re-exported: their old home)
    FORCE_MODES,
    DirectForceHead,
    _get_submodule,
    check_force_mode,
    strained,
    stress_from_strain_gradient,
    structure_volumes,
)

FORMAT = "mlipuq.model"
FORMAT_VERSION = 2  # 2: checksum, no pickled modules, adapters self-contained


class MLIP(DirectForceHead, nn.Module):
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
        self._offset_basis: Optional[np.ndarray] = None  # (S, k), see composition_variance
        self.offset_prior_std: Optional[float] = None
        self._offset_drift: Optional[np.ndarray] = None  # (k,), see set_offset_drift
        self._force_mode = "conservative"

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

    def set_atomic_energies(
        self,
        energies: Mapping[Union[int, str], float],
        *,
        undetermined: Optional[np.ndarray] = None,
        prior_std: Optional[float] = None,
    ) -> None:
        """Set per-species reference energies (eV); missing species raise.

        ``undetermined`` (S, k), in the order of ``species``, and ``prior_std``
        (eV) describe offset combinations the data that gave ``energies`` did
        not determine (see :meth:`composition_variance`); energies given
        without them (e.g. isolated-atom energies) are taken as exact.
        """
        given = {mdata._as_species([k])[0]: float(v) for k, v in energies.items()}
        missing = [z for z in self.species if z not in given]
        if missing:
            raise ValueError(f"atomic energies missing for atomic numbers {missing}")
        self._atomic_energies = {z: given[z] for z in self.species}
        self.atomic_energies_set = True
        self._offset_basis, self.offset_prior_std, self._offset_drift = None, None, None
        if undetermined is not None and np.size(undetermined):
            basis = np.asarray(undetermined, dtype=np.float64)
            if basis.ndim != 2 or basis.shape[0] != len(self.species):
                raise ValueError(f"undetermined must have shape ({len(self.species)}, k), "
                                 f"got {basis.shape}")
            if not np.allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-8):
                raise ValueError("undetermined must have orthonormal columns")
            self._offset_basis = basis
            self.offset_prior_std = positive("prior_std", prior_std)

    @property
    def offset_basis(self) -> Optional[np.ndarray]:
        """(S, k) orthonormal reference-energy combinations the training compositions
        left undetermined (order of ``species``), or None when all are determined."""
        return None if self._offset_basis is None else self._offset_basis.copy()

    @property
    def offset_drift(self) -> Optional[np.ndarray]:
        """(k,) the model's own energies (eV) along :attr:`offset_basis`, or None when
        not measured (see :meth:`set_offset_drift`)."""
        return None if self._offset_drift is None else self._offset_drift.copy()

    def set_offset_drift(self, drift) -> None:
        """Record the model's own per-species energies (eV) along :attr:`offset_basis`:
        ``Nᵀ ē``, ``ē_s`` the mean energy of the training atoms of species ``s``
        (reference energy included). Training data never constrained them, so
        the network is free to put any energy there: ``mlipuq.train`` measures
        them when it ends (:func:`mlipuq.training.fit_offset_drift`). None clears it.
        """
        if drift is None:
            self._offset_drift = None
            return
        if self._offset_basis is None:
            raise ValueError("this model has no undetermined reference-energy combinations")
        drift = np.asarray(drift, dtype=np.float64).reshape(-1)
        if drift.shape != (self._offset_basis.shape[1],) or not np.all(np.isfinite(drift)):
            raise ValueError(f"offset drift needs one finite value (eV) per undetermined "
                             f"combination ({self._offset_basis.shape[1]}), got {drift}")
        self._offset_drift = drift

    def composition_variance(self, counts: np.ndarray, *,
                             drift: Optional[np.ndarray] = None) -> np.ndarray:
        """(B,) variance (eV²) of the structures' energies from reference energies
        the training compositions left undetermined.

        ``counts`` (B, S) are species counts (order of ``species``). The true
        offsets along the undetermined directions N (S, k) get a prior N(0, τ²)
        per direction, τ = ``offset_prior_std``, while the model sits at its
        :attr:`offset_drift` δ there (None: 0): the energy error ``cᵀN(δ - t)``
        then has the mean square Var = τ² |Nᵀc|² + (cᵀNδ)². It is 0 for every
        composition the training data spans (the training compositions
        themselves included) and grows for other stoichiometries. ``drift``
        replaces :attr:`offset_drift` (an ensemble's: its members' mean).
        """
        counts = np.asarray(counts, dtype=np.float64)
        drift = self._offset_drift if drift is None else np.asarray(drift, dtype=np.float64)
        if self._offset_basis is None:
            return np.zeros(len(counts))
        projected = counts @ self._offset_basis
        var = self.offset_prior_std**2 * np.einsum("bk,bk->b", projected, projected)
        if drift is not None:
            var = var + (projected @ drift) ** 2
        return var

    def get_extra_state(self):
        state = {
            "atomic_energies": dict(self._atomic_energies),
            "atomic_energies_set": self.atomic_energies_set,
        }
        if self._offset_basis is not None:
            state["offset_basis"] = torch.from_numpy(self._offset_basis.copy())
            state["offset_prior_std"] = float(self.offset_prior_std)
            if self._offset_drift is not None:
                state["offset_drift"] = torch.from_numpy(self._offset_drift.copy())
        return state

    def set_extra_state(self, state) -> None:
        self._atomic_energies = {int(k): float(v) for k, v in state["atomic_energies"].items()}
        self.atomic_energies_set = bool(state["atomic_energies_set"])
        basis = state.get("offset_basis")  # absent in files saved before it existed
        self._offset_basis = None if basis is None else basis.detach().double().numpy().copy()
        self.offset_prior_std = state.get("offset_prior_std")
        drift = state.get("offset_drift")  # absent in files saved before 2026-12-02
        self._offset_drift = None
        if drift is not None and self._offset_basis is not None:
            self.set_offset_drift(drift.detach().double().numpy())

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
    def capture_features(self, *, direct: bool = False):
        """Context in which forward passes record the readout's input in ``store["features"]``.

        With ``direct`` (models with a direct force head), the direct force
        readout's input (N, 3, C) and output (N, 3, 1) are recorded too, in
        ``store["vector_input"]`` and ``store["direct_output"]``.
        """
        store: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output):
            store["features"] = inputs[0]
            store["readout_output"] = output

        def direct_hook(module, inputs, output):
            store["vector_input"] = inputs[0]
            store["direct_output"] = output

        handles = [self.readout_layer.register_forward_hook(hook)]
        if direct:
            handles.append(self.force_readout_layer.register_forward_hook(direct_hook))
        try:
            yield store
        finally:
            for handle in handles:
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
        direct_forces: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies (B,) in eV (float64, offsets included), and on request
        forces (N, 3) in eV/Å, stress (B, 3, 3) in eV/Å^3 and the per-atom
        features (N, F) feeding the readout.

        ``create_graph=True`` keeps the graph of the forces (training).
        With ``features``, ``out["positions"]`` is the (N, 3) leaf the
        features were computed from and, with ``stress`` too,
        ``out["strain"]`` the (B, 3, 3) zero strain leaf (see
        :func:`strained`): derivatives of functions of the features with
        respect to it, divided by the volume, are stresses (the UQ wrappers'
        stress uncertainties use it).

        Direct forces (models with ``has_direct_forces``): ``direct_forces=True``
        adds ``out["direct_forces"]`` (N, 3) eV/Å, the direct head's
        :math:`\\sum_c w_c v_{ic}`, and with ``features``
        ``out["vector_features"]`` (N, C, 3), its input. With ``force_mode ==
        "direct"``, ``forces=True`` returns the direct forces as
        ``out["forces"]`` (and as ``out["direct_forces"]``) without a backward
        pass; ``stress`` stays the strain derivative of the energy, and
        ``create_graph`` with ``features`` makes ``out["positions"]`` a leaf
        the direct forces can be differentiated with respect to (force
        Jacobians, :func:`mlipuq.trust.jacobian_asymmetry`); the direct forces
        keep their graph to the weights in any case (training).
        """
        if direct_forces and not self.has_direct_forces:
            raise ValueError(
                f"{type(self).__name__} has no direct force head: build it with one "
                "(MiniMLIP(..., direct_forces=True), wrap(..., force_readout=...))"
            )
        direct_mode = self.has_direct_forces and self.force_mode == "direct"
        want_direct = direct_forces or (forces and direct_mode)
        autograd_forces = forces and not direct_mode
        need_grad = autograd_forces or stress
        if direct_mode:  # positions are differentiated only for force Jacobians
            positions_grad = create_graph and features and want_direct
        else:
            positions_grad = need_grad
        work, positions, strain = strained(batch, positions_grad=positions_grad, stress=stress)
        with torch.enable_grad() if need_grad or positions_grad else contextlib.nullcontext():
            with (self.capture_features(direct=want_direct) if features or want_direct
                  else contextlib.nullcontext()) as store:
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
            if want_direct:
                direct, vectors = self._direct_outputs(store, batch.numbers.shape[0])
                out["direct_forces"] = direct
                if forces and direct_mode:
                    out["forces"] = direct
            if need_grad:
                grad_positions = not direct_mode
                inputs = ([positions] if grad_positions else []) + ([strain] if stress else [])
                grads = torch.autograd.grad(
                    interaction.sum(),
                    inputs,
                    create_graph=create_graph,
                    retain_graph=create_graph or features or want_direct,
                    allow_unused=True,
                )
                if autograd_forces:
                    g = grads[0] if grads[0] is not None else torch.zeros_like(positions)
                    out["forces"] = -g
                if stress:
                    g = grads[-1] if grads[-1] is not None else torch.zeros_like(batch.cell)
                    out["stress"] = stress_from_strain_gradient(g, batch)
            if features:
                out["features"] = store["features"]
                out["positions"] = positions
                if want_direct:
                    out["vector_features"] = vectors
                if stress:
                    out["strain"] = strain
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
    #: Whether a saved file of this class needs the network built in code to load
    #: (``load(path, module=...)``): models made by :func:`wrap` and MACE models.
    needs_module: bool = False

    def _payload(self) -> dict:
        """Plain data (config) and weights (``state_dict`` tensors): no code, no file paths."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "config": self.config(),
            "state_dict": self.state_dict(),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @classmethod
    def upgrade_config(cls, config: dict, version: int, path: str) -> dict:
        """The ``config`` of a format-``version`` file in the current format
        (override where a class's config changed; the default keeps it)."""
        return config

    @classmethod
    def from_payload(cls, payload: dict, *, module: Optional[nn.Module] = None,
                     path: str = "<memory>") -> "MLIP":
        """Rebuild the (not yet loaded) model from a saved payload; weights load afterwards.

        ``payload["config"]`` is plain data, checked before this is called. The
        default calls the constructor with it; classes with ``needs_module`` get
        the network the user built in code as ``module``.
        """
        try:
            return cls(**payload["config"])
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: cannot rebuild a {cls.__name__} from its config ({exc})") from None

    def save(self, path: Union[str, os.PathLike], *, overwrite: bool = False) -> None:
        """Save to ``path``: a torch file of plain data and weights with a format
        version and a checksum, written atomically.

        Refuses to replace an existing file unless ``overwrite=True``. A model
        made by :func:`wrap` saves its module's weights (``state_dict``), not its
        code: load it with ``mlipuq.models.load(path, module=...)``.
        """
        save_payload(self._payload(), path, overwrite=overwrite)


def load_module_state(module: nn.Module, state_dict: Mapping, path: str, expected: str = "",
                      prefix: str = "module.") -> None:
    """Load the ``prefix`` entries of a saved model's state dict into ``module`` (strict),
    before the adapter is built around it (so it folds the saved weights)."""
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sub, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"{path}: the saved weights do not fit the {type(module).__name__} passed as module"
            f"{f' (the file was saved from a {expected})' if expected else ''}: {first}"
        ) from None


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Make a model class loadable by :func:`load` (by its class name)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def model_class(name) -> Optional[type]:
    """The registered model class called ``name`` (None if there is none)."""
    if name not in _REGISTRY:
        import mlipuq.models  # noqa: F401  (registers the built-in models and adapters)
    return _REGISTRY.get(name)




def load(
    path: Union[str, os.PathLike],
    *,
    module: Optional[nn.Module] = None,
    weights_only: Optional[bool] = None,
) -> MLIP:
    """Load a model saved with :meth:`MLIP.save`.

    Files hold plain data and weights only and are read with torch's
    ``weights_only=True``: loading never executes code, nor reads another file
    that the saved file names. The checksum is verified (a damaged file raises
    :class:`~mlipuq.errors.FileFormatError` naming it); format-1 files (older
    mlipuq, no checksum) are accepted unchecked and upgraded.

    Parameters
    ----------
    path
        The saved file.
    module
        For a model made by :func:`wrap` (or :func:`~mlipuq.models.from_mace`):
        the network, built in code with the same architecture (e.g.
        ``MyNetwork(...)``, a MACE model); the saved weights are loaded into it
        and it becomes the model's ``module``. Not needed (ignored) otherwise.
    weights_only
        Deprecated, kept for old calls: ``True`` is what always happens;
        ``False`` (which used to unpickle code) raises a ``ValueError``.
    """
    check_weights_only(weights_only, "mlipuq.models.load")
    path = os.fspath(path)
    payload = read_payload(path, format=FORMAT, what="model")
    return model_from_payload(payload, path, module=module)


def model_from_payload(payload, path: str = "<memory>", *, module: Optional[nn.Module] = None) -> MLIP:
    """Rebuild a model from the dictionary :meth:`MLIP._payload` returns (current format).

    ``module``: the network built in code, for classes with ``needs_module``.
    """
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not an mlipuq model file")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise FileFormatError(
            f"{path}: model format version {version!r} is not supported here "
            f"(expected {FORMAT_VERSION}; mlipuq.fileio.read_payload upgrades older files)"
        )
    name = payload.get("class")
    config, state_dict = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state_dict, dict):
        raise FileFormatError(f"{path}: model without config or weights")
    check_plain(config, path)
    if not all(isinstance(k, str) for k in state_dict):
        raise FileFormatError(f"{path}: model weights with non-string names")
    dtype_name = payload.get("dtype", "float32")
    if dtype_name not in ("float32", "float64"):
        raise FileFormatError(f"{path}: unsupported model dtype {dtype_name!r}")
    dtype = getattr(torch, dtype_name)
    cls = model_class(name)
    if cls is None:
        raise FileFormatError(f"{path}: unknown model class {name!r}")
    model = cls.from_payload(payload, module=module, path=path)
    model.to(dtype)
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise FileFormatError(f"{path}: the saved weights do not fit a {name} ({first})") from None
    return model


def _model_1_to_2(payload: dict, path: str) -> dict:
    """Format 1 -> 2 of a saved model (registered in :data:`mlipuq.fileio.UPGRADES`).

    Format-1 ``wrap()``/MACE files pickled the module: they are refused.
    Configs that made an adapter read a file are replaced by the class's
    :meth:`MLIP.upgrade_config` (SevenNet and CHGNet: from the names shipped
    in their wheels; a path is refused).
    """
    if "module" in payload:
        raise FileFormatError(f"{path}: a format-1 model carrying a pickled module. {CODE_HINT}")
    cls = model_class(payload.get("class"))
    if cls is not None and isinstance(payload.get("config"), dict):
        payload["config"] = cls.upgrade_config(payload["config"], 1, path)
    payload["format_version"] = 2
    return payload


register_upgrade(FORMAT, 1, _model_1_to_2)
