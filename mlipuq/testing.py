"""A common check suite for UQ wrappers, like scikit-learn's ``check_estimator``.

>>> from mlipuq.testing import check_uq_wrapper
>>> check_uq_wrapper(LastLayerLaplace(model), data, fit_kwargs={})

Every check raises ``AssertionError`` with a message on failure (these are
test helpers, not user-input validation). The wrapper passed in is never
modified: each check works on a deep copy.
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Callable, Optional

import ase
import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError, NotFittedError, ResumeError


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _tolerance(wrapper) -> float:
    return 1e-9 if wrapper.dtype == torch.float64 else 2e-4


def _close(a, b, rtol, what):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-12)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not err <= rtol * scale + rtol:
        raise AssertionError(f"{what}: max deviation {err:.3g} (scale {scale:.3g}, rtol {rtol})")


def _fit(wrapper, data, fit_kwargs):
    clone = copy.deepcopy(wrapper)
    return clone.fit(data, **fit_kwargs)


def check_not_fitted(wrapper, data) -> None:
    """predict() before fit() raises NotFittedError (a ValueError)."""
    if wrapper.fitted_:
        return
    try:
        copy.deepcopy(wrapper).predict(data[:1])
    except NotFittedError:
        return
    raise AssertionError("predict() before fit() did not raise NotFittedError")


def check_reproducible(wrapper, data, fit_kwargs) -> None:
    """Two fits with the same configuration and seed predict identically."""
    if wrapper.fitted_:
        return
    a = _fit(wrapper, data, fit_kwargs).predict(data)
    b = _fit(wrapper, data, fit_kwargs).predict(data)
    for name in ("energy", "energy_var", "forces", "forces_var"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            raise AssertionError(f"fitting twice with the same seed changed {name}")


def check_invariance(fitted, structure: ase.Atoms, seed: int = 0) -> None:
    """Energy and its std invariant, forces equivariant, per-atom force-std norms
    invariant under rotation, translation and permutation."""
    rng = np.random.default_rng(seed)
    rtol = _tolerance(fitted)
    ref = fitted.predict(structure)
    rotation = _random_rotation(rng)
    moved = structure.copy()
    moved.positions = structure.positions @ rotation.T + rng.normal(size=3) * 2.0
    if np.any(structure.pbc):
        moved.set_cell(np.asarray(structure.cell) @ rotation.T, scale_atoms=False)
    perm = rng.permutation(len(structure))
    permuted = structure[perm]
    for name, other, forces_map, index in (
        ("rotation+translation", moved, lambda f: f @ rotation.T, np.arange(len(structure))),
        ("permutation", permuted, lambda f: f, perm),
    ):
        pred = fitted.predict(other)
        _close(pred.energy, ref.energy, rtol, f"energy under {name}")
        _close(pred.energy_std, ref.energy_std, rtol, f"energy std under {name}")
        _close(pred.forces, forces_map(ref.forces)[index], rtol, f"forces under {name}")
        _close(
            np.linalg.norm(pred.forces_std, axis=1),
            np.linalg.norm(ref.forces_std, axis=1)[index],
            rtol,
            f"per-atom force-std norm under {name}",
        )


def check_batch_consistency(fitted, structures) -> None:
    """A batch predicts what its structures predict one by one."""
    rtol = _tolerance(fitted)
    together = fitted.predict(structures)
    alone = [fitted.predict(a) for a in structures]
    for k, single in enumerate(alone):
        one = together.structure(k)
        for name in ("energy", "energy_var", "forces", "forces_var"):
            _close(getattr(one, name), getattr(single, name), rtol, f"{name} of structure {k} in a batch")


def check_save_load(fitted, structures) -> None:
    """save() then load() reproduces predictions exactly; saving refuses to clobber."""
    from mlipuq.uq.base import load

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wrapper.pt")
        fitted.save(path)
        try:
            fitted.save(path)
        except FileExistsError:
            pass
        else:
            raise AssertionError("save() overwrote an existing file without overwrite=True")
        loaded = load(path, module=_modules_of(fitted))
    a, b = fitted.predict(structures), loaded.predict(structures)
    for name in ("energy", "energy_var", "forces", "forces_var", "energy_members", "forces_members"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            raise AssertionError(f"save/load lost {name}")
        if x is not None:
            # Bitwise equality is not promised by BLAS kernels, whose summation
            # order may depend on memory alignment: allow a few ulps.
            _close(x, y, 1e-12, f"{name} after save/load")


def _strain_cells(species: int, n: int, seed: int = 0) -> list:
    """``n`` rattled simple-cubic 8-atom cells of one element at one cell (3.0 Å spacing)."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
        atoms = ase.Atoms(numbers=[species] * 8, positions=3.0 * grid, cell=6.0 * np.eye(3),
                          pbc=True)
        atoms.positions += rng.normal(0.0, 0.05, (8, 3))
        cells.append(atoms)
    return cells


def check_strain_term(fitted) -> None:
    """calibrate() on cells with stress labels = the mean model's stress minus a known Δσ
    (with shear) gives a cell strained by ε from them ``strain_energy_var`` = (V₀ Δσ:E)²
    (E the Green–Lagrange strain), added to the calibrated ``energy_var`` (the same
    wrapper calibrated with ``strain=False`` has none), kept by save/load."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlipuq.uq.base import load

    offset = np.array([[0.01, 0.002, 0.0], [0.002, -0.005, 0.001], [0.0, 0.001, 0.003]])
    cells = _strain_cells(fitted.species[0], 6)
    raw = fitted.predict(cells, calibrated=False, stress=True)
    for k, atoms in enumerate(cells):
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(raw.energy[k]) + 0.01 * (k - 2.5),
            forces=raw.forces[raw.batch == k] + 0.01, stress=raw.stress[k] - offset)
    epsilon = np.array([[0.02, 0.01, 0.0], [0.01, -0.01, 0.0], [0.0, 0.0, 0.03]])
    strained = cells[0].copy()
    strained.set_cell(strained.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
    green = 0.5 * ((np.eye(3) + epsilon) @ (np.eye(3) + epsilon).T - np.eye(3))
    expected = (216.0 * np.sum(offset * green)) ** 2
    with_term = copy.deepcopy(fitted).calibrate(cells)
    without = copy.deepcopy(fitted).calibrate(cells, strain=False)
    a, b = with_term.predict(strained), without.predict(strained)
    if a.strain_energy_var is None or b.strain_energy_var is not None:
        raise AssertionError("calibrate() on stress labels should fit the strain term "
                             "(strain=False: none)")
    _close(a.strain_energy_var, np.array([expected]), 1e-6, "strain_energy_var")
    _close(a.energy_var - b.energy_var, a.strain_energy_var, 1e-6,
           "the strain term's share of energy_var")
    if hasattr(with_term, "predict_energy"):  # LLPR's energy-only path adds it too
        _close(with_term.predict_energy(strained)[1] - without.predict_energy(strained)[1],
               a.strain_energy_var, 1e-6, "predict_energy's strain term")
    if with_term.predict(cells[1]).strain_energy_var[0] != 0.0:
        raise AssertionError("a calibration cell should get no strain term")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wrapper.pt")
        with_term.save(path)
        loaded = load(path, module=_modules_of(with_term))
    _close(loaded.predict(strained).energy_var, a.energy_var, 1e-12,
           "energy_var with the strain term after save/load")


def check_bad_inputs(fitted, structure: ase.Atoms) -> None:
    """NaN/inf positions, unknown elements and empty structures raise ValueError naming them."""
    cases = []
    bad = structure.copy()
    bad.positions[0, 0] = np.nan
    cases.append(("NaN position", [structure, bad], "structure 1"))
    bad = structure.copy()
    bad.positions[0, 1] = np.inf
    cases.append(("inf position", [bad], "structure 0"))
    bad = structure.copy()
    known = set(fitted.species)
    unknown = next(z for z in range(1, 119) if z not in known)
    bad.numbers[0] = unknown
    cases.append(("unknown element", [structure, structure, bad], "structure 2"))
    cases.append(("empty structure", [ase.Atoms()], "structure 0"))
    for what, structures, where in cases:
        try:
            fitted.predict(structures)
        except ValueError as exc:
            if where not in str(exc):
                raise AssertionError(f"{what}: error does not name the structure: {exc}")
        else:
            raise AssertionError(f"{what}: predict() raised no ValueError")


def check_single_atoms(fitted, structure: ase.Atoms) -> None:
    """A one-atom structure and an atom far from the rest give finite predictions."""
    single = structure[:1].copy()
    pred = fitted.predict(single)
    far = structure.copy()
    far.positions[0] += 100.0 if not np.any(structure.pbc) else 0.0
    pred2 = fitted.predict(far)
    for p, what in ((pred, "single atom"), (pred2, "isolated atom")):
        for name in ("energy", "energy_var", "forces", "forces_var"):
            if not np.all(np.isfinite(getattr(p, name))):
                raise AssertionError(f"{what}: non-finite {name}")


def check_uq_wrapper(
    wrapper,
    data,
    *,
    fit_kwargs: Optional[dict] = None,
    checks: Optional[list[Callable]] = None,
    md_resume: bool = True,
    informative: bool = True,
) -> None:
    """Run every common check on ``wrapper`` with structures from ``data``.

    ``wrapper`` should be unfitted (then it is fitted on ``data`` with
    ``fit_kwargs``, and the not-fitted, fit-input and reproducibility checks
    run); an already fitted one (e.g. a DeepEnsemble built from trained
    models) skips those. ``data`` needs reference energies and forces and at
    least 4 structures. ``md_resume=False`` skips the (slower) MD-resume check;
    ``informative=False`` skips :func:`check_std_informative`, which needs a
    base model and heads trained to fit ``data`` (not a one-epoch smoke fit).
    """
    dataset = mdata.as_dataset(data)
    if len(dataset) < 4:
        raise ValueError("check_uq_wrapper needs at least 4 structures")
    fit_kwargs = dict(fit_kwargs or {})
    check_not_fitted(wrapper, dataset)
    check_fit_inputs(wrapper, dataset, fit_kwargs)
    check_reproducible(wrapper, dataset, fit_kwargs)
    fitted = wrapper if wrapper.fitted_ else _fit(wrapper, dataset, fit_kwargs)
    sample = list(dataset[:3])
    check_invariance(fitted, sample[0])
    check_batch_consistency(fitted, sample)
    check_save_load(fitted, sample)
    check_bad_inputs(fitted, sample[0])
    check_single_atoms(fitted, sample[0])
    check_calibrate_inputs(fitted, dataset)
    check_strain_term(fitted)
    check_corrupted_files(fitted, sample)
    check_crafted_files(fitted)
    check_dtype_round_trip(fitted, sample)
    if informative:
        check_std_informative(fitted, dataset)
    if md_resume:
        check_md_resume(fitted, sample[0])
    for extra in checks or []:
        extra(fitted, dataset)


def check_matches_calculator(model, calculator, structures, *, rtol: float = 1e-6) -> dict:
    """An adapter's energies and forces equal the package's own ASE calculator.

    Energies must agree to ``rtol`` relative to their magnitude, forces to
    ``rtol`` relative to the largest force component of the structure (a
    relative test per component is meaningless for near-zero forces).
    Returns the worst relative deviations seen, ``{"energy": ..., "forces": ...}``.
    """
    dataset = mdata.as_dataset(structures)
    ours = model.compute(dataset, batch_size=len(dataset))
    worst = {"energy": 0.0, "forces": 0.0}
    start = 0
    for k, atoms in enumerate(dataset):
        atoms = atoms.copy()
        atoms.calc = calculator
        e_ref = float(atoms.get_potential_energy())
        f_ref = np.asarray(atoms.get_forces(), dtype=np.float64)
        n = len(atoms)
        f = ours["forces"][start:start + n]
        start += n
        de = abs(ours["energy"][k] - e_ref) / max(abs(e_ref), 1e-12)
        df = float(np.max(np.abs(f - f_ref))) / max(float(np.max(np.abs(f_ref))), 1e-12)
        worst["energy"] = max(worst["energy"], de)
        worst["forces"] = max(worst["forces"], df)
        if de > rtol:
            raise AssertionError(
                f"structure {k}: energy {ours['energy'][k]!r} eV differs from the calculator's "
                f"{e_ref!r} eV by {de:.2e} relative (> {rtol})"
            )
        if df > rtol:
            raise AssertionError(
                f"structure {k}: forces differ from the calculator's by {df:.2e} relative to the "
                f"largest component (> {rtol})"
            )
    return worst


# ------------------------------------------------- checks of user input and files
def _expect_error(what: str, call, error=ValueError, names: Optional[str] = None) -> None:
    """``call()`` raises ``error``; its message contains ``names`` when given."""
    try:
        call()
    except error as exc:
        if names is not None and names not in str(exc):
            raise AssertionError(f"{what}: the error does not name {names!r}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - any other error type is a failure
        raise AssertionError(f"{what}: raised {type(exc).__name__} ({exc}), not {error.__name__}")
    raise AssertionError(f"{what}: no {error.__name__} was raised")


def _without_reference(atoms: ase.Atoms) -> ase.Atoms:
    bare = atoms.copy()
    bare.calc = None
    return bare


def _with_forces(atoms: ase.Atoms, forces: np.ndarray) -> ase.Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    energy = atoms.get_potential_energy() if atoms.calc is not None else 0.0
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def check_fit_inputs(wrapper, data, fit_kwargs) -> None:
    """fit() refuses structures without reference data or with wrongly shaped
    reference forces, with a ValueError naming the structure."""
    structures = list(data)
    bad = structures[:3] + [_without_reference(structures[3])]
    _expect_error("fit() on a structure without references",
                  lambda: _fit(wrapper, bad, fit_kwargs), names="structure 3")
    wrong = _with_forces(structures[1], np.zeros((len(structures[1]) + 1, 3)))
    bad = [structures[0], wrong] + structures[2:4]
    _expect_error("fit() on wrongly shaped reference forces",
                  lambda: _fit(wrapper, bad, fit_kwargs), names="structure 1")


def check_calibrate_inputs(fitted, data) -> None:
    """calibrate() refuses missing and wrongly shaped references naming the
    structure, and excludes exact targets (a lone atom's forces) instead of failing."""
    structures = list(data)
    bad = structures[:2] + [_without_reference(structures[2])]
    _expect_error("calibrate() without references",
                  lambda: copy.deepcopy(fitted).calibrate(bad), names="structure 2")
    wrong = _with_forces(structures[0], np.zeros((len(structures[0]), 2)))
    _expect_error("calibrate() with wrongly shaped forces",
                  lambda: copy.deepcopy(fitted).calibrate([structures[1], wrong]),
                  names="structure 1")
    from ase.calculators.singlepoint import SinglePointCalculator

    lone = ase.Atoms(numbers=[fitted.species[0]], positions=[[0.0, 0.0, 0.0]])
    lone.calc = SinglePointCalculator(lone, energy=float(fitted.predict(lone).energy[0]) + 0.1,
                                      forces=np.zeros((1, 3)))
    exact = int(np.count_nonzero(fitted.predict(lone, calibrated=False).forces_std == 0))
    calibrated = copy.deepcopy(fitted).calibrate(structures + [lone])
    excluded = calibrated.recalibrator_.excluded_
    # the lone atom's energy may be exact too (e.g. members recentred on it)
    if excluded["forces"] != exact or excluded["energy"] not in (0, 1):
        raise AssertionError(
            f"a lone atom's {exact} zero-std force components should be excluded: {excluded}"
        )


def _modules_of(fitted):
    """Copies of the networks that models saved as weights only (wrap(), MACE) load
    into (``mlipuq.uq.load(path, module=...)``); None if no base model needs one."""
    modules = [
        copy.deepcopy(m.module) for m in fitted._models() if getattr(m, "needs_module", False)
    ]
    return modules or None


def _saved(fitted, directory: str) -> str:
    path = os.path.join(directory, "wrapper.pt")
    fitted.save(path)
    return path


def tensor_record_span(path) -> tuple[int, int]:
    """``(start, stop)`` byte range of the largest tensor record (``*/data/*``) in a
    saved file (a torch zip archive, stored uncompressed): where flipped bytes
    change weights."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)  # local header: name and extra-field lengths
        name_len, extra_len = np.frombuffer(fh.read(4), dtype="<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    return start, start + info.file_size


def check_corrupted_files(fitted, structures) -> None:
    """A saved file with flipped bytes or cut short raises FileFormatError on load;
    it never loads with other predictions."""
    from mlipuq.uq.base import load

    with tempfile.TemporaryDirectory() as tmp:
        path = _saved(fitted, tmp)
        raw = bytearray(open(path, "rb").read())
        start, stop = tensor_record_span(path)
        rng = np.random.default_rng(0)
        flipped = bytearray(raw)
        for k in rng.choice(stop - start, size=min(200, stop - start), replace=False):
            flipped[start + int(k)] ^= 0xFF
        for what, content in (("flipped bytes", flipped), ("truncated", raw[: len(raw) // 2])):
            with open(path, "wb") as fh:
                fh.write(content)
            _expect_error(f"loading a file with {what}", lambda: load(path), FileFormatError,
                          names=path)


class _Marker:
    """A pickled object whose unpickling would create a file (the attack)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def check_crafted_files(fitted) -> None:
    """A file carrying pickled code is refused with FileFormatError and its code
    never runs; a payload naming an unknown class is refused too."""
    from mlipuq.uq.base import load

    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "marker")
        path = os.path.join(tmp, "evil.pt")
        payload = fitted.payload()
        payload["state"] = {"evil": _Marker(marker)}
        torch.save(payload, path)
        _expect_error("loading a file with pickled code", lambda: load(path), FileFormatError)
        if os.path.exists(marker):
            raise AssertionError("loading a crafted file executed its code")
        payload = fitted.payload()
        payload["class"] = "os.system"
        torch.save(payload, path)
        _expect_error("loading a file naming an unknown class", lambda: load(path),
                      FileFormatError)


def check_dtype_round_trip(fitted, structures) -> None:
    """A wrapper cast to float32 (and back to float64) saves and loads in that dtype
    with identical predictions."""
    from mlipuq.uq.base import load

    for dtype in (torch.float32, torch.float64):
        cast = copy.deepcopy(fitted).to(dtype)
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load(_saved(cast, tmp), module=_modules_of(cast))
        if loaded.dtype != dtype:
            raise AssertionError(f"a {dtype} wrapper loaded as {loaded.dtype}")
        a, b = cast.predict(structures), loaded.predict(structures)
        for name in ("energy", "energy_var", "forces", "forces_var"):
            _close(getattr(b, name), getattr(a, name), 1e-12, f"{name} after a {dtype} round trip")


def _compressed(structures, factor: float) -> list:
    out = []
    for atoms in structures:
        a = _without_reference(atoms)
        if np.any(a.pbc):
            a.set_cell(np.asarray(a.cell) * factor, scale_atoms=True)
        else:
            centre = a.positions.mean(axis=0)
            a.positions = centre + factor * (a.positions - centre)
        out.append(a)
    return out


def check_std_informative(fitted, data) -> None:
    """The energy std varies between structures, and both stds grow for
    structures compressed by 20 % (bonds far shorter than in the data)."""
    near = fitted.predict(data)
    per_atom = near.energy_std / near.n_atoms
    if np.ptp(per_atom) <= 1e-6 * np.max(per_atom):
        raise AssertionError("the energy std is the same for every structure")
    far = fitted.predict(_compressed(data, 0.8))
    if not np.median(far.energy_std / far.n_atoms) > np.median(per_atom):
        raise AssertionError("the energy std does not grow away from the training data")
    if not np.mean(far.forces_std) > np.mean(near.forces_std):
        raise AssertionError("the force std does not grow away from the training data")


def check_md_resume(fitted, structure: ase.Atoms) -> None:
    """An MD resume with another wrapper or time step raises ResumeError before
    writing anything (the trajectory file is left byte-identical)."""
    from mlipuq.propagation.md import run_md

    settings = dict(ensemble="nvt", temperature_K=300.0, timestep_fs=0.5, log_every=1,
                    progress=False)
    atoms = _without_reference(structure)
    other = copy.deepcopy(fitted)
    with torch.no_grad():
        next(iter(other.base_model.parameters())).add_(1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "md.extxyz")
        run_md(atoms, fitted, steps=2, trajectory=path, **settings)
        before = open(path, "rb").read()
        for what, model, change in (
            ("another wrapper", other, {}),
            ("another time step", fitted, {"timestep_fs": 1.0}),
        ):
            kwargs = {**settings, **change}
            _expect_error(f"resuming MD with {what}",
                          lambda: run_md(atoms, model, steps=4, trajectory=path, **kwargs),
                          ResumeError)
            if open(path, "rb").read() != before:
                raise AssertionError(f"a refused resume with {what} changed the trajectory")
