"""The strain term (mlipuq.calibration.strain): the first-order energy variance of a cell
strained from the calibration cells, from the mean model's measured stress error."""

import ase
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.spatial.transform import Rotation

from mlipuq.calibration import strain
from mlipuq.calibration.strain import StrainTerm, atom_fractions, green_lagrange
from mlipuq.errors import FileFormatError, InvalidStructureError
from mlipuq.training import SingleCellWarning

H0 = np.array([[3.6, 0.0, 0.0], [0.1, 3.5, 0.0], [0.2, 0.3, 3.7]])  # a skewed cell (Å)
EPS = np.array([[0.02, 0.01, 0.0], [0.01, -0.015, 0.005], [0.0, 0.005, 0.03]])
D1 = np.array([[0.01, 0.002, 0.0], [0.002, -0.004, 0.001], [0.0, 0.001, 0.006]])  # eV/Å³
D2 = np.array([[-0.002, 0.0, 0.003], [0.0, 0.008, 0.0], [0.003, 0.0, 0.001]])


def test_green_lagrange_of_a_rotated_strained_supercell():
    """cell = M h₀ (I + ε) Rᵀ: the strain from h₀ is ½((I + ε)² − I) for a rotation R of
    a few degrees (M is read by rounding, so the cell keeps the reference's orientation),
    with multiplicity |det M|."""
    m = np.array([[2, 0, 0], [0, 1, 0], [1, 0, 1]])
    rotation = Rotation.from_euler("xyz", [0.05, -0.03, 0.04]).as_matrix()
    cell = m @ H0 @ (np.eye(3) + EPS) @ rotation.T
    strains, mult = green_lagrange(cell, np.array([H0, 1.7 * H0]))
    expected = 0.5 * ((np.eye(3) + EPS) @ (np.eye(3) + EPS) - np.eye(3))
    np.testing.assert_allclose(strains[0], expected, atol=1e-12)
    assert mult[0] == 2
    # 1.7 h₀ is no lattice of the cell: the nearest integer M leaves a large strain
    assert np.linalg.norm(strains[1]) > strain.MAX_STRAIN or mult[1] == 0


def fitted(errors, cells=None, fractions=None):
    n = len(errors)
    cells = np.array([H0] * n) if cells is None else cells
    fractions = np.ones((n, 1)) if fractions is None else fractions
    return StrainTerm().fit(cells, fractions, np.array(errors))


def test_variance_is_the_mean_square_first_order_error():
    """Two calibration structures with stress errors Δσ₁, Δσ₂ at h₀: a 2 × 1 × 1 supercell
    strained by ε gets V₀² ½[(Δσ₁:E)² + (Δσ₂:E)²], V₀ = 2 V(h₀)."""
    term = fitted([D1, D2])
    cell = np.diag([2, 1, 1]) @ H0 @ (np.eye(3) + EPS)
    green = 0.5 * ((np.eye(3) + EPS) @ (np.eye(3) + EPS) - np.eye(3))
    v0 = 2 * abs(np.linalg.det(H0))
    expected = v0**2 * 0.5 * (np.sum(D1 * green) ** 2 + np.sum(D2 * green) ** 2)
    out = term.variance([cell], [[True] * 3], [[1.0]])
    np.testing.assert_allclose(out, [expected], rtol=1e-12)
    np.testing.assert_allclose(term.pressure_error_, [-np.trace(D1 + D2) / 6], rtol=1e-12)


def test_no_term_where_the_cell_is_no_strain_of_a_calibration_cell():
    """0 at the calibration cell, for a slab (not periodic along z), for a composition
    the calibration data lack and for a cell far from every calibration cell."""
    term = StrainTerm().fit([H0, H0], [[1.0, 0.0], [1.0, 0.0]], [D1, D2])
    strained = H0 @ (np.eye(3) + EPS)
    out = term.variance([H0, strained, strained, strained, 1.5 * H0],
                        [[True] * 3, [True, True, False], [True] * 3, [True] * 3, [True] * 3],
                        [[1, 0], [1, 0], [0.5, 0.5], [1, 0], [1, 0]])
    assert out[0] == 0 and out[1] == 0 and out[2] == 0 and out[4] == 0
    assert out[3] > 0


def test_compositions_match_within_the_tolerance():
    """A vacancy in a 24 + 8 cell (23 + 8) is the same composition; 16 + 16 is not,
    and gets its own calibration composition when the data hold it."""
    fractions = atom_fractions(np.array([[24, 8], [23, 8], [16, 16]]))
    term = StrainTerm().fit([H0, H0, 1.1 * H0], fractions, [D1, D1, D2])
    np.testing.assert_array_equal(term.n_structures_, [2, 1])
    assert term.composition_of(fractions[1]) == 0
    assert term.composition_of(atom_fractions(np.array([[20, 12]]))[0]) == -1
    # each composition's strain is measured from its own cells (here 1.1 h₀)
    out = term.variance([1.1 * H0 @ (np.eye(3) + EPS)], [[True] * 3], fractions[2:])
    green = 0.5 * ((np.eye(3) + EPS) @ (np.eye(3) + EPS) - np.eye(3))
    expected = (abs(np.linalg.det(1.1 * H0)) * np.sum(D2 * green)) ** 2
    np.testing.assert_allclose(out, [expected], rtol=1e-10)


def test_state_round_trip_and_damaged_state():
    term = fitted([D1, D2])
    again = StrainTerm.from_state(term.state())
    cell = H0 @ (np.eye(3) + EPS)
    np.testing.assert_array_equal(again.variance([cell], [[True] * 3], [[1.0]]),
                                  term.variance([cell], [[True] * 3], [[1.0]]))
    bad = term.state()
    bad["second_moment_"] = bad["second_moment_"][:, :3]
    with pytest.raises(FileFormatError, match="f.pt: damaged strain term"):
        StrainTerm.from_state(bad, "f.pt")
    with pytest.raises(FileFormatError, match="damaged strain term"):
        StrainTerm.from_state({"fractions_": np.ones((1, 1))}, "f.pt")
    nan = term.state()
    nan["cells_"] = nan["cells_"] * np.nan
    with pytest.raises(FileFormatError, match="cells_ is not finite numbers"):
        StrainTerm.from_state(nan, "f.pt")


class _Stub:
    """A wrapper stand-in whose mean model's stress is 0 everywhere."""

    def mean_stress(self, structures):
        from mlipuq.data import as_dataset

        return np.zeros((len(as_dataset(structures)), 3, 3))


def _labelled(atoms, stress):
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)),
                                       stress=stress)
    return atoms


def test_measure_reads_the_labelled_periodic_structures():
    """Only fully periodic structures with a stress label count (a molecule and an
    unlabelled cell are left out); Voigt labels are read in ASE's order; a NaN label
    raises InvalidStructureError naming its structure."""
    from mlipuq.data import AtomsDataset

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    voigt = np.array([1, 2, 3, 4, 5, 6]) * 1e-3  # xx yy zz yz xz xy
    molecule = ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.2]])
    unlabelled = cu.copy()
    data = AtomsDataset([_labelled(cu, voigt), molecule, unlabelled])
    term = strain.measure(_Stub(), data, [29])
    full = np.array([[1, 6, 5], [6, 2, 4], [5, 4, 3]]) * 1e-3
    np.testing.assert_allclose(term.mean_error_[0], -full)
    assert term.n_structures_.tolist() == [1]
    assert strain.measure(_Stub(), AtomsDataset([molecule, unlabelled]), [29]) is None
    bad = AtomsDataset([_labelled(cu, voigt), _labelled(cu, voigt * np.nan)])
    with pytest.raises(InvalidStructureError, match="structure 1"):
        strain.measure(_Stub(), bad, [29])


def test_mlipuq_fit_measures_the_strain_term_on_stress_labelled_val(tmp_path, capsys):
    """``mlipuq fit`` on a --val file with stress labels: the summary gives the pressure
    error the saved wrapper measured, and a strained cell's calibrated energy variance
    holds its strain term; ``--no-strain-term`` fits none."""
    import mlipuq
    from mlipuq import cli, datasets
    from mlipuq.uq import load as load_wrapper

    from conftest import tiny_model

    data = datasets.emt("Cu", n_structures=16, temperatures=(300,), kinds="bulk", seed=3)
    val = []
    for atoms in data[10:]:
        copy, reference = atoms.copy(), atoms.copy()
        reference.calc = EMT()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(),
                                          stress=reference.get_stress())
        val.append(copy)
    mlipuq.AtomsDataset(val).write(tmp_path / "val.extxyz")
    data[:10].write(tmp_path / "train.extxyz")
    model = tiny_model(data.species, seed=0)
    with pytest.warns(SingleCellWarning):  # what the strain term is for
        mlipuq.train(model, data[:10], epochs=3, lr=1e-2, batch_size=5, seed=0, progress=False)
    model.save(tmp_path / "model.pt")
    argv = ["fit", "llpr", "--model", str(tmp_path / "model.pt"), "--train",
            str(tmp_path / "train.extxyz"), "--val", str(tmp_path / "val.extxyz")]
    assert cli.main(argv + ["--out", str(tmp_path / "w.pt")]) == 0
    out = capsys.readouterr().out
    wrapper = load_wrapper(tmp_path / "w.pt")
    gpa = wrapper.strain_term_.pressure_error_[0] * 160.21766
    assert f"pressure error {gpa:+.3g} GPa on 6 stress-labelled --val cells" in out
    strained = data[0].copy()
    strained.set_cell(strained.cell.array * 1.02, scale_atoms=True)
    pred = wrapper.predict(strained)
    assert pred.strain_energy_var[0] > 0
    assert cli.main(argv + ["--out", str(tmp_path / "w0.pt"), "--no-strain-term"]) == 0
    assert "strain term" not in capsys.readouterr().out
    plain = load_wrapper(tmp_path / "w0.pt")
    assert plain.strain_term_ is None
    np.testing.assert_allclose(pred.energy_var - plain.predict(strained).energy_var,
                               pred.strain_energy_var, rtol=1e-9)


def test_strain_std_reaches_the_calculator_and_prediction_files(model_factory, tmp_path):
    """The strain term's share of the energy std is the ASE calculator's
    ``strain_energy_std`` result, a key of MD frames and the ``mlipuq_strain_energy_std``
    column of prediction files, read back as ``strain_energy_var``."""
    from mlipuq import schema
    from mlipuq.calculator import Calculator
    from mlipuq.data import AtomsDataset
    from mlipuq.prediction import read_prediction
    from mlipuq.uq import LastLayerLaplace

    rng = np.random.default_rng(0)
    cells = []
    for _ in range(6):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        cells.append(atoms)
    llpr = LastLayerLaplace(model_factory()).fit(_with_reference(cells[:4]))
    raw = llpr.predict(cells, calibrated=False, stress=True)
    labelled = [_labelled_like(a, raw, k) for k, a in enumerate(cells)]
    llpr.calibrate(labelled)
    strained = cells[0].copy()
    strained.set_cell(strained.cell.array * 1.03, scale_atoms=True)
    pred = llpr.predict(strained)
    assert pred.strain_energy_var[0] > 0
    strained.calc = Calculator(llpr)
    strained.get_potential_energy()
    assert strained.calc.results[schema.RESULT_STRAIN_ENERGY_STD] == pytest.approx(
        float(np.sqrt(pred.strain_energy_var[0])), rel=1e-12)
    from mlipuq.propagation.md import frame_from_results

    frame = frame_from_results(strained, strained.calc.results, 3, 1.0, {}, False)
    assert frame.info[schema.STRAIN_ENERGY_STD] == pytest.approx(
        float(np.sqrt(pred.strain_energy_var[0])), rel=1e-12)  # MD frames keep it too
    path = tmp_path / "pred.extxyz"
    structures = AtomsDataset([cells[1], strained.copy()])
    prediction = llpr.predict(structures)
    structures.write(path, prediction=prediction)
    back, _ = read_prediction(path)
    np.testing.assert_allclose(back.strain_energy_var, prediction.strain_energy_var,
                               rtol=1e-10, atol=0)


def _with_reference(structures):
    out = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * len(atoms),
                                           forces=np.zeros((len(atoms), 3)))
        out.append(atoms)
    return out


def _labelled_like(atoms, raw, k):
    """``atoms`` labelled with the model's own results, its stress offset by D1."""
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=float(raw.energy[k]) + 0.01 * k,
                                       forces=raw.forces[raw.batch == k] + 0.01
                                       * np.random.default_rng(k).normal(size=(len(atoms), 3)),
                                       stress=raw.stress[k] - D1)
    return atoms
