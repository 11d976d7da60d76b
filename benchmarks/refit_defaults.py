"""The shift table's rows before and after the defaults of 2026-12-04 (refitted
reference energies; latent distance's and the evidential head's structure distance in
the held-out covariance; the head's distance share): per system rerun and wrapper, with
its default calibration, the worst shift's force and energy coverage, the
in-distribution force miscalibration and energy NLL, the mean energy std over the MAE
on the shifts, and the goal counts over the systems rerun (``docs/shift.md``, "The
shift table on refitted base models").

    git show ce775d9:benchmarks/results/shift.json > /tmp/shift_before.json
    python benchmarks/refit_defaults.py /tmp/shift_before.json benchmarks/results/shift.json
"""

from __future__ import annotations

import argparse
import json

from shift_goal import MISCAL
from structure_covariance import goals, mean, summary, worst

WRAPPERS = ("LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "ShallowEnsemble",
            "EvidentialHead", "DeepEnsemble (3)")


def entries(rows: list[dict], defaults=None) -> dict:
    """(system, wrapper) -> ``structure_covariance.summary`` of the default method's rows
    on base model 0 (``defaults``: only rows tagged so; None: any)."""
    chosen = [r for r in rows if r["method"] == "default" and r["wrapper"] in WRAPPERS
              and not r.get("base_seed", 0)
              and (defaults is None or r.get("defaults") == defaults)]
    out = {}
    for system in {r["system"] for r in chosen}:
        for wrapper, entry in summary([r for r in chosen if r["system"] == system]).items():
            if "energy_nll" in entry and entry["shifts"]:  # in distribution and shifted
                out[(system, wrapper)] = entry
    return out


def numbers(entry: dict) -> dict:
    """The compared quantities of one (system, wrapper) entry."""
    return {"F": worst(entry, "force_cov95"), "E": worst(entry, "energy_cov95"),
            "miscal": entry["force_miscal"], "nll": entry["energy_nll"],
            "sharp": mean(entry, "std_over_mae")}


def compare(before_rows: list[dict], after_rows: list[dict], defaults: str) -> str:
    """The markdown comparison (see the notes)."""
    before, after = entries(before_rows), entries(after_rows, defaults)
    lines = ["| system | wrapper | worst shift F cover | worst shift E cover | in-dist F "
             "miscal. | in-dist E NLL | mean shift E std÷MAE |", "|---|---|---|---|---|---|---|"]
    counts = {w: [0, 0, 0, 0, 0] for w in WRAPPERS}  # fits, F before/after, E before/after
    for key in sorted(after, key=lambda k: (k[0], WRAPPERS.index(k[1]))):
        if key not in before:
            continue
        b, a = numbers(before[key]), numbers(after[key])
        (f_before, e_before), (f_after, e_after) = goals(before[key]), goals(after[key])
        c = counts[key[1]]
        for i, met in enumerate((True, f_before, f_after, e_before, e_after)):
            c[i] += met
        mark = "" if a["miscal"] <= MISCAL else " ✗"
        lines.append(f"| {key[0]} | {key[1]} | {b['F']:.3f} → {a['F']:.3f} | {b['E']:.3f} → "
                     f"{a['E']:.3f} | {b['miscal']:.3f} → {a['miscal']:.3f}{mark} | "
                     f"{b['nll']:.2f} → {a['nll']:.2f} | {b['sharp']:.1f} → {a['sharp']:.1f} |")
    lines += ["", "| wrapper | systems | force goal met (before → after) | energy goal met |",
              "|---|---|---|---|"]
    lines += [f"| {w} | {c[0]} | {c[1]} → {c[2]} | {c[3]} → {c[4]} |"
              for w, c in counts.items() if c[0]]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="shift.json before the change (ce775d9's)")
    parser.add_argument("after", help="shift.json with rows of the new defaults")
    parser.add_argument("--defaults", default="2026-12-04, refitted base models",
                        help="the tag of the rows after (shift.DEFAULTS)")
    args = parser.parse_args(argv)
    print(compare(json.load(open(args.before))["rows"], json.load(open(args.after))["rows"],
                  args.defaults))


if __name__ == "__main__":
    main()
