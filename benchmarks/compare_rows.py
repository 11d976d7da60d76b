"""Two wrappers' rows of saved shift results side by side, split by split.

    python benchmarks/compare_rows.py benchmarks/results/shift_members_recentring.json \
        --a "DeepEnsemble (3)" --b "DeepEnsemble (3, members recentred)"

Reads the ``rows`` of one or more ``shift.py`` result files (``--out``) and prints,
per system and split where both wrappers have a row of the same recalibration
method, the 95 % energy and force coverage, the energy NLL and the energy MAE per
atom (meV), a → b; then, per system, the mean change of the energy NLL. No run:
the numbers are the files'.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

FIELDS = (("E cover", "energy_cov95", 1.0, ".3f"), ("F cover", "force_cov95", 1.0, ".3f"),
          ("E NLL", "energy_nll", 1.0, ".2f"), ("E MAE meV/atom", "energy_mae_per_atom",
                                                 1e3, ".3f"))


def paired(paths, a: str, b: str, method: str) -> dict:
    """``{(system, split): (row of a, row of b)}`` over the files, in their order."""
    rows: dict = {}
    for path in paths:
        with open(path) as fh:
            for row in json.load(fh)["rows"]:
                if row["method"] == method and row["wrapper"] in (a, b):
                    rows.setdefault((row["system"], row["split"]), {})[row["wrapper"]] = row
    return {key: (pair[a], pair[b]) for key, pair in rows.items() if len(pair) == 2}


def _cell(row: dict, key: str, scale: float, fmt: str) -> str:
    """``row[key]`` times ``scale`` formatted, or "n/a" where the row lacks it."""
    return "n/a" if row.get(key) is None else f"{scale * row[key]:{fmt}}"


def lines(pairs: dict) -> list[str]:
    out, nll = [], {}
    for (system, split), (one, two) in pairs.items():
        cells = [f"{name} {_cell(one, key, scale, fmt)} → {_cell(two, key, scale, fmt)}"
                 for name, key, scale, fmt in FIELDS]
        out.append(f"{system:<9} {split:<34} " + "; ".join(cells))
        nll.setdefault(system, []).append(two["energy_nll"] - one["energy_nll"])
    for system, changes in nll.items():
        out.append(f"{system:<9} mean energy NLL change {np.mean(changes):+.3f} over "
                   f"{len(changes)} splits")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="shift.py result files (--out)")
    parser.add_argument("--a", required=True, help="the first wrapper's name")
    parser.add_argument("--b", required=True, help="the second wrapper's name")
    parser.add_argument("--method", default="default", help="recalibration method")
    args = parser.parse_args(argv)
    pairs = paired(args.files, args.a, args.b, args.method)
    if not pairs:
        parser.error(f"no split has rows of both {args.a!r} and {args.b!r}")
    print("\n".join(lines(pairs)))


if __name__ == "__main__":
    main()
