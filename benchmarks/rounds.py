"""The rounds of 2026-12-05 after the evidential head's covariance
(``benchmarks/evidential_cov.py``), each with the rule of
``benchmarks/shallow_energy.py`` (the force rounds: of ``benchmarks/shallow_forces.py``),
fixed before its runs (``docs/shift.md``): per fit
today's default beside the round's candidate (both rows of one ``shift.py`` run), and
the verdict.

* ``range``: the evidential head's widening reads the latent-distance term's own range
  (``distance_range``; "The evidential head's widening: the term's own range");
  its files ``evidential_range_*.json`` were made before the adoption; since, a run
  must name the baseline "EvidentialHead (totals' range)" beside the candidate,
  which this script reads in today's place.
* ``map``: the head's term's a and b fitted on both halves of val ("The evidential
  head's term fitted on both halves of val"; ``evidential_map_*.json``).
* ``t``: the head's energies calibrated as the committees' are, a Student-t with ν ≤ 3
  ("The evidential head's energies with a Student-t"; ``evidential_t_*.json``;
  adopted: a later run names the baseline "EvidentialHead (scalar energies)").
* ``latent-t``: latent distance's energies with the same Student-t ("Latent
  distance's energies with a Student-t"; ``latent_t_*.json``; adopted: a later run
  names the baseline "LatentDistance (scalar energies)").
* ``forces-shallow``, ``forces-head``, ``forces-deep``: the forces widened beyond the
  calibration range with the energies' power, r ** 1 ("The forces widened as the
  energies", ``forces_{shallow,head,deep}_*.json``), for the shallow ensemble, the
  evidential head and the deep ensemble; the rule with the targets' roles swapped
  (``benchmarks/shallow_forces.py``); the head's and the shallow ensemble's adopted: a
  later run names the baseline "W (forces widened r^0.75)". ``forces-deep-0.75``: the deep
  ensemble's forces widened by r ** 0.75, the grid's step between (its addendum,
  ``forces_deep75_*.json``).

    python benchmarks/rounds.py range benchmarks/results/evidential_range_*.json
    python benchmarks/rounds.py map benchmarks/results/evidential_map_*.json
    python benchmarks/rounds.py t benchmarks/results/evidential_t_*.json
    python benchmarks/rounds.py latent-t benchmarks/results/latent_t_*.json
    python benchmarks/rounds.py forces-shallow benchmarks/results/forces_shallow_*.json
    python benchmarks/rounds.py forces-head benchmarks/results/forces_head_*.json
    python benchmarks/rounds.py forces-deep benchmarks/results/forces_deep_*.json
    python benchmarks/rounds.py forces-deep-0.75 benchmarks/results/forces_deep75_*.json
"""

from __future__ import annotations

import argparse

import shallow_energy
import shallow_forces

HEAD, LATENT = "EvidentialHead", "LatentDistance"
SHALLOW, DEEP = "ShallowEnsemble", "DeepEnsemble (3)"
#: Per round: today's default row, the candidate's row, the baseline's name in runs
#: made after the candidate became the default (None: not adopted), and whose default.
ROUNDS = {"range": (HEAD, "EvidentialHead (term's own range)",
                    "EvidentialHead (totals' range)", "the head's default"),
          "map": (HEAD, "EvidentialHead (term fitted on both halves)", None,
                  "the head's default"),
          "t": (HEAD, "EvidentialHead (t energies)", "EvidentialHead (scalar energies)",
                "the head's default"),
          "latent-t": (LATENT, "LatentDistance (t energies)", "LatentDistance (scalar energies)",
                       "latent distance's default")}
#: Rounds whose rule has the targets' roles swapped (more force goals): the same fields.
FORCE_ROUNDS = {
    "forces-shallow": (SHALLOW, f"{SHALLOW} (forces widened r¹)",
                       f"{SHALLOW} (forces widened r^0.75)", "the shallow ensemble's default"),
    "forces-head": (HEAD, f"{HEAD} (forces widened r¹)", f"{HEAD} (forces widened r^0.75)",
                    "the head's default"),
    "forces-deep": (DEEP, f"{DEEP} (forces widened r¹)", None, "the deep ensemble's default"),
    "forces-deep-0.75": (DEEP, f"{DEEP} (forces widened r^0.75)", f"{DEEP} (forces widened r^0.5)",
                         "the deep ensemble's default")}


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round", choices=sorted({**ROUNDS, **FORCE_ROUNDS}))
    parser.add_argument("files", nargs="+", help="the round's shift.py outputs (*.json)")
    args = parser.parse_args(argv)
    forces = args.round in FORCE_ROUNDS
    today, candidate, before, what = (FORCE_ROUNDS if forces else ROUNDS)[args.round]
    return (shallow_forces if forces else shallow_energy).run(args.files, today, candidate,
                                                             what, before)


if __name__ == "__main__":
    main()
