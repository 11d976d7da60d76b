"""Two wrappers' rows of saved shift results side by side, split by split.

    python benchmarks/compare_rows.py benchmarks/results/shift_members_recentring.json \
        --a "DeepEnsemble (3)" --b "DeepEnsemble (3, members recentred)"

(one wrapper under two recalibration methods: the same name for --a and --b, and
--method-b.)

Reads the ``rows`` of one or more ``shift.py`` result files (``--out``) and prints,
per system and split where both wrappers have a row of the same recalibration
method, the 95 % energy and force coverage, the energy NLL, the energy MAE per
atom (meV) and the mean energy std ÷ MAE, a → b; then, per system, the mean
change of the energy NLL. With ``--forces``: the force coverage, miscalibration
area, NLL, MAE (meV/Å) and mean std ÷ MAE (sharpness), and the mean change of
the force NLL. No run: the numbers are the files'.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

FIELDS = (("E cover", "energy_cov95", 1.0, ".3f"), ("F cover", "force_cov95", 1.0, ".3f"),
          ("E NLL", "energy_nll", 1.0, ".2f"), ("E MAE meV/atom", "energy_mae_per_atom",
                                                 1e3, ".3f"),
          ("E std/MAE", "energy_std_per_mae", 1.0, ".2f"))
FORCE_FIELDS = (("F cover", "force_cov95", 1.0, ".3f"), ("F miscal.", "force_miscal", 1.0,
                                                          ".3f"),
                ("F NLL", "force_nll", 1.0, ".2f"), ("F MAE meV/Å", "force_mae", 1e3, ".2f"),
                ("F std/MAE", "force_std_per_mae", 1.0, ".2f"))


def paired(paths, a: str, b: str, method: str, method_b: str | None = None) -> dict:
    """``{(system, split): (row of a, row of b)}`` over the files, in their order: a's
    rows of ``method``, b's of ``method_b`` (None: ``method`` too; a and b may be one
    wrapper under two methods)."""
    wanted = {(a, method): "a", (b, method if method_b is None else method_b): "b"}
    rows: dict = {}
    for path in paths:
        with open(path) as fh:
            for row in json.load(fh)["rows"]:
                role = wanted.get((row["wrapper"], row["method"]))
                if role is not None:
                    rows.setdefault((row["system"], row["split"]), {})[role] = row
    return {key: (pair["a"], pair["b"]) for key, pair in rows.items() if len(pair) == 2}


def _cell(row: dict, key: str, scale: float, fmt: str) -> str:
    """``row[key]`` times ``scale`` formatted, or "n/a" where the row lacks it."""
    return "n/a" if row.get(key) is None else f"{scale * row[key]:{fmt}}"


def _with_sharpness(row: dict) -> dict:
    """``row`` with ``force_std_per_mae`` and ``energy_std_per_mae``, each target's mean
    std over its MAE (None where the row lacks either)."""
    def ratio(std, mae):
        return std / mae if std is not None and mae else None

    return {**row, "force_std_per_mae": ratio(row.get("force_std"), row.get("force_mae")),
            "energy_std_per_mae": ratio(row.get("energy_std_per_atom"),
                                        row.get("energy_mae_per_atom"))}


def lines(pairs: dict, forces: bool = False) -> list[str]:
    """Per split a → b (the energy fields, or with ``forces`` the force fields), then
    per system the mean change of that target's NLL (over the splits where both rows
    have it)."""
    fields, target = (FORCE_FIELDS, "force") if forces else (FIELDS, "energy")
    out, nll = [], {}
    for (system, split), (one, two) in pairs.items():
        one, two = _with_sharpness(one), _with_sharpness(two)
        cells = [f"{name} {_cell(one, key, scale, fmt)} → {_cell(two, key, scale, fmt)}"
                 for name, key, scale, fmt in fields]
        out.append(f"{system:<9} {split:<34} " + "; ".join(cells))
        if one.get(f"{target}_nll") is not None and two.get(f"{target}_nll") is not None:
            nll.setdefault(system, []).append(two[f"{target}_nll"] - one[f"{target}_nll"])
    for system, changes in nll.items():
        out.append(f"{system:<9} mean {target} NLL change {np.mean(changes):+.3f} over "
                   f"{len(changes)} splits")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="shift.py result files (--out)")
    parser.add_argument("--a", required=True, help="the first wrapper's name")
    parser.add_argument("--b", required=True, help="the second wrapper's name")
    parser.add_argument("--method", default="default", help="recalibration method")
    parser.add_argument("--method-b", default=None,
                        help="the second wrapper's recalibration method (default: --method)")
    parser.add_argument("--forces", action="store_true",
                        help="the force fields (coverage, miscalibration, NLL, std ÷ MAE)")
    args = parser.parse_args(argv)
    pairs = paired(args.files, args.a, args.b, args.method, args.method_b)
    if not pairs:
        parser.error(f"no split has rows of both {args.a!r} and {args.b!r}")
    print("\n".join(lines(pairs, args.forces)))


if __name__ == "__main__":
    main()
