"""Trust checks (mlipuq.trust): each check on a model built to pass it and one built to fail it.

Test models (all honest MLIP-contract models, float64):

* ``make_model()`` (conftest): an equivariant, conservative MiniMLIP;
* :class:`TiltedMini`: a MiniMLIP whose last-layer features also depend on the
  absolute Cartesian positions (not rotation invariant);
* :class:`CurlMLIP`: a model's energy with the forces ``-dE/dr + c ẑ × r`` (a
  curl term: not the gradient of any energy);
* :class:`MorseMLIP`: the analytic Morse pair potential, optionally with a kink
  ``k |r - r_k|`` or a Gaussian dip (a spurious minimum).
"""

from __future__ import annotations

import argparse
import json

import ase
import numpy as np
import pytest
import torch
from torch import nn

from pathlib import Path

import mlipuq
from conftest import ETHANOL_SMALL, SPECIES, make_model
from mlipuq import trust
from mlipuq.models import MiniMLIP
from mlipuq.models.base import MLIP
from mlipuq.trust import smoothness
from mlipuq.uq import LastLayerLaplace


# ------------------------------------------------------------------ test models
class MorseMLIP(MLIP):
    """Pair energy D (1 - exp(-a (r - r0)))² - D (+ kink |r - r_kink| - dip gaussian),
    each atom taking half of its pairs; the readout is the identity on that sum."""

    def __init__(self, D=1.0, a=2.0, r0=1.0, kink=0.0, r_kink=1.5, dip=0.0, r_dip=2.0):
        super().__init__(["H"], cutoff=8.0)
        self.D, self.a, self.r0 = D, a, r0
        self.kink, self.r_kink, self.dip, self.r_dip = kink, r_kink, dip, r_dip
        self.readout = nn.Linear(1, 1)
        with torch.no_grad():
            self.readout.weight.fill_(1.0)
            self.readout.bias.zero_()
        self.double()

    def pair(self, r):
        x = torch.exp(-self.a * (r - self.r0))
        return (self.D * (1 - x) ** 2 - self.D + self.kink * torch.abs(r - self.r_kink)
                - self.dip * torch.exp(-(((r - self.r_dip) / 0.1) ** 2)))

    def per_atom_energy(self, batch):
        r = torch.linalg.norm(batch.edge_vectors(), dim=-1)
        phi = torch.zeros(batch.numbers.shape[0], dtype=r.dtype)
        phi = phi.index_add(0, batch.edge_index[0], 0.5 * self.pair(r))
        return self.readout(phi.unsqueeze(-1)).squeeze(-1)


def morse(r, D=1.0, a=2.0, r0=1.0):
    return D * (1 - np.exp(-a * (r - r0))) ** 2 - D


class CurlMLIP(MLIP):
    """``base``'s energy; forces -dE/dr + c ẑ × r, whose curl is 2c ẑ ≠ 0."""

    readout_name = "base.readout"

    def __init__(self, base, strength=0.1):
        super().__init__(base.species, base.cutoff)
        self.base, self.strength = base, strength

    def per_atom_energy(self, batch):
        return self.base.per_atom_energy(batch)

    def offsets(self, batch):
        return self.base.offsets(batch)

    def forward(self, batch, *, forces=True, stress=False, features=False, create_graph=False):
        out = super().forward(batch, forces=forces, stress=stress, features=True,
                              create_graph=create_graph)
        if forces:
            r = out["positions"]
            z = torch.zeros_like(r)
            z[:, 2] = 1.0
            out["forces"] = out["forces"] + self.strength * torch.cross(z, r, dim=-1)
        if not features:
            del out["features"], out["positions"]
        return out


class TiltedMini(MiniMLIP):
    """MiniMLIP whose hidden (last-layer) features get + 0.3 sin(r_i · U): the
    per-atom energy depends on absolute Cartesian coordinates."""

    def __init__(self):
        super().__init__(SPECIES, cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                         avg_num_neighbors=6.0, seed=0)
        generator = torch.Generator().manual_seed(5)
        self.register_buffer("tilt", torch.randn(3, self.hidden.out_features,
                                                 generator=generator))
        with torch.no_grad():
            self.readout.weight.copy_(torch.randn(self.readout.weight.shape,
                                                  generator=generator))
        self.double().eval()

    def per_atom_energy(self, batch):
        def hook(module, inputs, output):
            return output + 0.3 * torch.sin(batch.positions @ self.tilt.to(output.dtype))

        handle = self.hidden.register_forward_hook(hook)
        try:
            return super().per_atom_energy(batch)
        finally:
            handle.remove()


@pytest.fixture(scope="module")
def ethanol():
    return mlipuq.load(ETHANOL_SMALL)


@pytest.fixture(scope="module")
def llpr(ethanol):
    return LastLayerLaplace(make_model(), prior_precision=1.0, energy_noise=0.01,
                            forces_noise=0.1, n_samples=4).fit(ethanol[:6])


@pytest.fixture
def dimer():
    return ase.Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.3, 0.2, 1.0]])


# ------------------------------------------------------------------ symmetry
@pytest.mark.parametrize("design,n", [("random", 7), ("group", 12), ("group", 24),
                                      ("group", 60)])
def test_rotation_designs_are_rotations(design, n):
    rotations = trust.rotation_design(n, design=design)
    assert rotations.shape == (n, 3, 3)
    assert np.allclose(np.einsum("nij,nkj->nik", rotations, rotations), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rotations), 1.0)
    if design == "group":  # closed under products
        flat = rotations.reshape(n, 9)
        product = (rotations[3] @ rotations[5]).reshape(9)
        assert np.min(np.abs(flat - product).max(axis=1)) < 1e-10
    np.testing.assert_array_equal(rotations, trust.rotation_design(n, design=design))
    with pytest.raises(ValueError, match="n_rotations"):
        trust.rotation_design(10, design="group")


def test_equivariant_model_passes(ethanol, cu_cell):
    model = make_model()
    result = trust.equivariance_error(model, [ethanol[0], ethanol[1], cu_cell], 6)
    assert result.verdict == "pass"
    assert result.energy_max <= 1e-10 and result.forces_max <= 1e-10
    assert result.energy_spread.max() <= 1e-10 and result.forces_spread.max() <= 1e-10
    assert result.energy_std_max is None
    assert result.line().startswith("PASS equivariance: energy ")


def test_non_equivariant_model_fails_and_has_spread(ethanol):
    result = trust.equivariance_error(TiltedMini(), ethanol[:2], 6)
    assert result.verdict == "fail"
    assert result.energy_max > 1e-3 and result.forces_max > 1e-2
    assert result.energy_spread.min() > 1e-3
    parts = trust.RotationalAverage(TiltedMini(), 12).predict_components(ethanol[:2])
    assert parts.energy_rotational_var.min() > 1e-4
    assert parts.forces_rotational_var.max() > 1e-3
    np.testing.assert_allclose(parts.prediction.energy_var, parts.energy_rotational_var)


def test_wrapper_uncertainty_is_checked(llpr, ethanol):
    result = trust.equivariance_error(llpr, ethanol[:2], 4)
    assert result.verdict == "pass"
    assert result.energy_std_max <= 1e-10 and result.forces_std_max <= 1e-10


def test_rotational_average_of_an_equivariant_wrapper_is_the_wrapper(llpr, ethanol):
    average = trust.RotationalAverage(llpr, 12)
    parts = average.predict_components(ethanol[:3], distributed=False)
    plain = llpr.predict(ethanol[:3], distributed=False)
    pred = parts.prediction
    assert parts.energy_rotational_var.max() < 1e-20
    assert parts.forces_rotational_var.max() < 1e-20
    np.testing.assert_allclose(pred.energy, plain.energy, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.forces, plain.forces, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.energy_var, plain.energy_var, rtol=1e-8)
    # per-atom totals of the force variance are rotation invariant
    np.testing.assert_allclose(pred.forces_var.sum(axis=1), plain.forces_var.sum(axis=1),
                               rtol=1e-8)
    np.testing.assert_allclose(pred.energy_members, plain.energy_members, atol=1e-9)
    if plain.forces_members is not None:
        assert pred.forces_members.shape == plain.forces_members.shape
    np.testing.assert_array_equal(pred.numbers, plain.numbers)


def test_rotational_average_in_the_calculator(llpr, ethanol):
    atoms = ethanol[0].copy()
    atoms.calc = mlipuq.Calculator(trust.RotationalAverage(llpr, 12))
    plain = llpr.predict(ethanol[0])
    assert atoms.get_potential_energy() == pytest.approx(plain.energy[0], abs=1e-9)
    assert atoms.calc.results["energy_std"] == pytest.approx(plain.energy_std[0], rel=1e-8)

    tilted = trust.RotationalAverage(TiltedMini(), 12)
    atoms.calc = mlipuq.Calculator(tilted)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert atoms.calc.results["energy_std"] > 1e-2
    # the averaged forces are minus the gradient of the averaged energy
    h = 1e-5
    for a, c in ((0, 2), (4, 0)):
        shifted = [atoms.copy() for _ in range(2)]
        shifted[0].positions[a, c] += h
        shifted[1].positions[a, c] -= h
        e_plus, e_minus = (tilted.predict(s).energy[0] for s in shifted)
        assert -(e_plus - e_minus) / (2 * h) == pytest.approx(forces[a, c], abs=1e-6)
    assert np.isfinite(energy)
    assert len(tilted.fingerprint()) == 64


# --------------------------------------------------------------- conservation
def test_conservative_model_has_a_symmetric_jacobian(ethanol):
    model = make_model()
    result = trust.jacobian_asymmetry(model, ethanol[:2])
    assert result.method == "autograd" and result.verdict == "pass"
    assert result.asymmetry_max <= 1e-10
    auto = trust.force_jacobian(model, ethanol[0], method="autograd")
    fd = trust.force_jacobian(model, ethanol[0], method="fd")
    np.testing.assert_allclose(auto, fd, atol=1e-6 * np.abs(auto).max())


def test_curl_forces_are_not_conservative(ethanol):
    curl = CurlMLIP(make_model())
    for method in ("autograd", "fd"):
        result = trust.jacobian_asymmetry(curl, ethanol[0], method=method)
        assert result.asymmetry_max > 0.1 and result.verdict == "fail"


def test_nve_drift(ethanol):
    good = trust.nve_drift(make_model(), ethanol[0], steps=100, timestep_fs=0.5)
    bad = trust.nve_drift(CurlMLIP(make_model()), ethanol[0], steps=100, timestep_fs=0.5)
    assert good.verdict == "pass" and abs(good.drift) < 1e-3
    assert bad.verdict == "fail" and abs(bad.drift) > 100 * abs(good.drift)
    assert len(good.total_energy) == 101 and good.time_fs[-1] == pytest.approx(50.0)


def test_ase_calculators_are_checked_by_finite_differences(cu_cell):
    from ase.calculators.emt import EMT

    assert trust.equivariance_error(EMT(), cu_cell, 4).verdict == "pass"
    result = trust.jacobian_asymmetry(EMT(), cu_cell)
    assert result.method == "fd" and result.asymmetry_max < 1e-6


# ----------------------------------------------------------------- smoothness
def test_bond_scan_reproduces_the_morse_curve(dimer):
    distances = np.linspace(0.7, 2.5, 121)
    result = trust.bond_scan(MorseMLIP(), dimer, (0, 1), distances)
    assert np.abs(result.energy - morse(distances)).max() <= 1e-8
    assert result.verdict == "pass"
    assert result.discontinuities == [] and result.spurious_minima == []
    assert result.minima == [pytest.approx(1.0, abs=0.02)]
    assert result.mismatch < 1e-6
    # dE/dr from the forces is the analytic derivative
    x = np.exp(-2.0 * (distances - 1.0))
    np.testing.assert_allclose(result.slope, 4.0 * (1 - x) * x, atol=1e-10)


def test_bond_scan_flags_a_kink(dimer):
    result = trust.bond_scan(MorseMLIP(kink=0.05, r_kink=1.5), dimer, (0, 1),
                             np.linspace(0.7, 2.5, 121))
    assert result.verdict == "fail"
    assert result.discontinuities == [pytest.approx(1.5, abs=0.02)]
    assert all(c["refined_score"] > c["score"] for c in result.candidates if c["confirmed"])


@pytest.mark.parametrize("r_kink", [0.82, 1.0, 1.3, 1.55, 1.77])
def test_bond_scan_finds_small_kinks_on_the_default_grid(r_kink):
    dimer = ase.Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    result = trust.bond_scan(MorseMLIP(kink=0.02, r_kink=r_kink), dimer, (0, 1))
    assert len(result.coordinate) == 51  # 0.8 to 1.8 Å
    assert result.discontinuities == [pytest.approx(r_kink, abs=0.01)]
    (found,) = [c for c in result.candidates if c["confirmed"]]
    assert found["force_jump"] == pytest.approx(0.04, rel=0.15)


def test_bond_scan_flags_a_spurious_minimum(dimer):
    result = trust.bond_scan(MorseMLIP(dip=0.2, r_dip=2.0), dimer, (0, 1),
                             np.linspace(0.7, 2.5, 121))
    assert result.verdict == "warn" and result.discontinuities == []
    assert result.spurious_minima == [pytest.approx(2.0, abs=0.03)]


def test_bond_scan_flags_non_conservative_forces(ethanol):
    result = trust.bond_scan(CurlMLIP(make_model()), ethanol[0], (0, 1))
    assert result.verdict == "fail" and result.mismatch > 1e-2


def test_scans_of_a_wrapper(llpr, ethanol):
    atoms = ethanol[0]
    dihedral = smoothness.pick_torsion(atoms)
    assert dihedral is not None
    torsion = trust.torsion_scan(llpr, atoms, dihedral)
    assert torsion.verdict == "pass" and torsion.mismatch < 1e-3
    assert torsion.coordinate[0] == -180 and torsion.coordinate[-1] == 180
    assert torsion.energy[0] == pytest.approx(torsion.energy[-1], abs=1e-8)  # full turn
    assert torsion.energy_std.shape == (37,) and torsion.energy_std.min() > 0
    assert torsion.max_force_std.shape == (37,)
    bond = trust.bond_scan(llpr, atoms, smoothness.pick_bonds(atoms, 1)[0])
    assert bond.verdict == "pass" and bond.energy_std.shape == (51,)


def test_scan_input_errors(ethanol, dimer):
    with pytest.raises(ValueError, match="out of range"):
        trust.bond_scan(MorseMLIP(), dimer, (0, 5))
    with pytest.raises(ValueError, match="different atom"):
        trust.bond_scan(make_model(), ethanol[0], [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="increasing"):
        trust.bond_scan(MorseMLIP(), dimer, (0, 1), [1.0, 0.9, 1.1, 1.2, 1.3])
    with pytest.raises(ValueError, match="four"):
        trust.torsion_scan(make_model(), ethanol[0], (0, 1, 2))


# ------------------------------------------------------------------- stability
def test_structural_events(ethanol):
    start = ethanol[0].copy()
    stretched, lost = start.copy(), start.copy()
    i, j = smoothness.pick_bonds(start, 1)[0]
    stretched.set_distance(i, j, 2.0 * start.get_distance(i, j), fix=0)
    h = int(np.flatnonzero(start.numbers == 1)[0])
    lost.positions[h] += [20.0, 0.0, 0.0]
    assert trust.structural_events([start, start.copy()]) == []
    events = trust.structural_events([start, stretched, lost], [0.0, 5.0, 10.0])
    kinds = {(e["type"], tuple(e["atoms"])): e["time_fs"] for e in events}
    assert kinds[("bond broken", (min(i, j), max(i, j)))] == 5.0
    assert kinds[("atom lost", (h,))] == 10.0


def test_stability_runs(ethanol, llpr):
    base = trust.stability(make_model(), ethanol[0], temperatures=(300,), steps=10,
                           log_every=5)
    (run,) = base.runs
    assert run.n_frames == 3 and run.fraction_above is None and base.threshold is None
    assert base.verdict in ("pass", "fail")  # an untrained model may break bonds
    strict = trust.stability(llpr, ethanol[0], temperatures=(300,), steps=4, log_every=2,
                             threshold=1e-6)
    (run,) = strict.runs
    assert run.fraction_above == 1.0 and run.first_failure_fs == 0.0
    assert strict.verdict in ("warn", "fail") and "force std above" in run.failure


# ------------------------------------------------------------------------ CLI
def _main(argv) -> int:
    """``mlipuq check ...`` through mlipuq.cli.main when registered there; otherwise
    the subcommand's parser with main's convention (user errors: exit status 2)."""
    import sys

    from mlipuq import cli as main_cli
    from mlipuq.trust import cli

    registered = [a for a in main_cli.build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction) and "check" in a.choices]
    if registered:
        return main_cli.main(argv)
    parser = argparse.ArgumentParser(prog="mlipuq")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except main_cli.USER_ERRORS as exc:
        print(f"mlipuq: error: {exc}", file=sys.stderr)
        return 2


def test_cli_check_writes_the_report_and_refuses_an_existing_folder(tmp_path, capsys):
    model_path, out = tmp_path / "model.pt", tmp_path / "report"
    make_model().save(model_path)
    argv = ["check", "--model", str(model_path), "--structures", str(ETHANOL_SMALL),
            "--out", str(out), "--quick"]
    assert _main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads((out / "trust.json").read_text())
    assert report["format"] == "mlipuq.trust" and report["verdict"] == "pass"
    kinds = [c["kind"] for c in report["checks"]]
    assert kinds == ["equivariance", "jacobian_asymmetry", "nve_drift", "bond_scan",
                     "torsion_scan"]
    assert [line.split()[0] for line in lines[:-1]] == ["PASS"] * 5
    assert lines[0].startswith("PASS equivariance: energy")
    assert "| equivariance | PASS |" in (out / "trust.md").read_text()
    for name in ("rotational_spread.png", "nve_drift.png", "bond_scan_0_1.png"):
        assert (out / name).stat().st_size > 0
    assert _main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert _main(argv + ["--overwrite", "--no-plots"]) == 0


def test_cli_check_with_a_wrapper_and_a_bad_file(tmp_path, capsys, llpr):
    path = tmp_path / "llpr.pt"
    llpr.save(path)
    argv = ["check", "--model", str(path), "--structures", str(ETHANOL_SMALL), "--quick",
            "--nve-steps", "0", "--no-plots", "--bond", "0", "3", "--torsion", "1", "0", "2",
            "8"]
    assert _main(argv + ["--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "trust.json").read_text())
    assert "UQ wrapper" in report["model"]
    assert report["checks"][0]["energy_std_max"] <= 1e-10
    assert [c["name"] for c in report["checks"][2:]] == ["bond scan 0-3",
                                                           "torsion scan 1-0-2-8"]
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    capsys.readouterr()
    assert _main(["check", "--model", str(bad), "--structures", str(ETHANOL_SMALL),
                  "--out", str(tmp_path / "b")]) == 2
    assert "neither a saved UQ wrapper" in capsys.readouterr().err


def test_a_steep_smooth_feature_is_not_a_discontinuity():
    """The packaged ethanol model's C-C stretch has a force feature ~0.01 Å wide near
    1.67 Å (forces smooth on a 0.002 Å grid): once flagged as a kink by the single
    4x refinement, it must not survive the second one."""
    from mlipuq.models import load
    from mlipuq.trust import bond_scan

    path = Path(mlipuq.__file__).parent / "data_files" / "pretrained" / "ethanol_0.pt"
    atoms = mlipuq.load(ETHANOL_SMALL)[0].copy()
    atoms.calc = None
    result = bond_scan(load(path), atoms, pairs=((0, 1),))
    assert result.discontinuities == []
    assert result.verdict != "fail"
