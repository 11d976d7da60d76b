"""The energy variance a strained cell owes to the mean model's stress error.

Base models are mostly trained on energies and forces at one cell per composition
(molecular dynamics at fixed volume, rattled cells). Their equation of state away from
that cell was never fitted, and at that cell their stress is off by a nearly constant
Δσ: 1–19 GPa on the EMT alloys of the shift benchmark (docs/shift.md, "Strained
cells' energies"). A cell strained by ε from it then carries, to first order, an
energy error no wrapper sees (a uniformly strained lattice looks in distribution to
features, committees and last layers alike):

    E_model(ε) − E_true(ε) ≈ [E_model(0) − E_true(0)] + V₀ Δσ : ε

(ASE's stress sign, σ = V⁻¹ ∂E/∂ε). When the calibration data carry stress labels
(DFT codes write one for periodic cells), ``calibrate(val)`` measures
Δσ_i = σ_model − σ_label on every labelled structure periodic in all three directions
(:func:`measure`), and :class:`StrainTerm` adds to every calibrated energy variance

    strain_energy_var = V₀² ⟨(Δσ_i : E)²⟩_i          (eV²)

where E is the Green–Lagrange strain of the cell from the nearest calibration cell of
the same composition, matched up to a supercell (the cell is taken as M·h₀·D, M an
integer matrix, D the deformation; V₀ = |det M| V(h₀); M is read by rounding, so a cell
must keep the orientation of its calibration cell to within a few degrees, as
``cell @ (I + ε)`` and ``repeat`` keep it), and ⟨·⟩ the mean over that
composition's labelled calibration structures (the mean error squared plus its
spread). The term is 0

* at every calibration cell (thermal snapshots, vacancies, substitutions in it),
* for structures not periodic in all three directions (slabs: vacuum is no strain),
* for compositions the labelled calibration data lack (atom fractions further than
  :data:`COMPOSITION_TOLERANCE` from every calibration composition),
* for cells that are no strain of a calibration cell (‖E‖ > :data:`MAX_STRAIN`).

Not modelled: the second-order error (that of the bulk modulus, ½ V₀ ΔC ε², which
one cell cannot measure) and the stress error's own dependence on the strain.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mlipuq.checks import stress_label
from mlipuq.errors import FileFormatError

#: Largest Green–Lagrange strain (Frobenius norm) read as a strain of a calibration
#: cell; a cell further from every calibration cell of its composition gets no term.
MAX_STRAIN = 0.25

#: Largest difference in any atom fraction between a structure and the calibration
#: composition it is compared with (a vacancy or a substitution in a 32-atom cell
#: moves a fraction by 1/32).
COMPOSITION_TOLERANCE = 0.05

#: Strain components below this are round-off (the cell is a calibration cell).
_ROUND_OFF = 1e-10

#: Calibration cells equal to this many decimals of an Å are one reference cell.
_CELL_DECIMALS = 6


def atom_fractions(counts: np.ndarray) -> np.ndarray:
    """(B, S) atom fractions from (B, S) counts per species."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def green_lagrange(cell: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Green–Lagrange strains (R, 3, 3) of ``cell`` (3, 3; rows are the cell vectors, Å)
    from each of ``references`` (R, 3, 3), matched up to a supercell, and the
    multiplicities |det M| (R,) (0 where no integer M matches: then the strain is inf).

    ``cell`` = M · h₀ · D with M = round(cell · h₀⁻¹): D = (M h₀)⁻¹ cell deforms row
    vectors, and E = ½ (D Dᵀ − I), invariant under rotations of the cell."""
    references = np.asarray(references, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    m = np.rint(cell[None] @ np.linalg.inv(references))
    det = np.rint(np.abs(np.linalg.det(m)))
    strains = np.full(references.shape, np.inf)
    ok = det > 0
    if np.any(ok):
        d = np.linalg.inv(m[ok] @ references[ok]) @ cell[None]
        e = 0.5 * (d @ np.swapaxes(d, 1, 2) - np.eye(3))
        strains[ok] = np.where(np.abs(e) < _ROUND_OFF, 0.0, e)  # a calibration cell: 0
    return strains, det.astype(np.int64)


class StrainTerm:
    """The first-order energy variance of strained cells (see the module notes).

    ``fit`` takes the calibration structures' cells, atom fractions and stress errors;
    ``variance`` gives each structure's ``strain_energy_var`` (eV²). Fitted state:
    ``fractions_`` (G, S), one row per calibration composition; ``second_moment_``
    (G, 9, 9), ⟨vec Δσ vec Δσᵀ⟩ (eV²/Å⁶); ``mean_error_`` (G, 3, 3), ⟨Δσ⟩ (eV/Å³);
    ``n_structures_`` (G,); ``cells_`` (R, 3, 3), the distinct calibration cells (Å),
    and ``cell_group_`` (R,), the composition of each.
    """

    def fit(self, cells, fractions, stress_error) -> "StrainTerm":
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
        fractions = np.asarray(fractions, dtype=np.float64)
        error = np.asarray(stress_error, dtype=np.float64).reshape(-1, 3, 3)
        if not (len(cells) == len(fractions) == len(error) > 0):
            raise ValueError("StrainTerm.fit needs one cell, composition and stress error "
                             f"per structure (got {len(cells)}, {len(fractions)}, {len(error)})")
        group = self._group(fractions)
        groups = range(int(group.max()) + 1)
        self.fractions_ = np.array([fractions[group == g].mean(axis=0) for g in groups])
        vec = error.reshape(-1, 9)
        self.second_moment_ = np.array([vec[group == g].T @ vec[group == g] / np.sum(group == g)
                                        for g in groups])
        self.mean_error_ = np.array([error[group == g].mean(axis=0) for g in groups])
        self.n_structures_ = np.bincount(group).astype(np.int64)
        keys = np.concatenate([np.round(cells, _CELL_DECIMALS).reshape(-1, 9),
                               group[:, None]], axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        first = np.sort(first)
        self.cells_, self.cell_group_ = cells[first], group[first].astype(np.int64)
        return self

    @staticmethod
    def _group(fractions: np.ndarray) -> np.ndarray:
        """Composition index of each structure: the first earlier composition within
        COMPOSITION_TOLERANCE of its fractions, else a new one."""
        firsts: list[np.ndarray] = []
        group = np.empty(len(fractions), dtype=np.int64)
        for i, f in enumerate(fractions):
            close = [g for g, ref in enumerate(firsts)
                     if np.max(np.abs(f - ref)) <= COMPOSITION_TOLERANCE]
            if not close:
                firsts.append(f)
                close = [len(firsts) - 1]
            group[i] = close[0]
        return group

    @property
    def pressure_error_(self) -> np.ndarray:
        """(G,) mean pressure error P_model − P_label of each composition (eV/Å³)."""
        return -np.trace(self.mean_error_, axis1=1, axis2=2) / 3.0

    def composition_of(self, fractions: np.ndarray) -> int:
        """Index of the calibration composition nearest ``fractions`` (S,), −1 if none
        lies within COMPOSITION_TOLERANCE."""
        distance = np.max(np.abs(self.fractions_ - fractions[None]), axis=1)
        g = int(np.argmin(distance))
        return g if distance[g] <= COMPOSITION_TOLERANCE else -1

    def strain_of(self, cell: np.ndarray, group: int) -> tuple[np.ndarray, float]:
        """The smallest strain (3, 3) of ``cell`` from a calibration cell of composition
        ``group``, and that cell's volume times |det M| (Å³); (None, 0) beyond MAX_STRAIN."""
        references = self.cells_[self.cell_group_ == group]
        strains, mult = green_lagrange(cell, references)
        norms = np.linalg.norm(strains.reshape(len(references), -1), axis=1)
        k = int(np.argmin(norms))
        if not norms[k] <= MAX_STRAIN:
            return None, 0.0
        return strains[k], float(mult[k] * abs(np.linalg.det(references[k])))

    def variance(self, cells, pbc, fractions) -> np.ndarray:
        """``strain_energy_var`` (B,), eV², of structures with ``cells`` (B, 3, 3, Å),
        ``pbc`` (B, 3) and atom ``fractions`` (B, S) over the fitted species."""
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
        pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
        fractions = np.asarray(fractions, dtype=np.float64)
        out = np.zeros(len(cells))
        for b in np.flatnonzero(pbc.all(axis=1)):
            g = self.composition_of(fractions[b])
            if g < 0:
                continue
            strain, volume = self.strain_of(cells[b], g)
            if strain is None:
                continue
            e = strain.reshape(9)
            out[b] = volume**2 * max(float(e @ self.second_moment_[g] @ e), 0.0)
        return out

    # ------------------------------------------------------------ persistence
    _STATE = ("fractions_", "second_moment_", "mean_error_", "n_structures_", "cells_",
              "cell_group_")

    def state(self) -> dict:
        """Plain arrays (saved with the wrapper)."""
        return {name: np.asarray(getattr(self, name)) for name in self._STATE}

    @classmethod
    def from_state(cls, state, path: str = "<memory>") -> "StrainTerm":
        """The term saved by :meth:`state`; a missing or misshapen array raises
        :class:`~mlipuq.errors.FileFormatError` naming ``path``."""
        term = cls()
        try:
            for name in cls._STATE:
                value = np.asarray(state[name])
                if not (np.issubdtype(value.dtype, np.number) and np.all(np.isfinite(value))):
                    raise ValueError(f"{name} is not finite numbers")
                setattr(term, name, value)
            term.cell_group_ = term.cell_group_.astype(np.int64)
            g, s = term.fractions_.shape
            r = len(term.cells_)
            shapes = {"second_moment_": (g, 9, 9), "mean_error_": (g, 3, 3),
                      "n_structures_": (g,), "cells_": (r, 3, 3), "cell_group_": (r,)}
            bad = [n for n, shape in shapes.items() if getattr(term, n).shape != shape]
            if bad or np.any((term.cell_group_ < 0) | (term.cell_group_ >= g)):
                raise ValueError(f"inconsistent arrays {bad or ['cell_group_']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: damaged strain term ({exc})") from None
        return term


def measure(wrapper, dataset, species: Sequence[int]) -> Optional[StrainTerm]:
    """The :class:`StrainTerm` of ``wrapper``'s mean model on the labelled structures of
    ``dataset`` (fully periodic with a stress label); None when there are none. The
    stress is ``wrapper.mean_stress``, that of ``wrapper.predict(..., stress=True)``
    without its variance (:mod:`mlipuq.uq.mean_stress`)."""
    from mlipuq.data import composition_matrix

    labels = {i: stress_label(atoms, i) for i, atoms in enumerate(dataset)}
    index = [i for i, label in labels.items() if label is not None]
    if not index:
        return None
    subset = dataset.subset(index)
    error = wrapper.mean_stress(subset) - np.array([labels[i] for i in index])
    cells = np.array([atoms.cell.array for atoms in subset])
    fractions = atom_fractions(composition_matrix(subset, species))
    return StrainTerm().fit(cells, fractions, error)
