"""The round of LLPR's energy term fitted apart on three fits (docs/shift.md, "LLPR's
energy term fitted apart on three fits"): the verdict of its rule, written before the
rows, from ``shift.py --base-seed K`` (K = 0, 1, 2) runs of LLPR's default and
``"LastLayerLaplace (energy term apart)"``.

    python benchmarks/llpr_energy_apart_seeds.py

The rule: ``energy_combination="max"`` becomes LLPR's default if, over the three fits
of each system, (1) on the systems' own shifts it misses no (system, fit) cell whose
worst coverage the default meets, for either target, and meets the energy goal on at
least as many cells; (2) the same for the unseen kinds' (system, fit, split) cells;
(3) in distribution its force miscalibration stays ≤ 0.05 on every (system, fit), and
its force and energy NLL, each the mean over a system's fits, are no worse than the
default's by more than 0.02 nats on any system. A system counts once all three fits
of both wrappers are in.
"""

from __future__ import annotations

import os

import numpy as np

from llpr_energy_apart import CANDIDATE, LLPR
from llpr_term import NLL_SLACK, read_rows
from shift_goal import GOALS
from shift_unseen import COVER, sharpness, shifts_of

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = os.path.join(HERE, "results", "shift_llpr_energy_apart_seeds.json")
UNSEEN = os.path.join(HERE, "results", "shift_llpr_energy_apart_unseen_seeds.json")
FITS = (0, 1, 2)
#: The first round's eleven systems, whose own shifts the rule counts (Ag₃Au's own rows,
#: if run, are for information).
OWN_SYSTEMS = ("ethanol", "acac", "copper", "alloy", "agpd", "ptni", "platinum", "nial",
               "nicu", "aupd", "cupd")


def complete(rows: list[dict]) -> set:
    """The systems with rows of both wrappers on every fit."""
    have = {(r["system"], r["wrapper"], r.get("base_seed", 0)) for r in rows}
    return {s for s, _, _ in have
            if all((s, w, k) in have for w in (LLPR, CANDIDATE) for k in FITS)}


def worst_cells(rows: list[dict], wrapper: str, by_split: bool) -> dict:
    """Per (system, fit) cell, or per (system, fit, split): the worst coverage of each
    target over its shifts."""
    cells = {}
    for r in rows:
        if r["wrapper"] != wrapper or r["split"].startswith("in dist"):
            continue
        key = (r["system"], r.get("base_seed", 0)) + ((r["split"],) if by_split else ())
        cell = cells.setdefault(key, dict.fromkeys(GOALS, 1.0))
        for target in GOALS:
            cell[target] = min(cell[target], r[COVER[target]])
    return cells


def shift_part(rows: list[dict], by_split: bool) -> tuple[list, int, int]:
    """The cells the default met and the candidate misses (either target), and on how
    many cells each meets the energy goal (parts (1) and (2))."""
    systems = complete(rows)
    rows = [r for r in rows if r["system"] in systems]
    before, after = (worst_cells(rows, w, by_split) for w in (LLPR, CANDIDATE))
    lost = [(key, target) for key, cell in before.items() for target, goal in GOALS.items()
            if cell[target] >= goal > after[key][target]]
    met = [sum(c["energy"] >= GOALS["energy"] for c in cells.values())
           for cells in (before, after)]
    return lost, met[0], met[1]


def in_dist_part(rows: list[dict]) -> tuple[list[str], list]:
    """Per system, the mean in-distribution NLLs over its fits; the (system, fit) cells
    miscalibrated beyond 0.05 and the systems beyond the NLL slack (part (3))."""
    lines, misses = [], []
    for system in sorted(complete(rows)):
        mine = {w: [r for r in rows if r["system"] == system and r["wrapper"] == w
                    and r["split"].startswith("in dist")] for w in (LLPR, CANDIDATE)}
        misses += [(system, r.get("base_seed", 0)) for r in mine[CANDIDATE]
                   if r["force_miscal"] > 0.05]
        mean = {w: {k: float(np.mean([r[k] for r in mine[w]]))
                    for k in ("force_nll", "energy_nll")} for w in mine}
        worse = max(mean[CANDIDATE][k] - mean[LLPR][k] for k in mean[LLPR])
        if worse > NLL_SLACK:
            misses.append(system)
        lines.append(f"  {system}: mean F NLL {mean[LLPR]['force_nll']:.3f} -> "
                     f"{mean[CANDIDATE]['force_nll']:.3f}, E NLL "
                     f"{mean[LLPR]['energy_nll']:.3f} -> {mean[CANDIDATE]['energy_nll']:.3f}")
    return lines, misses


def verdict(own: list[dict], unseen: list[dict]) -> list[str]:
    own_lost, own_before, own_after = shift_part(own, by_split=False)
    new_lost, new_before, new_after = shift_part(unseen, by_split=True)
    lines, dist_misses = in_dist_part(own)
    passes = (not own_lost and own_after >= own_before and not new_lost
              and new_after >= new_before and not dist_misses)
    return lines + [
        *(f"  far out, {name} (for information): {far(rows)}"
          for name, rows in (("own", own), ("unseen", unseen))),
        f"  systems with all three fits: own {len(complete(own))}, unseen "
        f"{len(complete(unseen))}",
        f"  (1) own-shift cells lost: {own_lost or 'none'}; energy goal met on "
        f"{own_before} -> {own_after} cells",
        f"  (2) unseen cells lost: {new_lost or 'none'}; energy goal met on "
        f"{new_before} -> {new_after} cells",
        f"  (3) in distribution missed: {dist_misses or 'none'}",
        f"  passes: {passes}"]


def far(rows: list[dict]) -> str:
    """The energies' sharpness and mean NLL over the shifts of ``rows``, the default's ->
    the candidate's."""
    shifts = [shifts_of(rows, w) for w in (LLPR, CANDIDATE)]
    ratio = " -> ".join(f"{sharpness(s, 'energy'):.2f}" for s in shifts)
    nll = " -> ".join(f"{np.mean([r['energy_nll'] for r in s]):.2f}" for s in shifts)
    return f"median E std / MAE {ratio}, mean E NLL {nll} over the shifts"


def main(argv=None) -> None:
    own, unseen = read_rows(argv, __doc__, OWN, UNSEEN)
    own = [r for r in own if r["system"] in OWN_SYSTEMS]
    print(CANDIDATE + " on three fits")
    print("\n".join(verdict(own, unseen)))


if __name__ == "__main__":
    main()
