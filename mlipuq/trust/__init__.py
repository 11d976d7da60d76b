"""Trust checks: does a model (or a UQ wrapper) respect the physics it should?

Each check is a function that takes a base MLIP, a UQ wrapper (its
uncertainties are reported too) or an ASE calculator, and returns a small
dataclass with the measured numbers (float64; eV, Å, fs), the ``thresholds``
used and a ``verdict`` (``"pass"``, ``"warn"``, ``"fail"``):

=================================  ================================================
:func:`equivariance_error`         energy invariance / force equivariance over rotations
:class:`RotationalAverage`         a wrapper averaged over rotations, spread as variance
:func:`jacobian_asymmetry`         ‖J_anti‖/‖J‖ of the force Jacobian (conservative forces: 0)
:func:`nve_drift`                  total-energy drift of a short NVE run (eV/atom/ps)
:func:`bond_scan`                  bond stretch: kinks, spurious minima, force/energy mismatch
:func:`torsion_scan`               torsion: kinks, force/energy mismatch
:func:`stability`                  short NVT runs: uncertainty, broken bonds, lost atoms
:func:`write_report`               ``trust.json``, ``trust.md`` and figures
=================================  ================================================

``mlipuq check`` (:mod:`mlipuq.trust.cli`) runs them all on saved models.
The thresholds and their sources: ``docs/trust.md`` and each module's docstring.
"""

from mlipuq.trust.conservation import (
    AsymmetryResult,
    DriftResult,
    force_jacobian,
    jacobian_asymmetry,
    nve_drift,
)
from mlipuq.trust.report import Target, as_target, write_report
from mlipuq.trust.smoothness import ScanResult, bond_scan, torsion_scan
from mlipuq.trust.stability import StabilityResult, stability, structural_events
from mlipuq.trust.symmetry import (
    EquivarianceResult,
    RotationalAverage,
    RotationalPrediction,
    equivariance_error,
    rotation_design,
)

__all__ = [
    "AsymmetryResult",
    "DriftResult",
    "EquivarianceResult",
    "RotationalAverage",
    "RotationalPrediction",
    "ScanResult",
    "StabilityResult",
    "Target",
    "as_target",
    "bond_scan",
    "equivariance_error",
    "force_jacobian",
    "jacobian_asymmetry",
    "nve_drift",
    "rotation_design",
    "stability",
    "structural_events",
    "torsion_scan",
    "write_report",
]
