"""Where each wrapper's defaults stand against the goal of issue #20, from the rows of
``benchmarks/shift.py`` (its README table between the ``shift-goal`` markers).

The goal, with each wrapper's defaults (``calibrate(val)``), on shifts the
calibration data did not contain: 95 % intervals cover at least 0.90 of force
components and 0.85 of energies; in distribution the force miscalibration area
stays at most 0.05 and the NLL no worse than with a scalar factor (every
wrapper's recalibration at the issue's time); the cost in sharpness (mean std in
distribution) is reported; no std passes 10 × the largest error plausible for
the data (the bound, ``mlipuq.calibration.extrapolation.saturate``).

Also the rule that chose each wrapper's widening powers from the rows of
``benchmarks/shift_widening.py`` (:func:`choose`, :func:`choice_table`).
"""

from __future__ import annotations

import numpy as np

F_COVER, E_COVER, MISCAL = 0.90, 0.85, 0.05


def _mark(ok: bool) -> str:
    return "" if ok else " ✗"


def _worst(shifted: list[dict], key: str, goal: float) -> str:
    worst = min(shifted, key=lambda r: r[key])
    return f"{worst[key]:.3f}{_mark(worst[key] >= goal)} ({worst['split']})"


def _versus(default: dict, scalar: dict, key: str) -> str:
    """NLL with the default against the scalar factor's (lower is better; compared as
    printed, to 1e-3 nats)."""
    ours, theirs = round(default[key], 3), round(scalar[key], 3)
    return f"{ours:.3f} / {theirs:.3f}{_mark(ours <= theirs)}"


def goal_row(system: str, wrapper: str, default: list[dict], scalar: list[dict]) -> str:
    """One markdown row from a wrapper's rows of the default and the scalar factor
    (in distribution and every shift)."""
    def split(rows, in_dist):
        return [r for r in rows if r["split"].startswith("in dist") == in_dist]

    ind, sc_ind = split(default, True)[0], split(scalar, True)[0]
    shifted = split(default, False)
    bound = max(max(r.get("force_std_bound_ratio") or 0.0, r.get("energy_std_bound_ratio") or 0.0)
                for r in default)
    sharp = ind["force_std"] / sc_ind["force_std"]
    return (f"| {system} | {wrapper} | {_worst(shifted, 'force_cov95', F_COVER)} | "
            f"{_worst(shifted, 'energy_cov95', E_COVER)} | "
            f"{ind['force_miscal']:.3f}{_mark(ind['force_miscal'] <= MISCAL)} | "
            f"{_versus(ind, sc_ind, 'force_nll')} | {_versus(ind, sc_ind, 'energy_nll')} | "
            f"{1e3 * ind['force_std']:.2f} (×{sharp:.2f}) | {bound:.2f}{_mark(bound <= 1.0)} |")


def goal_table(rows: list[dict], systems: list[str]) -> str:
    """Per system (in the order of ``systems``) and wrapper that has both a
    ``"default"`` and a ``"scalar"`` recalibration among ``rows``: the worst shift's
    force and energy coverage, the in-distribution miscalibration area, force and
    energy NLL against the scalar factor's, mean force std (×: against the scalar
    factor's) and the largest calibrated std over its bound on any split."""
    lines = ["| system | wrapper | shifts: worst F cover (≥ 0.90) | shifts: worst E cover "
             "(≥ 0.85) | in-dist F miscal. (≤ 0.05) | in-dist F NLL: default / scalar | "
             "in-dist E NLL: default / scalar | in-dist mean F std, meV/Å (× scalar's) | "
             "largest std / bound (≤ 1) |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        if r["method"] in ("default", "scalar"):
            groups.setdefault((r["system"], r["wrapper"]), {}).setdefault(r["method"], []).append(r)
    order = {s: i for i, s in enumerate(systems)}
    for (system, wrapper), by_method in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])):
        if {"default", "scalar"} <= set(by_method):
            lines.append(goal_row(system, wrapper, by_method["default"], by_method["scalar"]))
    return "\n".join(lines)



def widening_table(rows: list[dict], systems: list[str], wrappers: list[str]) -> str:
    """Per wrapper of ``wrappers``: the defaults against "default, widening 1" (p = 1 for
    both targets), the worst force and energy coverage over every shift of ``systems``,
    and on Cu and the alloy the mean force NLL over the shifts and the mean over the
    shifts of the mean force std over the force MAE (docs/shift.md, the alloy)."""
    methods = ("default", "default, widening 1")

    def tags(wrapper, method):
        return {r.get("defaults") for r in rows if (r["wrapper"], r["method"]) == (wrapper, method)}

    # like with like: each wrapper's rows of the defaults both methods were measured with
    # (a wrapper whose default changed after its widening rows has none: left out)
    shared = {w: tags(w, methods[0]) & tags(w, methods[1]) for w in wrappers}
    wrappers = [w for w in wrappers if shared[w]]

    def shifted(system, wrapper, method):
        return [r for r in rows if (r["system"], r["wrapper"], r["method"]) ==
                (system, wrapper, method) and r.get("defaults") in shared[wrapper]
                and not r["split"].startswith("in dist")]

    lines = ["| wrapper | worst F cover, four systems | worst E cover, four systems | "
             "Cu: mean shift F NLL | Cu: mean F std / MAE | alloy: mean shift F NLL | "
             "alloy: mean F std / MAE |", "|---|---|---|---|---|---|---|"]
    for wrapper in wrappers:
        cells = []
        for key, digits in (("force_cov95", 3), ("energy_cov95", 2)):
            worst = [min(r[key] for s in systems for r in shifted(s, wrapper, m)) for m in methods]
            cells.append(f"{worst[0]:.{digits}f} → {worst[1]:.{digits}f}")
        for system in ("copper", "alloy"):
            nll = [np.mean([r["force_nll"] for r in shifted(system, wrapper, m)]) for m in methods]
            ratio = [np.mean([r["force_std"] / r["force_mae"] for r in shifted(system, wrapper, m)])
                     for m in methods]
            cells += [f"{nll[0]:.2f} → {nll[1]:.2f}", f"{ratio[0]:.1f} → {ratio[1]:.1f}"]
        lines.append(f"| {wrapper} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The widening powers ``benchmarks/shift_widening.py`` scores.
POWERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
#: Its wrappers, in the order of its tables.
WRAPPERS = ("LastLayerLaplace", "LatentDistance", "LatentDistance + LLPR", "ShallowEnsemble",
            "EvidentialHead", "DeepEnsemble (3)")
#: Coverage goals of the 95 % intervals under shift (issue #20).
GOALS = {"force": F_COVER, "energy": E_COVER}
TARGETS = {"force": "forces", "energy": "energies"}
SHARPNESS = {"force": ("force_std", "force_mae"),
             "energy": ("energy_std_per_atom", "energy_mae_per_atom")}
#: The powers before the choice on four systems (each wrapper's default_extrapolation
#: then; 0.5 where not named).
EARLIER = {"force": {"DeepEnsemble (3)": 0.0}, "energy": {"DeepEnsemble (3)": 0.25}}
#: The powers chosen on the four systems: the floors of the choice on six.
FOUR_SYSTEMS = {"force": {**dict.fromkeys(WRAPPERS, 0.75), "DeepEnsemble (3)": 0.5},
                "energy": {**dict.fromkeys(WRAPPERS, 0.5), "DeepEnsemble (3)": 0.25,
                           "EvidentialHead": 1.0}}
#: LLPR at its posterior mean (``refit_mean``, the candidates of the round on eight)
#: starts from LLPR's powers, with latent distance from latent distance + LLPR's.
REFIT = ("LastLayerLaplace (refit mean)", "LastLayerLaplace (refit mean; t energies)",
         "LatentDistance + LLPR (refit mean)", "LatentDistance + LLPR (refit mean; t energies)")


def _with_refit(powers: dict) -> dict:
    """``powers`` per target, the ``REFIT`` candidates given those they would replace."""
    return {target: {**named, **{name: named[name.split(" (")[0]] for name in REFIT}}
            for target, named in powers.items()}


_SIX = {"force": {**dict.fromkeys(WRAPPERS, 0.75), "DeepEnsemble (3)": 0.5},
        "energy": {**dict.fromkeys(WRAPPERS, 1.0), "LastLayerLaplace": 0.75}}
#: The powers chosen on six systems (the defaults from 2026-12-02 to 2026-12-04, Pt and
#: Ni₃Al run after them): the floors of the rounds on eight and on nine.
SIX_SYSTEMS = _with_refit(_SIX)
#: The powers chosen on nine systems (the defaults to 2026-12-05, Ni₃Cu run after them):
#: LLPR's energies raised to 1.
NINE_SYSTEMS = _with_refit({"force": _SIX["force"],
                            "energy": {**_SIX["energy"], "LastLayerLaplace": 1.0}})
#: Today's powers: those of nine systems, the evidential head's and the shallow
#: ensemble's forces raised to 1 and the deep ensemble's to 0.75 by the force rounds on
#: 25 fits (2026-12-05, ``benchmarks/rounds.py forces-*``). The floors of a next round.
FORCE_ROUNDS = _with_refit({"force": {**_SIX["force"], "EvidentialHead": 1.0,
                                      "ShallowEnsemble": 1.0, "DeepEnsemble (3)": 0.75},
                            "energy": NINE_SYSTEMS["energy"]})
#: The rounds of the choice: the systems whose rows count, the floors, and the
#: markers of docs/shift.md its table goes between. Four: the default parts of
#: shift.py (AgPd held out); six: with AgPd and Pt₃Ni (EMT Pt held out); eight: with
#: Pt and Ni₃Al, for LLPR at its posterior mean (EMT Cu₃Pd held out); nine: with Cu₃Pd,
#: the floors SIX_SYSTEMS (EMT Ni₃Cu held out); that round raised LLPR's energies
#: 0.75 → 1 (NINE_SYSTEMS).
_FOUR = ("copper", "ethanol", "acac", "alloy")
_EIGHT = _FOUR + ("agpd", "ptni", "platinum", "nial")
ROUNDS = {"four": (_FOUR, EARLIER, "shift-widening-choice"),
          "six": (_FOUR + ("agpd", "ptni"), FOUR_SYSTEMS, "shift-widening-choice-six"),
          "eight": (_EIGHT, SIX_SYSTEMS, "shift-widening-choice-eight"),
          "nine": (_EIGHT + ("cupd",), SIX_SYSTEMS, "shift-widening-choice-nine")}


#: Every wrapper name the widening's rounds score: the six and the round on eight's candidates.
SCORED = WRAPPERS + REFIT


def scored(wrappers, rows: list[dict]) -> list[str]:
    """Those of ``wrappers`` (in their order) that have rows among ``rows``."""
    present = {r["wrapper"] for r in rows}
    return [w for w in wrappers if w in present]


def choose(rows: list[dict], target: str, wrapper: str, rule: str = "structure",
           earlier: dict = EARLIER) -> float:
    """The smallest power of ``POWERS`` up to 1, not below the earlier default
    (``earlier[target]``, 0.5 where it names no power for ``wrapper``), at which
    ``wrapper``'s 95 % ``target`` intervals meet the goal on every shift of ``rows``
    (every system's), leaving out the shifts that p = 1 does not mend either (they
    are not the widening's to fix)."""
    key, goal = f"{target}_cov95", GOALS[target]
    mine = [r for r in rows if r["wrapper"] == wrapper and r["rule"] == rule
            and not r["split"].startswith("in dist")]
    cover = {(r["system"], r["split"], r["power"]): r[key] for r in mine}
    mendable = {(s, split) for s, split, p in cover if p == 1.0 and cover[s, split, p] >= goal}
    floor = earlier[target].get(wrapper, 0.5)
    for power in (p for p in POWERS if floor <= p <= 1.0):
        if all(cover[s, split, power] >= goal for s, split in mendable):
            return power
    return 1.0


def choice_table(rows: list[dict], earlier: dict = EARLIER, wrappers=WRAPPERS) -> str:
    """Per wrapper and target: the earlier (``earlier``) and the chosen power, and with
    each the worst coverage over each system's shifts, the mean NLL over them and the
    mean over them of the mean std over the MAE."""
    systems = sorted({r["system"] for r in rows})
    lines = ["| wrapper | target | p: earlier → chosen | " + " | ".join(
        f"{s}: worst cover / mean NLL / mean std÷MAE" for s in systems) + " |",
        "|---|---|---|" + "---|" * len(systems)]
    for wrapper in scored(wrappers, rows):
        for target in ("force", "energy"):
            before = earlier[target].get(wrapper, 0.5)
            after = choose(rows, target, wrapper, earlier=earlier)
            cells = []
            std, mae = SHARPNESS[target]
            for system in systems:
                part = [r for r in rows if (r["wrapper"], r["system"], r["rule"]) ==
                        (wrapper, system, "structure") and not r["split"].startswith("in dist")]
                if not part:  # not scored on this system
                    cells.append("—")
                    continue
                worst = [min(r[f"{target}_cov95"] for r in part if r["power"] == p)
                         for p in (before, after)]
                nll = [np.mean([r[f"{target}_nll"] for r in part if r["power"] == p])
                       for p in (before, after)]
                wide = [np.mean([r[std] / r[mae] for r in part if r["power"] == p])
                        for p in (before, after)]
                cells.append(f"{worst[0]:.3f} → {worst[1]:.3f} / {nll[0]:.2f} → {nll[1]:.2f}"
                             f" / {wide[0]:.1f} → {wide[1]:.1f}")
            lines.append(f"| {wrapper} | {TARGETS[target]} | {before:g} → {after:g} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)
