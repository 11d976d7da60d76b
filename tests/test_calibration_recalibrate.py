"""Recalibrators: closed forms, optimality, the fit/transform contract, and
held-out NLL improvement on real ethanol DFT data."""

import os
import pickle

import numpy as np
import pytest
from scipy.special import ndtri

import mlipuq.data as mdata
from mlipuq.calibration import metrics as m
from mlipuq.calibration.recalibrate import (
    RECALIBRATORS,
    IsotonicRecalibrator,
    PowerLawRecalibrator,
    PredictionRecalibrator,
    ScalarRecalibrator,
    get_recalibrator,
)
from mlipuq.errors import NotFittedError
from mlipuq.prediction import Prediction

DATA = os.path.join(os.path.dirname(__file__), "data", "ethanol_300.xyz.gz")
METHODS = sorted(RECALIBRATORS)


def synthetic(n=20000, seed=0, true_std=lambda s: 2.0 * s):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=n)
    std = np.exp(rng.normal(-1.5, 0.8, size=n))
    true = pred + true_std(std) * rng.standard_normal(n)
    return pred, std, true


# ------------------------------------------------------------------ scalar
def test_scalar_closed_form_and_optimality():
    pred, std, true = synthetic()
    rec = ScalarRecalibrator().fit(pred, std, true)
    assert rec.scale_ == pytest.approx(np.sqrt(np.mean(((true - pred) / std) ** 2)))
    assert rec.scale_ == pytest.approx(2.0, rel=0.03)
    best = m.nll_gaussian(pred, rec.transform(std), true)
    for k in (0.98, 1.02):
        assert best < m.nll_gaussian(pred, k * rec.transform(std), true)


# --------------------------------------------------------------- power law
def test_power_law_recovers_known_law():
    pred, std, true = synthetic(n=40000, seed=1, true_std=lambda s: 0.3 * s**1.6)
    rec = PowerLawRecalibrator().fit(pred, std, true)
    assert rec.b_ == pytest.approx(1.6, abs=0.03)
    assert rec.a_ == pytest.approx(0.3, rel=0.1)
    np.testing.assert_allclose(rec.transform(std), rec.a_ * std**rec.b_, rtol=1e-10)


def test_power_law_is_nll_optimal():
    pred, std, true = synthetic(n=5000, seed=2, true_std=lambda s: 0.5 * s**0.7)
    rec = PowerLawRecalibrator().fit(pred, std, true)
    best = m.nll_gaussian(pred, rec.transform(std), true)
    for da, db in [(1.01, 0), (0.99, 0), (1, 0.01), (1, -0.01)]:
        other = rec.a_ * da * std ** (rec.b_ + db)
        assert best < m.nll_gaussian(pred, other, true)


def test_power_law_is_unit_independent():
    pred, std, true = synthetic(n=3000, seed=3, true_std=lambda s: 0.5 * s**0.7)
    a = PowerLawRecalibrator().fit(pred, std, true)
    b = PowerLawRecalibrator().fit(1000 * pred, 1000 * std, 1000 * true)  # eV -> meV
    assert b.b_ == pytest.approx(a.b_, abs=1e-6)
    np.testing.assert_allclose(b.transform(1000 * std), 1000 * a.transform(std), rtol=1e-5)


def test_power_law_with_constant_std_is_a_scale():
    rec = PowerLawRecalibrator().fit([0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -1.0, 1.0])
    assert rec.b_ == 1.0
    assert rec.transform(0.5) == pytest.approx(np.sqrt(np.mean([0.25, 1.0, 1.0])))


def test_power_law_respects_bounds():
    pred, std, true = synthetic(n=3000, seed=4, true_std=lambda s: 0.3 * s**1.6)
    rec = PowerLawRecalibrator(b_bounds=(0.0, 1.0)).fit(pred, std, true)
    assert rec.b_ == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        PowerLawRecalibrator(b_bounds=(2.0, 1.0)).fit(pred, std, true)


# ---------------------------------------------------------------- isotonic
def test_isotonic_is_identity_on_calibrated_data():
    pred, std, true = synthetic(n=50000, seed=5, true_std=lambda s: s)
    rec = IsotonicRecalibrator().fit(pred, std, true)
    assert rec.scale_ == pytest.approx(1.0, abs=0.02)
    p = np.linspace(0.001, 0.999, 999)
    np.testing.assert_allclose(rec.calibrated_level(p), p, atol=0.01)
    np.testing.assert_allclose(rec.inverse_level(rec.calibrated_level(p)), p, atol=1e-9)
    assert rec.tail_scales_ == pytest.approx((1.0, 1.0), abs=0.1)


def test_isotonic_scale_and_intervals_on_over_confident_data():
    pred, std, true = synthetic(n=50000, seed=6, true_std=lambda s: 2.0 * s)
    rec = IsotonicRecalibrator().fit(pred, std, true)
    assert rec.scale_ == pytest.approx(2.0, rel=0.03)
    # held-out data: the recalibrated central intervals have their nominal coverage
    p2, s2, t2 = synthetic(n=50000, seed=7, true_std=lambda s: 2.0 * s)
    for level in (0.5, 0.9, 0.95):
        lo, hi = rec.interval(level, p2, s2)
        assert np.mean((t2 >= lo) & (t2 <= hi)) == pytest.approx(level, abs=0.01)
    # the recalibrated CDF is a CDF: monotone in y, in [0, 1], and inverts the quantile
    y = np.linspace(-5, 5, 101)
    cdf = rec.cdf(y, np.zeros_like(y), np.ones_like(y))
    assert np.all(np.diff(cdf) >= 0) and cdf.min() >= 0 and cdf.max() <= 1
    q = rec.quantile(0.8, 0.0, 1.0)
    assert rec.cdf(q, 0.0, 1.0) == pytest.approx(0.8, abs=1e-6)


def test_isotonic_std_matches_recalibrated_intervals_by_least_squares():
    pred, std, true = synthetic(n=20000, seed=8, true_std=lambda s: 1.5 * s)
    rec = IsotonicRecalibrator(match_levels=[0.5, 0.9]).fit(pred, std, true)
    u = ndtri(0.5 + np.array([0.5, 0.9]) / 2)
    w = np.array([np.diff(rec.interval(p, 0.0, 1.0))[0] / 2 for p in (0.5, 0.9)])
    assert rec.scale_ == pytest.approx(np.dot(w, u) / np.dot(u, u))


# --------------------------------------------------------------- contract
@pytest.mark.parametrize("method", METHODS)
def test_contract(method, tmp_path):
    pred, std, true = synthetic(n=2000, seed=9)
    rec = get_recalibrator(method)
    assert type(rec) is RECALIBRATORS[method] and not rec.is_fitted
    with pytest.raises(NotFittedError):
        rec.transform(std)
    assert rec.fit(pred, std, true) is rec and rec.is_fitted
    assert rec.transform(std.reshape(40, 50)).shape == (40, 50)
    assert rec.transform(std).dtype == np.float64
    out = rec.transform(std)
    np.testing.assert_array_equal(rec.fit_transform(pred, std, true), out)
    assert np.all(out > 0) and np.all(np.diff(out[np.argsort(std)]) >= 0)  # monotone in σ
    # picklable, and the copy transforms identically
    path = tmp_path / "rec.pkl"
    path.write_bytes(pickle.dumps(rec))
    clone = pickle.loads(path.read_bytes())
    np.testing.assert_array_equal(clone.transform(std), out)
    with pytest.raises(ValueError):
        rec.transform(-std)
    with pytest.raises(ValueError):
        rec.transform(np.array([np.nan]))
    # forces shape (N, 3) fits like flat components
    flat = get_recalibrator(method).fit(pred, std, true).transform(std)
    shaped = get_recalibrator(method)
    shaped.fit(pred.reshape(-1, 4), std.reshape(-1, 4), true.reshape(-1, 4))
    np.testing.assert_allclose(shaped.transform(std), flat)
    assert method in repr(rec).lower() or type(rec).__name__ in repr(rec)


def test_get_recalibrator_errors_and_options():
    with pytest.raises(ValueError, match="unknown recalibration method"):
        get_recalibrator("platt")
    assert get_recalibrator("power", b_bounds=(0.5, 2.0)).b_bounds == (0.5, 2.0)
    assert get_recalibrator("scalar") is not get_recalibrator("scalar")
    with pytest.raises(ValueError):
        ScalarRecalibrator().fit([0.0], [0.0], [1.0])  # zero std
    with pytest.raises(ValueError):
        ScalarRecalibrator().fit([0.0, 1.0], [1.0, 1.0], [0.0, 1.0])  # zero errors


def test_a_misspelt_option_is_refused_not_dropped():
    """A typo in a calibration option raises a ValueError naming it, also with per-target
    methods (which pass each recalibrator only the options it takes): before, the
    default calibration dropped ``dof_bound=`` silently and fitted ν as if unset."""
    default = {"energy": "scalar", "forces": "student_t"}
    with pytest.raises(ValueError, match="'dof_bound'.*dof_bounds"):
        PredictionRecalibrator(default, per_species=True, dof_bound=(1.0, 3.0))
    with pytest.raises(ValueError, match="'covrage'"):
        get_recalibrator("conformal", covrage=0.5)
    with pytest.raises(ValueError, match="'per_species'"):
        PredictionRecalibrator("scalar", per_species=True)  # scalar has one factor
    kept = PredictionRecalibrator(default, per_species=True, dof_bounds=(1.0, 3.0))
    assert kept._options_for("energy") == {}  # scalar energies take neither option
    assert kept._options_for("forces") == {"per_species": True, "dof_bounds": (1.0, 3.0)}


# ------------------------------------------------------- ethanol (real DFT)
def _pair_features(dataset, centers=np.linspace(0.8, 4.0, 9), width=0.4):
    """Energy and force design matrices of a pair potential with Gaussian radial basis.

    E = sum_pairs sum_k θ[type, k] g_k(r_ij) + E0 and F = -dE/dr, so one linear
    parameter vector θ predicts both (per-species-pair, per-basis-function).
    """
    species = dataset.species
    pairs = [(a, b) for k, a in enumerate(species) for b in species[k:]]
    lookup = np.full((119, 119), -1)
    for t, (a, b) in enumerate(pairs):
        lookup[a, b] = lookup[b, a] = t
    n_types, n_k = len(pairs), centers.size
    xe_rows, xf_blocks = [], []
    for atoms in dataset:
        n = len(atoms)
        i, j = np.triu_indices(n, 1)
        rv = atoms.positions[j] - atoms.positions[i]
        r = np.linalg.norm(rv, axis=1)
        t = lookup[atoms.numbers[i], atoms.numbers[j]]
        u = (r[:, None] - centers) / width
        g = np.exp(-u * u)
        dg = -2.0 * u / width * g
        xe = np.zeros((n_types, n_k))
        np.add.at(xe, t, g)
        xf = np.zeros((n, 3, n_types, n_k))
        contrib = dg[:, None, :] * (rv / r[:, None])[:, :, None]
        np.add.at(xf, (j, slice(None), t), -contrib)
        np.add.at(xf, (i, slice(None), t), contrib)
        xe_rows.append(np.append(xe.ravel(), 1.0))
        xf_blocks.append(np.hstack([xf.reshape(3 * n, -1), np.zeros((3 * n, 1))]))
    return np.array(xe_rows), xf_blocks


@pytest.fixture(scope="module")
def ethanol_committee():
    """A bootstrap committee of pair potentials fitted to 120 ethanol structures.

    Its committee spread is an honest uncertainty (it comes from the data) but,
    like most bootstrap ensembles of a too-simple model, badly over-confident:
    it sees parameter noise, not the model's bias. Returns predictions and
    references for a validation (90) and a test (90) split.
    """
    dataset = mdata.load(DATA)
    xe, xf = _pair_features(dataset)
    energies, forces = dataset.energies, dataset.forces
    starts = np.concatenate([[0], np.cumsum(dataset.n_atoms)])
    order = np.random.default_rng(0).permutation(len(dataset))
    train, val, test = order[:120], order[120:210], order[210:]

    def fit(idx, lam=1e-6):
        a = np.vstack([xe[idx]] + [xf[s] for s in idx])
        b = np.concatenate([energies[idx]] + [forces[starts[s]:starts[s + 1]].ravel() for s in idx])
        scale = np.sqrt((a * a).mean(0)) + 1e-12
        a = a / scale
        return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b) / scale

    rng = np.random.default_rng(1)
    thetas = [fit(rng.choice(train, train.size, replace=True)) for _ in range(6)]

    def predict(idx):
        em = np.array([[xe[s] @ th for s in idx] for th in thetas])
        fm = np.array([np.concatenate([(xf[s] @ th).reshape(-1, 3) for s in idx]) for th in thetas])
        return Prediction(
            energy=em.mean(0), energy_var=em.var(0, ddof=1),
            forces=fm.mean(0), forces_var=fm.var(0, ddof=1),
            n_atoms=dataset.n_atoms[idx],
            batch=np.repeat(np.arange(idx.size), dataset.n_atoms[idx]),
            energy_members=em, forces_members=fm,
        )

    return predict(val), dataset[val], predict(test), dataset[test]


def test_ethanol_committee_is_realistic(ethanol_committee):
    _, _, pred, ref = ethanol_committee
    f = m.all_metrics(pred.forces, pred.forces_std, ref.forces)
    assert 0.1 < f["rmse"] < 1.0  # eV/Å: a usable but crude model
    assert f["z_rms"] > 3  # over-confident
    assert f["spearman"] > 0.1  # yet σ carries information


@pytest.mark.parametrize("method", METHODS)
def test_recalibration_improves_held_out_nll_on_ethanol(method, ethanol_committee):
    val_pred, val_ref, test_pred, test_ref = ethanol_committee
    rec = PredictionRecalibrator(method).fit(val_pred, val_ref)
    assert rec.energy_ is not rec.forces_  # fitted separately
    out = rec.transform(test_pred)
    e_ref, f_ref = test_ref.energies, test_ref.forces
    before_e = m.nll_gaussian(test_pred.energy, test_pred.energy_std, e_ref)
    after_e = m.nll_gaussian(out.energy, out.energy_std, e_ref)
    before_f = m.nll_gaussian(test_pred.forces, test_pred.forces_std, f_ref)
    after_f = m.nll_gaussian(out.forces, out.forces_std, f_ref)
    assert after_e < before_e - 1.0
    assert after_f < before_f - 1.0
    assert m.miscalibration_area(out.forces, out.forces_std, f_ref) < m.miscalibration_area(
        test_pred.forces, test_pred.forces_std, f_ref
    )
    # means untouched; committee members follow the new spread
    np.testing.assert_array_equal(out.energy, test_pred.energy)
    np.testing.assert_array_equal(out.forces, test_pred.forces)
    np.testing.assert_allclose(out.energy_members.var(0, ddof=1), out.energy_var, rtol=1e-8)
    np.testing.assert_allclose(out.forces_members.var(0, ddof=1), out.forces_var, rtol=1e-8)


def test_prediction_recalibrator_errors(ethanol_committee):
    val_pred, val_ref, test_pred, _ = ethanol_committee
    with pytest.raises(NotFittedError):
        PredictionRecalibrator("scalar").transform(test_pred)
    with pytest.raises(ValueError):
        PredictionRecalibrator("nope")
    with pytest.raises(ValueError):
        PredictionRecalibrator("scalar").fit(val_pred, val_ref[:10])
    rec = pickle.loads(pickle.dumps(PredictionRecalibrator("isotonic").fit(val_pred, val_ref)))
    assert rec.transform(test_pred).forces_var.shape == test_pred.forces_var.shape


def test_a_file_holding_a_dropped_option_still_loads(ethanol_committee):
    """Before misspelt options were refused, per-target methods dropped them, and a
    wrapper so calibrated saved them with its recalibrator: such a file loads, its
    predictions those of the same recalibrator without the option."""
    from mlipuq.uq.state_codec import _decode_recalibrator, _encode_recalibrator

    val_pred, val_ref, test_pred, _ = ethanol_committee
    method = {"energy": "scalar", "forces": "student_t"}
    rec = PredictionRecalibrator(method, dof_bounds=(1.0, 3.0)).fit(val_pred, val_ref)
    payload = _encode_recalibrator(rec)
    payload["options"]["dof_bound"] = (1.0, 3.0)  # as an older version saved the typo
    loaded = _decode_recalibrator(payload)
    assert "dof_bound" not in loaded.options
    np.testing.assert_array_equal(loaded.transform(test_pred).forces_std,
                                  rec.transform(test_pred).forces_std)


@pytest.mark.parametrize("method", METHODS)
def test_fitted_state_is_plain_data(method):
    """Wrappers save a recalibrator as its attribute dict (arrays, numbers; tuples come
    back as lists) and rebuild it with ``__new__``: that must reproduce it exactly."""
    pred, std, true = synthetic(n=3000, seed=10)
    rec = get_recalibrator(method).fit(pred, std, true)
    state = dict(vars(rec))
    for value in state.values():
        assert isinstance(value, (np.ndarray, float, int, tuple, list)), type(value)
    clone = type(rec).__new__(type(rec))
    clone.__dict__.update({k: list(v) if isinstance(v, tuple) else v for k, v in state.items()})
    np.testing.assert_array_equal(clone.transform(std), rec.transform(std))
    if method == "isotonic":
        np.testing.assert_array_equal(clone.quantile(0.9, pred, std), rec.quantile(0.9, pred, std))


def test_prediction_recalibrator_scales_variance_parts():
    rng = np.random.default_rng(11)
    n_atoms = np.array([3, 4, 5] * 20)
    n = int(n_atoms.sum())
    e_std = rng.uniform(0.05, 0.2, size=n_atoms.size)
    f_std = rng.uniform(0.05, 0.2, size=(n, 3))
    ref_e, ref_f = rng.normal(size=n_atoms.size), rng.normal(size=(n, 3))
    kwargs = dict(
        energy=ref_e + 3 * e_std * rng.standard_normal(n_atoms.size), energy_var=e_std**2,
        forces=ref_f + 3 * f_std * rng.standard_normal((n, 3)), forces_var=f_std**2,
        n_atoms=n_atoms, batch=np.repeat(np.arange(n_atoms.size), n_atoms),
        energy_aleatoric_var=0.25 * e_std**2, energy_epistemic_var=0.75 * e_std**2,
    )
    if "atom_energy_var" in Prediction.__dataclass_fields__:
        kwargs["atom_energy_var"] = np.repeat(e_std**2, n_atoms) / n_atoms.repeat(n_atoms)
    pred = Prediction(**kwargs)
    import ase
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = []
    for k, na in enumerate(n_atoms):
        atoms = ase.Atoms("H" * int(na), positions=rng.uniform(0, 3, (na, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=ref_e[k], forces=ref_f[pred.batch == k])
        structures.append(atoms)
    rec = PredictionRecalibrator("power").fit(pred, structures)
    out = rec.transform(pred)
    factor2 = out.energy_var / pred.energy_var
    np.testing.assert_allclose(out.energy_aleatoric_var + out.energy_epistemic_var, out.energy_var)
    np.testing.assert_allclose(out.energy_aleatoric_var, pred.energy_aleatoric_var * factor2)
    if "atom_energy_var" in kwargs:
        np.testing.assert_allclose(out.atom_energy_var, pred.atom_energy_var * factor2[pred.batch])
