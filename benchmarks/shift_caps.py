"""The widening's factor capped (``widening_cap``): what a cap of 3, 10 or 30 does to
coverage and sharpness under shift, from the rows of ``shift_widening.py``.

Beyond the calibration range each calibrated std is multiplied by r ** p
(``mlipuq.calibration.extrapolation``). On MACE base models of EMT Cu the raw
stds far out already outgrew the errors (surfaces: r ≈ 370, so r ** 0.75 ≈ 85 on
a std that needed no widening; docs/shift.md), and ``calibrate(...,
widening_cap=C)`` stops the factor at C. ``shift_widening.py`` scores the rules
``capped 3``, ``capped 10`` and ``capped 30`` beside the uncapped ``structure``
rule; this script reads its rows at each wrapper's default powers
(:func:`default_powers`) and prints, per group of runs and wrapper, the worst
95 % coverage of forces and energies over the systems' shifts and the largest
mean std ÷ MAE of a shift.

    python benchmarks/shift_widening.py --refit-references --cache /tmp/fits \
        --parts copper agpd alloy ptni --wrappers LastLayerLaplace LatentDistance \
        EvidentialHead ShallowEnsemble --out /tmp/chosen.json --threads 1
    (the same with --parts platinum nial cupd nicu agau aupd --out /tmp/held.json;
     with --unseen and the ten EMT parts --out /tmp/unseen.json; with --wrappers
     "DeepEnsemble (3)" --parts copper alloy ptni, the systems with three cached
     base models, --out /tmp/deep.json, and with --unseen --out /tmp/deep_unseen.json;
     with --base-model mace --epochs 40 --parts copper --wrappers LastLayerLaplace
     LatentDistance --out /tmp/mace.json in the mace environment)
    python benchmarks/shift_caps.py --group "chosen on" /tmp/chosen.json \
        --group "chosen on" /tmp/deep.json --group "held out" /tmp/held.json \
        --group "unseen kinds" /tmp/unseen.json --group "unseen kinds" \
        /tmp/deep_unseen.json --group "MACE Cu" /tmp/mace.json \
        --out results/shift_widening_caps.json
    python benchmarks/shift_caps.py --from-json results/shift_widening_caps.json \
        results/shift_widening_caps_seeds.json --docs ../docs/shift.md

The round on three fits (2026-12-07) added base models 1 and 2: shift_widening.py
--base-seed K (K = 1, 2) with --wrappers LastLayerLaplace LatentDistance on the ten EMT
parts, own shifts and --unseen, each to its own --out, grouped as "base models 1-2,
own" and "base models 1-2, unseen" into results/shift_widening_caps_seeds.json. Below
its tables the script prints each cap's verdict by the round's rule (:func:`verdicts`).
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np

from mlipuq.models import MiniMLIP
from mlipuq.uq import (DeepEnsemble, EvidentialHead, LastLayerLaplace, LatentDistance,
                       ShallowEnsemble)
from shift import write_between_markers
from shift_goal import GOALS

#: The rules compared, uncapped first.
RULES = ("structure", "capped 100", "capped 30", "capped 10", "capped 3")
WRAPPERS = {**{cls.__name__: cls for cls in (LastLayerLaplace, LatentDistance, ShallowEnsemble,
                                             EvidentialHead)}, "DeepEnsemble (3)": DeepEnsemble}


def default_powers(row: dict) -> dict:
    """The widening powers ``calibrate`` gave the row's wrapper: the row's own record
    (``default_powers``, shift_widening.py since 2026-12-07), else the wrapper's
    ``default_widening()`` on a MiniMLIP (every layer's features for the terms) or, for
    MACE rows (readout features), its ``default_extrapolation``."""
    if "default_powers" in row:
        return row["default_powers"]
    return _class_powers(row["wrapper"], row.get("base_model", "minimlip"))


@functools.lru_cache(maxsize=None)
def _class_powers(wrapper: str, base_model: str) -> dict:
    cls = WRAPPERS[wrapper]
    if base_model == "mace" or cls is DeepEnsemble:  # readout features; no latent term
        return cls.default_extrapolation
    return cls(MiniMLIP(["Cu"], cutoff=4.0, seed=0)).default_widening()


TARGETS = {"forces": ("force_cov95", "force_std", "force_mae"),
           "energy": ("energy_cov95", "energy_std_per_atom", "energy_mae_per_atom")}


def kept(row: dict) -> bool:
    """Whether ``row`` is one the table reads (its rules, the wrappers' default powers)."""
    return (row["rule"] in RULES and row["wrapper"] in WRAPPERS
            and row["power"] in default_powers(row).values())


def summary(rows: list[dict], wrapper: str, rule: str) -> dict:
    """Worst coverage, largest and median std ÷ MAE over the shifts of ``rows`` (every
    system) for ``wrapper`` under ``rule`` at its default power per target."""
    out = {}
    for target, (cover, std, mae) in TARGETS.items():
        mine = [r for r in rows if r["wrapper"] == wrapper and r["rule"] == rule
                and r["power"] == default_powers(r)[target]
                and not r["split"].startswith("in dist")]
        if not mine:
            return {}
        ratios = [r[std] / r[mae] for r in mine]
        out[target] = (min(r[cover] for r in mine), max(ratios), float(np.median(ratios)))
    return out


def table(groups: dict, medians: bool = False) -> str:
    """One line per group and wrapper: per rule, worst F / E coverage (largest F / E
    std ÷ MAE); ``medians``: the median F / E std ÷ MAE of a shift instead."""
    lines = ["| runs (systems) | wrapper | " + " | ".join(
                 "uncapped" if rule == "structure" else rule.replace("capped", "cap")
                 for rule in RULES) + " |", "|---|---|" + "---|" * len(RULES)]
    for name, rows in groups.items():
        for wrapper in WRAPPERS:
            cells = [summary(rows, wrapper, rule) for rule in RULES]
            if not cells[0]:
                continue
            systems = len({r["system"] for r in rows if r["wrapper"] == wrapper})
            lines.append(f"| {name} ({systems}) | {wrapper} | " + " | ".join(
                "–" if not c else f"{c['forces'][2]:.1f} / {c['energy'][2]:.1f}" if medians
                else f"{c['forces'][0]:.3f} / {c['energy'][0]:.3f} "
                f"({c['forces'][1]:.0f} / {c['energy'][1]:.0f})" for c in cells) + " |")
    return "\n".join(lines)


def worst_cells(groups: dict) -> dict:
    """Per (group, system, base model, wrapper) and target, the worst coverage over its
    shifts under each rule at the wrapper's default power (rules not scored: absent)."""
    cells = {}
    for name, rows in groups.items():
        for r in rows:
            if r["split"].startswith("in dist"):
                continue
            for target, (cover, _, _) in TARGETS.items():
                if r["power"] != default_powers(r)[target]:
                    continue
                key = (name, r["system"], r.get("base_seed", 0), r["wrapper"], target)
                rules = cells.setdefault(key, {})
                rules[r["rule"]] = min(rules.get(r["rule"], 1.0), r[cover])
    return cells


def verdicts(groups: dict, slack: float = 0.01) -> str:
    """Per capped rule and target: the cells scored, those the cap takes below the goal
    that met it uncapped, and the largest fall below the uncapped coverage (a cap passes
    where it loses no cell and falls at most ``slack``; docs/shift.md's rule)."""
    cells, lines = worst_cells(groups), []
    for rule in RULES[1:]:
        for target in TARGETS:
            goal = GOALS["force" if target == "forces" else "energy"]
            mine = [(key, c) for key, c in cells.items() if key[-1] == target and rule in c]
            lost = [key for key, c in mine if c["structure"] >= goal > c[rule]]
            drop = max((c["structure"] - c[rule] for _, c in mine), default=0.0)
            passes = not lost and drop <= slack
            lines.append(f"{rule} {target}: {len(mine)} cells, {len(lost)} lost, largest "
                         f"drop {drop:.3f} -> {'passes' if passes else 'fails'}"
                         + "".join(f"\n    lost: {key[:4]} {cells[key]}" for key in lost))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", nargs="+", action="append", metavar="NAME JSON",
                        default=[], help="a group of rows: its name and one or more of "
                        "shift_widening.py's --out (repeatable; a name given twice joins "
                        "the rows)")
    parser.add_argument("--from-json", nargs="+", default=[], help="the groups saved by "
                        "--out (several: joined; with --group: those groups added)")
    parser.add_argument("--out", default=None, help="save the groups' rows (rules and "
                        "powers this table reads only)")
    parser.add_argument("--docs", default=None, help="write the table between the "
                        "shift-widening-caps markers of this file")
    args = parser.parse_args(argv)
    groups = {}
    for path in args.from_json:
        for name, rows in json.load(open(path))["groups"].items():
            groups.setdefault(name, []).extend(rows)
    for name, *paths in args.group:  # (joined to --from-json's groups)
        if not paths:
            parser.error(f"--group {name}: give one or more JSON files")
        groups.setdefault(name, []).extend(
            r for path in paths for r in json.load(open(path))["rows"] if kept(r))
    text = table(groups)
    print(text)
    print("\nMedian F / E std ÷ MAE of a shift:\n" + table(groups, medians=True))
    print("\nThe rule's cells (each system, base model, wrapper and group):\n"
          + verdicts(groups))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"groups": groups}, fh, indent=1)
    if args.docs:
        write_between_markers(args.docs, text, name="shift-widening-caps")


if __name__ == "__main__":
    main()
