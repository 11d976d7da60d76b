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
from mlipuq.errors import NotFittedError


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
        # models carrying pickled code (wrap(), a user's MACE model) need it
        code = any(getattr(m, "pickles_module", False) for m in fitted._models())
        loaded = load(path, weights_only=not code)
    a, b = fitted.predict(structures), loaded.predict(structures)
    for name in ("energy", "energy_var", "forces", "forces_var", "energy_members", "forces_members"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            raise AssertionError(f"save/load lost {name}")
        if x is not None:
            # Bitwise equality is not promised by BLAS kernels, whose summation
            # order may depend on memory alignment: allow a few ulps.
            _close(x, y, 1e-12, f"{name} after save/load")


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
) -> None:
    """Run every common check on ``wrapper`` with structures from ``data``.

    ``wrapper`` may be unfitted (then it is fitted on ``data`` with
    ``fit_kwargs``, and the not-fitted and reproducibility checks run) or
    already fitted (e.g. a DeepEnsemble built from trained models).
    ``data`` needs reference energies and forces and at least 4 structures.
    """
    dataset = mdata.as_dataset(data)
    if len(dataset) < 4:
        raise ValueError("check_uq_wrapper needs at least 4 structures")
    fit_kwargs = dict(fit_kwargs or {})
    check_not_fitted(wrapper, dataset)
    check_reproducible(wrapper, dataset, fit_kwargs)
    fitted = wrapper if wrapper.fitted_ else _fit(wrapper, dataset, fit_kwargs)
    sample = list(dataset[:3])
    check_invariance(fitted, sample[0])
    check_batch_consistency(fitted, sample)
    check_save_load(fitted, sample)
    check_bad_inputs(fitted, sample[0])
    check_single_atoms(fitted, sample[0])
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
