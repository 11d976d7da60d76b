"""The rounds on ``structure_covariance="held-out"`` (``docs/shift.md``, "The structure
distance's covariance chosen on held-out structures"): today's latent distance, latent
distance + LLPR and evidential head beside the candidate, per system, from the files
``benchmarks/shift.py --only ...`` wrote, and the rule's verdict.

    python benchmarks/structure_covariance.py benchmarks/results/structure_covariance_*.json

``--refit-round results/shift_seeds.json``: the round on refitted base models (files
``benchmarks/results/refit_covariance_*.json``, written with ``--refit-references``):
each wrapper's default and candidate on a refitted base model beside its default on
the same base model unrefitted (the shift-seeds rows), and the rule's count over the
fits (base model 0 in ``refit_covariance_P.json``, K in ``refit_covariance_seedK_P.json``;
a file whose system and base model have no rows in BEFORE is left out: the held-out
Ag₃Au's BEFORE is ``results/agau_unrefitted.json``).

    python benchmarks/structure_covariance.py benchmarks/results/refit_covariance_*.json \
        --refit-round benchmarks/results/shift_seeds.json

``--chosen P ...``: fits ``LatentDistance(model, structure_covariance="held-out")`` on each
system's base model (``--cache`` as ``benchmarks/shift.py``'s) and prints the diagonal
term the held-out structures chose, against the mean variance of the training
descriptors and Ledoit-Wolf's shrinkage, and how many descriptor features are constant.
"""

from __future__ import annotations

import argparse
import json

from shift_goal import E_COVER, F_COVER, MISCAL

PAIRS = {"LatentDistance": "LatentDistance (held-out structure covariance)",
         "LatentDistance + LLPR": "LatentDistance + LLPR (held-out structure covariance)",
         "EvidentialHead": "EvidentialHead (held-out structure covariance)"}
NLL_TOLERANCE = 0.001  # nats (the rule's "no worse")


def summary(rows: list[dict]) -> dict:
    """Per wrapper: in-distribution energy NLL and coverage, per shift the energy and
    force coverage, the energy NLL and the mean energy std over the MAE (and the mean
    force std over the force MAE)."""
    out = {}
    for r in rows:
        entry = out.setdefault(r["wrapper"], {"shifts": {}})
        if r["split"].startswith("in dist"):
            entry.update(energy_nll=r["energy_nll"], energy_cov95=r["energy_cov95"],
                         force_nll=r["force_nll"], force_miscal=r["force_miscal"])
        else:
            entry["shifts"][r["split"]] = {
                "energy_cov95": r["energy_cov95"], "force_cov95": r["force_cov95"],
                "energy_nll": r["energy_nll"],
                "std_over_mae": r["energy_std_per_atom"] / r["energy_mae_per_atom"],
                **({"force_std_over_mae": r["force_std"] / r["force_mae"]}
                   if "force_mae" in r else {})}  # absent in rows of early runs
    return out


def verdict(today: dict, candidate: dict) -> list[str]:
    """The rule's failures for one system and wrapper (empty: passed)."""
    failures = []
    for split, new in candidate["shifts"].items():
        floor = min(E_COVER, today["shifts"][split]["energy_cov95"])
        if new["energy_cov95"] < floor:
            failures.append(f"{split}: energy cover {new['energy_cov95']:.3f} < {floor:.3f}")
    if candidate["energy_nll"] > today["energy_nll"] + NLL_TOLERANCE:
        failures.append(f"in-dist energy NLL {today['energy_nll']:.3f} → "
                        f"{candidate['energy_nll']:.3f}")
    return failures


def worst(entry: dict, key: str) -> float:
    """The smallest ``key`` over a summary entry's shifts."""
    return min(v[key] for v in entry["shifts"].values())


def mean(entry: dict, key: str) -> float:
    """The mean ``key`` over a summary entry's shifts."""
    return sum(v[key] for v in entry["shifts"].values()) / len(entry["shifts"])


def goals(entry: dict) -> tuple[bool, bool]:
    """Whether every shift of a summary entry meets the force and the energy goal."""
    return (worst(entry, "force_cov95") >= F_COVER,
            worst(entry, "energy_cov95") >= E_COVER)


def _trio(trio: dict, value, digits: int) -> str:
    """``value`` of before, refit and candidate, joined by arrows."""
    return " → ".join(f"{value(e):.{digits}f}" for e in trio.values())


def refit_round(files, before_path: str) -> bool:
    """Print the round on refitted base models (see the notes); True if every
    candidate qualifies."""
    before_rows = [r for r in json.load(open(before_path))["rows"]
                   if r["method"] == "default" and not r.get("refit_references", False)]
    print("| system | base model | wrapper | in-dist E NLL (before → refit → candidate) "
          "| worst shift E cover | worst shift F cover | mean shift E std÷MAE "
          "| candidate in-dist F miscal |")
    print("|---|---|---|---|---|---|---|---|")
    counts = {name: {"before": [0, 0], "refit": [0, 0], "candidate": [0, 0], "nll": True,
                     "miscal": True, "systems": 0} for name in PAIRS}
    for path in sorted(files):
        rows = json.load(open(path))["rows"]
        system, seed = rows[0]["system"], rows[0].get("base_seed", 0)
        s = summary(rows)
        b = summary([r for r in before_rows
                     if r["system"] == system and r.get("base_seed", 0) == seed])
        for name, new_name in PAIRS.items():
            if name not in s or name not in b:
                continue
            trio = {"before": b[name], "refit": s[name], "candidate": s[new_name]}
            c = counts[name]
            c["systems"] += 1
            for key, entry in trio.items():
                c[key] = [n + met for n, met in zip(c[key], goals(entry))]
            c["nll"] &= trio["candidate"]["energy_nll"] < trio["before"]["energy_nll"]
            c["miscal"] &= trio["candidate"]["force_miscal"] <= MISCAL
            print(f"| {system} | {seed} | {name} | {_trio(trio, lambda e: e['energy_nll'], 2)} "
                  f"| {_trio(trio, lambda e: worst(e, 'energy_cov95'), 3)} "
                  f"| {_trio(trio, lambda e: worst(e, 'force_cov95'), 3)} "
                  f"| {_trio(trio, lambda e: mean(e, 'std_over_mae'), 1)} "
                  f"| {trio['candidate']['force_miscal']:.3f} |")
    print("\n| wrapper | fits | force goal met (before / refit / candidate) | energy goal "
          "met (before / refit / candidate) | in-dist E NLL better on all | F miscal ≤ 0.05 "
          "on all | qualifies |")
    print("|---|---|---|---|---|---|---|")
    passed = True
    for name, c in counts.items():
        if not c["systems"]:
            continue
        ok = (c["candidate"][0] >= c["before"][0] and c["candidate"][1] >= c["before"][1]
              and c["nll"] and c["miscal"])
        passed &= ok
        print(f"| {name} | {c['systems']} | {c['before'][0]} / {c['refit'][0]} / "
              f"{c['candidate'][0]} | {c['before'][1]} / {c['refit'][1]} / "
              f"{c['candidate'][1]} | {'yes' if c['nll'] else 'no'} | "
              f"{'yes' if c['miscal'] else 'no'} | {'yes' if ok else 'no'} |")
    return passed


def chosen(parts, cache: str) -> None:
    """The diagonal term each system's held-out structures choose (see the notes)."""
    import numpy as np
    import torch
    from shift import HELD_OUT, PART_SETS, base_models
    from shift_cache import cache_folder
    from sklearn.covariance import LedoitWolf

    from mlipuq.uq import LatentDistance, structure_distance

    torch.set_num_threads(1)
    for part in parts:
        train, val, _ = {**PART_SETS, **HELD_OUT}[part](False)
        model = base_models(part, train, val, 80, 1, cache_folder(cache, part, 80))[0]
        wrapper = LatentDistance(model, structure_covariance="held-out").fit(train, val)
        d = structure_distance.dataset_descriptors(wrapper, train)
        variance = np.var(d, axis=0)
        unit = float(variance[variance > 0].mean())
        print(f"{part}: diagonal {wrapper.structure_['diagonal']:.3g} = "
              f"{wrapper.structure_['diagonal'] / unit:.0e} x the mean variance {unit:.3g}; "
              f"Ledoit-Wolf shrinkage {LedoitWolf().fit(d).shrinkage_:.3g} (+ 1e-4); "
              f"{int(np.sum(variance == 0))} of {d.shape[1]} features constant", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--chosen", nargs="+", default=None, metavar="PART")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--refit-round", default=None, metavar="BEFORE",
                        help="the round on refitted base models, against BEFORE's rows")
    args = parser.parse_args(argv)
    if args.chosen:
        chosen(args.chosen, args.cache)
        return
    if args.refit_round:
        passed = refit_round(args.files, args.refit_round)
        print(f"\nrule: {'every candidate qualifies' if passed else 'not passed'}")
        return
    print("| system | wrapper | in-dist E NLL | in-dist E cover | worst shift E cover "
          "| mean shift E std÷MAE | mean shift E NLL | worst shift F cover | rule |")
    print("|---|---|---|---|---|---|---|---|---|")
    passed = True
    for path in sorted(args.files):
        rows = json.load(open(path))["rows"]
        system = rows[0]["system"]
        s = summary(rows)
        for name, new_name in PAIRS.items():
            if name not in s:  # each file holds the pairs its run fitted
                continue
            today, new = s[name], s[new_name]
            failures = verdict(today, new)
            passed &= not failures
            print(f"| {system} | {name} | {today['energy_nll']:.3f} → {new['energy_nll']:.3f}"
                  f" | {today['energy_cov95']:.2f} → {new['energy_cov95']:.2f}"
                  f" | {worst(today, 'energy_cov95'):.3f} → {worst(new, 'energy_cov95'):.3f}"
                  f" | {mean(today, 'std_over_mae'):.1f} → {mean(new, 'std_over_mae'):.1f}"
                  f" | {mean(today, 'energy_nll'):.2f} → {mean(new, 'energy_nll'):.2f}"
                  f" | {worst(today, 'force_cov95'):.3f} → {worst(new, 'force_cov95'):.3f}"
                  f" | {'; '.join(failures) or 'passes'} |")
    print(f"\nrule: {'passed on every system given' if passed else 'not passed'}")


if __name__ == "__main__":
    main()
