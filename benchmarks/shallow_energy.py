"""The round on the shallow ensemble's latent-distance energy term (``docs/shift.md``,
"The shallow ensemble's energies: the larger of two variances", 2026-12-05): per fit
today's default ensemble beside ``energy_combination="max"`` (both rows of one
``shift.py`` run, ``shallow_energy_*.json``), and the rule's verdict, fixed before
the runs.

    python benchmarks/shallow_energy.py benchmarks/results/shallow_energy_*.json

The files were made before the adoption, the default's rows under "ShallowEnsemble";
since, a run must name the baseline ``--only "ShallowEnsemble (heads' energy variance)"
"ShallowEnsemble (larger energy variance)"``, which this script reads in its place.
:func:`run` serves the later rounds of the same rule (``benchmarks/evidential_cov.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics

from evidential_max import rule_holds, table
from structure_covariance import summary

TODAY = "ShallowEnsemble"
CANDIDATE = "ShallowEnsemble (larger energy variance)"
#: The same baseline in runs made after the candidate became the default (the rows of
#: ``TODAY`` are then the candidate's): the heads' energy variance.
BEFORE = "ShallowEnsemble (heads' energy variance)"
#: Reported beside the round, not counted (its pre-registration): the held-out Ag₃Au.
OUTSIDE = ("agau",)


def fits(files, today: str = TODAY, candidate: str = CANDIDATE,
         before: str | None = BEFORE) -> list[dict]:
    """Per fit (file) the summaries of both wrappers and their in-distribution mean
    energy std per atom (eV); rows of ``before``, where a file has them, stand for
    ``today``'s."""
    out = []
    for path in sorted(files):
        rows = [r for r in json.load(open(path))["rows"] if r["method"] == "default"]
        if before is not None and any(r["wrapper"] == before for r in rows):
            rows = [dict(r, wrapper=today) if r["wrapper"] == before else r for r in rows
                    if r["wrapper"] != today]
        s = summary(rows)
        entry = {"system": rows[0]["system"], "seed": rows[0].get("base_seed", 0)}
        for name in (today, candidate):
            entry[name] = s[name]
            entry[name]["energy_std"] = next(
                r["energy_std_per_atom"] for r in rows
                if r["wrapper"] == name and r["split"].startswith("in dist"))
        out.append(entry)
    return out


def report(entries: list[dict], today: str = TODAY, candidate: str = CANDIDATE,
           what: str = "the shallow ensemble's default") -> bool:
    """The per-fit table, the counts, the sharpness and the verdict (True: adopted)."""
    table(entries, today, candidate, "default → candidate")
    ok = rule_holds(entries, today, candidate, "candidate")
    ratio = [e[candidate]["energy_std"] / e[today]["energy_std"] for e in entries]
    print(f"  in-dist mean energy std, candidate ÷ default: median {statistics.median(ratio):.3f}"
          f" (range {min(ratio):.3f}–{max(ratio):.3f})")
    print(f"Verdict: {candidate!r} {'becomes' if ok else 'does not become'} {what}.")
    return ok


def run(files, today: str, candidate: str, what: str, before: str | None = None) -> bool:
    """The round over ``files``: counted fits, then those of ``OUTSIDE`` beside them."""
    entries = fits(files, today, candidate, before)
    ok = report([e for e in entries if e["system"] not in OUTSIDE], today, candidate, what)
    extra = [e for e in entries if e["system"] in OUTSIDE]
    if extra:
        print("\nOutside the round (not counted):\n")
        table(extra, today, candidate, "default → candidate")
    return ok


def round_main(doc: str, today: str, candidate: str, what: str, argv=None,
               before: str | None = None) -> bool:
    """The command line of a round script (``doc`` its docstring): its files, then
    :func:`run`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("files", nargs="+", help="the round's shift.py outputs (*.json)")
    return run(parser.parse_args(argv).files, today, candidate, what, before)


def main(argv=None) -> bool:
    return round_main(__doc__, TODAY, CANDIDATE, "the shallow ensemble's default", argv, BEFORE)


if __name__ == "__main__":
    main()
