"""The check on shift kinds no round saw (docs/shift.md, "Shift kinds no round saw"):
today's defaults on the shifts of ``shift.py --unseen``, beside the same fits on the
shift table's own shifts (``results/shift.json``).

    python benchmarks/shift_unseen.py benchmarks/results/shift_unseen_*.json

Prints, per wrapper, on how many shifts the 95 % intervals meet the goals (forces
≥ 0.90, energies ≥ 0.85), the worst coverages and where, and the median over shifts
of the mean std ÷ MAE on these shifts and on the table's (sharpness); per system,
each wrapper's worst coverages; on the 108-atom bulk the growth of the force error and
of each wrapper's force std over in distribution (every training temperature; the
same temperature: ``benchmarks/cell_size.py``); and the largest difference between
the in-distribution rows of both files (the same fits: zero up to run-to-run noise).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from shift_goal import GOALS, SHARPNESS, WRAPPERS

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "results", "shift.json")
COVER = {"force": "force_cov95", "energy": "energy_cov95"}


def default_rows(rows: list[dict], frontier: bool = False) -> list[dict]:
    """The default calibration's rows on base model 0 with refitted reference
    energies (the shift table's fits); ``frontier``: those calibrated with frontier
    structures too (``shift.py --frontier``), else those without."""
    return [r for r in rows if r["method"].split(" + ")[0] == "default"
            and ("frontier" in r["method"]) == frontier and not r.get("base_seed", 0)
            and r.get("refit_references", False)]


def shifts_of(rows: list[dict], wrapper: str, systems=None) -> list[dict]:
    return [r for r in rows if r["wrapper"] == wrapper and not r["split"].startswith("in dist")
            and (systems is None or r["system"] in systems)]


def sharpness(rows: list[dict], target: str) -> float:
    """The median over ``rows`` of the mean std ÷ MAE of ``target``."""
    std, mae = SHARPNESS[target]
    return float(np.median([r[std] / r[mae] for r in rows])) if rows else float("nan")


def cover_text(value: float, target: str) -> str:
    """``value`` to 3 decimals, to 4 where a miss would round up to the goal."""
    text = f"{value:.3f}"
    return f"{value:.4f}" if value < GOALS[target] <= float(text) else text


def _worst(rows: list[dict], target: str) -> str:
    worst = min(rows, key=lambda r: r[COVER[target]])
    return f"{cover_text(worst[COVER[target]], target)} ({worst['system']}, {worst['split']})"


def summary_table(unseen: list[dict], table: list[dict]) -> str:
    """Per wrapper: goals met, worst coverages, and sharpness here and on the table's
    shifts of the same systems."""
    lines = ["| wrapper | shifts | F goal met | E goal met | worst F cover | worst E cover "
             "| median F std÷MAE: unseen / table's shifts "
             "| median E std÷MAE: unseen / table's shifts |", "|---|---|---|---|---|---|---|---|"]
    for wrapper in WRAPPERS:
        mine = shifts_of(unseen, wrapper)
        if not mine:
            continue
        theirs = shifts_of(table, wrapper, {r["system"] for r in mine})
        met = [sum(r[COVER[t]] >= GOALS[t] for r in mine) for t in ("force", "energy")]
        lines.append(
            f"| {wrapper} | {len(mine)} | {met[0]} | {met[1]} | {_worst(mine, 'force')} | "
            f"{_worst(mine, 'energy')} | {sharpness(mine, 'force'):.1f} / "
            f"{sharpness(theirs, 'force'):.1f} | {sharpness(mine, 'energy'):.1f} / "
            f"{sharpness(theirs, 'energy'):.1f} |")
    return "\n".join(lines)


def system_table(unseen: list[dict]) -> str:
    """Per system and wrapper: the worst force and energy coverage over its shifts
    (a miss marked ✗)."""
    systems = list(dict.fromkeys(r["system"] for r in unseen))
    wrappers = [w for w in WRAPPERS if shifts_of(unseen, w)]
    lines = ["| system | " + " | ".join(f"{w}: worst F / E" for w in wrappers) + " |",
             "|---|" + "---|" * len(wrappers)]
    for system in systems:
        cells = []
        for wrapper in wrappers:
            mine = shifts_of(unseen, wrapper, {system})
            if not mine:
                cells.append("—")
                continue
            parts = []
            for target in ("force", "energy"):
                worst = min(r[COVER[target]] for r in mine)
                parts.append(cover_text(worst, target) + ("" if worst >= GOALS[target] else " ✗"))
            cells.append(" / ".join(parts))
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth_table(unseen: list[dict], prefix: str = "bulk 108 atoms") -> str:
    """Per system, on its shift named ``prefix``…: the force MAE over the
    in-distribution MAE (LLPR's rows: the base model's forces), and each wrapper's
    mean force std over its in-distribution one."""
    systems = list(dict.fromkeys(r["system"] for r in unseen))
    wrappers = [w for w in WRAPPERS if shifts_of(unseen, w)]
    lines = ["| system | F MAE ÷ in-dist | " + " | ".join(f"{w}: F std ÷ in-dist"
                                                       for w in wrappers) + " |",
             "|---|---|" + "---|" * len(wrappers)]
    for system in systems:
        def ratio(wrapper, key):
            rows = [r for r in unseen if (r["system"], r["wrapper"]) == (system, wrapper)]
            shifted = [r for r in rows if r["split"].startswith(prefix)]
            base = [r for r in rows if r["split"].startswith("in dist")]
            return shifted[0][key] / base[0][key] if shifted and base else float("nan")
        cells = [f"{ratio(w, 'force_std'):.2f}" for w in wrappers]
        lines.append(f"| {system} | {ratio(WRAPPERS[0], 'force_mae'):.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def in_distribution_gap(unseen: list[dict], table: list[dict]) -> float:
    """The largest absolute difference of any score between the in-distribution rows
    of the two files (matched by system and wrapper); nan where none match."""
    theirs = {(r["system"], r["wrapper"]): r for r in table if r["split"].startswith("in dist")}
    keys = ("force_cov95", "energy_cov95", "force_nll", "energy_nll", "force_std")
    gaps = [abs(r[k] - theirs[r["system"], r["wrapper"]][k])
            for r in unseen if r["split"].startswith("in dist")
            and (r["system"], r["wrapper"]) in theirs for k in keys]
    return max(gaps) if gaps else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="result files of shift.py --unseen")
    parser.add_argument("--table", default=TABLE, help="the shift table's result file")
    parser.add_argument("--frontier", action="store_true",
                        help="the rows calibrated with frontier structures too "
                        "(shift.py --unseen --frontier N)")
    args = parser.parse_args(argv)
    unseen = default_rows([r for path in args.files for r in json.load(open(path))["rows"]],
                          args.frontier)
    table = default_rows(json.load(open(args.table))["rows"])
    print(summary_table(unseen, table))
    print()
    print(system_table(unseen))
    print()
    print(growth_table(unseen))
    print(f"\nlargest in-distribution difference from {os.path.basename(args.table)}: "
          f"{in_distribution_gap(unseen, table):.2e}")


if __name__ == "__main__":
    main()
