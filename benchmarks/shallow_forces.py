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

from evidential_max import table
from evidential_share import NLL_SLACK, counts, in_distribution_holds
from shallow_energy import OUTSIDE, fits

TODAY = "ShallowEnsemble"
CANDIDATE = "ShallowEnsemble (forces: larger of two variances)"


def verdict(entries: list[dict]) -> bool:
    """Print the counts and in-distribution medians; whether the rule holds."""
    old, new = counts(entries, TODAY), counts(entries, CANDIDATE)
    print(f"\n{len(entries)} fits. Force goal / energy goal / both met: default "
          f"{old[0]} / {old[1]} / {old[2]}; candidate {new[0]} / {new[1]} / {new[2]}")
    medians = {name: {key: statistics.median(e[name][key] for e in entries)
                      for key in ("energy_nll", "force_nll")} for name in (TODAY, CANDIDATE)}
    for name in (TODAY, CANDIDATE):
        print(f"  {name}: median in-dist E NLL {medians[name]['energy_nll']:.3f}, F NLL "
              f"{medians[name]['force_nll']:.3f}, largest in-dist F miscal "
              f"{max(e[name]['force_miscal'] for e in entries):.3f}")
    forces_ok = medians[CANDIDATE]["force_nll"] <= medians[TODAY]["force_nll"] + NLL_SLACK
    return (new[0] > old[0] and new[1] >= old[1] and forces_ok
            and in_distribution_holds(entries, CANDIDATE, TODAY))


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="shallow_forces_*.json")
    entries = fits(parser.parse_args(argv).files, TODAY, CANDIDATE, None)
    counted = [e for e in entries if e["system"] not in OUTSIDE]
    table(counted, TODAY, CANDIDATE, "default → candidate")
    ok = verdict(counted)
    print(f"Verdict: {CANDIDATE!r} {'becomes' if ok else 'does not become'} the shallow "
          "ensemble's default.")
    extra = [e for e in entries if e["system"] in OUTSIDE]
    if extra:
        print("\nOutside the round (not counted):\n")
        table(extra, TODAY, CANDIDATE, "default → candidate")
    return ok


if __name__ == "__main__":
    main()
