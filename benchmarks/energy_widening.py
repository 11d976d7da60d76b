"""The round for a milder energy widening with every layer's features (docs/shift.md,
"A milder energy widening for every layer's features"): candidate C (energies r**0.75,
forces r**0.5) against the default rows of the same runs, by the rule fixed before them.

    python benchmarks/energy_widening.py

Per wrapper: (1) on the own shifts of every system, the worst force and energy coverage
of the default and of C, and whether C keeps the goals; (2) the unseen splits that the
default covered and C does not; (3) the mean shifted energy NLL over own and unseen
shifts; and the median energy std ÷ MAE on the unseen shifts (sharpness).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from shift_goal import GOALS
from shift_unseen import COVER, sharpness, shifts_of

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = os.path.join(HERE, "results", "shift_energy_widening.json")
UNSEEN = os.path.join(HERE, "results", "shift_energy_widening_unseen.json")
DEFAULT, CANDIDATE = "default", "default, energy widening 0.75"
WRAPPERS = ("LatentDistance", "LatentDistance + LLPR", "EvidentialHead")


def shifted(rows: list[dict], wrapper: str, method: str, system=None) -> list[dict]:
    """``shift_unseen.shifts_of`` for the rows of ``method`` (of one ``system``)."""
    return shifts_of([r for r in rows if r["method"] == method], wrapper,
                     None if system is None else (system,))


def covered(row: dict) -> bool:
    return all(row[COVER[target]] >= goal for target, goal in GOALS.items())


def worst(rows: list[dict]) -> str:
    return (f"{min(r['force_cov95'] for r in rows):.3f} / "
            f"{min(r['energy_cov95'] for r in rows):.3f}")


def verdict(own: list[dict], unseen: list[dict], wrapper: str) -> list[str]:
    """The rule's three parts for ``wrapper``, one line each, and the sharpness."""
    lines, misses = [], []
    for system in sorted({r["system"] for r in shifted(own, wrapper, DEFAULT)}):
        rows = shifted(own, wrapper, CANDIDATE, system)
        if not all(covered(r) for r in rows):
            misses.append(system)
        lines.append(f"  {system}: worst F / E {worst(shifted(own, wrapper, DEFAULT, system))}"
                     f" -> {worst(rows)}")
    before = {(r["system"], r["split"]): r for r in shifted(unseen, wrapper, DEFAULT)}
    newly = [(r["system"], r["split"]) for r in shifted(unseen, wrapper, CANDIDATE)
             if covered(before[r["system"], r["split"]]) and not covered(r)]
    nll = {m: statistics.mean(r["energy_nll"] for r in shifted(own + unseen, wrapper, m))
           for m in (DEFAULT, CANDIDATE)}
    sharp = {m: sharpness(shifted(unseen, wrapper, m), "energy") for m in (DEFAULT, CANDIDATE)}
    lines += [f"  (1) own shifts missed with C: {misses or 'none'}",
              f"  (2) unseen splits newly missed: {newly or 'none'}",
              f"  (3) mean shifted E NLL {nll[DEFAULT]:.2f} -> {nll[CANDIDATE]:.2f}",
              f"  unseen median E std / MAE {sharp[DEFAULT]:.1f} -> {sharp[CANDIDATE]:.1f}",
              f"  passes: {not misses and not newly and nll[CANDIDATE] < nll[DEFAULT]}"]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--own", default=OWN)
    parser.add_argument("--unseen", default=UNSEEN)
    args = parser.parse_args(argv)
    own = json.load(open(args.own))["rows"]
    unseen = json.load(open(args.unseen))["rows"]
    for wrapper in WRAPPERS:
        print(wrapper)
        print("\n".join(verdict(own, unseen, wrapper)))


if __name__ == "__main__":
    main()
