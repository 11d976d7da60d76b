"""Adapter for MACE models (mace-torch): :func:`from_mace`.

A MACE model sums one per-atom readout per interaction layer,

.. math:: \\varepsilon_i = s \\Big(\\sum_k R_k(h^{(k)}_i) + \\varepsilon^{\\mathrm{ZBL}}_i\\Big)
          + \\mu + e_{Z_i},

where each readout :math:`R_k` ends in an e3nn ``o3.Linear`` to a scalar
(``LinearReadoutBlock.linear`` for the inner layers, ``linear_2`` of the final
``NonLinearReadoutBlock``), :math:`s, \\mu` are the global scale and shift of a
``ScaleShiftMACE`` (1 and 0 for a plain ``MACE``) and :math:`e_Z` are the E0s.
Every term before :math:`e_Z` is linear in the *inputs* of those final
linears, so the per-atom features are their concatenation:

* for each ``LinearReadoutBlock``: the scalar (``0e``) channels of the node
  features of its layer (the ``1o``, ``2e``, ... channels cannot reach a
  scalar output of an equivariant linear map);
* for the final ``NonLinearReadoutBlock``: the hidden scalars after the
  gate nonlinearity, i.e. the input of ``linear_2`` (of a multi-head model,
  only the block of the chosen head, which is what reaches its output);
* for a model with ZBL pair repulsion: the per-atom pair energy as one extra
  feature column (with weight :math:`s`).

The readout linears are folded, together with :math:`s` and :math:`\\mu`, into
one ``nn.Linear`` (``readout``): the effective weights of each e3nn linear
(path normalisation included) are read off by applying a float64 copy of it
to zero and to unit vectors, so the fold is exact whatever e3nn's internal
normalisation. The E0s become mlipuq's per-species atomic energies (float64).
MACE's own readouts still run inside its forward pass; their outputs are
discarded. The inputs are captured with forward hooks that live only for the
duration of a call.

The model is called with ``compute_force=False`` (no stress or virials) on
mlipuq's neighbour list: MACE's ``edge_index[0]`` is the *sender* and
``edge_index[1]`` the *receiver*, with edge vector
``r[receiver] - r[sender] + shift``, which is mlipuq's ``r_j - r_i + S @ cell``
for ``edge_index = (i, j)``, so the edge list is passed unchanged. Forces and
stresses then come from mlipuq's autograd on ``batch.positions``/``batch.cell``.
"""

from __future__ import annotations

import copy
import os
from typing import Optional, Union

import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.models.base import load_module_state, register
from mlipuq.models.external import ExternalMLIP, check_dtype, linear_response, require

__all__ = ["MACEMLIP", "from_mace"]


def _mace_modules():
    return require("mace.modules", "mace", "mace-torch")


def _final_linear(readout: nn.Module, k: int) -> tuple[str, nn.Module]:
    """Name and module of the linear map that ends readout block ``k``."""
    for name in ("linear_2", "linear"):
        layer = getattr(readout, name, None)
        if layer is not None:
            break
    else:
        raise ValueError(
            f"MACE readout {k} is a {type(readout).__name__}, which from_mace does not "
            "know how to fold (expected LinearReadoutBlock or NonLinearReadoutBlock)"
        )
    o3 = require("e3nn.o3", "mace", "mace-torch")
    if not isinstance(layer, o3.Linear):
        raise ValueError(
            f"MACE readout {k} uses a {type(layer).__name__} linear layer, not an e3nn "
            "o3.Linear (a cuEquivariance model?): convert the model to e3nn first, e.g. with "
            "mace.cli.convert_cueq_e3nn"
        )
    return name, layer


def _scalar_columns(layer: nn.Module) -> list[int]:
    """Indices of the even-scalar (0e) channels of an e3nn linear's input."""
    columns: list[int] = []
    for (mul, ir), sl in zip(layer.irreps_in, layer.irreps_in.slices()):
        if ir.l == 0 and ir.p == 1:
            columns.extend(range(sl.start, sl.stop))
    return columns


def _effective_weights(layer: nn.Module, columns: list[int], head: int):
    """(len(columns),) weights and the bias of output ``head`` of an e3nn linear,
    read off in float64 from its response to zero and to unit vectors."""
    response, zero = linear_response(layer, int(layer.irreps_in.dim), columns)
    return response[:, head], zero[head]


@register
class MACEMLIP(ExternalMLIP):
    """A MACE or ScaleShiftMACE model seen through the mlipuq MLIP contract.

    Built by :func:`from_mace`. Energies in eV, lengths in Å; the features are
    the inputs of MACE's readout linears (see the module docstring).
    Saved files hold the weights and the head, not the MACE code (``needs_module``):
    load them with ``mlipuq.models.load(path, module=mace_model)`` (or
    ``mlipuq.uq.load(path, module=mace_model)``), where ``mace_model`` is a MACE
    model of the same architecture that you build or load yourself; the saved
    weights replace its own.
    """

    needs_module = True

    def __init__(self, module: nn.Module, head: Optional[str] = None):
        modules = _mace_modules()
        if not isinstance(module, modules.MACE):
            raise TypeError(
                f"from_mace needs a mace.modules.MACE or ScaleShiftMACE model, got "
                f"{type(module).__name__}"
            )
        if hasattr(module, "joint_embedding"):
            raise ValueError(
                "MACE models with extra embeddings (total charge, spin, ...) need inputs "
                "mlipuq does not provide; from_mace supports plain MACE and ScaleShiftMACE"
            )
        numbers = [int(z) for z in module.atomic_numbers.tolist()]
        super().__init__(module, numbers, float(module.r_max))
        heads = [str(h) for h in getattr(module, "heads", None) or ["Default"]]
        if head is None:
            named = [h for h in heads if h.lower() == "default"]
            head = named[0] if named else heads[0]
        if not isinstance(head, str):
            raise TypeError(f"head must be a head name (str), got {type(head).__name__}")
        if head not in heads:
            raise ValueError(f"head {head!r} not in the model's heads {heads}")
        self.head = head
        self.head_index = heads.index(head)
        table = torch.full((119,), -1, dtype=torch.long)
        table[torch.tensor(numbers, dtype=torch.long)] = torch.arange(len(numbers))
        self.register_buffer("node_table", table, persistent=False)

        # which columns of each readout linear's input are features
        self._slots: list[tuple[str, torch.Tensor]] = []  # (dotted name in module, columns)
        weights, bias = [], torch.zeros((), dtype=torch.float64)
        n_heads = len(heads)
        for k, block in enumerate(module.readouts):
            name, layer = _final_linear(block, k)
            columns = _scalar_columns(layer)
            if getattr(block, "num_heads", 1) > 1 and hasattr(block, "linear_1"):
                # mask_head zeroes all but the chosen head's block of hidden channels
                width = int(layer.irreps_in.dim) // n_heads
                start = self.head_index * width
                columns = [c for c in columns if start <= c < start + width]
            w, b = _effective_weights(layer, columns, self.head_index)
            weights.append(w)
            bias = bias + b
            self._slots.append((f"readouts.{k}.{name}", torch.tensor(columns, dtype=torch.long)))
        self._pair = hasattr(module, "pair_repulsion")
        if self._pair:
            weights.append(torch.ones(1, dtype=torch.float64))
        scale, shift = 1.0, 0.0
        if hasattr(module, "scale_shift"):
            scale = float(torch.atleast_1d(module.scale_shift.scale)[self.head_index])
            shift = float(torch.atleast_1d(module.scale_shift.shift)[self.head_index])
        e0 = torch.atleast_2d(module.atomic_energies_fn.atomic_energies.detach().double())
        e0 = e0[self.head_index] if e0.shape[0] == n_heads else e0[0]
        self._set_readout_from(
            scale * torch.cat(weights),
            # a float64 tensor: _set_readout_from's torch.as_tensor would round a float to float32
            torch.tensor(scale * float(bias) + shift, dtype=torch.float64),
            {z: float(e) for z, e in zip(numbers, e0.tolist())},
        )
        self._verify_fold()

    # ------------------------------------------------------------------ graph
    def _mace_input(self, batch: mdata.Batch) -> dict[str, torch.Tensor]:
        self.species_index(batch)  # raises on elements the model does not know
        dtype = self.module_dtype()
        positions = batch.positions.to(dtype)
        if not positions.requires_grad:
            # MACE sets requires_grad on its input positions: never on the caller's tensor
            positions = positions.detach().clone()
        node_attrs = nn.functional.one_hot(
            self.node_table[batch.numbers], num_classes=len(self.species)
        ).to(dtype)
        n_structures = batch.n_structures
        counts = torch.bincount(batch.batch, minlength=n_structures)
        ptr = torch.zeros(n_structures + 1, dtype=torch.long, device=positions.device)
        ptr[1:] = torch.cumsum(counts, 0)
        return {
            "positions": positions,
            "node_attrs": node_attrs,
            "edge_index": batch.edge_index,  # (sender i, receiver j): see module docstring
            "shifts": batch.cartesian_shifts().to(dtype),
            "unit_shifts": batch.shifts.to(dtype),
            "cell": batch.cell.to(dtype).reshape(-1, 3),
            "batch": batch.batch,
            "ptr": ptr,
            "head": torch.full(
                (n_structures,), self.head_index, dtype=torch.long, device=positions.device
            ),
        }

    def features(self, batch: mdata.Batch) -> torch.Tensor:
        return self._run(batch)[0]

    def _run(self, batch: mdata.Batch):
        """Features (N, F), MACE's output dict and its input dict."""
        data = self._mace_input(batch)
        captured: dict[int, torch.Tensor] = {}

        def keep(k):
            def hook(module, inputs, output):
                captured[k] = output.reshape(-1, 1) if k < 0 else inputs[0]
            return hook

        handles = [
            self.module.get_submodule(name).register_forward_hook(keep(k))
            for k, (name, _) in enumerate(self._slots)
        ]
        if self._pair:
            handles.append(self.module.pair_repulsion_fn.register_forward_hook(keep(-1)))
        try:
            out = self.module(
                data,
                training=False,
                compute_force=False,
                compute_virials=False,
                compute_stress=False,
            )
        finally:
            for handle in handles:
                handle.remove()
        parts = [
            captured[k].index_select(1, columns.to(captured[k].device))
            for k, (_, columns) in enumerate(self._slots)
        ]
        if self._pair:
            parts.append(captured[-1].to(parts[0].dtype))
        return torch.cat(parts, dim=1), out, data

    def _verify_fold(self) -> None:
        """The folded readout must give MACE's own per-atom energies (minus E0s) on a
        small probe structure holding every species; raises for variants it cannot fold."""
        import ase

        n = len(self.species)
        steps = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        steps = 0.45 * self.cutoff * steps / steps.norm(dim=1, keepdim=True)
        probe = ase.Atoms(numbers=self.species, positions=torch.cumsum(steps, 0).numpy())
        with torch.no_grad():
            phi, out, data = self._run(self.collate([probe]))
            ours = self.readout(phi.to(self.readout.weight.dtype)).reshape(-1).double()
            e0 = torch.tensor([self._atomic_energies[z] for z in self.species],
                              dtype=torch.float64, device=phi.device)
            theirs = out["node_energy"].detach().double() - data["node_attrs"].double() @ e0
        tol = 1e-8 if self.module_dtype() == torch.float64 else 1e-4
        err = float((ours - theirs).abs().max())
        if err > tol * (1.0 + float(theirs.abs().max())):
            raise ValueError(
                f"the folded readout differs from MACE's per-atom energies by {err:.3g} eV: "
                f"this {type(self.module).__name__} variant is not linear in the readout inputs "
                "from_mace knows about"
            )

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"head": self.head}

    @classmethod
    def from_payload(cls, payload: dict, *, module=None, path: str = "<memory>") -> "MACEMLIP":
        """Rebuild around ``module`` (a MACE model of the saved architecture, built by
        the user): the saved weights are loaded into it; no file is read."""
        if module is None:
            raise ValueError(
                f"{path}: holds a MACE model's weights, not its code: pass a MACE model of the "
                "same architecture as module=, e.g. mlipuq.models.load(path, module=mace_model)"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a MACE model, got {type(module).__name__}")
        module.to(getattr(torch, payload.get("dtype", "float32")))
        load_module_state(module, payload["state_dict"], path, "MACE model")
        return cls(module, head=payload["config"].get("head"))


def _load_mace_file(path: str) -> nn.Module:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such MACE model file: {path}")
    try:
        # mace writes its models with torch.save(model): loading them runs pickled code
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a TorchScript (compiled) file, not a torch file, ...
        raise ValueError(
            f"{path}: not a MACE model written by torch.save ({exc.__class__.__name__}: {exc}); "
            "pass the plain .model file, not a compiled or checkpoint file"
        ) from None
    if isinstance(obj, dict):
        raise ValueError(
            f"{path} holds a dictionary (a training checkpoint?), not a MACE model: pass the "
            ".model file mace writes at the end of training"
        )
    return obj


def from_mace(
    model_or_path: Union[str, os.PathLike, nn.Module],
    *,
    head: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
) -> MACEMLIP:
    """Wrap a trained MACE model for every mlipuq UQ method.

    Parameters
    ----------
    model_or_path
        A ``mace.modules.MACE`` / ``ScaleShiftMACE`` object, or the path of a
        ``.model`` file written by mace (a pickled model: it is loaded with
        ``weights_only=False``, so only load files you trust).
    head
        Head of a multi-head model; default: the head named ``"default"`` if
        there is one (as in MACE's own calculator), else the first.
    dtype
        ``torch.float32`` or ``torch.float64``; default: the model's own dtype.
        An in-memory model is copied before conversion, never modified.

    Returns
    -------
    MACEMLIP
        Energies in eV (E0s as per-species offsets), forces in eV/Å, cutoff =
        the model's ``r_max`` (Å), species = its ``atomic_numbers``. Features:
        the inputs of MACE's readout linears (scalar node features of the
        inner layers, the hidden scalars of the final nonlinear readout).
    """
    _mace_modules()
    check_dtype(dtype)
    if isinstance(model_or_path, (str, os.PathLike)):
        module = _load_mace_file(os.fspath(model_or_path))
    elif isinstance(model_or_path, nn.Module):
        module = model_or_path
        if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
            module = copy.deepcopy(module)
    else:
        raise TypeError(
            "from_mace needs a MACE model or the path of a .model file, got "
            f"{type(model_or_path).__name__}"
        )
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("from_mace needs an eager MACE model, not a TorchScript (compiled) one")
    if dtype is not None:
        module = module.to(dtype)
    return MACEMLIP(module, head=head)
