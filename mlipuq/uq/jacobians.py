"""Derivatives of linear functions of the per-atom features with respect to positions.

Every wrapper that needs forces of last-layer variations (LLPR samples and
exact variances, shallow-ensemble heads) needs, for K vectors ``c_k``,

.. math:: \\frac{\\partial}{\\partial r} \\sum_i c_k \\cdot \\phi_i ,

i.e. K vector-Jacobian products through the backbone. :func:`feature_vjps`
computes them either in one vectorised backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the
backward) or as a loop of K ordinary backward passes on the retained graph.

Measured on CPU (torch 2.13, 1 thread, MiniMLIP 64 features x 3 layers,
``benchmarks/uq_overhead.py``): for K = 8 the batched pass took 0.39 s on 32
ethanol molecules and 3.5 s on four 108-atom Cu cells, the loop 0.11 s and
1.7 s. vmap's batching overhead dominates these small graphs on CPU, so
``vectorize="auto"`` batches on CUDA devices and loops on CPU.

Stresses of last-layer variations need the same products with respect to the
strain: :func:`feature_vjps_strain` differentiates ``sum_i c_k . phi_i`` with
respect to the positions and to the (B, 3, 3) strain leaf of
:func:`mlipuq.models.base.strained` in the same backward passes (the strain
adds one more leaf to each pass, not more passes); the strain derivatives
divided by the cell volume are stresses (eV/Å^3 per unit of ``c_k``);
:func:`strain_vjps` takes them with respect to the strain alone (positions
that need no gradient, as for a direct force head).

Direct force heads need none of this: their forces
:math:`F_{ia} = \\sum_c w_c v_{ica}` are linear in the weights with the
vector features themselves as rows. :func:`direct_force_rows` lays the
(N, C, 3) vector features out as the (3N, C) matrix :math:`V` with
:math:`F = V w` (row ``3 i + a``: atom i, Cartesian component a), so the
variance of a force component under a weight covariance :math:`\\Sigma` is
:math:`(V \\Sigma V^T)_{rr}`: no vector-Jacobian product at all.
"""

from __future__ import annotations

from typing import Union

import torch

Vectorize = Union[bool, str]


def _use_batched(vectorize: Vectorize, device: torch.device) -> bool:
    if vectorize == "auto":
        return device.type == "cuda"
    if isinstance(vectorize, bool):
        return vectorize
    raise ValueError(f"vectorize must be True, False or 'auto', got {vectorize!r}")


def feature_vjps(
    features: torch.Tensor,
    positions: torch.Tensor,
    cotangents: torch.Tensor,
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    vectorize: Vectorize = "auto",
) -> torch.Tensor:
    """(K, N, 3) derivatives of ``sum_i c_k . phi_i`` with respect to positions (per Å).

    Parameters
    ----------
    features
        (N, F) per-atom features, a function of ``positions`` (graph retained).
    positions
        (N, 3) leaf tensor the features were computed from.
    cotangents
        (K, F) vectors ``c_k`` (in the features' dtype after conversion).
    create_graph
        Keep the graph of the result (to train on forces).
    retain_graph
        Keep the features' graph for later backward passes.
    vectorize
        ``True``: one batched backward pass; ``False``: a loop over k;
        ``"auto"``: batched on CUDA, loop on CPU (faster there, see module doc).

    Atoms of different structures do not interact, so summing over all atoms
    of a batch gives each atom the derivative of its own structure's sum.
    """
    return _vjps(features, (positions,), cotangents, create_graph=create_graph,
                 retain_graph=retain_graph, vectorize=vectorize)[0]


def feature_vjps_strain(
    features: torch.Tensor,
    positions: torch.Tensor,
    strain: torch.Tensor,
    cotangents: torch.Tensor,
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    vectorize: Vectorize = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, N, 3)`` position and ``(K, B, 3, 3)`` strain derivatives of
    ``sum_i c_k . phi_i``, from the same K backward passes.

    ``strain`` is the (B, 3, 3) leaf of :func:`mlipuq.models.base.strained`
    the features were computed with (``MLIP.forward(..., stress=True,
    features=True)["strain"]``); the other arguments are those of
    :func:`feature_vjps`. Each structure's strain derivative only involves its
    own atoms; divided by the structure's volume it is a stress.
    """
    grads = _vjps(features, (positions, strain), cotangents, create_graph=create_graph,
                  retain_graph=retain_graph, vectorize=vectorize)
    return grads[0], grads[1]


def strain_vjps(
    features: torch.Tensor,
    strain: torch.Tensor,
    cotangents: torch.Tensor,
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    vectorize: Vectorize = "auto",
) -> torch.Tensor:
    """``(K, B, 3, 3)`` strain derivatives of ``sum_i c_k . phi_i`` (the strain
    part of :func:`feature_vjps_strain`, for features whose positions need no
    gradient, e.g. those of a model returning direct forces)."""
    return _vjps(features, (strain,), cotangents, create_graph=create_graph,
                 retain_graph=retain_graph, vectorize=vectorize)[0]


def direct_force_rows(vector_features: torch.Tensor) -> torch.Tensor:
    """(3N, C) rows ``V`` of a direct force head from (N, C, 3) vector features
    (same dtype, graph kept): ``F.reshape(-1) = V @ w`` for readout weights ``w`` (C,)."""
    n, c, _ = vector_features.shape
    return vector_features.transpose(1, 2).reshape(3 * n, c)


def _vjps(features, inputs, cotangents, *, create_graph, retain_graph, vectorize) -> list:
    """Per input, the (K, *input.shape) derivatives of ``sum_i c_k . phi_i``."""
    c = cotangents.to(device=features.device, dtype=features.dtype)
    n, k = features.shape[0], c.shape[0]

    def zeros(x):
        return torch.zeros((k,) + tuple(x.shape), dtype=features.dtype, device=features.device)

    if not features.requires_grad:
        return [zeros(x) for x in inputs]
    if _use_batched(vectorize, features.device):
        grads = torch.autograd.grad(
            features,
            inputs,
            grad_outputs=c[:, None, :].expand(k, n, c.shape[1]),
            is_grads_batched=True,
            create_graph=create_graph,
            retain_graph=retain_graph or create_graph,
            allow_unused=True,
        )
        return [zeros(x) if g is None else g for x, g in zip(inputs, grads)]
    rows = [[] for _ in inputs]
    for index in range(k):
        last = index == k - 1
        # a fresh contiguous cotangent: BLAS results must not depend on the
        # memory alignment of a row view (bitwise-reproducible predictions)
        weight = c[index][None, :].expand(n, c.shape[1]).contiguous()
        grads = torch.autograd.grad(
            features,
            inputs,
            grad_outputs=weight,
            create_graph=create_graph,
            retain_graph=retain_graph or create_graph or not last,
            allow_unused=True,
        )
        for out, x, g in zip(rows, inputs, grads):
            out.append(torch.zeros_like(x) if g is None else g)
    return [torch.stack(out) for out in rows]
