"""Smoothness along one-dimensional paths: bond stretches and torsions.

:func:`bond_scan` moves atom ``j`` of each pair ``(i, j)`` along the ``i → j``
direction to the given distances (Å); :func:`torsion_scan` rotates the
fragment on the ``k`` side of the ``j–k`` bond about that bond to the given
dihedral angles (degrees). Both evaluate energies (eV) and forces (eV/Å), with
their stds for UQ wrappers, and look for three defects:

Discontinuities
    Two signals pick candidate points. (1) The curvature estimate :math:`c_k`
    (second divided difference of the energy, eV/Å² or eV/rad²) is compared
    with the trend of its neighbours, extrapolated from each side (a quadratic
    through three points; the closer side counts, so a mere step of the
    curvature, a C² break such as a pair crossing a cosine cutoff, does not
    count); the departure in units of the local scale (the larger of the
    trend's magnitude and the median :math:`|c|` of the path) is the point's
    ``score``, and a score above :data:`DISCONTINUITY_SCORE` (0.5) is a
    candidate. (2) The change of the path force :math:`dE/ds = -F \\cdot dx/ds`
    over each interval, less the change the neighbouring intervals' trend
    predicts, is a force jump (eV/Å or eV/rad); one above
    :data:`MIN_FORCE_JUMP` is a candidate. On a smooth curve both signals shrink as :math:`h^3` when the
    grid spacing h is refined; at a kink the score grows as :math:`1/h` and the
    force jump stays. So each candidate is re-evaluated on a grid :data:`REFINE` (4) times finer around
    it: it is a discontinuity when the signal persists there (score growing or
    force jump at least half the coarse one), persists again on a grid
    :data:`REFINE` times finer still (force jump at least half), and the force jump exceeds
    :data:`MIN_FORCE_JUMP` = 0.01 eV/Å, about the force error of good MLIPs
    (10-50 meV/Å): smaller jumps are below what a model resolves. At most
    :data:`MAX_CANDIDATES` (5) candidates per scan are re-evaluated.
Spurious minima (bond scans)
    Local minima of the energy with a prominence of at least
    :data:`MIN_PROMINENCE` = 1 meV besides the lowest one: a bond curve has
    one minimum. (1 meV is below the accuracy of any MLIP; dips smaller
    than that are ignored.)
Force/energy mismatch
    The energy along the path, :math:`E(s) - E(s_0)`, against the work of the
    forces, :math:`\\int_{s_0}^{s} -F \\cdot dx/ds'\\, ds'` (end-corrected
    trapezoidal rule), relative to :math:`(s_\\max - s_0) \\max |F \\cdot dx/ds|`.
    Integrated rather than pointwise, because a pointwise finite-difference
    slope carries an :math:`O(h^2)` truncation error that C² breaks (cutoffs)
    make :math:`O(h)`. :data:`MISMATCH_THRESHOLDS` = (1e-3, 1e-2): for forces
    that are the gradient of the energy only the quadrature error remains,
    :math:`O(h^2)` relative and well below 1e-3 on the default grids;
    non-conservative forces (λ of 0.004-0.03 for direct-force models, see
    :mod:`mlipuq.trust.conservation`) and energy jumps exceed them.

Verdict: ``fail`` for a discontinuity or a mismatch above 1e-2, ``warn`` for a
spurious minimum or a mismatch above 1e-3, ``pass`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from mlipuq.trust.report import FAIL, PASS, WARN, Result, as_target, grade, structures_list, worst

#: Points whose curvature departs from the neighbours' trend by more than this
#: many local scales are re-evaluated on a finer grid.
DISCONTINUITY_SCORE = 0.5
#: Least force jump (eV/Å, or eV/rad for torsions) a confirmed discontinuity has.
MIN_FORCE_JUMP = 0.01
#: Grid refinement used to confirm a discontinuity.
REFINE = 4
#: Most candidate points re-evaluated per scan.
MAX_CANDIDATES = 5
#: Least prominence (eV) of a local energy minimum that counts.
MIN_PROMINENCE = 1e-3
#: (pass_max, warn_max) of the relative force/energy mismatch.
MISMATCH_THRESHOLDS = (1e-3, 1e-2)

#: Multiplier of the covalent radii (ase natural_cutoffs) defining bonds.
BOND_MULT = 1.2


@dataclass
class ScanResult(Result):
    """Outcome of :func:`bond_scan` or :func:`torsion_scan`.

    ``coordinate`` (P,) is the distance (Å) or dihedral (degrees) of each point;
    ``energy`` (P,) eV, ``forces`` (P, N, 3) eV/Å; ``energy_std`` (P,) eV,
    ``forces_std`` (P, N, 3) and ``max_force_std`` (P,) eV/Å for UQ wrappers.
    ``slope`` (P,) is dE/ds from the forces, :math:`-F \\cdot dx/ds` (eV/Å, or
    eV/rad for torsions); ``score`` (P,) the discontinuity score of each point.
    ``candidates`` lists the points re-evaluated on a finer grid
    (``{"coordinate", "grid_coordinate", "score", "refined_score", "force_jump",
    "confirmed"}``; the force jump in eV/Å or eV/rad).
    ``discontinuities``, ``minima`` and ``spurious_minima`` are coordinates.
    ``mismatch`` is the largest relative force/energy mismatch, ``mismatch_energy``
    the largest absolute one (eV).
    """

    kind: str
    indices: list
    coordinate: np.ndarray
    unit: str
    coordinate_label: str
    energy: np.ndarray
    forces: np.ndarray
    slope: np.ndarray
    score: np.ndarray
    candidates: list
    discontinuities: list
    minima: list
    spurious_minima: list
    mismatch: float
    mismatch_energy: float
    energy_std: Optional[np.ndarray] = None
    forces_std: Optional[np.ndarray] = None
    max_force_std: Optional[np.ndarray] = None
    thresholds: dict = field(default_factory=dict)
    verdict: str = "pass"
    name: str = "scan"

    _skip = ("forces", "forces_std")

    def summary(self) -> str:
        parts = [(f"{len(self.discontinuities)} discontinuities ({len(self.candidates)} "
                  "candidates checked)")]
        if self.kind == "bond_scan":
            parts.append(f"{len(self.spurious_minima)} spurious minima")
        parts.append(f"force/energy mismatch {self.mismatch:.1e}")
        if self.energy_std is not None:
            parts.append(f"energy std {np.min(self.energy_std):.2g}-"
                         f"{np.max(self.energy_std):.2g} eV")
        t = self.thresholds
        return (f"{', '.join(parts)} over {len(self.coordinate)} points (threshold: a "
                f"confirmed force jump > {t['min_force_jump']:g} {self.unit_force} fails; "
                f"mismatch pass <= {t['mismatch'][0]:g}, fail > {t['mismatch'][1]:g})")

    @property
    def unit_force(self) -> str:
        return "eV/rad" if self.kind == "torsion_scan" else "eV/Å"


# ------------------------------------------------------------------- analysis
def _curvature(s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Second divided differences at the interior points (P-2,)."""
    h1, h2 = s[1:-1] - s[:-2], s[2:] - s[1:-1]
    return 2 * ((e[2:] - e[1:-1]) / h2 - (e[1:-1] - e[:-2]) / h1) / (h1 + h2)


def _extrapolate(x: np.ndarray, c: np.ndarray, k: int, side: range) -> Optional[float]:
    """Curvature at point ``k`` extrapolated from up to three points on one side
    (a quadratic through three, a line through two); None with fewer."""
    near = [m for m in side if 0 <= m < len(c)]
    if len(near) < 2:
        return None
    return float(np.polyval(np.polyfit(x[near] - x[k], c[near], len(near) - 1), 0.0))


def discontinuity_scores(s, energy) -> np.ndarray:
    """(P,) departure of each point's curvature from its neighbours' trend, in
    units of the local scale (0 at the two ends).

    The trend is extrapolated from each side separately (three points, a
    quadratic) and the closer of the two counts, so a step in the curvature
    (a C² break) scores low while a spike (a kink in the energy, a jump in the
    force) departs from both. See the module docstring.
    """
    s, e = np.asarray(s, np.float64), np.asarray(energy, np.float64)
    c = _curvature(s, e)
    x = s[1:-1]
    h_min = float(np.min(np.diff(s)))
    noise = 1e3 * np.finfo(np.float64).eps * max(float(np.max(np.abs(e))), 1.0) / h_min**2
    median = float(np.median(np.abs(c))) if len(c) else 0.0
    scores = np.zeros(len(s))
    for k in range(len(c)):
        trends = [t for t in (_extrapolate(x, c, k, range(k - 3, k)),
                              _extrapolate(x, c, k, range(k + 1, k + 4))) if t is not None]
        if not trends:
            continue
        trend = min(trends, key=lambda t: abs(c[k] - t))
        scores[k + 1] = abs(c[k] - trend) / max(abs(trend), median, noise)
    return scores


def force_jumps(s, slope) -> np.ndarray:
    """(P-1,) jump of the path force ``slope`` (dE/ds from the forces) across each
    interval: its change over the interval minus the change its neighbours'
    trend predicts (the median slope of the slope over the two intervals on
    either side; 0 for the two end intervals), added to the next interval's when
    both depart the same way (a kink on a grid point splits its jump between
    them)."""
    s, g = np.asarray(s, np.float64), np.asarray(slope, np.float64)
    h, dg = np.diff(s), np.diff(g)
    rate = dg / h
    excess = np.zeros(len(h))
    for m in range(len(h)):
        near = [j for j in (m - 2, m - 1, m + 1, m + 2) if 0 <= j < len(h)]
        if 0 < m < len(h) - 1:  # neighbours on both sides
            excess[m] = dg[m] - h[m] * float(np.median(rate[near]))
    jumps = np.abs(excess)
    for m in range(len(h) - 1):  # the pair's sum goes to the larger of the two
        pair = abs(excess[m] + excess[m + 1])
        larger = m if abs(excess[m]) >= abs(excess[m + 1]) else m + 1
        jumps[larger] = max(jumps[larger], pair)
    return jumps


def force_energy_mismatch(s, energy, slope) -> tuple[np.ndarray, float]:
    """Cumulative |E(s) − E(s_0) − ∫ dE/ds| (P,) in eV, with dE/ds = ``slope`` from
    the forces integrated by the end-corrected trapezoidal rule, and the scale
    (s_max − s_0) max |slope| (eV) that makes it relative."""
    s, e, g = (np.asarray(v, np.float64) for v in (s, energy, slope))
    h = np.diff(s)
    dg = np.gradient(g, s, edge_order=2)
    work = np.concatenate([[0.0], np.cumsum(h / 2 * (g[:-1] + g[1:])
                                            + h**2 / 12 * (dg[:-1] - dg[1:]))])
    noise = 1e3 * np.finfo(np.float64).eps * max(float(np.max(np.abs(e))), 1.0)
    scale = max((s[-1] - s[0]) * float(np.max(np.abs(g))), noise, 1e-12)
    return np.abs(e - e[0] - work), scale


def _minima(energy: np.ndarray, prominence: float) -> np.ndarray:
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(-np.asarray(energy, np.float64), prominence=prominence)
    return peaks


def _refine(path, s, k, target) -> dict:
    """Re-evaluate around point ``k`` on a grid REFINE times finer: the largest
    score there, the largest force jump near the point and where it is."""
    lo, hi = max(k - 3, 0), min(k + 3, len(s) - 1)
    fine = np.linspace(s[lo], s[hi], REFINE * (hi - lo) + 1)
    frames, tangents = path(fine)
    evaluation = target.evaluate(frames)
    forces = evaluation.forces.reshape(len(fine), -1, 3)
    scores = discontinuity_scores(fine, evaluation.energy)
    jumps = force_jumps(fine, -np.einsum("pnc,pnc->p", forces, tangents))
    reach = 2 * float(np.max(np.diff(s[lo:hi + 1])))
    inner = np.abs(fine - s[k]) <= reach
    best = int(np.flatnonzero(inner)[np.argmax(scores[inner])])
    mids = 0.5 * (fine[1:] + fine[:-1])
    near = np.flatnonzero(np.abs(mids - s[k]) <= reach)
    jump = float(jumps[near].max()) if len(near) else 0.0
    where = float(mids[near[np.argmax(jumps[near])]]) if jump > 0 else float(fine[best])
    return {"s": where, "refined_score": float(scores[best]), "force_jump": jump,
            "finest_force_jump": _finest_jump(path, fine, where, target)}


def _finest_jump(path, fine: np.ndarray, where: float, target) -> float:
    """The largest force jump within one refined interval of ``where`` on a grid
    REFINE times finer again: a kink keeps its jump at every spacing, a steep but
    smooth feature (narrower than the first refined grid) loses it."""
    h = float(np.max(np.diff(fine)))
    finest = np.linspace(where - 2 * h, where + 2 * h, 4 * REFINE + 1)
    frames, tangents = path(finest)
    evaluation = target.evaluate(frames)
    forces = evaluation.forces.reshape(len(finest), -1, 3)
    jumps = force_jumps(finest, -np.einsum("pnc,pnc->p", forces, tangents))
    return float(np.max(jumps)) if len(jumps) else 0.0


def _merge(points: list, distance: float) -> list:
    """Points closer than ``distance`` to the previous kept one are the same feature."""
    kept = []
    for p in points:
        if not kept or p - kept[-1] > distance:
            kept.append(p)
    return kept


def _analyse(kind: str, name: str, indices, coordinate: np.ndarray, s: np.ndarray, unit: str,
             label: str, path: Callable, target, *, discontinuity_score: float,
             min_force_jump: float, min_prominence: float,
             mismatch_thresholds: tuple) -> ScanResult:
    """Evaluate ``path(s) -> (frames, tangents)`` and look for the three defects."""
    frames, tangents = path(s)
    evaluation = target.evaluate(frames)
    energy = evaluation.energy
    n = int(evaluation.n_atoms[0])
    forces = evaluation.forces.reshape(len(s), n, 3)
    slope = -np.einsum("pnc,pnc->p", forces, tangents)
    scores = discontinuity_scores(s, energy)
    jumps = force_jumps(s, slope)
    point_jumps = np.maximum(np.concatenate([[0.0], jumps]), np.concatenate([jumps, [0.0]]))
    rank = np.maximum(scores / discontinuity_score, point_jumps / min_force_jump)
    candidates = []
    for k in np.argsort(-rank):
        if rank[k] <= 1 or len(candidates) == MAX_CANDIDATES:
            break
        if any(abs(int(k) - c["index"]) <= 3 for c in candidates):
            continue  # the same feature, already re-evaluated
        record = {"index": int(k), "score": float(scores[k]),
                  "grid_force_jump": float(point_jumps[k]), **_refine(path, s, int(k), target)}
        # a kink's score grows on the finer grid and its force jump stays; a smooth
        # feature's score shrinks (~h^3) and its apparent jump with it
        persists = (record["refined_score"] > max(scores[k], discontinuity_score)
                    or record["force_jump"] >= 0.5 * point_jumps[k])
        # and it must survive a second refinement: a steep smooth feature does not
        persists = persists and record["finest_force_jump"] >= 0.5 * record["force_jump"]
        record["confirmed"] = bool(persists and record["force_jump"] > min_force_jump)
        fine_s = record.pop("s")
        record["coordinate"] = (float(np.degrees(fine_s)) if kind == "torsion_scan"
                                else fine_s)
        record["grid_coordinate"] = float(coordinate[k])
        candidates.append(record)
    for c in candidates:
        c.pop("index")
    flagged = _merge(sorted(c["coordinate"] for c in candidates if c["confirmed"]),
                     4 * float(np.max(np.diff(coordinate))))
    cumulative, scale = force_energy_mismatch(s, energy, slope)
    mismatch = float(np.max(cumulative) / scale)
    minima = _minima(energy, min_prominence)
    spurious = []
    if kind == "bond_scan" and len(minima) > 1:
        lowest = minima[np.argmin(energy[minima])]
        spurious = [float(coordinate[m]) for m in minima if m != lowest]
    result = ScanResult(
        kind=kind, indices=[int(i) for i in np.ravel(indices)], coordinate=coordinate,
        unit=unit, coordinate_label=label, energy=energy, forces=forces, slope=slope,
        score=scores, candidates=candidates, discontinuities=flagged,
        minima=[float(coordinate[m]) for m in minima], spurious_minima=spurious,
        mismatch=mismatch, mismatch_energy=float(np.max(cumulative)), name=name,
        thresholds={"discontinuity_score": float(discontinuity_score),
                    "min_force_jump": float(min_force_jump), "refine": REFINE,
                    "min_prominence_eV": float(min_prominence),
                    "mismatch": tuple(mismatch_thresholds)},
    )
    if evaluation.energy_var is not None:
        result.energy_std = np.sqrt(evaluation.energy_var)
        result.forces_std = np.sqrt(evaluation.forces_var).reshape(len(s), n, 3)
        result.max_force_std = np.sqrt((result.forces_std**2).sum(axis=-1)).max(axis=-1)
    verdicts = [grade(mismatch, *mismatch_thresholds), FAIL if flagged else PASS,
                WARN if spurious else PASS]
    result.verdict = worst(verdicts)
    return result


def _grid(values, name: str, minimum: int = 5) -> np.ndarray:
    grid = np.asarray(values, np.float64).reshape(-1)
    if len(grid) < minimum or not np.all(np.isfinite(grid)):
        raise ValueError(f"{name}: need at least {minimum} finite values, got {len(grid)}")
    if not np.all(np.diff(grid) > 0):
        raise ValueError(f"{name} must be strictly increasing")
    return grid


def _index(atoms, i, what: str) -> int:
    if isinstance(i, bool) or int(i) != i or not -len(atoms) <= int(i) < len(atoms):
        raise ValueError(f"{what}: atom index {i!r} out of range for {len(atoms)} atoms")
    return int(i) % len(atoms)


# ---------------------------------------------------------------- bond scans
def bond_scan(
    model,
    atoms,
    pairs: Sequence = ((0, 1),),
    distances=None,
    *,
    discontinuity_score: float = DISCONTINUITY_SCORE,
    min_force_jump: float = MIN_FORCE_JUMP,
    min_prominence: float = MIN_PROMINENCE,
    mismatch_thresholds: tuple = MISMATCH_THRESHOLDS,
) -> ScanResult:
    """Energy, forces (and stds) as bonds are stretched; flags discontinuities,
    spurious minima and force/energy mismatch (module docstring).

    Parameters
    ----------
    model
        Base MLIP, UQ wrapper or ASE calculator (float64 copy).
    atoms
        The starting structure (not modified).
    pairs
        ``(i, j)`` or a list of them, stretched together: at each point every
        atom ``j`` sits at the given distance from its ``i`` along the original
        ``i → j`` direction (minimum image); all other atoms stay. The ``j`` must
        differ from each other and from every ``i``.
    distances
        Increasing distances (Å), at least 5; default 0.8 to 1.8 times the
        first pair's distance in 51 points.
    """
    target = as_target(model)
    (atoms,) = structures_list(atoms)
    if len(pairs) == 2 and all(np.ndim(p) == 0 for p in pairs):
        pairs = [tuple(pairs)]
    pairs = [(_index(atoms, i, "pairs"), _index(atoms, j, "pairs")) for i, j in pairs]
    if not pairs:
        raise ValueError("pairs: at least one (i, j) pair is needed")
    movers = [j for _, j in pairs]
    if len(set(movers)) != len(movers) or set(movers) & {i for i, _ in pairs} \
            or any(i == j for i, j in pairs):
        raise ValueError(f"pairs {pairs}: each j must be a different atom, and no j an i")
    units = []
    for i, j in pairs:
        vector = atoms.get_distance(i, j, mic=True, vector=True)
        length = float(np.linalg.norm(vector))
        if length == 0:
            raise ValueError(f"atoms {i} and {j} coincide")
        units.append(vector / length)
    if distances is None:
        d0 = float(atoms.get_distance(*pairs[0], mic=True))
        distances = np.linspace(0.8 * d0, 1.8 * d0, 51)
    grid = _grid(distances, "distances")
    if grid[0] <= 0:
        raise ValueError("distances must be positive")
    tangent = np.zeros((len(atoms), 3))
    for (i, j), u in zip(pairs, units):
        tangent[j] = u

    def path(values):
        frames = []
        for d in values:
            frame = atoms.copy()
            for (i, j), u in zip(pairs, units):
                frame.positions[j] = atoms.positions[i] + d * u
            frames.append(frame)
        return frames, np.broadcast_to(tangent, (len(values),) + tangent.shape)

    label = ",".join(f"{i}-{j}" for i, j in pairs)
    return _analyse("bond_scan", f"bond scan {label}", pairs, grid, grid, "Å", "distance",
                    path, target, discontinuity_score=discontinuity_score,
                    min_force_jump=min_force_jump, min_prominence=min_prominence,
                    mismatch_thresholds=mismatch_thresholds)


# -------------------------------------------------------------- torsion scans
def bond_graph(atoms, mult: float = BOND_MULT) -> list:
    """Neighbours of each atom within ``mult`` times the sum of covalent radii
    (ase ``natural_cutoffs``; minimum image for periodic cells)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, np.asarray(natural_cutoffs(atoms, mult=mult)))
    graph = [set() for _ in range(len(atoms))]
    for a, b in zip(i, j):
        if a != b:
            graph[a].add(int(b))
    return graph


def fragment(atoms, j: int, k: int, mult: float = BOND_MULT) -> list:
    """Atoms connected to ``k`` without crossing the ``j–k`` bond (``k`` included);
    ``ValueError`` if the bond is in a ring."""
    graph = bond_graph(atoms, mult)
    seen, todo = {k}, [k]
    while todo:
        a = todo.pop()
        for b in graph[a]:
            if (a, b) == (k, j) or b in seen:
                continue
            if b == j:
                raise ValueError(f"the bond {j}-{k} is in a ring: pass moving=[...] to say "
                                 "which atoms rotate")
            seen.add(b)
            todo.append(b)
    return sorted(seen)


def pick_bonds(atoms, n: int = 2) -> list:
    """Up to ``n`` bonds (i, j) to scan: the first heavy-atom bond, then the first
    bond to hydrogen, then others in index order (:func:`bond_graph`)."""
    graph = bond_graph(atoms)
    numbers = atoms.numbers
    bonds = [(a, b) for a in range(len(atoms)) for b in sorted(graph[a]) if a < b]
    heavy = [p for p in bonds if numbers[p[0]] > 1 and numbers[p[1]] > 1]
    hydrogen = [p for p in bonds if 1 in (numbers[p[0]], numbers[p[1]])]
    chosen = []
    for p in heavy[:1] + hydrogen[:1] + bonds:
        if p not in chosen:
            chosen.append(p)
    return chosen[:max(int(n), 0)]


def pick_torsion(atoms) -> Optional[tuple]:
    """A dihedral (i, j, k, l) about a bond j–k that is not in a ring, heavy atoms
    j and k preferred; None if there is none."""
    graph = bond_graph(atoms)
    numbers = atoms.numbers
    candidates = []
    for j in range(len(atoms)):
        for k in sorted(graph[j]):
            others_j, others_k = sorted(graph[j] - {k}), sorted(graph[k] - {j})
            if j >= k or not others_j or not others_k:
                continue
            try:
                fragment(atoms, j, k)
            except ValueError:
                continue
            heavy = int(numbers[j] > 1) + int(numbers[k] > 1)
            i = max(others_j, key=lambda a: (numbers[a], -a))
            l = max(others_k, key=lambda a: (numbers[a], -a))
            candidates.append((-heavy, (i, j, k, l)))
    return min(candidates)[1] if candidates else None


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about the unit ``axis`` by ``angle`` (rad)."""
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def torsion_scan(
    model,
    atoms,
    dihedral: Sequence[int],
    angles=None,
    *,
    moving: Optional[Sequence[int]] = None,
    discontinuity_score: float = DISCONTINUITY_SCORE,
    min_force_jump: float = MIN_FORCE_JUMP,
    min_prominence: float = MIN_PROMINENCE,
    mismatch_thresholds: tuple = MISMATCH_THRESHOLDS,
) -> ScanResult:
    """Energy, forces (and stds) along a torsion; flags discontinuities and
    force/energy mismatch (module docstring; no minima check: torsions have several).

    Parameters
    ----------
    dihedral
        ``(i, j, k, l)``: the dihedral angle i-j-k-l (degrees) is set to each of
        ``angles`` by rotating the atoms ``moving`` about the ``j–k`` axis.
    angles
        Increasing dihedral angles (degrees), at least 5; default -180 to 180
        in 37 points (10° steps).
    moving
        Atoms that rotate; default the fragment on the ``k`` side of the
        ``j–k`` bond (covalent bonds: :func:`bond_graph`).
    """
    target = as_target(model)
    (atoms,) = structures_list(atoms)
    if len(dihedral) != 4:
        raise ValueError(f"dihedral must be four atom indices (i, j, k, l), got {dihedral!r}")
    i, j, k, l = (_index(atoms, a, "dihedral") for a in dihedral)
    if len({i, j, k, l}) != 4:
        raise ValueError(f"dihedral {dihedral}: the four atoms must differ")
    moving = fragment(atoms, j, k) if moving is None else sorted(
        {_index(atoms, a, "moving") for a in moving})
    if l not in moving or i in moving or j in moving:
        raise ValueError(f"moving atoms {moving} must include l={l} and exclude i={i}, j={j}")
    phi0 = float(atoms.get_dihedral(i, j, k, l, mic=True))
    if angles is None:
        angles = np.linspace(-180.0, 180.0, 37)
    grid = _grid(angles, "angles")
    pivot = atoms.positions[k]
    axis = atoms.get_distance(j, k, mic=True, vector=True)
    axis = axis / np.linalg.norm(axis)
    probe = atoms.copy()  # orient the axis so that a positive turn raises the dihedral
    probe.positions[moving] = pivot + (atoms.positions[moving] - pivot) @ _rotation(axis, 1e-3).T
    change = (probe.get_dihedral(i, j, k, l, mic=True) - phi0 + 180.0) % 360.0 - 180.0
    if change < 0:
        axis = -axis

    def path(radians):
        frames, tangents = [], np.zeros((len(radians), len(atoms), 3))
        for p, angle in enumerate(radians):
            frame = atoms.copy()
            turned = (atoms.positions[moving] - pivot) @ _rotation(axis, angle - phi0_rad).T
            frame.positions[moving] = pivot + turned
            tangents[p, moving] = np.cross(axis, turned)  # dx/dθ per radian
            frames.append(frame)
        return frames, tangents

    phi0_rad = np.radians(phi0)
    return _analyse("torsion_scan", f"torsion scan {i}-{j}-{k}-{l}", [i, j, k, l], grid,
                    np.radians(grid), "degree", "dihedral", path, target,
                    discontinuity_score=discontinuity_score, min_force_jump=min_force_jump,
                    min_prominence=min_prominence, mismatch_thresholds=mismatch_thresholds)
