"""Uncertainty carried into simulation results.

* :func:`run_md`: MD with the mean potential of a UQ wrapper, logging energy
  and force uncertainties and the committee energies of every frame.
* :func:`reweight`: averages in every committee member's ensemble from one
  trajectory (Imbalzano et al. 2021), as an :class:`ObservableEstimate`.
* Observables per frame: :func:`potential_energy`, :func:`volume`,
  :func:`pressure`, :func:`radial_distribution`, :func:`mean_square_displacement`.
* :mod:`mlipuq.propagation.static`: static properties per member (equation of
  state, vacancy formation, vibrations, relaxed energies).
* :mod:`mlipuq.propagation.committee`: committee members as ASE calculators.
"""

from mlipuq.propagation import committee, static
from mlipuq.propagation.committee import member_calculators
from mlipuq.propagation.md import MDTrajectory, run_md
from mlipuq.propagation.observables import (
    kinetic_temperature,
    mean_square_displacement,
    member_energies,
    potential_energy,
    pressure,
    radial_distribution,
    volume,
)
from mlipuq.propagation.reweight import ObservableEstimate, block_standard_error, reweight
from mlipuq.propagation.static import PropertyEstimate

__all__ = [
    "MDTrajectory",
    "ObservableEstimate",
    "PropertyEstimate",
    "block_standard_error",
    "committee",
    "kinetic_temperature",
    "mean_square_displacement",
    "member_calculators",
    "member_energies",
    "potential_energy",
    "pressure",
    "radial_distribution",
    "reweight",
    "run_md",
    "static",
    "volume",
]
