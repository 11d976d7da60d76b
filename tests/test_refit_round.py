"""The round on refitted base models (``benchmarks/structure_covariance.py
--refit-round``): per fit, the wrapper's default before the refit, after it and the
candidate after it, and the rule counted over the fits: goals met at least as often
as before, a better in-distribution energy NLL everywhere, calibrated forces."""

from __future__ import annotations

import json

import pytest

from conftest import benchmark_modules

CANDIDATE = "LatentDistance (held-out structure covariance)"


@pytest.fixture(scope="module")
def structure_covariance():
    return benchmark_modules("structure_covariance")[0]


def _rows(system, seed, wrapper, e_cov, f_cov=0.95, nll=-2.0, miscal=0.02, refit=True):
    common = {"system": system, "wrapper": wrapper, "method": "default", "base_seed": seed,
              "refit_references": refit}
    return [{**common, "split": "in distribution", "energy_nll": nll, "energy_cov95": 0.95,
             "force_nll": -1.0, "force_miscal": miscal},
            {**common, "split": "surface", "energy_cov95": e_cov, "force_cov95": f_cov,
             "energy_nll": 1.0, "energy_std_per_atom": 2.0, "energy_mae_per_atom": 1.0}]


def _write(path, rows):
    with open(path, "w") as f:
        json.dump({"rows": rows}, f)
    return str(path)


def test_the_rule_counts_goals_over_fits(structure_covariance, tmp_path, capsys):
    before = _write(tmp_path / "before.json",
                    _rows("A", 0, "LatentDistance", 0.90, nll=-1.0, refit=False)
                    + _rows("B", 1, "LatentDistance", 0.50, nll=-1.0, refit=False)
                    + _rows("B", 0, "LatentDistance", 0.99, nll=-9.0, refit=False))
    files = [_write(tmp_path / "a.json", _rows("A", 0, "LatentDistance", 0.60)
                    + _rows("A", 0, CANDIDATE, 0.86)),
             _write(tmp_path / "b.json", _rows("B", 1, "LatentDistance", 0.40)
                    + _rows("B", 1, CANDIDATE, 0.84))]
    assert structure_covariance.refit_round(files, before)
    out = capsys.readouterr().out
    # B is compared with its own base model 1, not with base model 0's rows
    assert "| B | 1 | LatentDistance | -1.00 → -2.00 → -2.00 | 0.500 → 0.400 → 0.840 |" in out
    assert "| LatentDistance | 2 | 2 / 2 / 2 | 1 / 0 / 1 | yes | yes | yes |" in out


@pytest.mark.parametrize("change, cell", [
    ({"e_cov": 0.84}, "| 1 / 0 / 0 | yes | yes | no |"),   # energy goal lost
    ({"f_cov": 0.89}, "| 1 / 1 / 0 | 1 / 0 / 1 | yes | yes | no |"),  # force goal lost
    ({"nll": -0.5}, "| no | yes | no |"),  # in-distribution energy NLL worse
    ({"miscal": 0.06}, "| yes | no | no |"),  # forces miscalibrated in distribution
])
def test_each_condition_can_fail_the_candidate(structure_covariance, tmp_path, capsys,
                                               change, cell):
    before = _write(tmp_path / "before.json",
                    _rows("A", 0, "LatentDistance", 0.90, nll=-1.0, refit=False))
    candidate = {"e_cov": 0.86, **change}
    files = [_write(tmp_path / "a.json", _rows("A", 0, "LatentDistance", 0.60)
                    + _rows("A", 0, CANDIDATE, **candidate))]
    assert not structure_covariance.refit_round(files, before)
    assert cell in capsys.readouterr().out
