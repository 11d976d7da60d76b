"""Fit-to-fit spread of the shift goal: the single-model wrappers on several base
models of the same recipe (docs/shift.md, "Fit-to-fit spread").

    python benchmarks/shift_seeds.py --cache /tmp/fits --threads 2 --parts ethanol acac \\
        alloy ptni cupd nicu --seeds 0 1 2 --wrappers LastLayerLaplace LatentDistance
    python benchmarks/shift_seeds.py --from-json benchmarks/results/shift_seeds.json \\
        --docs docs/shift.md

    python benchmarks/shift_seeds.py --cache /tmp/fits --threads 2 --parts ethanol acac \\
        alloy ptni cupd nicu aupd --wrappers LastLayerLaplace LatentDistance EvidentialHead \\
        --refit-references          # the same networks, reference energies refitted
    python benchmarks/shift_seeds.py --from-json benchmarks/results/shift_seeds_refit.json \\
        --refit-references --before benchmarks/results/shift_seeds.json --docs docs/shift.md

Each seed K runs ``shift.py --base-seed K --methods default --update`` into one
results file (the base models are the deep ensemble's members, read from the
cache when there); seed 0's rows are the table's fits scored again, and are
compared with ``shift.json``'s. The table gives, per system and wrapper, each
base model's worst-shift force and energy coverage under the wrappers' default
calibration, and how many (system, base model) pairs meet each goal.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import shift
from shift_goal import E_COVER, F_COVER, _mark

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "shift_seeds.json")
REFIT_OUT = os.path.join(HERE, "results", "shift_seeds_refit.json")


def _worst(rows: list[dict], key: str) -> float:
    return min(r[key] for r in rows if not r["split"].startswith("in dist"))


def _per_seed(rows: list[dict]) -> dict:
    """(system, wrapper) → {base seed: that fit's rows} of the default calibration."""
    groups: dict = {}
    for r in rows:
        if r["method"] == "default":
            key = (r["system"], r["wrapper"])
            groups.setdefault(key, {}).setdefault(r.get("base_seed", 0), []).append(r)
    return groups


def seed_table(rows: list[dict]) -> str:
    """Per system and wrapper, each base model's worst-shift force and energy coverage
    (goals 0.90 and 0.85; ✗ where missed) and its mean energy std ÷ MAE under shift;
    then per wrapper the (system, base model) pairs that meet each goal."""
    order = [*shift.PART_SETS, *shift.HELD_OUT]
    groups = _per_seed(rows)
    lines = ["| system | wrapper | shifts: worst F cover per base model | shifts: worst E cover "
             "per base model | shifts: mean E std ÷ MAE per base model |", "|---|---|---|---|---|"]
    met: dict = {}
    for system, wrapper in sorted(groups, key=lambda k: (order.index(k[0]), k[1])):
        fits = dict(sorted(groups[system, wrapper].items()))
        cells = []
        for key, goal in (("force_cov95", F_COVER), ("energy_cov95", E_COVER)):
            worst = {s: _worst(r, key) for s, r in fits.items()}
            cells.append(" / ".join(f"{w:.3f}{_mark(w >= goal)}" for w in worst.values()))
            tally = met.setdefault(wrapper, {}).setdefault(key, [0, 0])
            tally[0] += sum(w >= goal for w in worst.values())
            tally[1] += len(worst)
        sharp = [np.mean([r["energy_std_per_atom"] / r["energy_mae_per_atom"] for r in fit
                          if not r["split"].startswith("in dist")]) for fit in fits.values()]
        seeds = ",".join(str(s) for s in fits)
        lines.append(f"| {system} | {wrapper} (seeds {seeds}) | {cells[0]} | {cells[1]} | "
                     + " / ".join(f"{x:.1f}" for x in sharp) + " |")
    lines += ["", "| wrapper | (system, base model) pairs meeting the force goal | "
              "meeting the energy goal |", "|---|---|---|"]
    for wrapper, tally in sorted(met.items()):
        f, e = tally["force_cov95"], tally["energy_cov95"]
        lines.append(f"| {wrapper} | {f[0]} of {f[1]} | {e[0]} of {e[1]} |")
    return "\n".join(lines)


def against_table(rows: list[dict], table_rows: list[dict]) -> str:
    """The largest difference of any coverage or std between seed 0's rows here and the
    shift table's rows of the same system, wrapper and split (default calibration)."""
    key = lambda r: (r["system"], r["wrapper"], r["split"])  # noqa: E731
    table = {key(r): r for r in table_rows if r["method"] == "default"}
    diffs = {}
    for r in rows:
        old = table.get(key(r))
        if r.get("base_seed", 0) == 0 and r["method"] == "default" and old is not None:
            for field in ("force_cov95", "energy_cov95", "force_std", "energy_std_per_atom"):
                scale = max(abs(old[field]), 1e-12) if "std" in field else 1.0
                diffs[field] = max(diffs.get(field, 0.0), abs(r[field] - old[field]) / scale)
    if not diffs:
        return "no seed-0 rows to compare with the shift table"
    return ("seed 0 against shift.json: largest difference "
            + ", ".join(f"{f} {d:.2g}{' (relative)' if 'std' in f else ''}"
                        for f, d in diffs.items()))


def refit_table(before: list[dict], after: list[dict]) -> str:
    """Per wrapper, over the (system, base model) fits in both: how many meet each goal
    with the base models as trained (``before``) and with their reference energies
    refitted (``after``), and the medians over fits of the in-distribution energy MAE
    and std (meV/atom) and of the worst-shift energy coverage."""
    b, a = _per_seed(before), _per_seed(after)
    lines = ["| wrapper | fits | force goal met | energy goal met | in-dist E MAE (median) "
             "| in-dist E std (median) | worst-shift E cover (median) |",
             "|---|---|---|---|---|---|---|"]
    for wrapper in sorted({w for _, w in a}):
        pairs = [(b[k][s], a[k][s]) for k in a if k[1] == wrapper and k in b
                 for s in a[k] if s in b[k]]
        if not pairs:
            continue
        cells = []
        for key, goal in (("force_cov95", F_COVER), ("energy_cov95", E_COVER)):
            met = [sum(_worst(rows, key) >= goal for rows in side) for side in zip(*pairs)]
            cells.append(f"{met[0]} → {met[1]}")
        for field in ("energy_mae_per_atom", "energy_std_per_atom"):
            med = [np.median([1000 * _in_dist(rows)[field] for rows in side])
                   for side in zip(*pairs)]
            cells.append(f"{med[0]:.2f} → {med[1]:.2f}")
        med = [np.median([_worst(rows, "energy_cov95") for rows in side]) for side in zip(*pairs)]
        cells.append(f"{med[0]:.3f} → {med[1]:.3f}")
        lines.append(f"| {wrapper} | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _in_dist(rows: list[dict]) -> dict:
    return next(r for r in rows if r["split"].startswith("in dist"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["ethanol", "acac", "alloy", "ptni",
                                                       "cupd", "nicu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--wrappers", nargs="+", default=None,
                        help="wrapper name prefixes (shift.py's); every single model if not given")
    parser.add_argument("--only", nargs="+", default=None,
                        help="exact wrapper names (default: each default wrapper selected)")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--from-json", default=None, help="rebuild the table only")
    parser.add_argument("--table", default=shift.TABLE_OUT,
                        help="the shift table's results, for seed 0's check")
    parser.add_argument("--docs", default=None, help="write the table between the "
                        "shift-seeds markers of this file")
    parser.add_argument("--before", default=None, help="with --refit-references: the rows "
                        "of the base models as trained (results/shift_seeds.json) to compare")
    parser.add_argument("--refit-references", action="store_true",
                        help="base models with their reference energies refitted after "
                        "training (shift.py's flag); results to results/shift_seeds_refit.json "
                        "unless --out says otherwise")
    args = parser.parse_args(argv)
    if args.refit_references and args.out == OUT:
        args.out = REFIT_OUT
    if not args.from_json:
        only = args.only or [w for w in SINGLE if shift.selected(w, args.wrappers)]
        for seed in args.seeds:
            shift.main(["--parts", *args.parts, "--methods", "default", "--threads",
                        str(args.threads), "--base-seed", str(seed), "--only", *only,
                        "--out", args.out, "--update",
                        *(["--refit-references"] if args.refit_references
                          else ["--no-refit-references"]),
                        *(["--cache", args.cache] if args.cache else [])])
    with open(args.from_json or args.out) as fh:
        rows = json.load(fh)["rows"]
    text = seed_table(rows)
    print(text)
    if args.before:
        with open(args.before) as fh:
            compared = refit_table(json.load(fh)["rows"], rows)
        print(compared)
        if args.docs:
            shift.write_between_markers(args.docs, compared, name="shift-refit-compare")
    if not args.refit_references and os.path.exists(args.table):  # (refit: differs by design)
        with open(args.table) as fh:
            print(against_table(rows, json.load(fh)["rows"]))
    if args.docs:
        marker = "shift-seeds-refit" if args.refit_references else "shift-seeds"
        shift.write_between_markers(args.docs, text, name=marker)


#: The single-model wrappers with their defaults (the deep ensemble needs all its members).
SINGLE = ("LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "EvidentialHead",
          "ShallowEnsemble")


if __name__ == "__main__":
    main()
