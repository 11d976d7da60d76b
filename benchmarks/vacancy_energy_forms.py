"""Diagnostic: which form of a latent-distance energy variance follows the energy errors
of structures that leave the training data in a few atoms (vacancies, surfaces).

Latent distance's energy variance is the structure form n²(a + b U²), U the distance
of the structure's mean features (``mlipuq.uq.structure_distance``). A vacancy moves
a dozen of a cell's atoms; their mean hardly moves. This script fits three forms of
the raw energy variance by Gaussian NLL on the calibration energies (val) of one
system of ``benchmarks/shift.py`` and scores the 95 % energy coverage and mean
std / mean error per split, each form on its own (no scaling between structures, no
widening, no Student-t: the forms alone, not the wrapper's calibrated output):

- ``structure``: n² (a + b U²) (today's),
- ``atoms``: a n + b Σ_i u_i² (independent atoms, the default before),
- ``coherent atoms``: (Σ_i sqrt(a + b u_i²))², the per-atom stds summed as if the
  atoms' errors were fully correlated.

The per-split "wrapper" column is ``LatentDistance(model).fit(train, val).calibrate(val)``
as the shift table scores it. Each form is also fitted to the errors recentred on val
(the base model's mean per-atom offset taken out, as ``DeepEnsemble.calibrate`` does per
member). Then, end to end: LLPR, latent distance and latent distance + LLPR with their
defaults on the base model as trained and on a copy whose reference energies absorb
that offset (the shift table's scores, and each split's mean raw per-atom energy std
over the in-distribution one). A diagnostic, not a choice: the base models are those
of the shift table (``--cache`` as there); nothing here changes a default
(``docs/shift.md``, "What stays out of reach").

    python benchmarks/vacancy_energy_forms.py --cache /tmp/fits --parts platinum ptni

``--share-only``: latent distance with ``min_distance_share`` 0.1 (default) and 1.0 (an
energy map without a constant term), end to end, and the median structure distance per
split under other covariances of the training descriptors, and the calibration energies'
NLL per diagonal term of that covariance (``distance_share``).
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO, reruns reproduce their rows)
import argparse
import copy
import json
import os

import numpy as np
import torch
from scipy.optimize import minimize
from shift import HELD_OUT, PART_SETS, base_models
from shift_cache import cache_folder
from shift_scores import scores as shift_scores

from mlipuq import data as mdata
from mlipuq.training_setup import fit_offset_drift
from mlipuq.uq import LastLayerLaplace, LatentDistance, structure_distance

HERE = os.path.dirname(os.path.abspath(__file__))
FORMS = ("structure", "atoms", "coherent atoms")


def terms(wrapper: LatentDistance, dataset) -> dict:
    """Per structure: energy error (eV), n, U² and the per-atom u² (a list of arrays)."""
    out = {"err": [], "n": [], "U2": [], "u2": []}
    for batch, output, phi in wrapper._passes(dataset, 16, forces=False):
        x, numbers = wrapper.standardise(phi), batch.numbers.cpu().numpy()
        u2 = wrapper._standardised_scores(x, numbers) ** 2
        structure = batch.batch.cpu().numpy()
        d = structure_distance.descriptors(x, numbers, structure, batch.n_structures,
                                           wrapper.species_)
        out["U2"] += list(structure_distance.scores(wrapper.structure_, d) ** 2)
        out["n"] += list(batch.n_atoms.cpu().numpy().astype(float))
        out["u2"] += [u2[structure == s] for s in range(batch.n_structures)]
        truth = batch.energy.cpu().numpy().astype(float)
        out["err"] += list(output["energy"].detach().cpu().numpy().astype(float) - truth)
    return out


def variance(form: str, t: dict, a: float, b: float) -> np.ndarray:
    n, U2 = np.asarray(t["n"]), np.asarray(t["U2"])
    if form == "structure":
        return n**2 * (a + b * U2)
    if form == "atoms":
        return a * n + b * np.array([u.sum() for u in t["u2"]])
    return np.array([np.sqrt(a + b * u).sum() ** 2 for u in t["u2"]])


def fit_form(form: str, t: dict) -> tuple[float, float]:
    """(a, b) >= 0 by Gaussian NLL of the energy errors (log-parametrised)."""
    err2 = np.asarray(t["err"]) ** 2

    def nll(p):
        v = variance(form, t, *np.exp(p))
        return 0.5 * float(np.sum(np.log(v) + err2 / v))

    scale = float(np.mean(err2 / np.asarray(t["n"]) ** 2))
    starts = [np.log([scale, scale]), np.log([scale, 1e-3 * scale]),
              np.log([1e-3 * scale, scale])]
    best = min((minimize(nll, s, method="Nelder-Mead", options={"xatol": 1e-4,
                                                                 "fatol": 1e-8})
                for s in starts), key=lambda r: r.fun)
    return tuple(float(v) for v in np.exp(best.x))


def scores(t: dict, var: np.ndarray) -> dict:
    err, n, std = np.asarray(t["err"]), np.asarray(t["n"]), np.sqrt(var)
    return {"cover95": float(np.mean(np.abs(err) <= 1.959964 * std)),
            "std_over_mae": float(np.mean(std / n) / np.mean(np.abs(err) / n)),
            "mae_per_atom": float(np.mean(np.abs(err) / n)),
            "nll": float(np.mean(0.5 * (np.log(2 * np.pi * var) + err**2 / var)))}


def recentred(t: dict, offset: float) -> dict:
    """``t`` with a constant per-atom energy offset (eV/atom) taken from its errors."""
    return {**t, "err": list(np.asarray(t["err"]) - offset * np.asarray(t["n"]))}


def run(part: str, cache: str) -> dict:
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    model = base_models(part, train, val, 80, 1, cache_folder(cache, part, 80))[0]
    wrapper = LatentDistance(model).fit(train, val).calibrate(val)
    fitted = terms(wrapper, val)
    # the base model's constant per-atom offset, as measured on val (the mean of the
    # per-atom errors: for one composition, as every system's val here, the same as a
    # per-species least-squares fit). The forms leave out the composition variance
    # (predict adds it); their rows of a new stoichiometry are not the wrapper's.
    offset = float(np.mean(np.asarray(fitted["err"]) / np.asarray(fitted["n"])))
    result = {"offset_per_atom": offset}
    for label, shift in (("as predicted", 0.0), ("recentred on val", offset)):
        result[label] = one_way(wrapper, recentred(fitted, shift), tests, shift, part, label)
    return result


def one_way(wrapper, fitted: dict, tests: dict, offset: float, part: str, label: str) -> dict:
    params = {form: fit_form(form, fitted) for form in FORMS}
    print(f"{part} {label}: " + ", ".join(f"{f} a={a:.3g} b={b:.3g}"
                                          for f, (a, b) in params.items()), flush=True)
    result = {"params": params, "splits": {}}
    for split, test in tests.items():
        t = recentred(terms(wrapper, test), offset)
        err = np.asarray(t["err"])
        row = {form: scores(t, variance(form, t, *params[form])) for form in FORMS}
        if offset == 0.0:  # the wrapper's own intervals, about its own (offset) mean
            row["wrapper"] = {"cover95": float(np.mean(np.abs(err) <= 1.959964 * np.sqrt(
                wrapper.predict(test).energy_var)))}
        u_max = [float(np.sqrt(u.max())) for u in t["u2"]]
        row["median U"] = float(np.median(np.sqrt(t["U2"])))
        row["median max u"] = float(np.median(u_max))
        result["splits"][split] = row
        print(f"{part} {split:<28} " + " | ".join(
            f"{form}: {row[form]['cover95']:.2f} ({row[form]['std_over_mae']:.1f}x)"
            for form in FORMS)
            + (f" | wrapper {row['wrapper']['cover95']:.2f}" if "wrapper" in row else "")
            + f" | U {row['median U']:.2f} max u {row['median max u']:.2f}", flush=True)
    return result


def recentred_model(model, val):
    """A copy of ``model`` whose per-species reference energies absorb its mean energy
    error on ``val`` (least squares, minimum norm; what ``DeepEnsemble.calibrate``
    does per member), the undetermined directions and the drift kept as trained."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        pred = np.concatenate([out["energy"].detach().cpu().numpy() for out in (
            model(batch, forces=False) for _, batch in mdata.iter_batches(
                mdata.as_dataset(val), model.cutoff, 16, species=model.species,
                dtype=model.dtype))])
    counts = mdata.composition_matrix(val, model.species)
    offsets = np.linalg.lstsq(counts, val.energies - pred, rcond=None)[0]
    energies = {z: model.atomic_energies[z] + o for z, o in zip(model.species, offsets)}
    moved.set_atomic_energies(energies, undetermined=model.offset_basis,
                             prior_std=model.offset_prior_std)
    return moved, offsets


def end_to_end(part: str, cache: str) -> dict:
    """LLPR, latent distance and latent distance + LLPR with their defaults, on the
    base model as trained and recentred on val: worst shift coverages and the
    in-distribution NLL (the shift table's scores)."""
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    model = base_models(part, train, val, 80, 1, cache_folder(cache, part, 80))[0]
    moved, offsets = recentred_model(model, val)
    if moved.offset_basis is not None:
        fit_offset_drift(moved, train)
    print(f"{part}: recentring offsets (eV/atom) {np.round(offsets, 5).tolist()}", flush=True)
    result = {"offsets": offsets.tolist()}
    for label, base in (("as trained", model), ("recentred on val", moved)):
        llpr = LastLayerLaplace(base, distance=None).fit(train)
        wrappers = {"LastLayerLaplace": llpr, "LatentDistance": LatentDistance(base),
                    "LatentDistance + LLPR": LatentDistance(base, combine=llpr)}
        for name, wrapper in wrappers.items():
            if name.startswith("LatentDistance"):
                wrapper.fit(train, val)
            wrapper.calibrate(val)
            rows = {}
            for split, test in tests.items():
                raw = wrapper.predict(test, calibrated=False, composition=False)
                rows[split] = {**shift_scores(wrapper.predict(test), test),
                               "raw_energy_std_per_atom": float(np.mean(
                                   np.sqrt(raw.energy_var) / raw.n_atoms))}
            first = next(iter(rows.values()))["raw_energy_std_per_atom"]
            result[f"{name} / {label}"] = rows
            if wrapper.__class__ is LatentDistance and wrapper.combine is not None:
                # the weight the NLL fit gives the combined wrapper's energy variance
                rows["energy_other_scale"] = float(wrapper.energy_other_scale_)
                print(f"  {name} {label}: λ_E {wrapper.energy_other_scale_:.3g}", flush=True)
            print(f"  {name:<22} {label:<17} " + " | ".join(
                f"{split.split(' (')[0][:14]}: E {r['energy_cov95']:.2f} F {r['force_cov95']:.3f}"
                f" E/F NLL {r['energy_nll']:.2f}/{r['force_nll']:.3f}"
                f" raw E std x{r['raw_energy_std_per_atom'] / first:.1f}"
                for split, r in rows.items() if isinstance(r, dict)), flush=True)
    return result


def structure_metric(wrapper: LatentDistance, train, tests: dict) -> dict:
    """Median structure distance U per split (and its ratio to the first split's) under
    the fitted reference (Ledoit-Wolf + 1e-4, today's) and under the plain empirical
    covariance of the training descriptors + 1e-4 or + 1e-6 on the diagonal."""
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    d_train = structure_distance.dataset_descriptors(wrapper, train)
    empirical = EmpiricalCovariance().fit(d_train)
    references = {"Ledoit-Wolf + 1e-4 (today)": wrapper.structure_}
    for ridge in (1e-4, 1e-6):
        references[f"empirical + {ridge:g}"] = structure_distance.reference_from(
            empirical.location_, empirical.covariance_ + ridge * np.eye(d_train.shape[1]),
            d_train)
    result = {"ledoit_wolf_shrinkage": float(LedoitWolf().fit(d_train).shrinkage_)}
    for split, test in tests.items():
        d = structure_distance.dataset_descriptors(wrapper, test)
        result[split] = {k: float(np.median(structure_distance.scores(r, d)))
                         for k, r in references.items()}
    first = next(v for v in result.values() if isinstance(v, dict))
    for split, row in result.items():
        if isinstance(row, dict):
            print(f"   median U {split[:28]:<28} " + " | ".join(
                f"{k}: {v:.2f} (x{v / first[k]:.1f})" for k, v in row.items()), flush=True)
    return result


def diagonal_by_energy_nll(wrapper: LatentDistance, train, val) -> dict:
    """Could the calibration energies choose the structure covariance's diagonal term?
    Per term δ (times the descriptors' mean variance, on the empirical covariance), the
    energy map refitted on val and its raw Gaussian energy NLL there (the fit's objective);
    "today" is the Ledoit-Wolf reference. ``wrapper`` is refitted in place."""
    def val_nll():
        pred = wrapper.predict(val, calibrated=False, composition=False)
        err2, var = (pred.energy - val.energies) ** 2, pred.energy_var
        return float(np.mean(0.5 * (np.log(2 * np.pi * var) + err2 / var)))

    result = {"today": val_nll()}
    d_train = structure_distance.dataset_descriptors(wrapper, train)
    empirical = np.cov(d_train, rowvar=False, bias=True)
    unit = float(np.trace(empirical)) / len(empirical)
    for delta in 10.0 ** np.arange(-12.0, 1.0, 2.0):
        wrapper.structure_ = structure_distance.reference_from(
            d_train.mean(axis=0), empirical + delta * unit * np.eye(len(empirical)), d_train)
        wrapper._fit_map(val, 16, False)
        result[f"{delta:g}"] = val_nll()
    print("   val energy NLL by diagonal term: " + ", ".join(
        f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    return result


def distance_share(part: str, cache: str, shares=(0.1, 1.0)) -> dict:
    """Latent distance with its defaults but ``min_distance_share`` (the smallest share of
    the distance term in a variance at U = 1; 0.1 is the default, 1.0 leaves the energy
    map no constant term, n² b U², as LLPR's leverage has none): the fitted energy map
    and the shift table's scores per split (the forces change too and are reported)."""
    train, val, tests = {**PART_SETS, **HELD_OUT}[part](False)
    model = base_models(part, train, val, 80, 1, cache_folder(cache, part, 80))[0]
    result = {}
    for share in shares:
        wrapper = LatentDistance(model, min_distance_share=share).fit(train, val).calibrate(val)
        rows = {"energy_a": wrapper.energy_a_, "energy_b": wrapper.energy_b_}
        print(f"{part} min_distance_share {share}: energy a={wrapper.energy_a_:.3g}"
              f" b={wrapper.energy_b_:.3g} eV²", flush=True)
        for split, test in tests.items():
            r = rows[split] = shift_scores(wrapper.predict(test), test)
            print(f"   {split[:28]:<28} E cover {r['energy_cov95']:.2f} NLL"
                  f" {r['energy_nll']:.2f} std/MAE"
                  f" {r['energy_std_per_atom'] / r['energy_mae_per_atom']:.1f} | F cover"
                  f" {r['force_cov95']:.3f} NLL {r['force_nll']:.3f}", flush=True)
        result[str(share)] = rows
    result["median U"] = structure_metric(wrapper, train, tests)
    result["val energy NLL by diagonal"] = diagonal_by_energy_nll(
        LatentDistance(model).fit(train, val), train, val)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["platinum"])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--share-only", action="store_true",
                        help="only the min_distance_share comparison (distance_share)")
    parser.add_argument("--out", default=None, help="default results/vacancy_energy_forms.json"
                        " (with --share-only: results/vacancy_energy_share.json)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(HERE, "results", "vacancy_energy_share.json"
                                        if args.share_only else "vacancy_energy_forms.json")
    torch.set_num_threads(args.threads)
    if args.share_only:
        results = {part: distance_share(part, args.cache) for part in args.parts}
    else:
        results = {part: {"forms": run(part, args.cache),
                          "wrappers": end_to_end(part, args.cache)} for part in args.parts}
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
