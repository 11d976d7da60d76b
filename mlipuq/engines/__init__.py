"""Molecular-dynamics engines driven by an mlipuq UQ wrapper.

* :mod:`mlipuq.engines.lammps`: LAMMPS (``fix external``) with the wrapper as
  the potential and its uncertainties as fix outputs (``f_mlipuq[1..5]``,
  per-atom ``d_mlipuq_fstd``); needs the ``lammps`` extra.
* :mod:`mlipuq.engines.ipi`: the wrapper as an i-PI client (i-PI runs the
  dynamics); needs the ``ipi`` extra.

The ASE engine is :func:`mlipuq.propagation.run_md`. Nothing is imported here:
import the engine module you use.
"""
