"""The round for LLPR's own latent-distance term (docs/shift.md, "LLPR with a latent
term of its own"): ``LastLayerLaplace(model, distance="mahalanobis").fit(train, val)``
against LLPR's default rows of the same runs, by the rule fixed before them.

    python benchmarks/llpr_term.py

The rule: the term becomes LLPR's default if (1) on the own shifts of every system
it meets both coverage goals; (2) on the unseen kinds no split LLPR's default covered
is missed, and the force goal is met on more splits; (3) in distribution its force
miscalibration area stays ≤ 0.05 and its force and energy NLL are no worse than
LLPR's by more than 0.02 nats on any system. Printed besides: the in-distribution
mean force std (sharpness) and the rows fitted with ``fit(train)`` alone (the term
on a held-out fifth of train; own shifts only), for information.
"""

from __future__ import annotations

import argparse
import json
import os

from energy_widening import GOALS, covered, worst
from shift_unseen import COVER, shifts_of

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = os.path.join(HERE, "results", "shift_llpr_term.json")
UNSEEN = os.path.join(HERE, "results", "shift_llpr_term_unseen.json")
LLPR, CANDIDATE = "LastLayerLaplace", "LastLayerLaplace (latent term)"
NO_VAL = "LastLayerLaplace (latent term, fit(train))"
NLL_SLACK = 0.02  # nats


def default(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["method"] == "default"]


def in_distribution(rows: list[dict], wrapper: str) -> dict:
    """``{system: row}`` of ``wrapper``'s in-distribution rows."""
    return {r["system"]: r for r in rows
            if r["wrapper"] == wrapper and r["split"].startswith("in dist")}


def own_part(own: list[dict], wrapper: str, baseline: str = LLPR
             ) -> tuple[list[str], list[str]]:
    """Per system, the worst own shift of ``baseline``'s rows and ``wrapper``'s; the
    systems where ``wrapper`` misses a goal."""
    lines, misses = [], []
    for system in sorted({r["system"] for r in shifts_of(own, baseline)}):
        rows = shifts_of(own, wrapper, (system,))
        if not rows or not all(covered(r) for r in rows):
            misses.append(system)
        lines.append(f"  {system}: worst F / E {worst(shifts_of(own, baseline, (system,)))} -> "
                     f"{worst(rows) if rows else 'no rows'}")
    return lines, misses


def unseen_part(unseen: list[dict], wrapper: str, target: str = "force",
                baseline: str = LLPR) -> tuple[list, int, int]:
    """The unseen splits ``baseline``'s rows covered and ``wrapper``'s miss, and on how
    many each meets ``target``'s goal."""
    before = {(r["system"], r["split"]): r for r in shifts_of(unseen, baseline)}
    rows = shifts_of(unseen, wrapper)
    newly = [(r["system"], r["split"]) for r in rows
             if covered(before[r["system"], r["split"]]) and not covered(r)]
    met = {w: sum(r[COVER[target]] >= GOALS[target] for r in shifts_of(unseen, w))
           for w in (baseline, wrapper)}
    return newly, met[baseline], met[wrapper]


def in_dist_part(own: list[dict], wrapper: str, baseline: str = LLPR
                 ) -> tuple[list[str], list[str]]:
    """Per system, the in-distribution miscalibration, NLLs and sharpness of
    ``baseline``'s rows and ``wrapper``'s; the systems where ``wrapper`` breaks rule (3)."""
    lines, misses = [], []
    llpr, rows = in_distribution(own, baseline), in_distribution(own, wrapper)
    for system, row in sorted(rows.items()):
        ref = llpr[system]
        worse = max(row["force_nll"] - ref["force_nll"], row["energy_nll"] - ref["energy_nll"])
        if row["force_miscal"] > 0.05 or worse > NLL_SLACK:
            misses.append(system)
        sharper = row["force_std"] / ref["force_std"]
        lines.append(f"  {system}: F miscal {ref['force_miscal']:.3f} -> "
                     f"{row['force_miscal']:.3f}, F NLL {ref['force_nll']:.3f} -> "
                     f"{row['force_nll']:.3f}, E NLL {ref['energy_nll']:.3f} -> "
                     f"{row['energy_nll']:.3f}, mean F std x{sharper:.3f}")
    return lines, misses


def verdict(own: list[dict], unseen: list[dict], wrapper: str,
            baseline: str = LLPR) -> list[str]:
    """The rule's parts for ``wrapper`` against ``baseline``, and whether it passes."""
    lines, own_misses = own_part(own, wrapper, baseline)
    dist_lines, dist_misses = in_dist_part(own, wrapper, baseline)
    lines += dist_lines + [f"  (1) own shifts missed: {own_misses or 'none'}"]
    if not shifts_of(unseen, wrapper):  # (the fit(train) rows: own shifts only)
        return lines + ["  (2) unseen kinds: no rows",
                        f"  (3) in distribution missed: {dist_misses or 'none'}"]
    newly, met_before, met = unseen_part(unseen, wrapper, baseline=baseline)
    passes = not own_misses and not newly and met > met_before and not dist_misses
    return lines + [
        f"  (2) unseen splits newly missed: {newly or 'none'}; force goal met on "
        f"{met_before} -> {met} of {len(shifts_of(unseen, wrapper))}",
        f"  (3) in distribution missed: {dist_misses or 'none'}",
        f"  passes: {passes}"]


def read_rows(argv, doc: str, own: str, unseen: str) -> tuple[list[dict], list[dict]]:
    """The default method's rows of a round's ``--own`` and ``--unseen`` results files
    (defaults ``own`` and ``unseen``); ``doc``: the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--own", default=own)
    parser.add_argument("--unseen", default=unseen)
    args = parser.parse_args(argv)
    return tuple(default(json.load(open(path))["rows"]) for path in (args.own, args.unseen))


def main(argv=None) -> None:
    own, unseen = read_rows(argv, __doc__, OWN, UNSEEN)
    for wrapper in (CANDIDATE, NO_VAL):
        print(wrapper + ("" if wrapper == CANDIDATE else " (for information)"))
        print("\n".join(verdict(own, unseen, wrapper)))


if __name__ == "__main__":
    main()
