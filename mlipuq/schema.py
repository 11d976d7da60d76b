"""Names of every key mlipuq writes into ``atoms.info``, ``atoms.arrays`` and
calculator results — one schema that writers and readers import.

Frames written by :func:`mlipuq.propagation.run_md`, prediction files written by
:meth:`mlipuq.data.AtomsDataset.write`, pools written by ``mlipuq select`` and
candidates returned by :func:`mlipuq.active.harvest` all use these constants;
nothing spells a key by hand. Units: eV, Å, fs, K, GPa.
"""

from __future__ import annotations

PREFIX = "mlipuq_"

# ---------------------------------------------------------------- MD frames (info)
STEP = "mlipuq_step"  #: MD step index (int)
TIME_FS = "mlipuq_time_fs"  #: simulated time (fs)
ENERGY = "mlipuq_energy"  #: predicted (mean) energy (eV); also in prediction files
ENERGY_STD = "mlipuq_energy_std"  #: predicted energy std (eV); also in prediction files
ENERGY_STD_PER_ATOM = "mlipuq_energy_std_per_atom"  #: energy std / n_atoms (eV/atom)
MAX_FORCE_STD = "mlipuq_max_force_std"  #: DP-GEN force deviation, max_i |σ_F,i| (eV/Å)
FLAGGED = "mlipuq_flagged"  #: the frame crossed the uncertainty threshold (bool)
ENERGIES = "mlipuq_energies"  #: (K,) committee member energies (eV)
#: (3, 3) predicted (mean-model) stress (eV/Å³); also in prediction files
STRESS = "mlipuq_stress"

# ------------------------------------- MD run records (info; checked on resume)
WRAPPER = "mlipuq_wrapper"  #: "sha256:<hex>" of the wrapper's fingerprint()
ENSEMBLE = "mlipuq_ensemble"
TIMESTEP_FS = "mlipuq_timestep_fs"
TEMPERATURE_K = "mlipuq_temperature_K"
SEED = "mlipuq_seed"
FRICTION = "mlipuq_friction"  #: 1/fs, nvt only
PRESSURE_GPA = "mlipuq_pressure_GPa"  #: npt only
TDAMP_FS = "mlipuq_tdamp_fs"  #: npt only, the default resolved
PDAMP_FS = "mlipuq_pdamp_fs"  #: npt only, the default resolved

# ------------------------------------------------------- prediction files
FORCES = "mlipuq_forces"  #: (N, 3) predicted forces (eV/Å), per-atom array
FORCES_STD = "mlipuq_forces_std"  #: (N, 3) predicted force std (eV/Å), per-atom array
#: (N,) per-atom force std sqrt(sum_c σ²_F,ic) (eV/Å): one scalar per atom to colour by
FORCES_STD_NORM = "mlipuq_forces_std_norm"
#: (N,) std of each atom's local energy (eV), where the prediction has per-atom energy
#: variances (``Prediction.atom_energy_var``: LLPR, shallow and deep ensembles, latent
#: distance; not the evidential head)
ATOM_ENERGY_STD = "mlipuq_atom_energy_std"
ENERGY_MEMBERS = "mlipuq_energy_members"  #: (K,) member energies (eV)
#: (3, 3) std of each predicted stress element (eV/Å³), per structure
STRESS_STD = "mlipuq_stress_std"
#: Student-t degrees of freedom of the energy / force predictive (where the calibration
#: fitted a t: the forces by default, ``calibrate(val)``); absent: Gaussian. The std columns are then
#: the Gaussian-equivalent std (the 68 % half-width), see mlipuq.calibration.student_t
ENERGY_DOF = "mlipuq_energy_dof"
FORCES_DOF = "mlipuq_forces_dof"
#: how far a structure's raw std lies beyond the calibration data's range (>= 1; 1 inside):
#: above 1 its calibrated std is extrapolated and widened (mlipuq.calibration.extrapolation)
CALIBRATION_EXCESS = "mlipuq_calibration_excess"
#: the strain term's part of the energy std (eV; its square is part of the energy
#: variance): the first-order energy error of a strained cell (mlipuq.calibration.strain)
STRAIN_ENERGY_STD = "mlipuq_strain_energy_std"
#: the raw energy std of a wrapper's latent-distance term where it is combined with
#: another variance (eV; Prediction.energy_distance_var; the recalibration's range reads it)
ENERGY_DISTANCE_STD = "mlipuq_energy_distance_std"

# ------------------------------------------------------------ active learning
POOL_INDEX = "mlipuq_pool_index"  #: index of a selected structure in its pool
SCORE = "mlipuq_score"  #: selection score (unit of the strategy)
HARVEST_FRAME = "mlipuq_frame"  #: index of a harvested frame in its trajectory
HARVEST_SCORE = "mlipuq_harvest_score"  #: the uncertainty that made it a candidate

#: Per-frame uncertainties that ``harvest`` reads instead of re-scoring, by quantity.
FRAME_UNCERTAINTY = {"max_force_std": MAX_FORCE_STD, "energy_std_per_atom": ENERGY_STD_PER_ATOM}

# ------------------------------------------ ASE calculator results (not info)
RESULT_ENERGY_STD = "energy_std"  #: eV
RESULT_FORCES_STD = "forces_std"  #: (N, 3) eV/Å
RESULT_MAX_FORCE_STD = "max_force_std"  #: eV/Å
#: >= 1: how far the std lies beyond the calibration data's range (Prediction.calibration_excess)
RESULT_CALIBRATION_EXCESS = "calibration_excess"
#: eV, the strain term's part of the energy std (Prediction.strain_energy_var)
RESULT_STRAIN_ENERGY_STD = "strain_energy_std"
RESULT_ENERGIES = "energies"  #: (K,) member energies (eV)
RESULT_FORCES_COMMITTEE = "forces_committee"  #: (K, N, 3) member forces (eV/Å)
RESULT_STRESS_STD = "stress_std"  #: (6,) Voigt std of the stress elements (eV/Å³)
RESULT_STRESS_COMMITTEE = "stress_committee"  #: (K, 6) Voigt member stresses (eV/Å³)
RESULT_ATOM_ENERGY_STD = "atom_energy_std"  #: (N,) local energy std (eV), where the wrapper has it
#: Student-t ν of the energy / force predictive where the calibration fitted a t (the
#: stds are then Gaussian-equivalent: ``Prediction.interval`` / ``predictive.half_width``)
RESULT_ENERGY_DOF = "energy_dof"
RESULT_FORCES_DOF = "forces_dof"

# Prediction files written by `mlipuq predict` (per structure, atoms.info)
WRAPPER_CLASS = "mlipuq_wrapper_class"  #: class name of the UQ wrapper that predicted
#: its recalibration method ("scalar", or per target "energy scalar, forces student_t"),
#: or "raw"
CALIBRATION = "mlipuq_calibration"
