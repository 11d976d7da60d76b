"""The round on the evidential head's distance share (``docs/shift.md``, "A distance
share the evidential head's joint fit cannot drop"): per fit the head on a refitted base
model without the floor (rows of ``refit_covariance_*.json``) beside the floor with the
Ledoit–Wolf and with the held-out covariance (``evidential_share_*.json``), and the
rule's verdict, fixed before the runs.

    python benchmarks/evidential_share.py benchmarks/results/evidential_share_*.json

``--demo``: the demo's evidential head (``mlipuq demo``'s fit, one thread) with its term
fitted again under each covariance, with and without the floor, and its test-set NLLs
(about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from shift_goal import MISCAL
from structure_covariance import goals, mean, summary, worst

TODAY = "EvidentialHead"
FLOOR = "EvidentialHead (distance share 0.1)"
BOTH = "EvidentialHead (held-out structure covariance, distance share 0.1)"
NLL_SLACK = 0.1  # nats: (c), the median in-distribution energy NLL may be this much worse


def fits(files) -> list[dict]:
    """Per fit (system, base model): the summaries of the three heads."""
    out = []
    for path in sorted(files):
        rows = json.load(open(path))["rows"]
        before_path = os.path.join(os.path.dirname(path), os.path.basename(path).replace(
            "evidential_share_", "refit_covariance_"))
        today = summary([r for r in json.load(open(before_path))["rows"]
                         if r["wrapper"] == TODAY and r["method"] == "default"])
        s = summary([r for r in rows if r["method"] == "default"])
        out.append({"system": rows[0]["system"], "seed": rows[0].get("base_seed", 0),
                    TODAY: today[TODAY], FLOOR: s[FLOOR], BOTH: s[BOTH]})
    return out


def counts(entries: list[dict], key: str) -> list[int]:
    """Fits on which head ``key`` meets the force goal, the energy goal, both."""
    met = [goals(e[key]) for e in entries]
    return [sum(f for f, _ in met), sum(g for _, g in met), sum(f and g for f, g in met)]


def passes(entries: list[dict], name: str, baseline: str = TODAY) -> tuple[bool, list[int]]:
    """The rule's (a)-(c) for candidate ``name`` against ``baseline`` (the head without
    the floor), and its counts: force goal, energy goal, both."""
    today, new = counts(entries, baseline), counts(entries, name)
    a = new[0] >= today[0] and new[1] >= today[1] and (new[0] > today[0] or new[1] > today[1])
    return a and in_distribution_holds(entries, name, baseline), new


def in_distribution_holds(entries: list[dict], name: str, baseline: str) -> bool:
    """(b) and (c): force miscalibration <= MISCAL on every fit, and the median
    in-distribution energy NLL no more than NLL_SLACK worse than ``baseline``'s."""
    b = all(e[name]["force_miscal"] <= MISCAL for e in entries)
    c = (statistics.median(e[name]["energy_nll"] for e in entries)
         <= statistics.median(e[baseline]["energy_nll"] for e in entries) + NLL_SLACK)
    return b and c


def report(entries: list[dict]) -> None:
    """The per-fit table, the counts and the verdict."""
    print("| system | base model | worst shift E cover (no floor → floor → floor, held-out) "
          "| worst shift F cover | in-dist E NLL | mean shift E std÷MAE | in-dist F miscal |")
    print("|---|---|---|---|---|---|---|")
    names = (TODAY, FLOOR, BOTH)
    for e in entries:
        def trio(value, digits):
            return " → ".join(f"{value(e[n]):.{digits}f}" for n in names)
        print(f"| {e['system']} | {e['seed']} | {trio(lambda x: worst(x, 'energy_cov95'), 3)} "
              f"| {trio(lambda x: worst(x, 'force_cov95'), 3)} "
              f"| {trio(lambda x: x['energy_nll'], 2)} "
              f"| {trio(lambda x: mean(x, 'std_over_mae'), 1)} "
              f"| {trio(lambda x: x['force_miscal'], 3)} |")
    _, today = passes(entries, TODAY)
    floor_ok, floor = passes(entries, FLOOR)
    both_ok, both = passes(entries, BOTH)
    print(f"\n{len(entries)} fits. Force goal / energy goal / both met: no floor "
          f"{today[0]} / {today[1]} / {today[2]}; floor {floor[0]} / {floor[1]} / {floor[2]}; "
          f"floor + held-out {both[0]} / {both[1]} / {both[2]}")
    for name in names:
        print(f"  {name}: median in-dist E NLL "
              f"{statistics.median(e[name]['energy_nll'] for e in entries):.3f}, largest "
              f"in-dist F miscal {max(e[name]['force_miscal'] for e in entries):.3f}")
    print(f"Verdict: the floor {'becomes' if floor_ok else 'does not become'} the default; "
          f"the held-out covariance {'becomes' if floor_ok and both_ok and both[2] > floor[2] else 'does not become'} "
          "the head's default.")


def demo() -> None:
    """The demo's head, its term fitted under each covariance with and without the floor."""
    import torch

    from mlipuq.calibration import evaluate
    from mlipuq.demo import DEMO_SYSTEM, fit_evidential, system_data
    from mlipuq.pretrained import load_pretrained, manifest
    from shift_wrappers import term_refitted

    torch.set_num_threads(1)
    train, val, test = system_data(DEMO_SYSTEM)
    model = load_pretrained(manifest()["systems"][DEMO_SYSTEM]["members"][0])
    head = fit_evidential(model, train, val)
    print("| covariance | floor | test E NLL | test F NLL | a_E, b_E (eV²) | λ_E |")
    print("|---|---|---|---|---|---|")
    for covariance in ("ledoit-wolf", "held-out"):
        for share in (None, 0.1):
            h = term_refitted(head, train, val, covariance, share)  # the joint sum
            m = evaluate(h.calibrate(val).predict(test), test).metrics
            t = h.distance_
            print(f"| {covariance} | {share} | {m['energy']['nll']:.3f} | "
                  f"{m['forces']['nll']:.3f} | {t.energy_a_:.2g}, {t.energy_b_:.2g} | "
                  f"{t.energy_other_scale_:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="evidential_share_*.json")
    parser.add_argument("--demo", action="store_true", help="the demo's head (see the notes)")
    args = parser.parse_args(argv)
    if args.demo:
        demo()
    if args.files:
        report(fits(args.files))


if __name__ == "__main__":
    main()
