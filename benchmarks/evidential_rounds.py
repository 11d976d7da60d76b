"""The evidential head's rounds of 2026-12-05 after the covariance's
(``benchmarks/evidential_cov.py``), each with the rule of
``benchmarks/shallow_energy.py``, fixed before its runs (``docs/shift.md``): per fit
today's default head beside the round's candidate (both rows of one ``shift.py`` run),
and the verdict.

* ``range``: the widening reads the latent-distance term's own range
  (``distance_range``; "The evidential head's widening: the term's own range");
  its files ``evidential_range_*.json`` were made before the adoption; since, a run
  must name the baseline "EvidentialHead (totals' range)" beside the candidate,
  which this script reads in today's place.
* ``map``: the term's a and b fitted on both halves of val ("The evidential head's
  term fitted on both halves of val"; ``evidential_map_*.json``).
* ``t``: its energies calibrated as the committees' are, a Student-t with ν ≤ 3 ("The
  evidential head's energies with a Student-t"; ``evidential_t_*.json``; adopted: a
  later run names the baseline "EvidentialHead (scalar energies)").

    python benchmarks/evidential_rounds.py range benchmarks/results/evidential_range_*.json
    python benchmarks/evidential_rounds.py map benchmarks/results/evidential_map_*.json
    python benchmarks/evidential_rounds.py t benchmarks/results/evidential_t_*.json
"""

from __future__ import annotations

import argparse

import shallow_energy

TODAY = "EvidentialHead"
#: Per round: the candidate's row, and the baseline's name in runs made after the
#: candidate became the default (None: not adopted).
ROUNDS = {"range": ("EvidentialHead (term's own range)", "EvidentialHead (totals' range)"),
          "map": ("EvidentialHead (term fitted on both halves)", None),
          "t": ("EvidentialHead (t energies)", "EvidentialHead (scalar energies)")}


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round", choices=sorted(ROUNDS))
    parser.add_argument("files", nargs="+", help="the round's shift.py outputs (*.json)")
    args = parser.parse_args(argv)
    candidate, before = ROUNDS[args.round]
    return shallow_energy.run(args.files, TODAY, candidate, "the head's default", before)


if __name__ == "__main__":
    main()
