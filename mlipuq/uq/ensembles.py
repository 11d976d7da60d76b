"""Committee-type wrappers: :class:`DeepEnsemble` and :class:`ShallowEnsemble`.

The two live in their own files (:mod:`mlipuq.uq.deep_ensemble`,
:mod:`mlipuq.uq.shallow_ensemble`); this module gathers them. Both expose
their members in the :class:`~mlipuq.prediction.Prediction`
(``energy_members`` (K, B) in eV, ``forces_members`` (K, N, 3) in eV/Å) and
report the population variance over members (``ddof=0``) in float64.
"""

from mlipuq.uq.deep_ensemble import DeepEnsemble, member_statistics
from mlipuq.uq.shallow_ensemble import ShallowEnsemble, gaussian_nll, head_members

__all__ = ["DeepEnsemble", "ShallowEnsemble", "gaussian_nll", "head_members", "member_statistics"]
