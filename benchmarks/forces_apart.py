"""The round for the forces' latent-distance term fitted apart (docs/shift.md, "The
forces' term fitted apart: a round for LLPR and the shallow ensemble"):
``LastLayerLaplace(model, force_combination="max").fit(train, val)`` and
``ShallowEnsemble(model, force_combination="max")`` against each wrapper's default rows
of the same runs, by the rule fixed before them.

    python benchmarks/forces_apart.py

Why: on AgPd's 108-atom cells (unseen kinds, looked at since 2026-12-05) LLPR's and the
shallow ensemble's forces cover 0.892 and 0.896, latent distance alone's 0.953; a
joint fit of λ_F σ²_own + a_F + b_F u² passes on only the term's share of its growth.

The rule, for each wrapper apart (``benchmarks/llpr_term.py``'s with that wrapper's
default as the baseline): the candidate becomes its default if (1) on the own shifts of
the eleven systems it meets both coverage goals on every system; (2) on the unseen kinds
no split the default covered is missed, and the force goal is met on more splits; (3) in
distribution its force miscalibration area stays ≤ 0.05 and its force and energy NLL are
no worse than the default's by more than 0.02 nats on any system. Printed besides: the
forces' sharpness far out (median std ÷ MAE over the unseen splits).
"""

from __future__ import annotations

import os

import llpr_term
from llpr_term import read_rows
from shift_unseen import sharpness, shifts_of

HERE = os.path.dirname(os.path.abspath(__file__))
OWN = os.path.join(HERE, "results", "shift_forces_apart.json")
UNSEEN = os.path.join(HERE, "results", "shift_forces_apart_unseen.json")
#: Each wrapper's default row and its candidate's.
PAIRS = {"LastLayerLaplace": "LastLayerLaplace (force term apart)",
         "ShallowEnsemble": "ShallowEnsemble (forces: larger of two variances)"}


def verdict(own: list[dict], unseen: list[dict], default: str, candidate: str) -> list[str]:
    """The rule's parts for one wrapper (``llpr_term.verdict`` against its default),
    with the forces' sharpness far out before the verdict."""
    lines = llpr_term.verdict(own, unseen, candidate, baseline=default)
    far = {w: sharpness(shifts_of(unseen, w), "force") for w in (default, candidate)}
    return lines[:-1] + [f"  far out: median F std / MAE over the unseen splits "
                         f"{far[default]:.2f} -> {far[candidate]:.2f} (for information)",
                         lines[-1]]


def main(argv=None) -> None:
    own, unseen = read_rows(argv, __doc__, OWN, UNSEEN)
    for default, candidate in PAIRS.items():
        if not shifts_of(own, candidate):
            print(f"{candidate}: no rows")
            continue
        print(candidate)
        print("\n".join(verdict(own, unseen, default, candidate)))


if __name__ == "__main__":
    main()
