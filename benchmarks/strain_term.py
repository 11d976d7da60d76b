"""The strain term's round (2026-12-05, ``docs/shift.md``, "The strain term"): the shift
table's rows (base model 0) and the fit-to-fit rows (base models 1 and 2) before
(calibration data without stress labels) and after (EMT's stress on the EMT systems'
``val``, so ``calibrate`` fits the strain term):

* per system with strained cells, wrapper and base model (default calibration): the
  strained cells' energy coverage, and their mean energy std per atom over the energy
  MAE per atom, before → after, and how many fits meet the energy goal on them;
* every other row of both runs (same system, wrapper, method, split): the largest change
  of a coverage (0 where the term is 0, which it is by construction off strained cells);
* per wrapper, over the fits (system, base model) in both, how many meet each goal on
  every shift before → after (``shift_seeds.refit_table``; the molecules' rows, which
  the term cannot change, read from the files before).

    git show fdc9681:benchmarks/results/shift.json > /tmp/shift_before.json
    git show 76648dd:benchmarks/results/shift.json > /tmp/shift_strain.json
    git show 76648dd:benchmarks/results/shift_seeds_strain.json > /tmp/shift_seeds_strain.json
    python benchmarks/strain_term.py --before /tmp/shift_before.json \
        benchmarks/results/shift_seeds_defaults.json benchmarks/results/shift_seeds_shallow.json \
        --after /tmp/shift_strain.json /tmp/shift_seeds_strain.json

(the files after as the round left them: the shallow ensemble's and the evidential
head's rows were rerun since under later tags, ``shift_tags.LATER_DEFAULTS``, and a
wrapper without rows tagged with the strain term is named, not silently counted short).

``benchmarks/refit_defaults.py BEFORE AFTER --defaults "2026-12-05, strain term"`` gives
the worst-shift coverages and the goal counts.
"""

from __future__ import annotations

import argparse
import json

from refit_defaults import WRAPPERS
from shift_goal import E_COVER
from shift_seeds import refit_table
from shift_tags import MOLECULES, STRAIN_TERM

STRAINED = "strained 300 K"
TAG = STRAIN_TERM


def _key(row: dict) -> tuple:
    return row["system"], row["wrapper"], row.get("base_seed", 0), row["method"], row["split"]


def _rows(paths: list[str], tag=None) -> dict:
    """The README's wrappers' rows of the files at ``paths`` by (system, wrapper, base
    model, method, split), later files first; ``tag``: those tagged so alone."""
    out = {}
    for path in paths:
        for r in json.load(open(path))["rows"]:
            if r["wrapper"] in WRAPPERS and (tag is None or r.get("defaults") == tag):
                out[_key(r)] = r
    return out


def _sharpness(row: dict) -> float:
    return row["energy_std_per_atom"] / row["energy_mae_per_atom"]


def strained_table(before: dict, after: dict) -> str:
    """Markdown: the strained cells' energy coverage and std ÷ MAE before → after, and
    per wrapper the fits meeting the energy goal on them before → after."""
    lines = ["| system | wrapper | base model | strained E cover | strained E std ÷ MAE |",
             "|---|---|---|---|---|"]
    keys = sorted((k for k in after if k[4] == STRAINED and k[3] == "default" and k in before),
                  key=lambda k: (k[0], WRAPPERS.index(k[1]), k[2]))
    met = {}
    for key in keys:
        b, a = before[key], after[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {b['energy_cov95']:.3f} → "
                     f"{a['energy_cov95']:.3f} | {_sharpness(b):.2f} → {_sharpness(a):.2f} |")
        counts = met.setdefault(key[1], [0, 0, 0])
        counts[0] += 1
        counts[1] += b["energy_cov95"] >= E_COVER
        counts[2] += a["energy_cov95"] >= E_COVER
    lines += ["", "| wrapper | fits | strained E goal met, before → after |", "|---|---|---|"]
    lines += [f"| {w} | {c[0]} | {c[1]} → {c[2]} |" for w, c in met.items()]
    return "\n".join(lines)


def largest_other_change(before: dict, after: dict) -> tuple[float, int]:
    """The largest |Δ coverage| (forces or energies) over the rows both hold off the
    strained cells, and how many rows that is."""
    keys = [k for k in after if k in before and k[4] != STRAINED]
    changes = [abs(after[k][name] - before[k][name]) for k in keys
               for name in ("force_cov95", "energy_cov95")]
    return max(changes, default=0.0), len(keys)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", nargs="+", required=True,
                        help="results files before the strain term")
    parser.add_argument("--after", nargs="+", required=True,
                        help="results files after (rows tagged with the strain term)")
    args = parser.parse_args(argv)
    before, after = _rows(args.before), _rows(args.after, TAG)
    missing = sorted({k[1] for k in before if k[0] not in MOLECULES} - {k[1] for k in after})
    if missing:
        print(f"no rows tagged {TAG!r} after for {', '.join(missing)}: their rows were "
              "rerun under later tags (module notes: the files of the round)\n")
    print(strained_table(before, after))
    change, n = largest_other_change(before, after)
    print(f"\nlargest coverage change off the strained cells: {change:.3g} over {n} rows\n")
    # per fit, every shift: the molecules' rows are the same after (no periodic cell, no
    # stress label, no term), so they are read from the files before
    same = {k: r for k, r in before.items() if k[0] in MOLECULES}
    print(refit_table(list(before.values()), list({**same, **after}.values())))


if __name__ == "__main__":
    main()
