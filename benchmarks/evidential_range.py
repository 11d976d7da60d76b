"""The round on the evidential head's widening with its latent-distance term's own
range (``docs/shift.md``, "The evidential head's widening: the term's own range",
2026-12-05): per fit today's default head beside the candidate (both rows of one
``shift.py`` run, ``evidential_range_*.json``), and the rule's verdict, fixed before
the runs (that of ``benchmarks/shallow_energy.py``).

    python benchmarks/evidential_range.py benchmarks/results/evidential_range_*.json
"""

from __future__ import annotations

import shallow_energy

TODAY = "EvidentialHead"
CANDIDATE = "EvidentialHead (term's own range)"


def main(argv=None) -> bool:
    return shallow_energy.round_main(__doc__, TODAY, CANDIDATE, "the head's default", argv)


if __name__ == "__main__":
    main()
