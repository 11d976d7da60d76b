"""Time the full calibration-metric bundle on 10^6 force components.

Usage::

    python benchmarks/metrics.py [--atoms 333334] [--utb-size 10000] [--repeat 3]

Prints the wall time of :func:`mlipuq.calibration.metrics.all_metrics` (every
metric mlipuq reports for one target) on ``3 * atoms`` force components, per
component and per-atom norm. If uncertainty-toolbox is installed it also
times its ``get_all_metrics`` on a random subset of ``--utb-size``
components (on 10^6 its pure-Python loops take many minutes) and ours on the
same subset, and prints the ratio measured on that same data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

import numpy as np

from mlipuq.calibration.metrics import all_metrics


def synthetic_forces(n_atoms: int, seed: int = 0):
    """Heteroscedastic, over-confident force predictions (eV/Å), shape (n_atoms, 3)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.5, size=(n_atoms, 3))
    std = np.exp(rng.normal(-2.5, 0.6, size=(n_atoms, 3)))
    noise = 1.4 * std * rng.standard_normal((n_atoms, 3)) + 0.01 * rng.standard_t(3, (n_atoms, 3))
    pred = true + noise
    return pred, std, true


def best_time(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=333_334, help="atoms (3 components each)")
    parser.add_argument("--utb-size", type=int, default=10_000,
                        help="components given to uncertainty-toolbox (0 to skip)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best time is shown")
    args = parser.parse_args(argv)

    pred, std, true = synthetic_forces(args.atoms)
    n = pred.size
    all_metrics(pred[:100], std[:100], true[:100])  # warm up imports and caches

    start = time.perf_counter()
    all_metrics(pred, std, true)
    first = time.perf_counter() - start
    ours = best_time(lambda: all_metrics(pred, std, true), args.repeat)
    ours_cpu = best_time(lambda: all_metrics(pred, std, true), args.repeat, time.process_time)
    ours_norm = best_time(lambda: all_metrics(pred, std, true, reduce="norm"), args.repeat)
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"mlipuq all_metrics, {n:,} force components: {ours:.3f} s wall, {ours_cpu:.3f} s CPU "
          f"(best of {args.repeat}; first call {first:.3f} s wall)")
    print(f"mlipuq all_metrics, {args.atoms:,} per-atom force norms: {ours_norm:.3f} s")
    print(f"target <= 2 s for 10^6 components: {'met' if ours <= 2.0 else 'NOT met'}")

    if args.utb_size <= 0:
        return 0
    try:
        import uncertainty_toolbox as uct
    except ImportError:
        print("uncertainty-toolbox not installed: comparison skipped")
        return 0

    m = min(args.utb_size, n)
    idx = np.random.default_rng(1).choice(n, size=m, replace=False)
    p, s, t = pred.ravel()[idx], std.ravel()[idx], true.ravel()[idx]

    def utb_all():
        np.random.seed(0)  # its adversarial group calibration samples groups
        with contextlib.redirect_stdout(io.StringIO()):
            uct.get_all_metrics(p, s, t, verbose=False)

    def utb_comparable():
        # the metrics mlipuq also computes (no adversarial group calibration)
        uct.metrics.get_all_accuracy_metrics(p, t, verbose=False)
        uct.metrics.get_all_average_calibration(p, s, t, num_bins=100, verbose=False)
        uct.metrics.get_all_sharpness_metrics(s, verbose=False)
        uct.metrics.get_all_scoring_rule_metrics(p, s, t, resolution=99, scaled=True, verbose=False)

    ours_small = best_time(lambda: all_metrics(p, s, t), max(args.repeat, 5))
    utb_full = best_time(utb_all, 1)
    utb_common = best_time(utb_comparable, 1)
    print(f"\nsame random subset of {m:,} components (uncertainty-toolbox is too slow for {n:,}):")
    print(f"  mlipuq all_metrics:                          {ours_small:.4f} s")
    print(f"  uncertainty-toolbox get_all_metrics:         {utb_full:.3f} s "
          f"(ratio utb / mlipuq = {utb_full / ours_small:,.0f})")
    print(f"  uncertainty-toolbox, shared metrics only:    {utb_common:.3f} s "
          f"(ratio utb / mlipuq = {utb_common / ours_small:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
