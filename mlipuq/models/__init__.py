"""Base MLIPs: the contract (:class:`MLIP`, :func:`wrap`), the built-in
:class:`MiniMLIP`, and :func:`load` for saved models."""

from mlipuq.models.base import MLIP, WrappedMLIP, load, register, wrap
from mlipuq.models.mini import MiniMLIP

__all__ = ["MLIP", "MiniMLIP", "WrappedMLIP", "load", "register", "wrap"]
