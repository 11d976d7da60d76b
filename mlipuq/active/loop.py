"""Active-learning campaigns: select, label, refit, calibrate, evaluate, repeat.

:class:`Loop` runs rounds of fit (your ``make_uq``) → calibrate on the
validation data → evaluate on a test set → select → label with an oracle, and
records a :class:`LearningCurve` (labels vs test force RMSE, energy RMSE and
the calibrated force miscalibration and NLL). :func:`plot_learning_curves`
draws several curves on one axis.

Oracles are any ASE calculator, or a callable ``Atoms -> Atoms`` with
reference energy and forces attached; :class:`LabelledPoolOracle` looks the
labels up in an already labelled dataset (benchmarks on DFT data).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Optional

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from mlipuq import data as mdata
from mlipuq.active import strategies
from mlipuq.active.select import select
from mlipuq.progress import bar as progress_bar

log = logging.getLogger(__name__)


def _fingerprint(atoms: ase.Atoms) -> bytes:
    pos = np.round(np.asarray(atoms.positions, dtype=np.float64), 6) + 0.0
    cell = np.round(np.asarray(atoms.cell.array, dtype=np.float64), 6) + 0.0
    return atoms.numbers.astype(np.int64).tobytes() + pos.tobytes() + cell.tobytes()


class LabelledPoolOracle:
    """An oracle that returns labels already known (e.g. DFT data used as a pool).

    Structures are matched by atomic numbers, positions and cell (rounded
    to 1e-6 Å); an unknown structure raises ``ValueError``.
    """

    def __init__(self, labelled):
        dataset = mdata.as_dataset(labelled)
        if not dataset.has_reference.all() or not dataset.has_forces.all():
            raise ValueError("LabelledPoolOracle needs reference energies and forces everywhere")
        self._table = {_fingerprint(a): a for a in dataset}

    def __call__(self, atoms: ase.Atoms) -> ase.Atoms:
        ref = self._table.get(_fingerprint(atoms))
        if ref is None:
            raise ValueError("LabelledPoolOracle: structure not found among the labelled data")
        out = atoms.copy()
        out.calc = SinglePointCalculator(
            out, energy=ref.get_potential_energy(), forces=ref.get_forces()
        )
        return out


def label(structures, oracle) -> mdata.AtomsDataset:
    """Label structures: copies with reference energy (eV) and forces (eV/Å).

    ``oracle`` is an ASE calculator (run on a copy of each structure) or a
    callable ``Atoms -> Atoms`` returning a labelled structure.
    """
    from ase.calculators.calculator import BaseCalculator

    out = []
    for k, atoms in enumerate(structures):
        if isinstance(oracle, BaseCalculator):
            a = atoms.copy()
            a.calc = oracle
            energy, forces = a.get_potential_energy(), a.get_forces()
            a.calc = SinglePointCalculator(a, energy=energy, forces=forces)
        elif callable(oracle):
            a = oracle(atoms)
            if not isinstance(a, ase.Atoms) or a.calc is None:
                raise ValueError(f"oracle returned no labelled Atoms for structure {k}")
            energy, forces = a.get_potential_energy(), a.get_forces()
        else:
            raise TypeError(f"oracle must be an ASE calculator or a callable, got {type(oracle)}")
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise ValueError(f"oracle returned non-finite labels for structure {k}")
        out.append(a)
    return mdata.AtomsDataset(out)


@dataclasses.dataclass
class LearningCurve:
    """Test metrics after each round of a :class:`Loop` (one entry per round).

    Attributes
    ----------
    strategy
        Selection strategy.
    n_labels
        Labelled structures the model was fitted on.
    forces_rmse
        Test force RMSE per component (eV/Å).
    energy_rmse
        Test energy RMSE per atom (eV/atom).
    forces_miscal_area
        Miscalibration area of the force components (0 = calibrated, 0.5 = worst),
        after the round's recalibration (if the loop calibrates); of the Student-t
        predictive where the calibration fitted one (the default for forces).
    forces_nll
        Mean NLL of the force components (same predictions and predictive; nats).
    forces_miscal_area_uncalibrated
        The miscalibration area of the wrapper's raw (unrecalibrated) force std.
    seconds
        Wall time of each round (fit + evaluation + selection), s.
    selected
        Pool indices picked after each round (the last round picks none).
    """

    strategy: str
    n_labels: list = dataclasses.field(default_factory=list)
    forces_rmse: list = dataclasses.field(default_factory=list)
    energy_rmse: list = dataclasses.field(default_factory=list)
    forces_miscal_area: list = dataclasses.field(default_factory=list)
    forces_nll: list = dataclasses.field(default_factory=list)
    forces_miscal_area_uncalibrated: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)
    selected: list = dataclasses.field(default_factory=list)

    METRICS = ("forces_rmse", "energy_rmse", "forces_miscal_area", "forces_nll",
               "forces_miscal_area_uncalibrated")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def labels_to_reach(self, target: float, metric: str = "forces_rmse") -> float:
        """Labels needed to reach ``metric <= target``, linearly interpolated.

        Uses the first crossing; ``inf`` if the curve never reaches the target.
        """
        y = np.asarray(getattr(self, metric), dtype=np.float64)
        x = np.asarray(self.n_labels, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("the learning curve is empty")
        if y[0] <= target:
            return float(x[0])
        for i in range(1, len(y)):
            if y[i] <= target:
                frac = (y[i - 1] - target) / (y[i - 1] - y[i])
                return float(x[i - 1] + frac * (x[i] - x[i - 1]))
        return float("inf")

    @classmethod
    def average(cls, curves: Sequence[LearningCurve]) -> LearningCurve:
        """Mean over repetitions (e.g. seeds) with identical ``n_labels``."""
        curves = list(curves)
        if not curves:
            raise ValueError("no learning curves to average")
        n = curves[0].n_labels
        if any(c.n_labels != n for c in curves):
            raise ValueError("learning curves to average must share n_labels")
        mean = {m: list(np.mean([getattr(c, m) for c in curves], axis=0)) for m in cls.METRICS}
        seconds = list(np.mean([c.seconds for c in curves], axis=0))
        return cls(curves[0].strategy, list(n), seconds=seconds, **mean)


class Loop:
    """An active-learning campaign.

    Parameters
    ----------
    make_uq
        ``make_uq(train: AtomsDataset) -> fitted UQ wrapper``. You decide
        whether to retrain the base model each round or only refit the
        wrapper (e.g. ``LastLayerLaplace(model).fit(train)``).
    oracle
        An ASE calculator or a callable ``Atoms -> labelled Atoms``
        (:class:`LabelledPoolOracle` for known labels).
    pool
        Candidate structures (labels not needed and not used).
    initial
        The initial labelled AtomsDataset.
    k
        Structures labelled per round.
    rounds
        Number of selection rounds; the model is fitted ``rounds + 1`` times
        (``n_labels = len(initial) + r k``, r = 0..rounds).
    test
        Labelled test set; without it the curve records only ``n_labels``.
    val
        Labelled validation set: every round's wrapper is recalibrated on it
        (``wrapper.calibrate(val, method=calibration)``) before it is
        evaluated and selects. Without it (and without
        ``calibrate_on_selected``) the wrapper is used uncalibrated.
    calibration
        Recalibration method passed to ``calibrate`` (``"scalar"``,
        ``"power"``, ``"isotonic"``, ``"conformal"``, ``"student_t"``; None:
        the wrapper's ``default_calibration``).
    calibrate_on_selected
        Also calibrate on the structures the round just selected and
        labelled (they are not yet in the wrapper's training data; the
        last round has none): recalibrates towards the regions the loop
        explores. Off by default.
    strategy
        One of :data:`mlipuq.active.STRATEGIES`.
    seed
        Seed for the selection (varied per round).
    select_options
        Extra keyword arguments of :func:`mlipuq.active.select` (e.g. ``lo``,
        ``hi``, ``label_noise``).
    batch_size, progress
        Structures per forward pass, and a tqdm bar counting the rounds.
    """

    def __init__(
        self,
        make_uq: Callable,
        oracle,
        pool,
        initial,
        *,
        k: int,
        rounds: int,
        test=None,
        val=None,
        calibration: Optional[str] = None,
        calibrate_on_selected: bool = False,
        strategy: str = "batch_llpr",
        seed: int = 0,
        select_options: dict | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ):
        if not callable(make_uq):
            raise TypeError("make_uq must be a callable train_dataset -> fitted UQ wrapper")
        strategies.get(strategy)
        for name, value, low in (("k", k, 1), ("rounds", rounds, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.pool = mdata.as_dataset(pool)
        self.initial = _labelled_or_none(initial)
        if int(k) * int(rounds) > len(self.pool):
            raise ValueError(
                f"k * rounds = {int(k) * int(rounds)} exceeds the pool size {len(self.pool)}"
            )
        self.test = _labelled_or_none(test)
        self.val = _labelled_or_none(val)
        from mlipuq.calibration.recalibrate import get_recalibrator

        if calibration is not None:  # an unknown method fails here, not after the first fit
            get_recalibrator(calibration)
        self.calibration, self.calibrate_on_selected = calibration, bool(calibrate_on_selected)
        self.make_uq, self.oracle = make_uq, oracle
        self.k, self.rounds, self.strategy, self.seed = int(k), int(rounds), strategy, int(seed)
        self.select_options = dict(select_options or {})
        self.batch_size, self.progress = int(batch_size), bool(progress)

    def _calibrate(self, uq, new) -> None:
        parts = [d for d in (self.val, new if self.calibrate_on_selected else None)
                 if d is not None and len(d)]
        if parts:
            uq.calibrate(parts[0] if len(parts) == 1 else parts[0] + parts[1],
                         method=self.calibration)

    def _evaluate(self, uq, curve: LearningCurve) -> None:
        from mlipuq.calibration import metrics

        raw = uq.predict(self.test, batch_size=self.batch_size, calibrated=False)
        recal = getattr(uq, "recalibrator_", None)
        pred = raw if recal is None else recal.transform(raw)
        ref_f, ref_e = self.test.forces, self.test.energies
        curve.forces_rmse.append(float(np.sqrt(np.mean((pred.forces - ref_f) ** 2))))
        de = (pred.energy - ref_e) / pred.n_atoms
        curve.energy_rmse.append(float(np.sqrt(np.mean(de**2))))
        std, dof = np.maximum(pred.forces_std, 1e-12), pred.forces_dof  # ν: a Student-t
        curve.forces_miscal_area.append(float(metrics.miscalibration_area(pred.forces, std, ref_f,
                                                                          dof=dof)))
        curve.forces_nll.append(float(metrics.nll(pred.forces, std, ref_f, dof=dof)))
        raw_std = np.maximum(raw.forces_std, 1e-12)
        curve.forces_miscal_area_uncalibrated.append(
            float(metrics.miscalibration_area(raw.forces, raw_std, ref_f)))

    def _select(self, uq, labelled, remaining, r) -> np.ndarray:
        options = dict(self.select_options)
        if self.strategy == "fps" and len(labelled):
            options.setdefault("labelled", labelled)
        sel = select(uq, self.pool[remaining], self.k, strategy=self.strategy,
                     seed=self.seed + 1000 * r, batch_size=self.batch_size, **options)
        return remaining[sel.indices]

    def run(self) -> LearningCurve:
        """Run every round; returns the :class:`LearningCurve`.

        Per round: fit, calibrate on ``val``, select and label (all rounds
        but the last), recalibrate including the new labels if
        ``calibrate_on_selected``, evaluate on ``test``. After the run,
        ``self.labelled_`` holds the final training set and ``self.uq_`` the
        last fitted wrapper.
        """
        curve = LearningCurve(self.strategy)
        labelled, remaining = self.initial, np.arange(len(self.pool))
        with progress_bar(self.rounds + 1, f"active learning ({self.strategy})", "round",
                          enabled=self.progress) as shown:
            for r in range(self.rounds + 1):
                labelled, remaining, uq = self._round(r, labelled, remaining, curve)
                shown.update(1)
        self.labelled_, self.uq_ = labelled, uq
        return curve

    def _round(self, r: int, labelled, remaining, curve: LearningCurve):
        """Round ``r`` of :meth:`run`: ``(labelled, remaining, fitted wrapper)`` after it."""
        t0 = time.perf_counter()
        uq = self.make_uq(labelled)
        curve.n_labels.append(len(labelled))
        self._calibrate(uq, None)
        new = None
        if r < self.rounds:
            chosen = self._select(uq, labelled, remaining, r)
            curve.selected.append([int(i) for i in chosen])
            new = label(self.pool[chosen], self.oracle)
            remaining = np.setdiff1d(remaining, chosen)
            if self.calibrate_on_selected:
                self._calibrate(uq, new)
        if self.test is not None:
            self._evaluate(uq, curve)
            log.info("%s: %d labels, test force RMSE %.4f eV/Å", self.strategy,
                     curve.n_labels[-1], curve.forces_rmse[-1])
        if new is not None:
            labelled = labelled + new
        curve.seconds.append(time.perf_counter() - t0)
        return labelled, remaining, uq


def _labelled_or_none(dataset):
    """``dataset`` as an AtomsDataset with energies and forces checked; None stays None."""
    if dataset is None:
        return None
    dataset = mdata.as_dataset(dataset)
    if len(dataset):
        dataset.validate(require_energy=True, require_forces=True)
    return dataset


_AXIS_LABELS = {
    "forces_rmse": "test force RMSE (eV/Å)",
    "energy_rmse": "test energy RMSE (eV/atom)",
    "forces_miscal_area": "force miscalibration area (calibrated)",
    "forces_nll": "force NLL (calibrated)",
    "forces_miscal_area_uncalibrated": "force miscalibration area (uncalibrated)",
}


def plot_learning_curves(curves: dict, ax=None, *, metric: str = "forces_rmse",
                         log_scale: bool = True):
    """Plot ``metric`` against the number of labels for each named curve.

    ``curves`` maps a label (e.g. the strategy) to a :class:`LearningCurve`;
    ``metric`` is one of :attr:`LearningCurve.METRICS`. Returns the matplotlib ``Axes``.
    """
    if metric not in LearningCurve.METRICS:
        raise ValueError(f"metric must be one of {LearningCurve.METRICS}, got {metric!r}")
    if not curves:
        raise ValueError("no learning curves to plot")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.0))
    for name, curve in curves.items():
        ax.plot(curve.n_labels, getattr(curve, metric), marker="o", label=str(name))
    ax.set_xlabel("labelled structures")
    ax.set_ylabel(_AXIS_LABELS[metric])
    if log_scale and metric in ("forces_rmse", "energy_rmse"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
