"""Which shift sets ``WideCellWarning`` flags: per EMT system of the shift benchmark,
the fraction of each test set's structures that calibrated predictions warn of
(cells at least twice the model's cutoff wide, every calibration cell narrower).

    python benchmarks/wide_cells.py [--parts copper alloy ...]

The sets are the shift table's (``shift.py``) and the shift kinds no round saw
(``shift.py --unseen``); the calibration cells are each system's ``val``, the cutoff
its model's (``shift.MODEL``). Geometry only: no model is trained or evaluated, so
the fractions are exact. The warning should flag every 108-atom bulk set (the one
kind the single-model wrappers missed) and no other set (all covered).
"""

from __future__ import annotations

import argparse


from mlipuq.uq.wide_cells import calibration_width, wide_structures
from shift import MODEL
from shift_data import HELD_OUT, PART_SETS, UNSEEN_SEEDS, unseen_shifts


def flagged_fraction(dataset, cutoff: float, widest) -> float:
    """Fraction of ``dataset``'s structures the warning names."""
    return len(wide_structures(dataset, cutoff, widest)) / len(dataset)


def system_rows(part: str) -> list:
    """``(set name, structures, fraction flagged)`` of every test set of ``part``, and
    the calibration cells' width and the cutoff as the first row."""
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    tests = {**tests, **unseen_shifts(train, UNSEEN_SEEDS[part], False)}
    cutoff, widest = MODEL[part]["cutoff"], calibration_width(val)
    rows = [(f"calibration cells {widest:.2f} Å wide, cutoff {cutoff:g} Å", len(val), None)]
    return rows + [(name, len(data), flagged_fraction(data, cutoff, widest))
                   for name, data in tests.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(UNSEEN_SEEDS))
    args = parser.parse_args(argv)
    for part in args.parts:
        print(f"\n{part}")
        for name, n, fraction in system_rows(part):
            shown = "" if fraction is None else f"{fraction:>9.2f}"
            print(f"  {name:<52}{n:>5}{shown}")


if __name__ == "__main__":
    main()
