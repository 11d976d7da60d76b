"""The ``mlipuq demo`` job.

The pretrained models (``mlipuq/data_files/pretrained/``, read and checked by
:mod:`mlipuq.pretrained`, whose names this module re-exports) are the base
models it starts from.

The demo
--------
:func:`run` (``mlipuq demo``): the pretrained base model (or, with
``--train``, one trained from scratch within ``--max-time``), its test-set
errors, then every UQ wrapper fitted with fixed epoch counts (LLPR, a shallow
ensemble, an evidential head and a deep ensemble of the pretrained members),
calibrated on the validation split and scored on the test split. It prints the
comparison table and writes ``--out`` (default ``mlipuq-demo/``, refused if it
exists unless ``--overwrite``):

* ``report.html``, ``report.md``, ``report.json``: the wrappers' calibration
  reports side by side (:mod:`mlipuq.calibration.html`,
  :func:`mlipuq.calibration.report.comparison_markdown` and
  :func:`~mlipuq.calibration.report.comparison_dict`);
* ``summary.md``, ``summary.json``: the printed table, the base model's errors
  and the setup (no timings);
* per wrapper, a folder with its :func:`mlipuq.calibration.evaluate` report
  (``report.json``, ``report.md``), its calibration plots (``summary.png``) and
  its test predictions (``predictions.extxyz``, with the per-atom
  ``mlipuq_forces_std_norm`` and, where the wrapper has local energy
  variances, ``mlipuq_atom_energy_std`` columns).

Without ``--train`` nothing depends on time, and on one thread (``--threads
1``, the default) nothing depends on the machine's core count either: every
run prints the same table and writes the same reports, under any load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from mlipuq.fileio import refuse_existing
from mlipuq.pretrained import (  # noqa: F401 (re-exported: demo's names since it held them)
    DEMO_SYSTEM,
    ENERGY_TOLERANCE,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PRETRAINED,
    DataMismatchWarning,
    build_data,
    dataset_fingerprint,
    load_pretrained,
    manifest,
    pretrained_path,
    structure_energies,
    system_data,
)

__all__ = [
    "MANIFEST",
    "PRETRAINED",
    "DataMismatchWarning",
    "build_data",
    "dataset_fingerprint",
    "structure_energies",
    "load_pretrained",
    "manifest",
    "pretrained_path",
    "run",
    "system_data",
]

# ------------------------------------------------------------------- output
#: Per wrapper: the name printed in the table and the sub-folder of ``--out``.
_FOLDERS = {
    "LastLayerLaplace": "llpr",
    "ShallowEnsemble": "shallow_ensemble",
    "EvidentialHead": "evidential",
    "DeepEnsemble": "deep_ensemble",
}
#: The table's columns: (header, target, metric, width, format).
_COLUMNS = (
    ("E NLL", "energy", "nll", 8, ".2f"),
    ("F NLL", "forces", "nll", 8, ".2f"),
    ("F miscal.", "forces", "miscalibration_area", 11, ".3f"),
    ("F Spearman", "forces", "spearman", 12, ".3f"),
    ("F cov. 95%", "forces", "coverage_95", 12, ".3f"),
)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def format_errors(errors: dict) -> str:
    """Test-set errors of :func:`mlipuq.training.errors` as printed lines (meV/atom, meV/Å)."""
    rows = [("energy MAE", f"{1000 * errors['energy_mae']:.2f} meV/atom"),
            ("energy RMSE", f"{1000 * errors['energy_rmse']:.2f} meV/atom")]
    if "forces_mae" in errors:
        rows += [("forces MAE", f"{1000 * errors['forces_mae']:.1f} meV/Å"),
                 ("forces RMSE", f"{1000 * errors['forces_rmse']:.1f} meV/Å")]
    return _table(rows)


def uq_table(rows: list[tuple[str, dict]]) -> str:
    """The comparison table: one row per ``(wrapper name, report metrics)``."""
    header = f"  {'wrapper':<26}" + "".join(f"{h:>{w}}" for h, _, _, w, _ in _COLUMNS)
    lines = [header, "  " + "-" * (len(header) - 2)]
    for name, metrics in rows:
        cells = []
        for _, target, metric, width, spec in _COLUMNS:
            value = metrics[target].get(metric)
            cells.append(f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}")
        lines.append(f"  {name:<26}" + "".join(cells))
    return "\n".join(lines)


def _check_out(path: str, overwrite: bool) -> None:
    """Refuse an existing ``--out`` (unless ``overwrite``) and anything but a folder there."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--out {path} exists and is not a folder")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"--out {path} exists; pass --overwrite to write into it")


def _write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` atomically (:func:`mlipuq.fileio.atomic_write`)."""
    from mlipuq.fileio import atomic_write

    atomic_write(path, lambda fh: fh.write(data))


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def _summary_png(report, name: str) -> bytes:
    """The calibration summary figure of one wrapper's report, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlipuq.calibration import plots

    style = getattr(plots, "style", contextlib.nullcontext)  # mlipuq evaluate's look
    with style():
        fig = plots.summary_figure(report, title=f"{name} on the test split")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
    return buffer.getvalue()


def _write_reports(out: str, results: dict, folders: dict, test_set, summary: dict,
                   table: str, plots: bool) -> list:
    """Every file of ``--out``; returns their paths.

    Per wrapper (its folder): ``report.json``, ``report.md``, ``summary.png``
    and ``predictions.extxyz``; at the top: the comparison ``report.json`` /
    ``report.md`` / ``report.html`` (:mod:`mlipuq.calibration.report` and
    :mod:`mlipuq.calibration.html`, as ``mlipuq evaluate`` writes for several
    predictions) and the demo's ``summary.json`` / ``summary.md``.
    """
    from mlipuq.calibration.report import comparison_dict, comparison_markdown

    os.makedirs(out, exist_ok=True)
    written, figures = [], []

    def text(path: str, content: str) -> None:
        _write_text(path, content)
        written.append(path)

    for name, (report, prediction) in results.items():
        folder = os.path.join(out, folders[name])
        os.makedirs(folder, exist_ok=True)
        text(os.path.join(folder, "report.json"), report.to_json())
        text(os.path.join(folder, "report.md"), report.to_markdown())
        path = os.path.join(folder, "predictions.extxyz")
        test_set.write(path, prediction, overwrite=True)
        written.append(path)
        if plots:
            png = _summary_png(report, name)
            path = os.path.join(folder, "summary.png")
            _write_bytes(path, png)
            written.append(path)
            figures.append({"png": png, "caption": f"{name}: calibration summary",
                            "section": name})
    reports = {name: report for name, (report, _) in results.items()}
    text(os.path.join(out, "report.json"),
         json.dumps(comparison_dict(reports), indent=2, ensure_ascii=False))
    text(os.path.join(out, "report.md"), comparison_markdown(reports))
    try:
        from mlipuq.calibration import html
    except ImportError:  # pragma: no cover - an mlipuq without the HTML report
        html = None
    if html is not None:
        page = html.render(reports, figures, title="mlipuq demo: every UQ wrapper compared",
                           settings={"demo": summary["base_model"]["origin"],
                                     "calibrated on": "the validation split",
                                     "scored on": "the test split"})
        text(os.path.join(out, "report.html"), page)
    text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2, ensure_ascii=False))
    text(os.path.join(out, "summary.md"), _summary_markdown(summary, table))
    return written


def _summary_markdown(summary: dict, table: str) -> str:
    base = summary["base_model"]
    sizes = summary["system"]["sizes"]
    lines = [
        "# mlipuq demo",
        "",
        f"System: {summary['system']['description']}; {sizes['train']} train / "
        f"{sizes['val']} val / {sizes['test']} test structures.",
        "",
        f"Base model: {base['origin']}.",
        "",
        "Test-set errors of the base model:",
        "",
        "```text",
        format_errors(base["test_errors"]),
        "```",
        "",
        "Every wrapper calibrated on the validation split and scored on the test split "
        "(NLL per structure for E, per force component for F):",
        "",
        "```text",
        table,
        "```",
        "",
        "`report.html`, `report.md`, `report.json`: the calibration reports side by side "
        "(`mlipuq.calibration`). Per wrapper:",
        "",
        "| wrapper | folder |",
        "|---|---|",
    ]
    for name, entry in summary["wrappers"].items():
        lines.append(f"| {name} | [{entry['folder']}/]({entry['folder']}/report.md) |")
    lines += ["", "Each folder: `report.json`, `report.md` (every metric of "
              "`mlipuq.calibration.evaluate`), `summary.png` (calibration plots), "
              "`predictions.extxyz` (the test structures with predicted energies, forces, "
              "their stds, per-atom `mlipuq_forces_std_norm` and, where the wrapper has local "
              "energy variances, `mlipuq_atom_energy_std`).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------- run
def _train_mode(args: argparse.Namespace) -> bool:
    """``--train``, or any option that only makes sense when training (implies it)."""
    return bool(args.train) or any(getattr(args, name, None) is not None
                                   for name in ("structures", "epochs", "max_time", "seed"))


def run(args: argparse.Namespace) -> int:
    """``mlipuq demo`` (see the module notes); returns 0. User errors raise."""
    import torch

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous)


def _run(args: argparse.Namespace) -> int:
    from mlipuq import distributed as mdist
    from mlipuq.calibration import evaluate
    from mlipuq.devices import resolve_device
    from mlipuq.training import errors
    from mlipuq.uq import DeepEnsemble, LastLayerLaplace, ShallowEnsemble

    training = _train_mode(args)
    info = manifest()
    system = info["systems"][DEMO_SYSTEM]
    if args.members < 1:
        raise ValueError(f"--members must be >= 1, got {args.members}")
    if not training and args.members > len(system["members"]):
        raise ValueError(f"--members {args.members}: the package holds "
                         f"{len(system['members'])} pretrained members; more need --train")
    refuse_existing(args.save, args.overwrite, "--save")
    out = None if args.no_uq else args.out
    if out is not None:
        _check_out(out, args.overwrite)
    device = resolve_device(args.device)
    progress = not args.no_progress and mdist.is_main()
    seed = 0 if args.seed is None else args.seed
    steps = 3 if args.no_uq else 4

    if training:
        train_set, val_set, test_set, members, origin = _train_from_scratch(
            args, device, seed, progress, steps)
    else:
        spec = system["data"]
        print(f"1/{steps} built-in EMT Cu data ({spec['arguments']['n_structures']} "
              f"structures, seed {spec['arguments']['seed']}: those of the pretrained "
              "models) ...", flush=True)
        train_set, val_set, test_set = system_data(DEMO_SYSTEM)
        print(f"    {len(train_set)} train / {len(val_set)} val / {len(test_set)} test "
              "structures", flush=True)
        names = system["members"][: args.members]
        entry = info["models"][names[0]]
        origin = (f"pretrained MiniMLIP {names[0]} (width {entry['model']['width']}, "
                  f"{entry['model']['n_interactions']} interactions, {entry['n_parameters']} "
                  f"parameters; {entry['history']['epochs_run']} epochs, seed "
                  f"{entry['training']['seed']}; scripts/train_pretrained.py)")
        print(f"2/{steps} loading the {origin}"
              + (f" and {len(names) - 1} more deep-ensemble member(s)" if len(names) > 1
                 else ""), flush=True)
        members = [load_pretrained(name, device=device) for name in names]
    model = members[0]
    base_errors = errors(model, test_set)
    print(f"3/{steps} test-set errors of the built-in MLIP:", flush=True)
    print(format_errors(base_errors), flush=True)
    if args.save:
        mdist.run_local(lambda: model.save(args.save, overwrite=args.overwrite)
                        if mdist.is_main() else None)
        print(f"    model saved to {args.save}")
    if args.no_uq:
        return 0

    print(f"4/{steps} fitting, calibrating and comparing the UQ wrappers ...", flush=True)
    start = time.perf_counter()
    # Fixed epoch counts, no time budgets: the same wrappers on every run, under any load.
    wrappers = {
        "LastLayerLaplace": LastLayerLaplace(model).fit(train_set, val_set, progress=progress),
        "ShallowEnsemble (8 heads)": ShallowEnsemble(model, n_heads=8).fit(
            train_set, val_set, epochs=SHALLOW_EPOCHS, lr=SHALLOW_LR, seed=seed,
            progress=progress),
        "EvidentialHead": fit_evidential(model, train_set, val_set, seed, progress),
    }
    if len(members) > 1:
        wrappers[f"DeepEnsemble ({len(members)})"] = DeepEnsemble(members).fit_distance(
            train_set, val_set, progress=progress)
    rows, results = [], {}
    for name, wrapper in wrappers.items():
        wrapper.calibrate(val_set)
        prediction = wrapper.predict(test_set)
        report = evaluate(prediction, test_set)
        report.settings["label"] = name
        report.settings["inputs"] = {
            "prediction_file": f"{_FOLDERS[name.split(' ')[0]]}/predictions.extxyz",
            "reference_file": None, "recorded": {}}
        rows.append((name, report.metrics))
        results[name] = (report, prediction)
    table = uq_table(rows)
    print(f"    done in {time.perf_counter() - start:.0f} s; test set after calibrate(val), "
          "NLL per structure (E) and per force component (F):", flush=True)
    print(table, flush=True)

    folders = {name: _FOLDERS[name.split(" ")[0]] for name in results}
    summary = {  # no timings: two runs write the same summary
        "format": "mlipuq-demo",
        "version": 1,
        "mode": "train" if training else "pretrained",
        "threads": args.threads,
        "system": {"name": DEMO_SYSTEM, "description": system["description"],
                   "sizes": {"train": len(train_set), "val": len(val_set),
                             "test": len(test_set)}},
        "base_model": {"origin": origin, "test_errors": base_errors,
                       "units": {"energy": "eV/atom", "forces": "eV/Å"}},
        "wrapper_fits": {"LastLayerLaplace": "one pass over train, marginal likelihood",
                         "ShallowEnsemble": f"LLPR-initialised heads, {SHALLOW_EPOCHS} epochs, "
                                            f"lr {SHALLOW_LR:g}, seed {seed}",
                         "EvidentialHead": f"{EVIDENTIAL_EPOCHS} epochs, lr 1e-2, seed {seed}, "
                                           "on the two halves of val",
                         "DeepEnsemble": "the members as they are, their latent-distance "
                                         "term fitted on val"},
        "wrappers": {
            name: {"folder": folders[name],
                   "table": {f"{target} {metric}": report.metrics[target].get(metric)
                             for _, target, metric, _, _ in _COLUMNS}}
            for name, (report, _) in results.items()
        },
    }
    written = mdist.run_local(
        lambda: _write_reports(out, results, folders, test_set, summary, table,
                               plots=not args.no_plots) if mdist.is_main() else None)
    if written is not None:
        print(f"    wrote {len(written)} files to {out}: report.html (every wrapper side by "
              "side), summary.md, and per wrapper report.json, report.md, predictions.extxyz"
              f"{'' if args.no_plots else ', summary.png'}", flush=True)
    return 0


#: The shallow ensemble's fit: its heads start from the LLPR posterior (calibrated on
#: energies), so a few epochs do; each costs eight force backward passes per batch.
SHALLOW_EPOCHS = 3
SHALLOW_LR = 3e-3
#: The evidential head's fit (on the 20 validation structures: cheap).
EVIDENTIAL_EPOCHS = 30


def fit_evidential(model, train_set, val_set, seed: int = 0, progress: bool = False):
    """The demo's evidential head: a frozen-backbone head learns residuals, so it is fitted
    on data the MLIP did not see (halves of ``val_set``), its latent-distance term measuring
    distances to the data the MLIP did see (``train_set``)."""
    from mlipuq.uq import EvidentialHead

    return EvidentialHead(model).fit(
        *val_set.split([0.5, 0.5], seed=seed), reference=train_set,
        epochs=EVIDENTIAL_EPOCHS, lr=1e-2, seed=seed, progress=progress)


def _train_from_scratch(args, device, seed: int, progress: bool, steps: int):
    """``--train``: the EMT data of ``--structures``, the base model within ``--max-time``
    and the deep-ensemble members within half of it each (as the demo did before the
    pretrained models); the number of epochs depends on the machine and its load."""
    from mlipuq import datasets
    from mlipuq.models import MiniMLIP
    from mlipuq.training import train

    n_structures = 200 if args.structures is None else args.structures
    epochs = 200 if args.epochs is None else args.epochs
    max_time = 120.0 if args.max_time is None else args.max_time
    cu = SYSTEM_MODEL_CU
    print(f"1/{steps} building built-in EMT Cu data ({n_structures} structures) ...", flush=True)
    data = datasets.emt(("Cu",), n_structures=n_structures, temperatures=(300, 600), seed=seed)
    train_set, val_set, test_set = data.split([0.7, 0.1, 0.2], seed=seed)
    print(f"    {len(train_set)} train / {len(val_set)} val / {len(test_set)} test structures",
          flush=True)

    def fit(k: int, budget: float):
        model = MiniMLIP(**cu, seed=seed + k).to(device=device)
        history = train(model, train_set, val_set, epochs=epochs, batch_size=8, lr=2e-3,
                        forces_weight=100.0, seed=seed + k, patience=30, max_time=budget,
                        progress=progress)
        return model, history

    print(f"2/{steps} training the built-in MLIP (MiniMLIP) ...", flush=True)
    model, history = fit(0, max_time)
    print(f"    {len(history)} epochs in {history.wall_time:.0f} s", flush=True)
    members = [model]
    if not args.no_uq and args.members > 1:
        print(f"    training {args.members - 1} more deep-ensemble member(s), each within "
              f"{max_time / 2:g} s ...", flush=True)
        for k in range(1, args.members):
            members.append(fit(k, max_time / 2)[0])
    origin = (f"MiniMLIP trained here: {len(history)} epochs in {history.wall_time:.0f} s "
              f"(--max-time {max_time:g}), seed {seed}")
    return train_set, val_set, test_set, members, origin


#: Architecture of the demo's MiniMLIP (that of the pretrained EMT Cu members).
SYSTEM_MODEL_CU = {"species": ["Cu"], "cutoff": 4.5, "width": 32, "n_interactions": 2,
                   "n_rbf": 12}
