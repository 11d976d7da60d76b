"""The round on the evidential head's widening with its latent-distance term's own
range (``docs/shift.md``, "The evidential head's widening: the term's own range",
2026-12-05): per fit today's default head beside the candidate (both rows of one
``shift.py`` run, ``evidential_range_*.json``), and the rule's verdict, fixed before
the runs (that of ``benchmarks/shallow_energy.py``). The files were made before
the adoption; since, a run must name the baseline ``"EvidentialHead (totals' range)"``
beside the candidate, which this script reads in today's place.

    python benchmarks/evidential_range.py benchmarks/results/evidential_range_*.json
"""

from __future__ import annotations

import shallow_energy

TODAY = "EvidentialHead"
CANDIDATE = "EvidentialHead (term's own range)"
#: The baseline in runs made after the candidate became the default (2026-12-05).
BEFORE = "EvidentialHead (totals' range)"


def main(argv=None) -> bool:
    return shallow_energy.round_main(__doc__, TODAY, CANDIDATE, "the head's default", argv,
                                     BEFORE)


if __name__ == "__main__":
    main()
