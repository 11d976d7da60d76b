"""The Laplace initialisation of :class:`~mlipuq.uq.ShallowEnsemble`'s heads
(``init="laplace"``): K heads drawn from the last-layer Laplace posterior of
:class:`~mlipuq.uq.llpr.LastLayerLaplace`, centred on the readout and scaled by an
NLL-optimal factor on held-out data."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.models.base import MLIP

__all__ = ["laplace_direct_heads", "laplace_heads"]

log = logging.getLogger(__name__)


def laplace_direct_heads(
    model: MLIP,
    train,
    calibration,
    n_heads: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(K, P) energy heads and (K, C) direct force heads of a direct-force model,
    drawn from the two last-layer Laplace posteriors of
    :class:`~mlipuq.uq.llpr.LastLayerLaplace` (energy rows for θ, vector
    features for the direct readout), each scaled by its own NLL-optimal
    ``alpha^2`` on ``calibration`` (``train`` if None): energies for θ,
    force components for the direct heads. Centred and scaled as in
    :func:`laplace_heads`."""
    from mlipuq.uq.llpr import LastLayerLaplace, cholesky_with_jitter

    llpr = LastLayerLaplace(model, include_forces=True, n_samples=0, distance=None).fit(train)
    reference = mdata.as_dataset(calibration if calibration is not None else train)
    pred = llpr.predict(reference, calibrated=False)
    alpha2_e = float(np.mean((pred.energy - reference.energies) ** 2
                             / np.maximum(pred.energy_var, 1e-300)))
    alpha2_f = float(np.mean((pred.forces - reference.forces) ** 2
                             / np.maximum(pred.forces_var, 1e-300)))
    log.info("Laplace init (direct heads): alpha^2 = %.3g (energies), %.3g (forces)",
             alpha2_e, alpha2_f)
    heads = []
    for mean, precision, alpha2 in ((llpr._theta(), llpr.precision_, alpha2_e),
                                    (llpr._direct_theta(), llpr.direct_precision_, alpha2_f)):
        factor, _ = cholesky_with_jitter(precision)
        z = torch.randn(n_heads, len(mean), generator=generator, dtype=torch.float64).numpy()
        z = (z - z.mean(axis=0)) * math.sqrt(n_heads / (n_heads - 1))
        heads.append(mean[None, :] + np.linalg.solve(factor.T, z.T).T * math.sqrt(alpha2))
    return heads[0], heads[1]


def laplace_heads(
    model: MLIP,
    train,
    calibration,
    n_heads: int,
    generator: torch.Generator,
    *,
    include_forces: bool = True,
    energy_weight: float = 1.0,
    forces_weight: float = 1.0,
) -> np.ndarray:
    """(K, P) head parameters drawn from the calibrated last-layer Laplace posterior.

    The posterior is :class:`~mlipuq.uq.llpr.LastLayerLaplace` fitted on
    ``train`` (prior precision and noise by marginal likelihood; force rows
    with ``include_forces``). Its spread is then rescaled by ``alpha^2``, the
    NLL-optimal factor ``mean(residual^2 / variance)`` on ``calibration``
    (``train`` if None), weighted between energies and forces by
    ``energy_weight`` and ``forces_weight``. The K samples are centred on the
    readout parameters (head mean = base model) and scaled so that their
    population covariance is unbiased. P is F (+1 for the readout bias).
    """
    from mlipuq.uq.llpr import LastLayerLaplace, cholesky_with_jitter

    # the heads are drawn from the joint posterior, so alpha^2 must scale its energy variances
    llpr = LastLayerLaplace(model, include_forces=include_forces, n_samples=0,
                            energy_posterior="joint", distance=None).fit(train)
    reference = mdata.as_dataset(calibration if calibration is not None else train)
    pred = llpr.predict(reference, calibrated=False)
    ratios = (pred.energy - reference.energies) ** 2 / np.maximum(pred.energy_var, 1e-300)
    alpha2, total = energy_weight * float(np.mean(ratios)), energy_weight
    if include_forces and forces_weight > 0:
        ratios = (pred.forces - reference.forces) ** 2 / np.maximum(pred.forces_var, 1e-300)
        alpha2 += forces_weight * float(np.mean(ratios))
        total += forces_weight
    alpha2 /= total
    log.info("Laplace init: prior precision %.3g, alpha^2 = %.3g", llpr.prior_precision_, alpha2)
    theta = llpr._theta()
    factor, _ = cholesky_with_jitter(llpr.precision_)  # P = L L^T
    z = torch.randn(n_heads, len(theta), generator=generator, dtype=torch.float64).numpy()
    z = (z - z.mean(axis=0)) * math.sqrt(n_heads / (n_heads - 1))
    # theta + alpha L^-T z has covariance alpha^2 (L L^T)^-1 = alpha^2 P^-1.
    deviations = np.linalg.solve(factor.T, z.T).T * math.sqrt(alpha2)
    return theta[None, :] + deviations
