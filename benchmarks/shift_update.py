"""``benchmarks/shift.py --update``: the rows and run records of an existing ``--out``
that a new run keeps beside its own."""

from __future__ import annotations

import json
import os


def previous_results(args) -> dict:
    """The existing ``--out`` that ``--update`` adds to (empty: none, or not updating)."""
    if not (args.update and os.path.exists(args.out)):
        return {}
    with open(args.out) as fh:
        return json.load(fh)


def merged(args, rows: list[dict], old: dict | None = None) -> tuple[list[dict], dict]:
    """The rows to save and the settings of each run they come from: with ``--update``,
    the rows of the existing ``--out`` (``old``; read when not given) that this run does
    not replace (same system, wrapper, method, split and base model) and their runs'
    settings are kept (a kept row measured with earlier defaults is marked † in the
    tables: ``DEFAULTS``). A run of some wrappers is recorded as "PART (PREFIX, ...)"."""
    def on_base(part: str) -> str:
        return part + (f" on base model {args.base_seed}" if args.base_seed else "")

    def label(part: str) -> str:
        chosen = (args.wrappers or []) + (args.only or [])
        return on_base(part) if not chosen else f"{on_base(part)} ({', '.join(chosen)})"

    runs = {label(part): vars(args) for part in args.parts}
    old = previous_results(args) if old is None else old
    if not old:
        return rows, runs
    key = lambda r: (r["system"], r["wrapper"], r["method"], r["split"],  # noqa: E731
                     r.get("base_seed", 0))  # (refitted or not: each its own --out)
    new = {key(r) for r in rows}
    kept = [r for r in old["rows"] if key(r) not in new]
    old_runs = old.get("runs") or {part: old["args"] for part in old["args"]["parts"]}

    # the runs replaced now (the same label, or a whole part's) stay recorded as earlier
    # while rows of theirs are kept; other wrappers' runs of these parts stay as they were
    replaced = set(runs) | {on_base(part) for part in args.parts}
    return kept + rows, {**{earlier_label(k, old_runs) if k in replaced else k: a
                            for k, a in old_runs.items()}, **runs}


def earlier_label(label: str, runs: dict) -> str:
    """``label`` marked as an earlier run, numbered past those ``runs`` already hold."""
    name, n = f"{label} (earlier)", 2
    while name in runs:
        name, n = f"{label} (earlier {n})", n + 1
    return name


def kept_notes(old: dict) -> dict:
    """The hand-written ``notes`` of the results being updated (how its runs went), kept."""
    return {"notes": old["notes"]} if "notes" in old else {}
