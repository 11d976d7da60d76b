"""Can a latent distance see the 108-atom cells a narrow-trained model gets wrong?

For each EMT system of the shift benchmark (base model 0 of ``shift.py``'s cache,
trained on 32-atom cells narrower than twice the cutoff), the Mahalanobis distance
of every atom's features to the training atoms of its element, as
:class:`~mlipuq.uq.LatentDistance` measures it (features standardised over all
training atoms, one Gaussian per element with a 1e-4 ridge: ``fit_gmm``), squared
and divided by the training atoms' median (u² ≈ 1 in distribution): in each
message-passing layer's invariant features, in the readout's input and in all of
them concatenated (``features="all_layers"``), each with the ridge relative to the
element's own spread (``ridge_scale="per_species"``), and all of them with the ridge
relative to every atom's (the default, ``"all_atoms"``). Per group of atoms: the
in-distribution test atoms at each training temperature and the atoms of the
108-atom cells at the lowest (``shift_data.unseen_shifts``): median u², force MSE,
and the AUROC of u² telling the 108-atom atoms from the in-distribution atoms at the
lowest and at the highest training temperature.

A variance map a + b u² fitted in distribution can widen the 108-atom cells only
if their u² lies beyond that of in-distribution atoms with smaller errors.

    python benchmarks/wide_cell_distances.py --cache /tmp/fits --parts agpd nicu copper
"""

from __future__ import annotations

import reproducible  # noqa: F401  (first: MKL_CBWR=AUTO)
import argparse
import os

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mlipuq import data as mdata
from mlipuq.models import load
from mlipuq.uq import latent_features
from mlipuq.uq.latent_maps import fit_gmm, mahalanobis
from shift_data import HELD_OUT, PART_SETS, UNSEEN_SEEDS, unseen_shifts


def blocks(model, dataset) -> tuple[dict, np.ndarray, np.ndarray]:
    """``({block name: (N, F) float64 features}, atomic numbers (N,), force squared
    errors per atom (N,))`` of ``dataset``'s atoms."""
    modules = latent_features._layer_modules(model)
    parts: dict = {}
    numbers, errors = [], []
    model.eval()
    for _, batch in mdata.iter_batches(dataset, model.cutoff, 16, species=model.species,
                                       dtype=model.dtype):
        with latent_features._layer_capture(modules) as layers:
            out = model(batch, forces=True, features=True)
        named = {f"layer {k}": x for k, x in enumerate(layers)}
        named["readout"] = out["features"]
        for name, x in named.items():
            parts.setdefault(name, []).append(x.detach().double().numpy())
        numbers.append(batch.numbers.numpy())
        errors.append(((out["forces"].detach().double() - batch.forces.double()) ** 2)
                      .mean(dim=1).numpy())
    features = {name: np.concatenate(x) for name, x in parts.items()}
    features["all layers"] = np.concatenate(list(features.values()), axis=1)
    return features, np.concatenate(numbers), np.concatenate(errors)


def squared_scores(reference: np.ndarray, x: np.ndarray, rescale: bool) -> np.ndarray:
    """u² of the rows of ``x`` under a Gaussian fitted on ``reference`` (``fit_gmm``,
    ``rescale`` its ridge relative to ``reference``'s own spread), over the median of
    ``reference``'s own."""
    g = fit_gmm(reference, 1, 0, rescale=rescale)
    return mahalanobis(g, x) ** 2 / np.median(mahalanobis(g, reference) ** 2)


def standardised(features: dict, train: dict) -> dict:
    """Every block of ``features`` standardised by ``train``'s atoms, all elements
    together (as :class:`~mlipuq.uq.LatentDistance` does)."""
    return {name: (x - train[name].mean(axis=0)) / (train[name].std(axis=0) + 1e-12)
            for name, x in features.items()}


def system(part: str, cache: str) -> None:
    train, _, shifts = {**PART_SETS, **HELD_OUT}[part](False)
    model = load(os.path.join(cache, f"{part}-80", "model0.pt"))
    ind = shifts[next(k for k in shifts if k.startswith("in distribution"))]
    wide_name, wide = next(iter(unseen_shifts(train, UNSEEN_SEEDS[part], False).items()))
    f_train, z_train, _ = blocks(model, train)
    f_ind, z_ind, e_ind = blocks(model, ind)
    f_wide, z_wide, e_wide = blocks(model, wide)
    f_train, f_ind, f_wide = (standardised(f, f_train) for f in (f_train, f_ind, f_wide))
    t_ind = np.concatenate([[float(a.info["temperature"])] * len(a) for a in ind])
    temps = sorted(set(t_ind))
    groups = {f"in dist {t:g} K": t_ind == t for t in temps}
    print(f"\n{part}: force MSE (meV/Å)², " + ", ".join(
        f"{g} {1e6 * e_ind[m].mean():.1f}" for g, m in groups.items())
        + f", {wide_name} {1e6 * e_wide.mean():.1f}")
    print(f"  {'features, ridge':<30}" + "".join(f"{'u² ' + g:>18}" for g in groups)
          + f"{'u² 108 atoms':>14}{'AUROC vs lowest T':>19}{'vs highest T':>14}")
    cases = [(name, True) for name in f_train] + [("all layers", False)]
    for name, rescale in cases:
        u_ind, u_wide = np.empty(len(z_ind)), np.empty(len(z_wide))
        for z in np.unique(z_train):
            ref = f_train[name][z_train == z]
            u_ind[z_ind == z] = squared_scores(ref, f_ind[name][z_ind == z], rescale)
            u_wide[z_wide == z] = squared_scores(ref, f_wide[name][z_wide == z], rescale)
        aurocs = [roc_auc_score(np.r_[np.zeros(m.sum()), np.ones(len(u_wide))],
                                np.r_[u_ind[m], u_wide])
                  for m in (groups[f"in dist {temps[0]:g} K"], groups[f"in dist {temps[-1]:g} K"])]
        label = f"{name}, {'per species' if rescale else 'all atoms'}"
        print(f"  {label:<30}" + "".join(f"{np.median(u_ind[m]):>18.2f}" for m in groups.values())
              + f"{np.median(u_wide):>14.2f}{aurocs[0]:>19.2f}{aurocs[1]:>14.2f}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/tmp/fits")
    parser.add_argument("--parts", nargs="+", default=["agpd", "nicu", "copper"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for part in args.parts:
        system(part, args.cache)


if __name__ == "__main__":
    main()
