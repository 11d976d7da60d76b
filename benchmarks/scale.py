"""Scale-out: streamed pools at bounded memory, and 1 vs 2 ranks, measured side by side.

    python benchmarks/scale.py                     # 10^4 and 10^5 pools, ranks; ~15 min here
    python benchmarks/scale.py --full              # adds a 10^6 pool (about an hour here)
    python benchmarks/scale.py --parts memory --sizes 1000000   # only the 10^6 row
    python benchmarks/scale.py --readme README.md  # also rewrites the README table

(a) ``mlipuq.active.select`` (``max_force_std``, k = 100) on pools of small
    structures streamed from an SQLite ASE database (rattled copies of the
    packaged ethanol frames): peak resident memory of the process and wall
    time, per pool size. Each size runs in a fresh process (``ru_maxrss``).
(b) One process against two ranks (``torchrun --nproc-per-node 2``, gloo)
    on this machine's two cores: ``LastLayerLaplace.fit`` on labelled frames,
    ``LatentDistance.fit`` (the frames four times as reference, once held
    out: 4500 structures) and pool
    scoring (``select``), each process with one thread; one process
    with two threads as the other baseline. Times are measured inside the
    workers after start-up, the slowest rank counted.
(c) An extrapolation, on paper, of (b)'s measured per-structure costs to
    10^8 structures on N workers.

The base model is an untrained :class:`~mlipuq.models.MiniMLIP` (defaults):
training changes none of these costs. Scoring uses a ``LastLayerLaplace``
with ``force_variance="samples", n_samples=4``; the fit uses the default
(energy and force rows, the 900 packaged ethanol frames). Results go to
``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "scale.json")
K = 100
#: Part (b)'s tasks and their labels in the tables.
TASKS = {"fit": "LLPR fit", "latent": "LatentDistance fit", "score": "pool scoring"}


# ---------------------------------------------------------------- workers
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _wrapper(folder: str):
    from mlipuq.uq import load

    return load(os.path.join(folder, "llpr.pt"))


def worker_select(folder: str, pool: str) -> dict:
    import mlipuq
    from mlipuq.active import select

    wrapper = _wrapper(folder)
    data = mlipuq.load(pool)
    before = _rss_mb()
    start = time.perf_counter()
    picked = select(wrapper, data, K, strategy="max_force_std", batch_size=64, chunk_size=512)
    return {"n": len(data), "seconds": time.perf_counter() - start, "rss_before_mb": before,
            "rss_peak_mb": _rss_mb(), "picked": len(picked)}


def worker_ranks(folder: str, task: str, pool: str) -> dict:
    import mlipuq
    from mlipuq import distributed
    from mlipuq.active import select
    from mlipuq.models import load as load_model
    from mlipuq.uq import LastLayerLaplace, LatentDistance

    distributed.init()
    if task in ("fit", "latent"):
        model = load_model(os.path.join(folder, "model.pt"))
        data = mlipuq.load(os.path.join(folder, "train.xyz"))
        distributed.barrier()
        start = time.perf_counter()
        if task == "fit":
            LastLayerLaplace(model, distance=None).fit(data, batch_size=32)
        else:  # the frames 4 times as reference (features only), once held out (with forces)
            LatentDistance(model).fit(data + data + data + data, data, batch_size=32)
            data = data + data + data + data + data  # the structures computed
    else:
        wrapper, data = _wrapper(folder), mlipuq.load(pool)
        distributed.barrier()
        start = time.perf_counter()
        select(wrapper, data, K, strategy="max_force_std", batch_size=64, chunk_size=512)
    seconds = distributed.all_gather_objects(time.perf_counter() - start)
    distributed.finalize()
    return {"n": len(data), "seconds": max(seconds), "world": len(seconds)}


# ------------------------------------------------------------------ setup
def make_model(folder: str) -> None:
    from mlipuq import datasets
    from mlipuq.models import MiniMLIP
    from mlipuq.uq import LastLayerLaplace

    ethanol = datasets.ethanol()
    model = MiniMLIP(ethanol.species, seed=0)
    model.save(os.path.join(folder, "model.pt"), overwrite=True)
    # four posterior samples give the force std (the exact one costs ~5x more per structure)
    LastLayerLaplace(model, force_variance="samples", n_samples=4, distance=None).fit(
        ethanol[:200]).save(
        os.path.join(folder, "llpr.pt"), overwrite=True)
    ethanol.write(os.path.join(folder, "train.xyz"), overwrite=True)


def make_pool(path: str, n: int, seed: int = 0) -> float:
    """An SQLite pool of ``n`` rattled ethanol frames (no labels); returns seconds."""
    import ase.db
    from mlipuq import datasets

    frames = [a.copy() for a in datasets.ethanol()]
    for a in frames:
        a.calc = None
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    db = ase.db.connect(path, append=False)
    for first in range(0, n, 10_000):
        with db:
            for k in range(first, min(n, first + 10_000)):
                atoms = frames[k % len(frames)].copy()
                atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
                db.write(atoms)
    return time.perf_counter() - start


def run_worker(args: list, *, ranks: int = 1, threads: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MLIPUQ_BENCH_THREADS": str(threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    me = [os.path.abspath(__file__), "--worker"] + args
    if ranks > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] + me
    else:
        cmd = [sys.executable] + me
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"worker {args} failed:\n{done.stderr[-4000:]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[0][len("RESULT "):])


# --------------------------------------------------------------- the parts
def part_memory(folder: str, sizes: list) -> list:
    rows = []
    for n in sizes:
        path = os.path.join(folder, f"pool_{n}.db")
        build = make_pool(path, n) if not os.path.exists(path) else None
        row = run_worker(["select", folder, path])
        row["build_seconds"] = build
        row["us_per_structure"] = 1e6 * row["seconds"] / n
        rows.append(row)
        print(f"  pool {n:>8}: select {row['seconds']:8.1f} s ({row['us_per_structure']:.0f} "
              f"µs/structure), peak RSS {row['rss_peak_mb']:.0f} MB", flush=True)
    return rows


def part_ranks(folder: str, pool: str) -> dict:
    out = {}
    for task in TASKS:
        runs = {
            "1 process, 1 thread": run_worker(["ranks", folder, task, pool]),
            "1 process, 2 threads": run_worker(["ranks", folder, task, pool], threads=2),
            "2 ranks, 1 thread each": run_worker(["ranks", folder, task, pool], ranks=2),
        }
        base = runs["1 process, 1 thread"]["seconds"]
        for name, r in runs.items():
            r["speedup"] = base / r["seconds"]
            print(f"  {task:5} {name:24} {r['seconds']:7.1f} s  speed-up {r['speedup']:.2f}×",
                  flush=True)
        out[task] = runs
    return out


def extrapolate(ranks: dict, n: float = 1e8) -> list:
    """Hours for ``n`` structures on N workers, from one core's measured cost."""
    rows = []
    for task in ("fit", "score"):
        one = ranks[task]["1 process, 1 thread"]
        per = one["seconds"] / one["n"]
        two = ranks[task]["2 ranks, 1 thread each"]["speedup"] / 2  # parallel efficiency
        for workers in (1, 64, 512):
            rows.append({"task": task, "workers": workers, "seconds_per_structure": per,
                         "efficiency": two, "hours": n * per / (workers * two) / 3600})
    return rows


# ----------------------------------------------------------------- output
def markdown(result: dict) -> str:
    mem = result["memory"]
    lines = ["| pool (structures) | select time (s) | µs / structure | peak RSS (MB) | note |",
             "|---|---|---|---|---|"]
    for r in mem:
        lines.append(f"| {r['n']:,} | {r['seconds']:.0f} | {r['us_per_structure']:.0f} "
                     f"| {r['rss_peak_mb']:.0f} | {r.get('note', '')} |")
    same = [r for r in mem if "note" not in r]  # rows of one code version
    ratio = same[-1]["rss_peak_mb"] / same[0]["rss_peak_mb"]
    lines += ["", f"Peak memory from {same[0]['n']:,} to {same[-1]['n']:,} structures "
              f"(same code): {ratio:.2f}×.", "",
              "| task | 1 process, 1 thread | 1 process, 2 threads | 2 ranks (torchrun) |",
              "|---|---|---|---|"]
    for task, runs in result["ranks"].items():
        cells = [f"{r['seconds']:.1f} s ({r['speedup']:.2f}×)" for r in runs.values()]
        label = TASKS[task]
        lines.append(f"| {label} ({runs['1 process, 1 thread']['n']:,} structures) | "
                     + " | ".join(cells) + " |")
    lines += ["", "| 10⁸ structures | 1 worker | 64 workers | 512 workers |", "|---|---|---|---|"]
    for task in ("fit", "score"):
        hours = [r["hours"] for r in result["extrapolation"] if r["task"] == task]
        lines.append(f"| {TASKS[task]} (CPU cores) | "
                     + " | ".join(f"{h:,.1f} h" for h in hours) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add a 10^6 pool")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                        help="pool sizes of (a); with --parts memory alone, the saved rows "
                             "of other sizes are kept")
    parser.add_argument("--workdir", default=None, help="where pools are built (kept)")
    parser.add_argument("--readme", default=None, help="rewrite the scale table of this file")
    parser.add_argument("--parts", nargs="+", default=["memory", "ranks"],
                        choices=["memory", "ranks"],
                        help="what to run; the other part is taken from the saved results")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("MLIPUQ_BENCH_THREADS", "1")))
        kind, rest = args.worker[0], args.worker[1:]
        result = worker_select(*rest) if kind == "select" else worker_ranks(*rest)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return
    sizes = sorted(set(args.sizes + ([1_000_000] if args.full else [])))
    folder = args.workdir or tempfile.mkdtemp(prefix="mlipuq-scale-")
    os.makedirs(folder, exist_ok=True)
    make_model(folder)
    saved = {}
    if set(args.parts) != {"memory", "ranks"}:
        with open(RESULTS) as fh:
            saved = json.load(fh)
    memory, ranks = saved.get("memory"), saved.get("ranks")
    if "memory" in args.parts:
        print(f"(a) select on streamed SQLite pools ({folder})")
        fresh = {row["n"]: row for row in part_memory(folder, sizes)}
        kept = {row["n"]: row for row in memory or []}  # other sizes of the saved run
        memory = [{**kept, **fresh}[n] for n in sorted({**kept, **fresh})]
    if "ranks" in args.parts:
        print("(b) one process against two ranks")
        pool = os.path.join(folder, f"pool_{sizes[0]}.db")
        if not os.path.exists(pool):
            make_pool(pool, sizes[0])
        ranks = part_ranks(folder, pool)
    result = {"memory": memory, "ranks": ranks, "extrapolation": extrapolate(ranks),
              "cpu_count": os.cpu_count(), "k": K}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as fh:
        json.dump(result, fh, indent=1)
    table = markdown(result)
    print(table)
    if args.readme:
        sys.path.insert(0, HERE)
        from shift import write_between_markers

        write_between_markers(args.readme, table, name="scale")


if __name__ == "__main__":
    main()
