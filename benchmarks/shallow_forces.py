"""The round on the shallow ensemble's force term fitted apart, the larger of two force
variances taken (``force_combination="max"``; ``docs/shift.md``, "The shallow
ensemble's forces: the larger of two variances", 2026-12-05): per fit today's default
ensemble beside the candidate (both rows of one ``shift.py`` run,
``shallow_forces_*.json``), and the verdict by the rule fixed before the runs, the
rounds' rule with the targets' roles swapped: (a) the force goal met on more fits and
the energy goal on at least as many; (b) the in-distribution force miscalibration
≤ 0.05 on every fit; (c) the median in-distribution energy NLL and force NLL each
worse by at most 0.1 nats.

    python benchmarks/shallow_forces.py benchmarks/results/shallow_forces_*.json
"""

from __future__ import annotations

import argparse
import statistics

from evidential_max import rule_holds, table
from shallow_energy import OUTSIDE, fits
from structure_covariance import mean

TODAY = "ShallowEnsemble"
CANDIDATE = "ShallowEnsemble (forces: larger of two variances)"


def verdict(entries: list[dict], today: str = TODAY, candidate: str = CANDIDATE) -> bool:
    """Print the counts, the in-distribution medians and the median change of the mean
    force std ÷ MAE under shift (sharpness, not in the rule); whether the rule holds."""
    ok = rule_holds(entries, today, candidate, "candidate", target="forces")
    ratios = [mean(e[candidate], "force_std_over_mae") / mean(e[today], "force_std_over_mae")
              for e in entries]
    print(f"  mean shift force std÷MAE, candidate ÷ default: median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f})")
    return ok


def run(files, today: str = TODAY, candidate: str = CANDIDATE,
        what: str = "the shallow ensemble's default", before: str | None = None) -> bool:
    """The round over ``files``: counted fits, the verdict, then those of ``OUTSIDE``."""
    entries = fits(files, today, candidate, before)
    counted = [e for e in entries if e["system"] not in OUTSIDE]
    table(counted, today, candidate, "default → candidate", "forces")
    ok = verdict(counted, today, candidate)
    print(f"Verdict: {candidate!r} {'becomes' if ok else 'does not become'} {what}.")
    extra = [e for e in entries if e["system"] in OUTSIDE]
    if extra:
        print("\nOutside the round (not counted):\n")
        table(extra, today, candidate, "default → candidate", "forces")
    return ok


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="shallow_forces_*.json")
    return run(parser.parse_args(argv).files)


if __name__ == "__main__":
    main()
