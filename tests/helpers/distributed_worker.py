"""One run of fit / calibrate / predict / evaluate / select (and LatentDistance fits), for
tests/test_distributed.py.

Run as a single process (``python distributed_worker.py DIR``) or under
``torchrun --nproc-per-node 2``: the results must agree. Every rank writes
``DIR/out_<world>_<rank>.npz`` (NumPy arrays only, no pickles) and
``DIR/metrics_<world>_<rank>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

import mlipuq
from mlipuq import distributed
from mlipuq.active import select
from mlipuq.calibration import evaluate
from mlipuq.models import load as load_model
from mlipuq.uq import LastLayerLaplace, LatentDistance

STRATEGIES = {
    "random": {},
    "max_energy_std": {},
    "max_force_std": {},
    "trust_window": {"calibration": "val"},
    "fps": {},
    "fps_labelled": {"strategy": "fps", "labelled": "train"},
    "batch_llpr": {},
    "batch_llpr_fitted": {"strategy": "batch_llpr", "label_noise": "fitted"},
}


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    distributed.init()
    world, rank = distributed.world_size(), distributed.rank()
    model = load_model(folder / "model.pt")
    train = mlipuq.load(folder / "train.xyz")
    val = mlipuq.load(folder / "val.xyz")
    pool = mlipuq.load(folder / "pool.xyz")  # unlabelled
    llpr = LastLayerLaplace(model, n_samples=4, distance=None).fit(train, batch_size=4)
    llpr.calibrate(val)
    test = mlipuq.load(folder / "test.xyz")
    pred = llpr.predict(test, batch_size=5)
    report = evaluate(pred, test)
    out = {
        "covariance": llpr.covariance_, "precision": llpr.precision_,
        "gn_energy": llpr.gn_energy_, "gn_forces": llpr.gn_forces_,
        "hyper": np.array([llpr.prior_precision_, llpr.energy_noise_, llpr.forces_noise_]),
        "energy_hyper": np.array([llpr.energy_posterior_["prior_precision"],
                                  llpr.energy_posterior_["energy_noise"]]),
        "energy_covariance": llpr.energy_covariance_,
        "energy": pred.energy, "energy_var": pred.energy_var,
        "forces": pred.forces, "forces_var": pred.forces_var,
        # the default calibration's Student-t for the forces: ν and its scale per element
        "forces_t": np.array([pred.forces_dof, *llpr.recalibrator_.forces_.species_t_scale_]),
    }
    out.update(_latent(model, llpr, train, val, test))
    out.update(_mean_stress(llpr))
    out.update(_llpr_terms(model, train, val, test))
    data = {"train": train, "val": val}
    for name, options in STRATEGIES.items():
        options = dict(options)
        strategy = options.pop("strategy", name)
        options = {k: data.get(v, v) for k, v in options.items()}
        picked = select(llpr, pool, 6, strategy=strategy, seed=3, chunk_size=7,
                        batch_size=3, **options)
        out[f"select_{name}"] = picked.indices
        out[f"scores_{name}"] = picked.scores
    np.savez(folder / f"out_{world}_{rank}.npz", **out)
    (folder / f"metrics_{world}_{rank}.json").write_text(json.dumps(report.to_dict()["metrics"]))
    distributed.finalize()


def _llpr_terms(model, train, val, test) -> dict:
    """LLPR with its latent term, the energies fitted jointly (the default) and apart
    (two collective term fits, λ_E broadcast): uncalibrated variances of ``test``."""
    out = {}
    for combination in ("sum", "max"):
        fitted = LastLayerLaplace(model, n_samples=4, energy_combination=combination).fit(
            train, val, batch_size=4)
        pred = fitted.predict(test, batch_size=5, calibrated=False)
        out[f"llpr_{combination}_energy_var"] = pred.energy_var
        out[f"llpr_{combination}_forces_var"] = pred.forces_var
    return out


def _latent(model, llpr, train, val, test) -> dict:
    """A LatentDistance alone, one combined with the LLPR and one with its structure
    covariance chosen on the held-out structures: fitted state and predictions,
    the structures each rank computed, and the error of a fit with a bad structure."""
    out, seen = {}, []
    passes = LatentDistance._passes

    def counted(self, dataset, *args, **kwargs):  # the structures this rank computes
        seen.append(len(dataset))
        return passes(self, dataset, *args, **kwargs)

    # the Ledoit-Wolf covariance (the default before 2026-12-04) and the held-out one
    lw = dict(structure_covariance="ledoit-wolf")
    for name, wrapper in (("latent", LatentDistance(model, **lw)),
                          ("latent_llpr", LatentDistance(model, combine=llpr, **lw)),
                          ("latent_held_out",
                           LatentDistance(model, structure_covariance="held-out"))):
        seen.clear()
        wrapper._passes = counted.__get__(wrapper)
        wrapper.fit(train, val, batch_size=3)
        out[f"{name}_seen"] = np.array(seen)
        del wrapper._passes
        z = wrapper.species_
        structure = wrapper.structure_
        pred = wrapper.predict(test, batch_size=5, calibrated=False)
        out.update({
            f"{name}_features": np.stack([wrapper.feature_mean_, wrapper.feature_scale_]),
            f"{name}_scales": np.array([wrapper.score_scale_[k] for k in z]),
            f"{name}_means": np.concatenate([wrapper.gmm_[k]["means"].ravel() for k in z]),
            f"{name}_structure": np.concatenate([structure["location"],
                                                 structure["precision"].ravel(),
                                                 [structure["scale"]],
                                                 [structure.get("diagonal", 0.0)]]),
            f"{name}_maps": np.array([wrapper.energy_a_, wrapper.energy_b_, wrapper.forces_a_,
                                      wrapper.forces_b_, wrapper.energy_other_scale_,
                                      wrapper.forces_other_scale_, wrapper.n_train_]),
            f"{name}_energy_var": pred.energy_var, f"{name}_forces_var": pred.forces_var,
        })
    out["latent_error"] = np.array(_latent_error(model, train, val))
    return out


def _latent_error(model, train, val) -> str:
    """The error of a LatentDistance fit whose 10th reference structure has no forces
    (on two ranks: in rank 1's share)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = [atoms.copy() for atoms in train]
    for atoms, original in zip(structures, train):
        atoms.calc = SinglePointCalculator(atoms, **original.calc.results)
    bad = structures[9]
    bad.calc = SinglePointCalculator(bad, energy=bad.get_potential_energy())
    try:
        LatentDistance(model).fit(mlipuq.AtomsDataset(structures), val, batch_size=3)
    except Exception as exc:  # the bad rank: a ValueError; the others: RankFailedError
        return f"{type(exc).__name__}: {exc}"
    return "no error"



def _mean_stress(llpr) -> dict:
    """Mean stresses of five rattled Cu cells (shares of 2 and 3 on two ranks), and
    the error of a list whose last structure, in rank 1's share, is a slab."""
    from ase.build import bulk, fcc111

    cells = []
    for k in range(5):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.02 * k, cubic=True)
        atoms.rattle(0.05, seed=k)
        cells.append(atoms)
    out = {"mean_stress": llpr.mean_stress(cells, batch_size=2)}
    try:
        llpr.mean_stress(cells[:4] + [fcc111("Cu", size=(2, 2, 2), vacuum=5.0)])
        out["stress_error"] = np.array("none")
    except Exception as exc:  # compared across ranks by the test
        out["stress_error"] = np.array(f"{type(exc).__name__}: {exc}")
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]))
