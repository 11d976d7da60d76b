"""How strongly to widen stds beyond the calibration range: the widening's power
and what it is measured against, scored on the shift benchmark's systems.

    python benchmarks/shift.py --threads 1 --cache /tmp/fits      # fits once, saved
    python benchmarks/shift.py --threads 1 --cache /tmp/fits --parts agpd ptni --fit-only
    python benchmarks/shift_widening.py --cache /tmp/fits --threads 1 \
        --parts copper ethanol acac alloy agpd ptni
    python benchmarks/shift_widening.py --from-json results/shift_widening.json --round six

The default calibration multiplies every calibrated std of a structure beyond
the calibration range by r ** p, r = the structure's RMS raw std over the
largest of the calibration structures (``mlipuq.calibration.extrapolation``).
This benchmark recalibrates each wrapper of ``benchmarks/shift.py`` once
without widening and then applies, per target, the widening r ** p for a grid
of powers p, with r measured two ways:

* ``structure``: the structure's ratio (the rule until now);
* ``atom``: for forces, the larger of the structure's ratio and the atom's own
  (the RMS of its raw force-component stds over the largest of its element's
  atoms in the calibration data): an atom the model has never seen the like of
  is out of range even inside an ordinary structure; energies as ``structure``;
* ``capped C`` (C = 3, 10, 30, 100): the structure's ratio, each factor r ** p at
  most C (2026-12-07, after MACE base models' raw stds outgrew their errors far
  out: ``--base-model mace``, docs/shift.md).

For each system, wrapper, shift, rule and power it records the 95 % coverage,
NLL and mean std / MAE of forces and energies (composition variance added
after, as ``predict`` does), to ``results/shift_widening.json``; it prints,
per rule and power, the worst coverage over the shifts of each system, and
the powers the rule of ``shift_goal.choose`` picks. It uses the models
``shift.py --cache`` saved (the same fits as its rows).

The wrappers' ``default_extrapolation`` are what ``shift_goal.choose`` picks on
six systems (``--round six``: ``shift.py``'s default parts, AgPd and Pt₃Ni),
starting from what it had picked on the four default parts (``--round four``,
then checked on the held-out AgPd); the held-out EMT Pt checks them.

``--round eight`` (results/shift_widening_eight.json) scored LLPR at its
posterior mean as a candidate default on all eight systems (docs/shift.md,
"LLPR at its posterior mean"; not adopted)::

    python benchmarks/shift_widening.py --cache /tmp/fits --threads 1 --round eight \
        --parts P --out /tmp/P.json --wrappers LastLayerLaplace \
        "LastLayerLaplace (refit mean; t energies)" "LatentDistance + LLPR" \
        "LatentDistance + LLPR (refit mean; t energies)"
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch

from mlipuq.calibration.extrapolation import excess, prediction_scales, saturate, widen
from mlipuq.calibration.structure_scaling import atom_scales
from mlipuq.uq import DeepEnsemble
from shift import EPOCHS, fit_wrappers, part_sets, seed_models, write_between_markers
from shift_data import HELD_OUT, PART_SETS
from shift_goal import POWERS, ROUNDS, SCORED, WRAPPERS, choice_table, scored
from shift_scores import scores

HERE = os.path.dirname(os.path.abspath(__file__))
#: Caps on the widening factor r ** p (rules "capped C": the structure's ratio, the factor
#: at most C): where the raw std far out already outgrows the error (MACE on EMT Cu's
#: surfaces: r ≈ 370, 2026-12-07), r ** p multiplies a std that needed no widening. 100:
#: the round on base models 1 and 2 (2026-12-07, docs/shift.md).
CAPS = (3.0, 10.0, 30.0, 100.0)
RULES = ("structure", "atom") + tuple(f"capped {cap:g}" for cap in CAPS)


def atom_limits(raw_val) -> dict:
    """Largest atom scale per element in the calibration prediction."""
    scale = atom_scales(raw_val.forces_std)
    return {int(z): float(scale[raw_val.numbers == z].max()) for z in np.unique(raw_val.numbers)}


def atom_ratio(raw, limits: dict) -> np.ndarray:
    """(N,) max(1, atom scale / its element's largest calibration scale)."""
    scale = atom_scales(raw.forces_std)
    limit = np.array([limits.get(int(z), np.inf) for z in raw.numbers])
    return np.maximum(scale / limit, 1.0)


def ratios(raw, recalibrator, limits: dict) -> dict:
    """The structure ratio (B,) and, per rule, the forces' ratio per atom (N,)."""
    joint = np.maximum.reduce(list(excess(prediction_scales(raw),
                                          recalibrator.std_range_).values()))
    out = {"energy": joint, "structure": joint[raw.batch],
           "atom": np.maximum(joint[raw.batch], atom_ratio(raw, limits))}
    return {**out, **{rule: out["structure"] for rule in RULES if rule.startswith("capped")}}


def widened(pred, raw, r: dict, rule: str, power: float, limits: dict):
    """``pred`` (calibrated, not widened) widened by r ** power per target, under the
    bound: the library's widening (``extrapolation.widen``, capped under a "capped"
    rule) but for the "atom" rule, whose forces take each atom's own ratio."""
    both = ("energy", "forces")
    if rule != "atom":
        cap = None if rule == "structure" else dict.fromkeys(both, float(rule.split()[1]))
        out = widen(limits, dict.fromkeys(both, power), prediction_scales(raw),
                    {"energy": pred.energy_std, "forces": pred.forces_std}, pred.n_atoms,
                    pred.batch, cap)
        f_std, e_std = out["forces"], out["energy"]
    else:
        f_std = saturate(pred.forces_std * (r["atom"] ** power)[:, None],
                         limits["forces_bound"])
        e_std = saturate(pred.energy_std * r["energy"] ** power,
                         limits["energy_bound"] * np.asarray(pred.n_atoms, dtype=np.float64))
    return dataclasses.replace(pred, forces_var=f_std**2, energy_var=e_std**2)


def score_part(part: str, args) -> list[dict]:
    train, val, tests = part_sets(part, args)
    n_models = 3 if any(w.startswith("DeepEnsemble") for w in args.wrappers) else 1
    models, heads = seed_models(part, train, val, args, n_models)
    rows = []
    for name, wrapper in fit_wrappers(models, train, val, None, heads, args.wrappers).items():
        if isinstance(wrapper, DeepEnsemble):
            wrapper.calibrate(val)  # what its calibrate does besides recalibrating: recentring
        wrapper.calibrate(val, extrapolation=0)
        recal = wrapper.recalibrator_
        limits = atom_limits(wrapper.predict(val, calibrated=False, composition=False))
        for split, test in tests.items():
            raw = wrapper.predict(test, calibrated=False, composition=False)
            pred, r = recal.transform(raw), ratios(raw, recal, limits)
            for rule in RULES:
                for power in POWERS:
                    full = wrapper._add_composition_variance(
                        widened(pred, raw, r, rule, power, recal.std_range_))
                    s = scores(full, test)
                    rows.append({"system": part, "wrapper": name, "split": split, "rule": rule,
                                 "base_model": args.base_model, "unseen": args.unseen,
                                 "base_seed": args.base_seed,
                                 "default_powers": wrapper.default_widening(),
                                 "power": power, **{k: s[k] for k in KEPT},
                                 "force_ratio": float(np.median(r[rule])),
                                 "energy_ratio": float(np.median(r["energy"]))})
        print(f"  {part} {name}: scored", flush=True)
    return rows


KEPT = ("force_cov95", "energy_cov95", "force_nll", "energy_nll", "force_std", "force_mae",
        "energy_std_per_atom", "energy_mae_per_atom")


def worst_table(rows: list[dict], target: str, wrappers=WRAPPERS) -> str:
    """Per rule, wrapper and power: the worst coverage over each system's shifts."""
    key = f"{target}_cov95"
    systems = sorted({r["system"] for r in rows})
    lines = ["| rule | wrapper | p | " + " | ".join(systems) + " |",
             "|---|---|---|" + "---|" * len(systems)]
    for rule in RULES:
        for wrapper in scored(wrappers, rows):
            for power in POWERS:
                cells = []
                for system in systems:
                    sel = [r[key] for r in rows if (r["rule"], r["wrapper"], r["power"],
                           r["system"]) == (rule, wrapper, power, system)
                           and not r["split"].startswith("in dist")]
                    cells.append(f"{min(sel):.3f}" if sel else "")
                lines.append(f"| {rule} | {wrapper} | {power:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PART_SETS),
                        choices=list(PART_SETS) + list(HELD_OUT))
    parser.add_argument("--cache", help="the folder of shift.py --cache")
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="print the tables of saved results (no run)")
    parser.add_argument("--docs", default=None, help="write the choice table between the "
                        "shift-widening-choice markers of this file")
    parser.add_argument("--round", choices=list(ROUNDS), default="six",
                        help="the choice whose table is printed and written: on the four "
                        "default systems (AgPd held out), on six (EMT Pt held out), on "
                        "eight (LLPR's posterior mean; EMT Cu3Pd held out) or on nine "
                        "(with Cu3Pd; EMT Ni3Cu held out)")
    parser.add_argument("--wrappers", nargs="+", default=list(WRAPPERS),
                        choices=list(SCORED), help="the wrappers scored "
                        "(default: the six of shift_goal.WRAPPERS)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--base-model", choices=("minimlip", "mace"), default="minimlip",
                        help="score the widening on shift.py --base-model mace's fits (rows "
                        "carry base_model; give them their own --out)")
    parser.add_argument("--refit-references", action=argparse.BooleanOptionalAction,
                        default=False, help="the base models' reference energies refitted "
                        "as shift.py's rows since 2026-12-04 have them (default: not, as "
                        "the rounds of this script were scored)")
    parser.add_argument("--unseen", action="store_true",
                        help="score on the shift kinds no round saw (EMT systems; "
                        "shift.py --unseen) instead of the system's own shifts")
    parser.add_argument("--base-seed", type=int, default=0, help="the single-model "
                        "wrappers on base model K (shift.py --base-seed; rows carry base_seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the smoke run's smaller sets")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "shift_widening.json"))
    args = parser.parse_args(argv)
    if args.base_seed and any(w.startswith("DeepEnsemble") for w in args.wrappers):
        parser.error("--base-seed is for the single-model wrappers (the deep ensemble's "
                     "members are base models 0 to 2)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_json:
        rows = [r for path in args.from_json for r in json.load(open(path))["rows"]]
    else:
        if args.cache is None:
            parser.error("--cache is required for a run")
        rows = [row for part in args.parts for row in score_part(part, args)]
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    print(worst_table(rows, "force", SCORED))
    print(worst_table(rows, "energy", SCORED))
    systems, earlier, marker = ROUNDS[args.round]
    table = choice_table([r for r in rows if r["system"] in systems], earlier, SCORED)
    print(table)
    if args.docs:
        write_between_markers(args.docs, table, name=marker)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
