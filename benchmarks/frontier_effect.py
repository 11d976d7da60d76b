"""What calibrating on ten labelled frontier structures does under today's defaults
(``docs/shift.md``, "Calibrating on the frontier, with today's defaults"): per system and
default wrapper, the worst coverage over the shifts other than the frontier's, with the
validation set alone (``shift.json``) and with the frontier structures added
(``shift_frontier.json``), and how many systems meet each goal either way.

    python benchmarks/frontier_effect.py benchmarks/results/shift.json \\
        benchmarks/results/shift_frontier.json
"""

from __future__ import annotations

import argparse
import json

from shift import FRONTIER, current
from shift_goal import E_COVER, F_COVER

WRAPPERS = ("LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "ShallowEnsemble",
            "EvidentialHead", "DeepEnsemble (3)")


def worst(rows: list[dict], system: str, wrapper: str, method: str) -> dict:
    """Worst force and energy coverage over the shifts but the frontier's, and the
    in-distribution energy NLL and force miscalibration, of today's rows (base model 0)."""
    chosen = [r for r in rows if (r["system"], r["wrapper"], r["method"]) ==
              (system, wrapper, method) and r.get("base_seed", 0) == 0 and current(r)]
    shifts = [r for r in chosen if not r["split"].startswith("in dist")
              and r["split"] != FRONTIER[system]]
    if not shifts:
        raise ValueError(f"no current rows of {system} / {wrapper} / {method}")
    inside = next(r for r in chosen if r["split"].startswith("in dist"))
    return {"F": min(r["force_cov95"] for r in shifts),
            "E": min(r["energy_cov95"] for r in shifts),
            "nll": inside["energy_nll"], "miscal": inside["force_miscal"]}


def report(table: list[dict], frontier: list[dict]) -> str:
    systems = [s for s in FRONTIER if any(r["system"] == s for r in frontier)]
    lines = ["| system (frontier shift) | wrapper | worst other shift F / E cover: val alone "
             "→ + 10 frontier | in-dist E NLL | in-dist F miscal. |", "|---|---|---|---|---|"]
    met = {w: [0, 0, 0, 0] for w in WRAPPERS}
    for s in systems:
        for w in WRAPPERS:
            a = worst(table, s, w, "default")
            b = worst(frontier, s, w, f"default + 10 frontier ({FRONTIER[s]})")
            lines.append(f"| {s} ({FRONTIER[s]}) | {w} | {a['F']:.3f} / {a['E']:.3f} → "
                         f"{b['F']:.3f} / {b['E']:.3f} | {a['nll']:.2f} → {b['nll']:.2f} | "
                         f"{a['miscal']:.3f} → {b['miscal']:.3f} |")
            for i, x in enumerate((a, b)):
                met[w][2 * i] += x["F"] >= F_COVER
                met[w][2 * i + 1] += x["E"] >= E_COVER
    lines += ["", "| wrapper | force goal met (val alone → + frontier) | energy goal met |",
              "|---|---|---|"]
    lines += [f"| {w} | {c[0]} → {c[2]} | {c[1]} → {c[3]} |" for w, c in met.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="shift.json")
    parser.add_argument("frontier", help="shift_frontier.json")
    args = parser.parse_args(argv)
    print(report(json.load(open(args.table))["rows"], json.load(open(args.frontier))["rows"]))


if __name__ == "__main__":
    main()
