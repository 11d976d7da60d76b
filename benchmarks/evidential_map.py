"""The round on the evidential head's latent-distance term fitted on both halves of
val (``docs/shift.md``, "The evidential head's term fitted on both halves of val",
2026-12-05): per fit today's default head beside the candidate (both rows of one
``shift.py`` run, ``evidential_map_*.json``), and the rule's verdict, fixed before
the runs (that of ``benchmarks/shallow_energy.py``).

    python benchmarks/evidential_map.py benchmarks/results/evidential_map_*.json
"""

from __future__ import annotations

import shallow_energy

TODAY = "EvidentialHead"
CANDIDATE = "EvidentialHead (term fitted on both halves)"


def main(argv=None) -> bool:
    return shallow_energy.round_main(__doc__, TODAY, CANDIDATE, "the head's default", argv)


if __name__ == "__main__":
    main()
