"""The round on the evidential head's structure covariance chosen on both halves of
val (``docs/shift.md``, "The evidential head's structure covariance chosen on all its
held-out structures", 2026-12-05): per fit today's default head beside the candidate
(both rows of one ``shift.py`` run, ``evidential_cov_*.json``), and the rule's verdict,
fixed before the runs (that of ``benchmarks/shallow_energy.py``).

    python benchmarks/evidential_cov.py benchmarks/results/evidential_cov_*.json
"""

from __future__ import annotations

import argparse

import shallow_energy

TODAY = "EvidentialHead"
CANDIDATE = "EvidentialHead (covariance on both halves)"


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="evidential_cov_*.json")
    files = parser.parse_args(argv).files
    return shallow_energy.run(files, TODAY, CANDIDATE, "the head's default")


if __name__ == "__main__":
    main()
