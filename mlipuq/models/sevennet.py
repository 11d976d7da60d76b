"""Adapter for SevenNet models (the ``sevenn`` package, ``pip install 'mlipuq[sevennet]'``).

SevenNet's per-atom energy ends in

.. math:: \\varepsilon_i = s_{Z_i} \\, (w \\cdot h_i + b) + \\mu_{Z_i},

where :math:`h_i` are the 64 scalar (``0e``) inputs of the last ``IrrepsLinear``
(``reduce_hidden_to_energy``, an e3nn ``Linear`` whose path normalisation
:math:`1/\\sqrt{64}` is part of :math:`w`) and :math:`s_Z`, :math:`\\mu_Z` the
(species-wise) scale and shift of ``rescale_atomic_energy``.
:func:`from_sevennet` folds this into mlipuq's contract:

- the shifts :math:`\\mu_Z` (eV) become the model's ``atomic_energies``;
- if every element has the same scale :math:`s` (SevenNet-0: 1.73), the
  features are :math:`\\phi_i = h_i` and the readout is ``s w, s b``;
- otherwise the features are :math:`\\phi_i = s_{Z_i} h_i` (a per-species
  scale cannot be folded into one weight vector), the readout is ``w`` with
  zero bias and :math:`s_Z b` goes into the atomic energies.

Only SevenNet's network up to the input of that last linear is run; its
readout, rescale, energy sum and force/stress modules are not. Geometry comes
from ``batch.positions``/``batch.cell``, so mlipuq's autograd gives forces and
stresses.
"""

from __future__ import annotations

import copy
import os
from typing import Optional, Union

import torch

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError
from mlipuq.models.base import load_module_state, register
from mlipuq.models.external import (
    ExternalMLIP,
    check_dtype,
    linear_response,
    require,
    saved_config,
)

# Pretrained names -> the ``sevenn._const`` attribute of a checkpoint shipped in
# the wheel (the names sevenn itself accepts for these files, lower case).
_PRETRAINED = {
    **{name: "SEVENNET_0_11Jul2024" for name in (
        "7net-0", "sevennet-0", "7net-0_11jul2024", "sevennet-0_11jul2024",
        "7net-0_11july2024", "sevennet-0_11july2024")},
    **{name: "SEVENNET_0_22May2024" for name in ("7net-0_22may2024", "sevennet-0_22may2024")},
    **{name: "SEVENNET_l3i5" for name in ("7net-l3i5", "sevennet-l3i5")},
}
_ENERGY_LINEAR = "reduce_hidden_to_energy"
_RESCALE = "rescale_atomic_energy"


def _sevenn():
    return require("sevenn", "sevennet", "SevenNet (sevenn)")


def _checkpoint_path(model: str) -> str:
    """Local checkpoint file of a pretrained name or a user's path; never downloads."""
    key = model.strip().lower()
    if key in _PRETRAINED:
        _sevenn()
        import sevenn._const as const

        path = getattr(const, _PRETRAINED[key], None)
        if path is None or not os.path.isfile(path):
            raise ValueError(
                f"the checkpoint of {model!r} is not shipped in the installed sevenn wheel "
                f"(expected {path}); mlipuq never downloads: pass the path of a checkpoint file"
            )
        return path
    if os.path.isfile(model):
        return os.path.abspath(model)
    raise ValueError(
        f"unknown SevenNet model {model!r}: pass one of {sorted(_PRETRAINED)} (checkpoints "
        "shipped in the sevenn wheel) or the path of a SevenNet checkpoint file (.pth)"
    )


def _build(path: str):
    """SevenNet's network and config from a checkpoint file (CPU, e3nn backend)."""
    _sevenn()
    import warnings

    from sevenn.util import load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor product accelerator" etc.
        try:  # sevenn reads the file lazily, in build_model()
            checkpoint = load_checkpoint(path)
            module = checkpoint.build_model()
        except Exception as exc:
            raise ValueError(
                f"{path}: not a readable SevenNet checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    module.eval()
    return module, checkpoint.config


class _Recorder(dict):
    """A config dictionary that records which keys sevenn's model builder reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.used: set = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if super().__contains__(key):
            self.used.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        found = super().__contains__(key)
        if found:
            self.used.add(key)
        return found


def _plain(value):
    """NumPy/torch values of a sevenn config as plain Python data (lists, numbers)."""
    if isinstance(value, dict):
        return {(k.item() if hasattr(k, "item") else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # torch.device / dtype: not read by the builder


def _architecture(config: dict) -> dict:
    """The part of a checkpoint's config that sevenn's builder reads, as plain data.

    Found by building once from a recording dictionary: training settings
    (data-set paths, optimiser, ...) are left out, so a saved file names no file.
    """
    from sevenn.model_build import build_E3_equivariant_model

    import warnings

    recorder = _Recorder(copy.deepcopy(dict(config)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_E3_equivariant_model(recorder)
    return {key: _plain(config[key]) for key in sorted(recorder.used, key=str)}


def _build_from_architecture(architecture: dict, path: str):
    """SevenNet's network (random weights) from a saved architecture; reads no file."""
    _sevenn()
    import warnings

    from sevenn.model_build import build_E3_equivariant_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = build_E3_equivariant_model(copy.deepcopy(architecture))
        except Exception as exc:  # a key this sevenn needs but the file lacks, ...
            raise FileFormatError(
                f"{path}: cannot rebuild the SevenNet network from the saved architecture "
                f"with the installed sevenn ({type(exc).__name__}: {exc})"
            ) from None
    if isinstance(module, list):
        raise FileFormatError(f"{path}: a parallel SevenNet model is not supported")
    module.eval()
    return module


def is_pretrained(model: str) -> bool:
    """Whether ``model`` names a checkpoint shipped in the sevenn wheel."""
    return isinstance(model, str) and model.strip().lower() in _PRETRAINED


def pretrained_config(model: str) -> dict:
    """``config()`` of the adapter of a checkpoint shipped in the sevenn wheel
    (upgrades format-1 files, which named it; package data, never a user's file)."""
    if not is_pretrained(model):
        raise ValueError(f"{model!r} is not a SevenNet checkpoint shipped in the sevenn wheel")
    _, config = _build(_checkpoint_path(model))
    return {"model": model, "architecture": _architecture(config)}


def _is_codegen_constant(key: str) -> bool:
    return "._tensor_constant" in key


def _tensor(value, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype).detach().reshape(-1)


@register
class SevenNetMLIP(ExternalMLIP):
    """A SevenNet model (``AtomGraphSequential``) seen through the mlipuq contract.

    Built by :func:`from_sevennet`. Features: the 64 scalar inputs of SevenNet's
    last linear layer (times the species scale when scales differ by species,
    see :mod:`mlipuq.models.sevennet`).
    """

    def __init__(self, module, model: str = "7net-0", architecture: Optional[dict] = None):
        path = model
        for name in (_ENERGY_LINEAR, _RESCALE):
            if name not in module._modules:
                raise ValueError(f"{path}: SevenNet model without a {name!r} module is not supported")
        if getattr(module, "modal_map", None):
            raise ValueError(
                f"{path}: multi-fidelity SevenNet models ({sorted(module.modal_map)}) are not supported"
            )
        type_map = {int(z): int(k) for z, k in module.type_map.items()}
        super().__init__(module, sorted(type_map), float(module.cutoff))
        self.model_name = model
        self.architecture = architecture
        self._stop = list(module._modules).index(_ENERGY_LINEAR)
        table = torch.full((119,), -1, dtype=torch.long)
        for z, k in type_map.items():
            table[z] = k
        self.register_buffer("type_table", table, persistent=False)

        # -- fold e3nn's Linear (path normalisation included) by probing it in float64
        linear = module._modules[_ENERGY_LINEAR].linear
        response, zero = linear_response(linear, int(module._modules[_ENERGY_LINEAR].irreps_in.dim))
        bias, weight = zero[0], response[:, 0]
        # -- the rescale: species-wise (index = SevenNet type) or global
        rescale = module._modules[_RESCALE]
        if getattr(rescale, "use_modal_wise_shift", False) or getattr(rescale, "use_modal_wise_scale", False):
            raise ValueError(f"{path}: modal-wise shift/scale is not supported")
        shift, scale = _tensor(rescale.shift), _tensor(rescale.scale)
        types = [type_map[z] for z in self.species]
        shift_z = {z: float(shift[k] if shift.numel() > 1 else shift[0]) for z, k in zip(self.species, types)}
        scale_z = {z: float(scale[k] if scale.numel() > 1 else scale[0]) for z, k in zip(self.species, types)}
        self.species_scales = len(set(scale_z.values())) > 1
        scales = torch.ones(119, dtype=torch.float64)
        if self.species_scales:
            for z, s in scale_z.items():
                scales[z] = s
            energies = {z: shift_z[z] + scale_z[z] * float(bias) for z in self.species}
            self._set_readout_from(weight, 0.0, energies)
        else:
            s = next(iter(scale_z.values()))
            self._set_readout_from(s * weight, s * float(bias), shift_z)
        self.register_buffer("feature_scales", scales, persistent=False)

    # ------------------------------------------------------------------ network
    def sevenn_input(self, batch: mdata.Batch) -> dict:
        """SevenNet's input dictionary for a Batch (same edge convention: row 0 the
        centre, vectors ``r_j - r_i + shift @ cell`` from ``batch.positions``)."""
        import sevenn._keys as KEY

        types = self.type_table[batch.numbers]
        if bool((types < 0).any()):
            self.species_index(batch)  # raises, naming the structure and element
        return {
            KEY.ATOMIC_NUMBERS: batch.numbers,
            KEY.NODE_FEATURE: types,
            KEY.EDGE_IDX: batch.edge_index,
            KEY.EDGE_VEC: batch.edge_vectors(),
            KEY.BATCH: batch.batch,
            KEY.NUM_ATOMS: batch.n_atoms,
        }

    def features(self, batch: mdata.Batch) -> torch.Tensor:
        data = self.sevenn_input(batch)
        dtype = self.module_dtype()
        modules = list(self.module._modules.values())
        for module in modules[: self._stop]:
            data = module(data)
            # SevenNet's one-hot embedding is always float32: follow the model's dtype
            for key in (getattr(module, "key_output", None), getattr(module, "key_additional_output", None)):
                if key is not None and data[key].is_floating_point() and data[key].dtype != dtype:
                    data[key] = data[key].to(dtype)
        h = data[modules[self._stop].key_input]
        if self.species_scales:
            h = h * self.feature_scales[batch.numbers].to(h.dtype)[:, None]
        return h

    # -------------------------------------------------------------- persistence
    # e3nn's generated code keeps constants as plain attributes, which a deepcopy
    # turns into buffers ("..._tensor_constant0") that then follow ``.to(dtype)``.
    # A fresh build lacks them: they are saved when present (the model was copied)
    # and restored by copying the rebuilt network the same way, so that a loaded
    # model computes with the constants of the saved one (float32 or cast).
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = {k: v for k, v in state_dict.items() if not _is_codegen_constant(k)}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not _is_codegen_constant(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys "
                f"{missing}, unexpected keys {result.unexpected_keys}"
            )
        return result._replace(missing_keys=missing)

    def config(self) -> dict:
        """The model's name (a label, never used to find a file) and the plain-data
        architecture sevenn's builder rebuilds the network from."""
        if self.architecture is None:
            raise ValueError(
                "this SevenNetMLIP was built without its architecture; build it with "
                "from_sevennet() to save it"
            )
        return {"model": self.model_name, "architecture": self.architecture}

    @classmethod
    def upgrade_config(cls, config: dict, version: int, path: str) -> dict:
        """Format 1 named a checkpoint: names shipped in the sevenn wheel become their
        architecture (package data); a path is refused (never read)."""
        if version != 1:
            return config
        model = config.get("model")
        if not is_pretrained(model):
            raise FileFormatError(
                f"{path}: a format-1 SevenNet model that names the checkpoint file {model!r}; "
                "mlipuq no longer reads files that a saved file names. Rebuild the model with "
                "from_sevennet(<a checkpoint you trust>) and save it again"
            )
        return pretrained_config(model)

    @classmethod
    def from_payload(cls, payload: dict, *, module=None, path: str = "<memory>") -> "SevenNetMLIP":
        """Rebuild from the saved architecture and weights; no checkpoint file is read."""
        config = saved_config(payload, "model", "architecture", "SevenNet", path)
        network = _build_from_architecture(config["architecture"], path)
        state = payload["state_dict"]
        if any(_is_codegen_constant(k) for k in state):
            network = copy.deepcopy(network)  # the constants become buffers, as saved
        network.to(getattr(torch, payload.get("dtype", "float32")))
        load_module_state(network, state, path, "SevenNet network")
        return cls(network, str(config["model"]), config["architecture"])


def from_sevennet(
    model: Union[str, os.PathLike] = "7net-0", *, dtype: Optional[torch.dtype] = None
) -> SevenNetMLIP:
    """Wrap a SevenNet model for every mlipuq UQ wrapper (energies eV, forces eV/Å).

    Parameters
    ----------
    model
        ``"7net-0"`` (SevenNet-0, 11 Jul 2024; aliases ``"sevennet-0"``,
        ``"7net-0_11jul2024"``, ...), another checkpoint shipped in the sevenn
        wheel (``"7net-0_22may2024"``, ``"7net-l3i5"``), or the path of a
        SevenNet checkpoint file. Nothing is ever downloaded.
    dtype
        ``torch.float32`` (default, what SevenNet uses) or ``torch.float64``.

    Returns
    -------
    SevenNetMLIP
        ``species`` are all elements the model knows, ``cutoff`` its radius (Å);
        per-atom features are the 64 scalar inputs of SevenNet's last linear layer,
        and the species shifts are the ``atomic_energies`` (eV). Saved files are
        self-contained (the builder's architecture settings as plain data and
        the weights): loading never reads the checkpoint again.
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"from_sevennet() needs a model name or a checkpoint path, got {type(model).__name__}"
        )
    dtype = check_dtype(dtype)
    path = _checkpoint_path(model)
    module, config = _build(path)
    if dtype is not None:  # before folding, so the folded readout is exact in float64
        module.to(dtype)
    # a name, never a path, in the saved config: a saved file must not name a file
    label = model if is_pretrained(model) else os.path.basename(path)
    return SevenNetMLIP(module, label, _architecture(config))
