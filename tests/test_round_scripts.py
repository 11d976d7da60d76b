"""Comparison scripts of the shift benchmark: ``benchmarks/evidential_max.py`` (the
round on the evidential head's larger of two variances: counts and the rule fixed
before it), ``benchmarks/frontier_effect.py`` (calibrating on frontier structures,
scored on the shifts other than the frontier's) and ``benchmarks/strain_term.py`` (the
strain term's round)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import benchmark_modules

@pytest.fixture(scope="module")
def scripts():
    return benchmark_modules("evidential_max", "frontier_effect", "shift")


def _rows(system, wrapper, e_cov, f_cov=0.95, nll=-2.0, miscal=0.02, method="default",
          defaults=None, extra_split=None):
    common = {"system": system, "wrapper": wrapper, "method": method, "base_seed": 0,
              "defaults": defaults}
    rows = [{**common, "split": "in distribution", "energy_nll": nll, "energy_cov95": 0.95,
             "force_nll": -1.0, "force_miscal": miscal, "force_cov95": 0.95},
            {**common, "split": "surface", "energy_cov95": e_cov, "force_cov95": f_cov,
             "energy_nll": 1.0, "energy_std_per_atom": 2.0, "energy_mae_per_atom": 1.0,
             "force_std": 0.2, "force_mae": 0.1}]
    if extra_split:
        rows.append({**rows[1], "split": extra_split, "energy_cov95": 0.1, "force_cov95": 0.1})
    return rows


def _write(path, rows):
    with open(path, "w") as f:
        json.dump({"rows": rows}, f)


def test_larger_of_two_round_counts_and_verdict(scripts, tmp_path, capsys):
    """More energy goals at equal force goals and an equal NLL: the rule says the default
    changes; one fit fewer (a tie) does not."""
    evidential_max = scripts[0]
    share, both = evidential_max.BOTH, evidential_max.CANDIDATE
    for k, (today, new) in enumerate([(0.50, 0.90), (0.90, 0.90), (0.95, 0.95)]):
        _write(tmp_path / f"evidential_share_s{k}.json", _rows(f"s{k}", share, today))
        _write(tmp_path / f"evidential_max_s{k}.json", _rows(f"s{k}", both, new))
    files = sorted(str(p) for p in tmp_path.glob("evidential_max_*.json"))
    counted, extra = evidential_max.fits(files)
    assert len(counted) == 3 and not extra
    evidential_max.report(counted, extra)
    out = capsys.readouterr().out
    assert "default 3 / 2 / 2; max 3 / 3 / 3" in out
    assert "'max' becomes the head's default" in out
    _write(tmp_path / "evidential_max_s0.json", _rows("s0", both, 0.50))
    evidential_max.report(*evidential_max.fits(files))
    assert "does not become" in capsys.readouterr().out


def test_frontier_effect_leaves_out_the_frontier_shift(scripts):
    """The frontier's own shift (in the table's test sets, not in the frontier run's) is
    left out of both worst coverages; rows of earlier defaults are not read."""
    _, frontier_effect, shift = scripts
    frontier = shift.FRONTIER["copper"]
    table, with_frontier = [], []
    for w in frontier_effect.WRAPPERS:
        tag = shift.defaults_of(w, "copper")
        table += _rows("copper", w, 0.90, f_cov=0.95, defaults=tag, extra_split=frontier)
        table += _rows("copper", w, 0.00, defaults="2026-12-02")  # earlier: ignored
        with_frontier += _rows("copper", w, 0.80, f_cov=0.97, defaults=tag,
                               method=f"default + 10 frontier ({frontier})")
    text = frontier_effect.report(table, with_frontier)
    line = next(t for t in text.splitlines()
                if t.startswith("| copper") and "| LastLayerLaplace |" in t)
    assert "0.950 / 0.900 → 0.970 / 0.800" in line
    assert "| LastLayerLaplace | 1 → 1 | 1 → 0 |" in text
    with pytest.raises(ValueError, match="no current rows"):
        frontier_effect.worst(table, "copper", "LastLayerLaplace", "scalar")


def test_strain_term_round_compares_strained_cells_and_checks_the_rest(tmp_path, capsys):
    """``benchmarks/strain_term.py``: the strained cells' energy coverage and std ÷ MAE
    before → after for the default calibration, only rows tagged with the strain term
    read after, and the largest coverage change off the strained cells."""
    (strain_term,) = benchmark_modules("strain_term")
    common = {"system": "cupd", "method": "default", "base_seed": 0}

    def row(wrapper, split, e_cov, f_cov=0.95, std=2.0, mae=1.0, defaults=None):
        return {**common, "wrapper": wrapper, "split": split, "energy_cov95": e_cov,
                "force_cov95": f_cov, "energy_std_per_atom": std, "energy_mae_per_atom": mae,
                "defaults": defaults}

    tag = strain_term.TAG
    before = [row("LastLayerLaplace", "in distribution", 0.95),
              row("LastLayerLaplace", "strained 300 K", 0.8, std=1.0, mae=4.0),
              row("LastLayerLaplace", "surface 300 K", 0.9)]
    after = [row("LastLayerLaplace", "in distribution", 0.95, defaults=tag),
             row("LastLayerLaplace", "strained 300 K", 1.0, std=6.0, mae=4.0, defaults=tag),
             row("LastLayerLaplace", "surface 300 K", 0.875, defaults=tag),
             row("ShallowEnsemble", "strained 300 K", 0.1, defaults="2026-12-04")]
    _write(tmp_path / "before.json", before)
    _write(tmp_path / "after.json", after)
    strain_term.main(["--before", str(tmp_path / "before.json"),
                      "--after", str(tmp_path / "after.json")])
    out = capsys.readouterr().out
    assert "| cupd | LastLayerLaplace | 0 | 0.800 → 1.000 | 0.25 → 1.50 |" in out
    assert "| LastLayerLaplace | 1 | 0 → 1 |" in out
    assert "ShallowEnsemble" not in out  # not tagged with the strain term
    assert "largest coverage change off the strained cells: 0.025 over 2 rows" in out
    # per fit, every shift: the worst energy coverage 0.8 → 0.875, both goals met after
    assert "| LastLayerLaplace | 1 | 1 → 1 | 0 → 1 |" in out


def test_shallow_energy_round_verdict_and_baseline_after_adoption(tmp_path, capsys):
    """The shallow ensemble's round: more energy goals, equal force goals and NLL: the
    default changes; the held-out Ag3Au is shown, not counted; a run made after the
    adoption (the baseline under its variant name) gives the same entries."""
    (shallow_energy,) = benchmark_modules("shallow_energy")
    today, new, before = shallow_energy.TODAY, shallow_energy.CANDIDATE, shallow_energy.BEFORE
    for k, (a, b) in enumerate([(0.50, 0.90), (0.90, 0.90), (0.95, 0.95), (0.10, 0.10)]):
        system = "agau" if k == 3 else f"s{k}"
        _write(tmp_path / f"shallow_energy_{system}.json",
               _rows(system, today, a) + _rows(system, new, b))
    files = sorted(str(p) for p in tmp_path.glob("*.json"))
    for path in files:  # the in-distribution std (the sharpness) each entry reads
        data = json.load(open(path))
        for r in data["rows"]:
            r.setdefault("energy_std_per_atom", 2.0 if r["wrapper"] == new else 1.0)
        _write(path, data["rows"])
    shallow_energy.main(files)
    out = capsys.readouterr().out
    assert "3 fits. Force goal / energy goal / both met: default 3 / 2 / 2; candidate 3 / 3 / 3" \
        in out and "becomes the shallow ensemble's default" in out
    assert "median 2.000" in out and "Outside the round" in out and "| agau | 0 |" in out
    renamed = [dict(r, wrapper=before) if r["wrapper"] == today else r
               for r in json.load(open(files[1]))["rows"]]
    _write(files[1], renamed + [dict(r, wrapper=today) for r in renamed if r["wrapper"] == new])
    assert shallow_energy.fits(files[1:2])[0][today]["shifts"]["surface"]["energy_cov95"] == 0.5
    # the later rounds apply the same rule (the force rounds: swapped) to their own rows
    (evidential_cov, rounds) = benchmark_modules("evidential_cov", "rounds")
    written = (today, new)  # the rows' names in the files, default then candidate
    for round_name, names, main in (
            [("cov", (evidential_cov.TODAY, evidential_cov.CANDIDATE), evidential_cov.main)]
            + [(name, names[:2], lambda files, name=name: rounds.main([name, *files]))
               for name, names in {**rounds.ROUNDS, **rounds.FORCE_ROUNDS}.items()]):
        rename = dict(zip(written, names))
        for path in files[2:]:
            _write(path, [dict(r, wrapper=rename[r["wrapper"]])
                          for r in json.load(open(path))["rows"]])
        written = names
        assert main(files[2:]) is False, round_name  # two fits, every goal tied
        assert f"Verdict: {names[1]!r} does not become" in capsys.readouterr().out


def test_shallow_forces_round_swaps_the_targets_roles(tmp_path, capsys):
    """The shallow ensemble's force round: more force goals at equal energy goals and
    NLL: the default changes; a force NLL 0.2 nats worse in median, or one energy goal
    lost, and it does not."""
    (shallow_forces,) = benchmark_modules("shallow_forces")
    today, new = shallow_forces.TODAY, shallow_forces.CANDIDATE

    def write(new_rows):
        for k, (f_today, f_new) in enumerate([(0.85, 0.95), (0.95, 0.95), (0.99, 0.99)]):
            rows = _rows(f"s{k}", today, 0.95, f_cov=f_today) + new_rows(f"s{k}", f_new)
            for r in rows:
                r.setdefault("energy_std_per_atom", 1.0)
            _write(tmp_path / f"shallow_forces_s{k}.json", rows)
        return sorted(str(p) for p in tmp_path.glob("*.json"))

    files = write(lambda system, f: [dict(r, force_std=0.3 if system == "s0" else 0.2)
                                     for r in _rows(system, new, 0.95, f_cov=f)])
    assert shallow_forces.main(files) is True
    out = capsys.readouterr().out
    assert "default 2 / 3 / 2; candidate 3 / 3 / 3" in out
    # sharpness under shift, reported beside the rule: one fit's force stds × 1.5
    assert "candidate ÷ default: median 1.000 (range 1.000–1.500)" in out
    worse = write(lambda system, f: [dict(r, force_nll=r.get("force_nll", 0) + 0.2)
                                     for r in _rows(system, new, 0.95, f_cov=f)])
    assert shallow_forces.main(worse) is False
    lost = write(lambda system, f: _rows(system, new, 0.80 if system == "s2" else 0.95,
                                         f_cov=f))
    assert shallow_forces.main(lost) is False
    assert "does not become the shallow ensemble's default" in capsys.readouterr().out


def test_compare_rows_pairs_splits_and_averages_the_nll_change(tmp_path):
    """``compare_rows.py``: each split where both wrappers have a row, a → b, and the
    mean energy NLL change per system ((0.5 + 0) / 2 here); a split of one wrapper only
    is left out."""
    (compare,) = benchmark_modules("compare_rows")
    a, b = _rows("cu", "A", 0.9), _rows("cu", "B", 0.8, nll=-1.5, extra_split="bulk")
    path = tmp_path / "rows.json"
    _write(path, a + b)
    text = "\n".join(compare.lines(compare.paired([path], "A", "B", "default")))
    assert "cu        surface" in text and "E cover 0.900 → 0.800" in text
    assert "E NLL -2.00 → -1.50" in text and "bulk" not in text
    assert "cu        mean energy NLL change +0.250 over 2 splits" in text
    forces = "\n".join(compare.lines(compare.paired([path], "A", "B", "default"), True))
    assert "F cover 0.950 → 0.950" in forces and "F miscal. 0.020 → 0.020" in forces
    assert "F std/MAE n/a → n/a" in forces  # in distribution: no std or MAE in the rows
    assert "F std/MAE 2.00 → 2.00" in forces  # the surface: 0.2 / 0.1
    assert "F MAE meV/Å 100.00 → 100.00" in forces  # the surface: 0.1 eV/Å
    # the surface rows have no force NLL: the mean is over the in-distribution split
    assert "cu        mean force NLL change +0.000 over 1 splits" in forces
    # b's rows of another method (a candidate calibration) against a's default rows
    other = _rows("cu", "B", 0.7, method="scalar")
    _write(path, a + b + other)
    text = "\n".join(compare.lines(compare.paired([path], "A", "B", "default", "scalar")))
    assert "E cover 0.900 → 0.700" in text and "E cover 0.900 → 0.800" not in text
    assert "E std/MAE 2.00 → 2.00" in text  # the surface: 2.0 / 1.0
    # one wrapper under two methods (a cap against another): its own rows, paired
    capped = _rows("cu", "A", 0.6, method="capped")
    _write(path, a + capped)
    text = "\n".join(compare.lines(compare.paired([path], "A", "A", "default", "capped")))
    assert "E cover 0.900 → 0.600" in text and "over 2 splits" in text


def test_shift_members_for_a_latent_term_on_the_deep_ensemble(scripts):
    """``shift.py`` trains every deep-ensemble member for the latent combination too."""
    from argparse import Namespace

    wants = scripts[2].wants_deep
    assert wants(Namespace(only=["LatentDistance + DeepEnsemble (3)"], wrappers=None))
    assert not wants(Namespace(only=["LatentDistance + LLPR"], wrappers=None))
    assert wants(Namespace(only=None, wrappers=["LatentDistance"]))
    assert not wants(Namespace(only=None, wrappers=["LastLayerLaplace"]))


def test_wide_cell_distances_scores():
    """``wide_cell_distances.py``: the reference's own median u² is 1; with the ridge
    relative to the element's spread, a feature's units do not matter (they do for the
    ridge relative to all atoms, on a feature 1e-3 as wide)."""
    (wide,) = benchmark_modules("wide_cell_distances")
    rng = np.random.default_rng(0)
    reference, query = rng.normal(size=(300, 3)), rng.normal(size=(40, 3)) + [0, 0, 3]
    assert np.median(wide.squared_scores(reference, reference, True)) == pytest.approx(1.0)
    narrow = np.array([1.0, 1.0, 1e-3])
    for rescale, same in ((True, True), (False, False)):
        scores = [wide.squared_scores(reference * s, query * s, rescale)
                  for s in (np.ones(3), narrow)]
        assert np.allclose(scores[1], scores[0], rtol=1e-6) == same


def test_energy_apart_on_three_fits_verdict():
    """LLPR's energy term apart on three fits: a cell the default missed and the candidate
    covers counts for it; a system's NLL is the mean over its fits (0.03 worse on one fit
    passes, on all three it does not); a system without all three fits is left out."""
    seeds, = benchmark_modules("llpr_energy_apart_seeds")
    llpr, apart = seeds.LLPR, seeds.CANDIDATE

    def fits(system, default_e, apart_e, apart_nll=(-2.0, -2.0, -2.0)):
        rows = []
        for k in range(3):
            for wrapper, e_cov, nll in ((llpr, default_e[k], -2.0),
                                        (apart, apart_e[k], apart_nll[k])):
                rows += [{**r, "base_seed": k} for r in _rows(system, wrapper, e_cov, nll=nll)]
        return rows

    own = (fits("cu", (0.95, 0.0, 0.95), (0.95, 1.0, 0.95), apart_nll=(-1.97, -2.0, -2.0))
           + [r for r in fits("pt", (0.95,) * 3, (0.10,) * 3) if r["base_seed"] < 2])
    assert seeds.complete(own) == {"cu"}  # pt: two fits only
    out = seeds.verdict(own, own)
    assert "  (1) own-shift cells lost: none; energy goal met on 2 -> 3 cells" in out
    assert "  (3) in distribution missed: none" in out and out[-1] == "  passes: True"
    worse = fits("cu", (0.95,) * 3, (0.95,) * 3, apart_nll=(-1.97,) * 3)
    assert seeds.verdict(worse, worse)[-2] == "  (3) in distribution missed: ['cu']"
    lost = fits("cu", (0.95,) * 3, (0.95, 0.80, 0.95))
    assert "(1) own-shift cells lost: [(('cu', 1), 'energy')]" in seeds.verdict(lost, lost)[-4]
    assert seeds.verdict(lost, lost)[-1] == "  passes: False"
