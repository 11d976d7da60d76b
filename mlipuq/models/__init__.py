"""Base MLIPs: the contract (:class:`MLIP`, :func:`wrap`), the built-in
:class:`MiniMLIP`, adapters for external packages (:func:`from_mace`,
:func:`from_sevennet`, :func:`from_chgnet`; each needs its pip extra only when
called) and :func:`load` for saved models."""

from mlipuq.models.base import MLIP, load, register
from mlipuq.models.wrapped import WrappedMLIP, wrap
from mlipuq.models.chgnet import from_chgnet
from mlipuq.models.external import ExternalMLIP
from mlipuq.models.mace import from_mace
from mlipuq.models.mini import MiniMLIP
from mlipuq.models.sevennet import from_sevennet

__all__ = [
    "MLIP",
    "ExternalMLIP",
    "MiniMLIP",
    "WrappedMLIP",
    "from_chgnet",
    "from_mace",
    "from_sevennet",
    "load",
    "register",
    "wrap",
]
