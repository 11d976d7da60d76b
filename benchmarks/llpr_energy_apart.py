"""The round for LLPR's energy term fitted apart (docs/shift.md, "LLPR's energy term
fitted apart"): ``LastLayerLaplace(model, energy_combination="max").fit(train, val)``
against LLPR's default (the joint fit, ``"sum"``) in the same runs, by the rule fixed
before them.

    python benchmarks/llpr_energy_apart.py

Why a round: the joint fit of λ_E, a_E and b_E on the demo's twenty validation
structures put λ_E = 0, dropping LLPR's own energy variance (energy NLL 0.38 nats worse
than LLPR alone's); the shallow ensemble's and the evidential head's energy terms are
fitted apart and the larger taken. The demo itself is not part of the rule.

The rule: ``"max"`` becomes LLPR's default if (1) on the own shifts of every system it
meets both coverage goals; (2) on the unseen kinds no split the default covered is
missed, and the energy goal is met on at least as many splits; (3) in distribution its
force miscalibration area stays ≤ 0.05 and its force and energy NLL are no worse than
the default's by more than 0.02 nats on any system; (4) with twenty validation
structures (the term fitted and the calibration on the same twenty, drawn with seed 0)
its in-distribution energy NLL is lower than the default's with the same twenty in
median over the systems. Printed besides: the energies' sharpness far out (median std ÷
MAE over the unseen splits) and the twenty-structure rows' coverage under shift.
"""

from __future__ import annotations

import os

import numpy as np

from llpr_term import in_dist_part, in_distribution, own_part, read_rows, unseen_part
from shift_unseen import sharpness, shifts_of
from shift_wrappers import FEW_VAL

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = os.path.join(HERE, "results", "shift_llpr_energy_apart.json")
UNSEEN = os.path.join(HERE, "results", "shift_llpr_energy_apart_unseen.json")
LLPR, CANDIDATE = "LastLayerLaplace", "LastLayerLaplace (energy term apart)"
FEW = {LLPR: f"LastLayerLaplace ({FEW_VAL} val)",
       CANDIDATE: f"LastLayerLaplace (energy term apart; {FEW_VAL} val)"}


def few_val_part(own: list[dict]) -> tuple[list[str], float]:
    """Per system, the in-distribution energy NLL of both with twenty validation
    structures (and, for information, their worst own-shift energy coverage); the
    median difference (candidate - default)."""
    before, after = (in_distribution(own, FEW[w]) for w in (LLPR, CANDIDATE))
    lines, diffs = [], []
    for system in sorted(set(before) & set(after)):
        a, b = before[system]["energy_nll"], after[system]["energy_nll"]
        diffs.append(b - a)
        cover = [min((r["energy_cov95"] for r in shifts_of(own, FEW[w], (system,))),
                     default=np.nan) for w in (LLPR, CANDIDATE)]
        lines.append(f"    {system}: E NLL {a:.3f} -> {b:.3f}; worst own-shift E "
                     f"coverage {cover[0]:.3f} -> {cover[1]:.3f}")
    return lines, float(np.median(diffs)) if diffs else np.nan


def verdict(own: list[dict], unseen: list[dict]) -> list[str]:
    lines, own_misses = own_part(own, CANDIDATE)
    dist_lines, dist_misses = in_dist_part(own, CANDIDATE)
    newly, met_before, met = unseen_part(unseen, CANDIDATE, target="energy")
    few_lines, few_diff = few_val_part(own)
    passes = (not own_misses and not newly and met >= met_before and not dist_misses
              and few_diff < 0)
    far = {w: sharpness(shifts_of(unseen, w), "energy") for w in (LLPR, CANDIDATE)}
    return lines + dist_lines + [
        f"  (1) own shifts missed: {own_misses or 'none'}",
        f"  (2) unseen splits newly missed: {newly or 'none'}; energy goal met on "
        f"{met_before} -> {met} of {len(shifts_of(unseen, CANDIDATE))}",
        f"  (3) in distribution missed: {dist_misses or 'none'}",
        f"  (4) with {FEW_VAL} validation structures:"] + few_lines + [
        f"      median E NLL change {few_diff:+.3f} nats",
        f"  far out: median E std / MAE over the unseen splits {far[LLPR]:.2f} -> "
        f"{far[CANDIDATE]:.2f} (for information)",
        f"  passes: {passes}"]


def main(argv=None) -> None:
    own, unseen = read_rows(argv, __doc__, OWN, UNSEEN)
    print(CANDIDATE)
    print("\n".join(verdict(own, unseen)))


if __name__ == "__main__":
    main()
