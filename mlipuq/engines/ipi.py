"""i-PI driver: any mlipuq UQ wrapper as an i-PI client, its committee in the extras.

`i-PI <https://ipi-code.org>`_ runs the dynamics (MD, PIMD, NPT, ...) and asks
clients over a socket for the energy, forces and virial of each structure.
This module is such a client, built on i-PI's own machinery (the ``ipi``
package, ``pip install ipi``):

* :class:`MLIPUQDriver` is a PES class in i-PI's convention (a subclass of
  ``ipi.pes.dummy.Dummy_driver``: ``compute(cell, pos)`` returns
  ``(pot, force, vir, extras)`` in atomic units). It holds a loaded wrapper and
  the element symbols, periodicity and atom order of a template structure
  file (i-PI sends only the cell and the positions).
* :func:`serve` connects it to a running i-PI with i-PI's socket client loop
  (``run_driver`` of the ``i-pi-py_driver`` script that the ``ipi`` package
  installs) and returns when i-PI sends EXIT. ``mlipuq ipi-driver``
  (:mod:`mlipuq.engines.ipi_cli`) is the command.

What goes back for each structure (i-PI's atomic units: Hartree, Bohr):

* ``pot``: the wrapper's energy (its mean model / committee mean);
* ``force``: its forces, (N, 3);
* ``vir``: for a cell periodic in all three directions ``-σ V`` (σ the stress,
  ``σ = (1/V) ∂E/∂ε``, ASE's sign; transposed as i-PI's ASE driver does);
  zeros otherwise (molecules, slabs);
* ``extras``, a JSON string: ``energy_std`` (Hartree), ``forces_std`` ((N, 3),
  Hartree/Bohr), ``max_force_std`` (Hartree/Bohr) and, for wrappers with a
  committee (DeepEnsemble, ShallowEnsemble, LastLayerLaplace with
  ``n_samples > 0``), ``committee_pot`` ((K,) Hartree), ``committee_force``
  ((K, 3N) Hartree/Bohr; when the prediction has force members that are
  gradients of the member energies, e.g. LastLayerLaplace only with
  ``force_variance="samples", energy_posterior="joint"``) and
  ``committee_virial`` ((K, 9), Hartree; when the prediction has stress
  members) - the keys i-PI's ``<ffcommittee>`` reads with
  ``<parse_json> true </parse_json>``. A wrapper without members sends the
  three std keys only; ``<ffcommittee>`` cannot use it (a plain
  ``<ffsocket>`` can, and prints the std with ``extra_type="energy_std"``).

Units are converted with ``ipi.utils.units`` (i-PI's constants), so the
numbers i-PI prints in eV are the wrapper's to i-PI's precision.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import inspect
import json
import os
import socket as _socket
import sys
import sysconfig
import time
import types
from pathlib import Path
from typing import Optional, Union

import numpy as np

from mlipuq.errors import MLIPUQError

try:  # the top-level i-PI package (absolute import: not this module)
    from ipi.pes.dummy import Dummy_driver
    from ipi.utils.units import unit_to_internal, unit_to_user

    _IPI_ERROR: Optional[BaseException] = None
except ImportError as _exc:  # pragma: no cover - CI installs ipi
    Dummy_driver = object
    _IPI_ERROR = _exc

# i-PI's PES-module convention (what ``ipi.pes.load_pes`` looks for)
__DRIVER_NAME__ = "mlipuq"
__DRIVER_CLASS__ = "MLIPUQDriver"

#: i-PI's default prefix of Unix-socket paths (``<simulation sockets_prefix=...>``).
SOCKETS_PREFIX = "/tmp/ipi_"
#: Default TCP port of ``--port`` (i-PI's own examples use 31415).
DEFAULT_PORT = 31415
#: Script of the ``ipi`` package holding i-PI's Python socket client ``run_driver``.
DRIVER_SCRIPT = "i-pi-py_driver"

__all__ = ["IPIDriverError", "MLIPUQDriver", "read_active_output", "serve"]


class IPIDriverError(MLIPUQError, ValueError):
    """The i-PI driver cannot run: ``ipi`` missing, bad template, no i-PI to connect to, ..."""


def _require_ipi() -> None:
    if _IPI_ERROR is not None:
        raise IPIDriverError(f"the i-PI driver needs the ipi package (pip install ipi): "
                             f"{_IPI_ERROR}")


# ------------------------------------------------------------------ units
def _to_hartree(x):
    return np.asarray(unit_to_internal("energy", "electronvolt", np.asarray(x, float)), float)


def _to_au_force(x):
    return np.asarray(unit_to_internal("force", "ev/ang", np.asarray(x, float)), float)


def _to_angstrom(x):
    return np.asarray(unit_to_user("length", "angstrom", np.asarray(x, float)), float)


def _virial_au(stress: np.ndarray, volume: float) -> np.ndarray:
    """i-PI virial (Hartree) from a (3, 3) stress in eV/Å^3: ``(-σ V)^T``."""
    return np.ascontiguousarray(_to_hartree(-np.asarray(stress, float) * volume).T)


def _load_template(template):
    import ase
    import ase.io

    if isinstance(template, ase.Atoms):
        return template.copy()
    path = os.fspath(template)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"template structure {path!r} does not exist")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as exc:  # ASE raises many kinds on a bad file
        raise IPIDriverError(f"cannot read the template structure {path!r}: "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(atoms, ase.Atoms) or len(atoms) == 0:
        raise IPIDriverError(f"the template structure {path!r} holds no atoms")
    return atoms


class MLIPUQDriver(Dummy_driver):
    """i-PI PES: a UQ wrapper evaluated on the structures i-PI sends.

    Parameters
    ----------
    model
        A fitted UQ wrapper, or the path of one saved with ``.save()`` (loaded
        with :func:`mlipuq.uq.load`).
    template
        ``ase.Atoms`` or a structure file (any format ``ase.io.read`` knows;
        its first frame): the element symbols in i-PI's atom order, and the
        periodicity (``pbc``). i-PI's cell replaces the template's for a
        periodic template; for a non-periodic one the cell i-PI sends is
        ignored (give i-PI any large box, and ``pbc="false"`` on the
        ``<ffsocket>`` so that it does not wrap the molecule).
    device, dtype
        Move / cast the wrapper (``"cpu"``, ``"cuda"``...; ``"float64"`` or
        ``"float32"`` or a torch dtype); None leaves it as it is. The wrapper
        passed in is modified, not copied.
    calibrated
        Apply the wrapper's recalibration to the uncertainties and members.
    batch_size
        Structures per forward pass when i-PI sends batches (``batch_size``
        in its INIT string).
    verbose
        i-PI's PES flag (prints nothing more here).

    Attributes
    ----------
    wrapper, atoms_template
        The wrapper and the template structure.
    n_calls, n_structures
        Requests served and structures evaluated so far.
    """

    def __init__(self, model, template, device=None, dtype=None, calibrated=True,
                 batch_size=32, verbose=False, *args, **kwargs):
        _require_ipi()
        self.model, self.template = model, template
        self.device, self.dtype = device, dtype
        self.calibrated, self.batch_size = bool(calibrated), int(batch_size)
        self.n_calls = self.n_structures = 0
        super().__init__(verbose, *args, **kwargs)  # calls check_parameters()

    # i-PI calls this from __init__: load and check everything once
    def check_parameters(self):
        from mlipuq.uq import load

        model = self.model
        if isinstance(model, (str, os.PathLike)):
            if not os.path.isfile(os.fspath(model)):
                raise FileNotFoundError(f"model file {os.fspath(model)!r} does not exist")
            model = load(model)
        if not (hasattr(model, "predict") and hasattr(model, "species")):
            raise TypeError(f"MLIPUQDriver needs an mlipuq UQ wrapper or the path of a saved "
                            f"one, got {type(model).__name__}")
        dtype = _torch_dtype(self.dtype)
        if dtype is not None or self.device is not None:
            model.to(dtype, device=self.device)
        self.wrapper = model
        atoms = _load_template(self.template)
        known = set(int(z) for z in model.species)
        unknown = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers)
                          if int(z) not in known})
        if unknown:
            raise IPIDriverError(f"the template holds {', '.join(unknown)}, which the wrapper "
                                 f"does not know (its species: atomic numbers {sorted(known)})")
        self.atoms_template = atoms
        self.numbers = atoms.numbers.copy()
        self.pbc = np.array(atoms.pbc, dtype=bool)
        self.periodic = bool(self.pbc.all())
        self._predict_stress = "stress" in inspect.signature(model.predict).parameters

    # ---------------------------------------------------------- evaluation
    def compute(self, cell, pos):
        """i-PI's entry point: one structure (``cell`` (3, 3), ``pos`` (N, 3) in
        Bohr) or lists of them (batched requests), evaluated in one ``predict``."""
        if isinstance(cell, list):
            if not isinstance(pos, list) or len(cell) != len(pos):
                raise ValueError("both positions and cells must be lists of the same length "
                                 "to run in batched mode")
            return self.compute_structures(cell, pos)
        return self.compute_structures([cell], [pos])[0]

    def compute_structure(self, cell, pos):
        """One structure: ``(pot, force, vir, extras)`` (see the module docstring)."""
        return self.compute_structures([cell], [pos])[0]

    def to_atoms(self, cell, pos):
        """The ``ase.Atoms`` (Å) of one structure as i-PI sends it (Bohr; ``cell``
        is i-PI's ``h``, whose columns are the cell vectors)."""
        import ase

        positions = _to_angstrom(np.asarray(pos, float).reshape(-1, 3))
        if len(positions) != len(self.numbers):
            raise IPIDriverError(f"i-PI sent {len(positions)} atoms; the template has "
                                 f"{len(self.numbers)} (give the structure i-PI runs)")
        if self.pbc.any():
            box = _to_angstrom(np.asarray(cell, float).reshape(3, 3)).T
        else:
            box = self.atoms_template.cell
        return ase.Atoms(numbers=self.numbers, positions=positions, cell=box, pbc=self.pbc)

    def compute_structures(self, cells, positions) -> list:
        """Evaluate structures; a list of ``(pot, force, vir, extras)`` in i-PI's units."""
        structures = [self.to_atoms(c, p) for c, p in zip(cells, positions)]
        options = {"stress": True} if self.periodic and self._predict_stress else {}
        pred = self.wrapper.predict(structures, calibrated=self.calibrated, distributed=False,
                                    batch_size=self.batch_size, **options)
        stress = getattr(pred, "stress", None) if self.periodic else None
        stress_members = getattr(pred, "stress_members", None) if self.periodic else None
        consistent = getattr(self.wrapper, "has_consistent_members", True)
        results = []
        for b, atoms in enumerate(structures):
            atom_rows = pred.batch == b
            extras = {
                "energy_std": float(_to_hartree(pred.energy_std[b])),
                "max_force_std": float(_to_au_force(pred.max_force_std[b])),
                "forces_std": _to_au_force(pred.forces_std[atom_rows]).tolist(),
            }
            vir = np.zeros((3, 3))
            if self.periodic:
                volume = atoms.get_volume()
                sigma = (stress[b] if stress is not None
                         else self.wrapper.compute_stress(atoms))
                vir = _virial_au(sigma, volume)
            if pred.energy_members is not None:
                extras["committee_pot"] = _to_hartree(pred.energy_members[:, b]).tolist()
                if pred.forces_members is not None and consistent:
                    extras["committee_force"] = _to_au_force(
                        pred.forces_members[:, atom_rows]).reshape(pred.n_members, -1).tolist()
                if stress_members is not None:
                    extras["committee_virial"] = [
                        _virial_au(s, volume).reshape(9).tolist() for s in stress_members[:, b]]
            results.append((
                float(_to_hartree(pred.energy[b])),
                np.ascontiguousarray(_to_au_force(pred.forces[atom_rows])),
                vir,
                json.dumps(extras),
            ))
        self.n_calls += 1
        self.n_structures += len(structures)
        return results


def _torch_dtype(dtype):
    if dtype is None:
        return None
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    return value


# ------------------------------------------------------- i-PI's socket client
class _Socket(_socket.socket):
    """A socket whose ``recv`` raises on end-of-stream: i-PI's loop reads the
    12-byte headers with ``recv`` and would spin forever on a closed connection
    (i-PI killed, not ended). The protocol itself stays i-PI's."""

    def recv(self, bufsize, *flags):
        data = super().recv(bufsize, *flags)
        if bufsize and not data:
            raise ConnectionResetError("i-PI closed the connection without sending EXIT")
        return data


def _driver_script() -> Path:
    """Path of the ``i-pi-py_driver`` script installed by the ``ipi`` package."""
    import importlib.metadata

    candidates = []
    try:
        dist = importlib.metadata.distribution("ipi")
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or [])
                       if Path(str(f)).name == DRIVER_SCRIPT]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates += [Path(sysconfig.get_path("scripts")) / DRIVER_SCRIPT,
                   Path(sys.executable).parent / DRIVER_SCRIPT]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise IPIDriverError(f"cannot find i-PI's socket client (the {DRIVER_SCRIPT} script of "
                         "the ipi package): reinstall ipi")


@functools.lru_cache(maxsize=1)
def driver_loop() -> types.ModuleType:
    """i-PI's Python client (``run_driver``), loaded from the ``i-pi-py_driver``
    script of the installed ``ipi`` package as a private module."""
    _require_ipi()
    path = _driver_script()
    loader = importlib.machinery.SourceFileLoader("mlipuq_ipi_py_driver", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    if not callable(getattr(module, "run_driver", None)):
        raise IPIDriverError(f"{path} defines no run_driver(): an unsupported ipi version")
    proxy = types.ModuleType("socket")  # this private copy's `socket`, EOF-safe
    proxy.__dict__.update(_socket.__dict__)
    proxy.socket = _Socket
    module.socket = proxy
    return module


def serve(wrapper, template, address: str = "localhost", *, unix: bool = True,
          port: int = DEFAULT_PORT, sockets_prefix: str = SOCKETS_PREFIX,
          device=None, dtype=None, calibrated: bool = True, batch_size: int = 32,
          wait: float = 60.0, verbose: bool = False) -> MLIPUQDriver:
    """Serve ``wrapper`` to a running i-PI until it sends EXIT.

    Parameters
    ----------
    wrapper
        A UQ wrapper or the path of a saved one.
    template
        Structure file or ``ase.Atoms``: symbols (in i-PI's atom order) and
        periodicity; see :class:`MLIPUQDriver`.
    address
        Unix socket name (the ``<address>`` of i-PI's ``<ffsocket mode="unix">``;
        the path is ``sockets_prefix + address``) or, with ``unix=False``, the
        host name of i-PI's ``<ffsocket mode="inet">``.
    unix, port
        Unix-domain socket (default), or TCP on ``port``.
    sockets_prefix
        i-PI's prefix of Unix socket paths (its ``<simulation
        sockets_prefix=...>``; default ``/tmp/ipi_``).
    device, dtype, calibrated, batch_size
        See :class:`MLIPUQDriver`.
    wait
        Seconds to keep retrying the connection while i-PI is starting.
    verbose
        Print every message of the socket protocol (i-PI's ``f_verbose``).

    Returns
    -------
    MLIPUQDriver
        The driver, with ``n_calls`` and ``n_structures`` served.

    Raises
    ------
    IPIDriverError
        No i-PI to connect to within ``wait`` seconds, or the connection was
        lost before i-PI sent EXIT (plus the errors of :class:`MLIPUQDriver`).
    """
    _require_ipi()
    if not isinstance(address, str) or not address:
        raise IPIDriverError("the i-PI address must be a non-empty string")
    if not unix and not (isinstance(port, int) and 0 < port < 65536):
        raise IPIDriverError(f"the TCP port must be an integer in 1..65535, got {port!r}")
    where = (f"Unix socket {sockets_prefix}{address}" if unix else f"{address}:{port}")
    driver = MLIPUQDriver(wrapper, template, device=device, dtype=dtype,
                          calibrated=calibrated, batch_size=batch_size)
    loop = driver_loop()
    deadline = time.monotonic() + float(wait)
    while True:
        try:
            loop.run_driver(unix=unix, address=address, port=port, driver=driver,
                            f_verbose=verbose, sockets_prefix=sockets_prefix)
            return driver
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if driver.n_calls:  # not a failed connect
                raise
            if time.monotonic() >= deadline:
                raise IPIDriverError(
                    f"no i-PI at the {where} after {wait:g} s ({exc.strerror or exc}): start "
                    "`i-pi input.xml` first, with the same address and socket mode") from None
            time.sleep(0.2)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise IPIDriverError(f"lost the connection to i-PI at the {where} after "
                                 f"{driver.n_calls} requests: {exc}") from None


# ------------------------------------------------------------ active learning
def read_active_output(path: Union[str, os.PathLike], template) -> list:
    """Structures dumped by i-PI's ``<ffcommittee>`` ``active_thresh`` /
    ``active_output`` as ``ase.Atoms`` (Å, eV).

    i-PI writes one JSON object per structure whose committee std exceeded the
    threshold (positions and ``h`` in Bohr, the std in Hartree), back to back.
    The symbols and ``pbc`` come from ``template`` (as for the driver); each
    structure's ``info["committee_uncertainty"]`` is the std in eV. The list
    can be labelled and passed to ``mlipuq.load`` / ``mlipuq select``.
    """
    import ase

    _require_ipi()
    text = Path(path).read_text()
    atoms0 = _load_template(template)
    decoder, at, out = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return out
        try:
            record, at = decoder.raw_decode(text, at)
            positions = _to_angstrom(np.asarray(record["position"], float).reshape(-1, 3))
            h = _to_angstrom(np.asarray(record["cell"], float).reshape(3, 3))
            std = float(unit_to_user("energy", "electronvolt", float(record["uncertainty"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise IPIDriverError(f"{os.fspath(path)}: structure {len(out)} is not an i-PI "
                                 f"active-learning record ({exc})") from None
        if len(positions) != len(atoms0):
            raise IPIDriverError(f"{os.fspath(path)}: structure {len(out)} has "
                                 f"{len(positions)} atoms, the template {len(atoms0)}")
        atoms = ase.Atoms(numbers=atoms0.numbers, positions=positions,
                          cell=h.T if atoms0.pbc.any() else atoms0.cell, pbc=atoms0.pbc)
        atoms.info["committee_uncertainty"] = std
        out.append(atoms)
