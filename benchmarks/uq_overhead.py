"""Cost of uncertainties: each wrapper's ``predict`` over the base model's energy+forces.

    python benchmarks/uq_overhead.py [--threads 2] [--repeats 5] [--device cuda]

For ethanol batches and 108-atom EMT Cu cells, every case is timed in the same
run, interleaved with the base model, and reported as a ratio of the best of
``--repeats`` timings:

* base: ``model.compute`` (energies + forces), the denominator;
* LLPR, energy uncertainty only: ``predict_energy`` (energies + energy std);
* LLPR with sampled force uncertainties (8 samples) and with exact ones, the
  posterior alone (``distance=None``), and exact with its latent-distance term (the
  default);
* ShallowEnsemble (8 heads; with its latent-distance force term, the default,
  and the heads alone), EvidentialHead, DeepEnsemble (5 members);
* one vector-Jacobian product of the features (the cost of one member's force
  set on top of the shared forward pass): K of them set the scale of any
  K-member force uncertainty on this device (an isolated product; in a loop on
  one retained graph they were measured somewhat cheaper);
* LLPR ``fit`` with ``include_forces=False`` over one inference pass on the
  same training structures;
* direct (non-conservative) forces: the same network with a direct force head
  (``MiniMLIP(direct_forces=True, force_mode="direct")``, identical backbone
  and energy readout), its energies + direct forces (no backward pass) as the
  denominator, and "LLPR, direct-head force variances" (``predict`` with the
  direct head's own posterior: ``diag(V Σ_w Vᵀ)``, no vector-Jacobian
  product; target <= 1.1x) printed next to the conservative LLPR case, with
  the direct base time over the conservative base time.

Timings only: the models are untrained (costs do not depend on the weights).
With ``--device cuda`` the models run on the GPU, member forces are batched
(``vectorize="auto"``), and every timing waits for the device to finish.
"""

from __future__ import annotations

import argparse
import time

import torch

from mlipuq import datasets
from mlipuq.data import as_dataset, iter_batches
from mlipuq.models import MiniMLIP
from mlipuq.uq import DeepEnsemble, EvidentialHead, LastLayerLaplace, ShallowEnsemble
from mlipuq.uq.jacobians import feature_vjps

MODEL = dict(cutoff=5.0, width=64, n_interactions=3, n_rbf=20, n_readout_features=32)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def run_system(name, species, structures, fit_set, batch_size, repeats,
               device="cpu") -> list[tuple[str, float]]:
    make = lambda s: MiniMLIP(species, seed=s, avg_num_neighbors=20.0, **MODEL).to(device)  # noqa: E731
    model = make(0)
    model.set_atomic_energies({z: 0.0 for z in model.species})
    quick = dict(epochs=1, batch_size=batch_size, progress=False)
    wrappers = {
        "LLPR, energy uncertainty only (predict_energy)": LastLayerLaplace(
            model, include_forces=False, n_samples=0, distance=None).fit(fit_set),
        "LLPR, sampled force variances (n_samples=8)": LastLayerLaplace(
            model, include_forces=False, force_variance="samples", n_samples=8,
            distance=None).fit(fit_set),
        "LLPR, exact force variances": LastLayerLaplace(model, include_forces=False,
                                                        distance=None).fit(fit_set),
        # its latent-distance term (the default since 2026-12-06), read from the same pass
        "LLPR, exact, with its latent term (the default)": LastLayerLaplace(
            model, include_forces=False).fit(fit_set),
        "ShallowEnsemble (8 heads)": ShallowEnsemble(model, n_heads=8, init="random").fit(
            fit_set, **quick),
        "ShallowEnsemble, heads alone (distance=None)": ShallowEnsemble(
            model, n_heads=8, init="random", distance=None).fit(fit_set, **quick),
        "EvidentialHead": EvidentialHead(model).fit(fit_set, **quick),
        "EvidentialHead, head alone (distance=None)": EvidentialHead(
            model, distance=None).fit(fit_set, **quick),
        "DeepEnsemble (5 members)": DeepEnsemble([make(s) for s in range(5)], distance=None),
    }
    direct_model = MiniMLIP(species, seed=0, avg_num_neighbors=20.0, direct_forces=True,
                             force_mode="direct", **MODEL).to(device)
    direct_model.set_atomic_energies({z: 0.0 for z in direct_model.species})
    direct_llpr = LastLayerLaplace(direct_model, distance=None).fit(fit_set)  # force rows: vector features
    base = best_time(lambda: model.compute(structures, batch_size=batch_size), repeats)
    rows = [("base model, energies + forces (s)", base)]
    for label, wrapper in wrappers.items():
        if label.startswith("LLPR, energy"):
            fn = lambda w=wrapper: w.predict_energy(structures, batch_size=batch_size)  # noqa: E731
        else:
            fn = lambda w=wrapper: w.predict(structures, batch_size=batch_size)  # noqa: E731
        t = best_time(fn, repeats)
        rows.append((label, t / base))
    # The scale of any K-member force estimate on this device: K vector-Jacobian
    # products through the backbone, each about this fraction of the base time.
    batches = [b for _, b in iter_batches(as_dataset(structures), model.cutoff, batch_size,
                                          species=model.species, dtype=model.dtype)]
    graphs = [model(b.to(device=model.device), forces=True, features=True) for b in batches]
    cotangent = torch.ones(1, model.n_features, dtype=model.dtype)
    vjp = best_time(lambda: [feature_vjps(g["features"], g["positions"], cotangent,
                                          vectorize=False) for g in graphs], repeats)
    rows.append(("one feature VJP (per member force set) / base", vjp / base))
    inference = best_time(lambda: model.compute(fit_set, batch_size=batch_size), repeats)
    fit = best_time(
        lambda: LastLayerLaplace(model, include_forces=False, n_samples=0, distance=None).fit(
            fit_set, batch_size=batch_size), repeats)
    rows.append(("LLPR fit (include_forces=False) / inference pass", fit / inference))
    # direct head: both timed against the direct model's own energies + direct forces
    direct_base = best_time(lambda: direct_model.compute(structures, batch_size=batch_size),
                            repeats)
    direct_predict = best_time(
        lambda: direct_llpr.predict(structures, batch_size=batch_size), repeats)
    rows.append(("base model, direct head: energies + forces (s)", direct_base))
    rows.append(("direct base / conservative base", direct_base / base))
    rows.append(("LLPR, direct-head force variances", direct_predict / direct_base))
    print(f"\n{name}: {len(structures)} structures, batch {batch_size}, {model.device}")
    for label, value in rows:
        unit = "" if label.endswith("(s)") else "x"
        print(f"  {label:<52}{value:>8.3f}{unit}")
    exact = dict(rows)["LLPR, exact force variances"]
    print(f"  force variances, LLPR predict / its base:  conservative (exact, {model.n_features} "
          f"VJPs) {exact:.3f}x   direct head (no VJP) {direct_predict / direct_base:.3f}x "
          "(target <= 1.1x)")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="torch device of the models")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; ratios are wrapper time / base time")
    ethanol = datasets.ethanol("train")
    run_system("ethanol (9 atoms)", ["H", "C", "O"], list(ethanol[:256]), ethanol[256:512], 32,
               args.repeats, args.device)
    cu = datasets.emt(("Cu",), n_structures=24, size=3, kinds=("bulk",), seed=1)
    run_system("Cu fcc (108 atoms)", ["Cu"], list(cu[:8]), cu[8:24], 4, args.repeats, args.device)


if __name__ == "__main__":
    main()
