"""The round on the evidential head's larger of two variances (``docs/shift.md``, "The
larger of two variances"): per fit today's default head (floor 0.1, held-out covariance;
rows of ``evidential_share_*.json``) beside ``distance_combination="max"``
(``evidential_max_*.json``), and the rule's verdict, fixed before the runs.

    python benchmarks/evidential_max.py benchmarks/results/evidential_max_*.json

Files of systems outside the round (no ``evidential_share_`` partner) are compared with
the shift table's default head of the round's time and not counted: those rows were
since rerun (the strain term, 2026-12-05), so pass that table, ``git show
84a15c1:benchmarks/results/shift.json > /tmp/shift_sum.json`` and ``--table
/tmp/shift_sum.json``; without its rows such a file is skipped, and says so.

``--terms cupd:0 nicu:2 --cache /tmp/fits``: the cached head of each (system, base
model), its term fitted again as the joint sum (floor 0.1) and apart (max), and the
fitted a, b and λ of each (what the round's losses were diagnosed with; 12 s each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from evidential_share import BOTH, NLL_SLACK, counts, in_distribution_holds
from structure_covariance import goals, mean, summary, worst

TODAY = "EvidentialHead"
CANDIDATE = "EvidentialHead (larger of two variances)"
TABLE = os.path.join(os.path.dirname(__file__), "results", "shift.json")


def default_rows(path: str, system: str, seed: int, table_path: str = TABLE) -> list[dict]:
    """Today's default head on the same fit: the round's partner file, else the table's
    rows of the round's time (``table_path``; none: empty)."""
    partner = os.path.join(os.path.dirname(path), os.path.basename(path).replace(
        "evidential_max_", "evidential_share_"))
    if os.path.exists(partner):
        return [dict(r, wrapper=TODAY) for r in json.load(open(partner))["rows"]
                if r["wrapper"] == BOTH and r["method"] == "default"]
    return [r for r in json.load(open(table_path))["rows"]
            if (r["system"], r["wrapper"], r["method"], r.get("base_seed", 0))
            == (system, TODAY, "default", seed) and r["defaults"].startswith("2026-12-04")]


def fits(files, table_path: str = TABLE) -> tuple[list[dict], list[dict]]:
    """Per fit the summaries of both heads: (counted fits, fits outside the round)."""
    counted, extra = [], []
    for path in sorted(files):
        rows = [r for r in json.load(open(path))["rows"] if r["method"] == "default"]
        system, seed = rows[0]["system"], rows[0].get("base_seed", 0)
        today = default_rows(path, system, seed, table_path)
        if not today:
            print(f"{os.path.basename(path)}: skipped, no rows of the round's default head "
                  f"in {table_path} (module notes: --table)")
            continue
        entry = {"system": system, "seed": seed, CANDIDATE: summary(rows)[CANDIDATE],
                 TODAY: summary(today)[TODAY]}
        partner = path.replace("evidential_max_", "evidential_share_")
        (counted if os.path.exists(partner) else extra).append(entry)
    return counted, extra


def table(entries: list[dict], today: str = TODAY, candidate: str = CANDIDATE,
          label: str = "default → max", target: str = "energy") -> None:
    """Per fit, ``today``'s summary beside ``candidate``'s (a Markdown table); the
    sharpness column is ``target``'s (energy or forces)."""
    sharp, key = ("F", "force_std_over_mae") if target == "forces" else ("E", "std_over_mae")
    print(f"| system | base model | worst shift E cover ({label}) | worst shift F cover "
          f"| in-dist E NLL | mean shift {sharp} std÷MAE | in-dist F miscal |")
    print("|---|---|---|---|---|---|---|")
    for e in entries:
        def pair(value, digits):
            return " → ".join(f"{value(e[n]):.{digits}f}" for n in (today, candidate))
        print(f"| {e['system']} | {e['seed']} | {pair(lambda x: worst(x, 'energy_cov95'), 3)} "
              f"| {pair(lambda x: worst(x, 'force_cov95'), 3)} "
              f"| {pair(lambda x: x['energy_nll'], 2)} "
              f"| {pair(lambda x: mean(x, key), 1)} "
              f"| {pair(lambda x: x['force_miscal'], 3)} |")


def rule_holds(entries: list[dict], today: str, candidate: str, label: str,
               target: str = "energy") -> bool:
    """Print both wrappers' goal counts (``candidate``'s as ``label``) and
    in-distribution summaries; whether the rounds' rule holds for ``candidate``: (a)
    more goals of ``target`` and at least as many of the other, (b) and (c)
    (:func:`~evidential_share.in_distribution_holds`); for ``target="forces"`` (c)
    also caps the median in-distribution force NLL."""
    old, new = counts(entries, today), counts(entries, candidate)
    print(f"\n{len(entries)} fits. Force goal / energy goal / both met: default "
          f"{old[0]} / {old[1]} / {old[2]}; {label} {new[0]} / {new[1]} / {new[2]}")
    median = {name: {key: statistics.median(e[name][key] for e in entries)
                     for key in ("energy_nll", "force_nll")} for name in (today, candidate)}
    for name in (today, candidate):
        force_nll = f", F NLL {median[name]['force_nll']:.3f}" if target == "forces" else ""
        print(f"  {name}: median in-dist E NLL {median[name]['energy_nll']:.3f}{force_nll}, "
              f"largest in-dist F miscal {max(e[name]['force_miscal'] for e in entries):.3f}")
    if target == "energy":
        more = new[1] > old[1] and new[0] >= old[0]
    else:
        more = (new[0] > old[0] and new[1] >= old[1] and median[candidate]["force_nll"]
                <= median[today]["force_nll"] + NLL_SLACK)
    return more and in_distribution_holds(entries, candidate, today)


def report(counted: list[dict], extra: list[dict]) -> None:
    """The per-fit tables, the counts and the verdict."""
    table(counted)
    ok = rule_holds(counted, TODAY, CANDIDATE, "max")
    print(f"Verdict: distance_combination='max' {'becomes' if ok else 'does not become'} "
          "the head's default.")
    if extra:
        print("\nOutside the round (not counted):\n")
        table(extra)
        for e in extra:
            print(f"  {e['system']}: goals (force, energy) default {goals(e[TODAY])}, "
                  f"max {goals(e[CANDIDATE])}")


def terms(fits_: list[str], cache: str) -> None:
    """Per ``system:seed``: the term's a, b and λ under the sum and under the max."""
    import mlipuq
    from shift_cache import with_drift
    from shift_data import HELD_OUT, PART_SETS
    from shift_wrappers import term_refitted

    for spec in fits_:
        system, seed = (spec.split(":") + ["0"])[:2]
        train, val, _ = {**PART_SETS, **HELD_OUT}[system](False)
        folder = os.path.join(cache, f"{system}-80", "refit", *([f"seed{seed}"] * (seed != "0")))
        head = with_drift(mlipuq.uq.load(os.path.join(folder, "evidential.pt")), train)
        for combination, share in (("sum", 0.1), ("max", None)):
            t = term_refitted(head, train, val, "held-out", share, combination).distance_
            print(f"{system} base model {seed} {combination}: energies a={t.energy_a_:.3g} "
                  f"b={t.energy_b_:.3g} eV² λ={t.energy_other_scale_:.3g}; forces "
                  f"a={t.forces_a_:.3g} b={t.forces_b_:.3g} λ={t.forces_other_scale_:.3g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="evidential_max_*.json")
    parser.add_argument("--terms", nargs="+", default=None, help="system:seed ... (notes)")
    parser.add_argument("--cache", default="/tmp/fits", help="shift.py's --cache")
    parser.add_argument("--table", default=TABLE,
                        help="the shift table of the round's time (module notes)")
    args = parser.parse_args(argv)
    if args.terms:
        terms(args.terms, args.cache)
    if args.files:
        report(*fits(args.files, args.table))


if __name__ == "__main__":
    main()
