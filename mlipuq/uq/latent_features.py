"""Feature passes of :class:`~mlipuq.uq.LatentDistance`: the readout features of a
data set's atoms, batch by batch, and the two passes of its ``fit`` over shares of
the data (each rank its own after :func:`mlipuq.distributed.init`, gathered on
every rank in data order): the reference atoms' features and the held-out terms
the variance maps are fitted on.

The features are the readout's input, or (``features="all_layers"``) the invariant
features after every message-passing layer the model names
(``model.layer_modules()``, an optional part of the base-MLIP contract) followed by
the readout's input, concatenated per atom: a model trained on cells narrower than
twice its cutoff moved its first layer's features far more than its readout's in
wider cells (docs/latent.md, "Features of every layer")."""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.progress import batches_with_progress

__all__ = ["validate", "hold_out", "passes", "has_neighbours", "reference_features",
           "map_terms", "FEATURES", "check_features", "check_term_features", "capture",
           "model_pass", "term_widening"]

#: What :class:`~mlipuq.uq.LatentDistance` measures distances in (``features=``).
FEATURES = ("readout", "all_layers")


def check_features(features: str, model, name: str = "features") -> None:
    """ValueError unless ``features`` is one of :data:`FEATURES` that ``model`` serves
    (``"all_layers"`` needs a non-empty ``model.layer_modules()``; ``name``: the
    argument's name in the message)."""
    if features not in FEATURES:
        raise ValueError(f"{name} must be one of {FEATURES}, got {features!r}")
    if features == "all_layers" and not _layer_modules(model):
        raise ValueError(
            f"{name}='all_layers' needs a model that names its message-passing layers "
            f"(layer_modules(), as MiniMLIP does); {type(model).__name__} does not: use "
            f"{name}='readout' (a MACE model's readout features already hold the scalar "
            "channels of every layer)")


def check_term_features(features, model, score, name: str = "distance_features") -> str:
    """A wrapper's features for its latent distances of ``score`` (``name``: the
    argument's name in messages): None resolved to ``"all_layers"`` where ``model``
    names its layers, else ``"readout"``; without a term (``score=None``)
    ``"readout"``, once ``features`` is checked."""
    if features is not None and features not in FEATURES:
        raise ValueError(f"{name} must be one of {FEATURES} or None, got {features!r}")
    if score is None:
        return "readout"
    if features is None:
        return "all_layers" if _layer_modules(model) else "readout"
    check_features(features, model, name)
    return features


def term_widening(wrapper, features: Optional[str] = None) -> dict:
    """``calibrate``'s widening powers for a wrapper with latent distances (its
    ``default_widening``): its ``all_layers_extrapolation`` while they are measured in
    every layer's features (they grow faster far out themselves), else its
    ``default_extrapolation``. ``features``: those the distances are measured in
    (None: the wrapper's ``distance_features``, its terms')."""
    if features is None:
        features = wrapper.distance_features
    if features == "all_layers":
        return wrapper.all_layers_extrapolation
    return wrapper.default_extrapolation


def _layer_modules(model) -> list:
    modules = getattr(model, "layer_modules", None)
    return list(modules()) if callable(modules) else []


@contextlib.contextmanager
def _layer_capture(modules):
    """Context in which forward passes append each of ``modules``' invariant output (the
    first element of a tuple output) to the yielded list."""
    layers: list = []

    def keep(module, inputs, output):
        layers.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        yield layers
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(model, features: str):
    """Context around one forward pass of ``model`` that yields a function of that
    pass's (N, F) readout features: the (N, F') features ``features`` names (for
    ``"readout"``, the readout features themselves; for ``"all_layers"``, every
    layer's invariant output captured in the pass, then the readout's). The wrappers'
    latent terms read them from the pass their own predictions make."""
    modules = _layer_modules(model) if features == "all_layers" else []
    with (_layer_capture(modules) if modules else contextlib.nullcontext([])) as layers:
        yield lambda phi: _concatenated(model, modules, layers, phi)


def _concatenated(model, modules: list, layers: list, phi: torch.Tensor) -> torch.Tensor:
    if not modules:
        return phi
    n_atoms, n_layers = phi.shape[0], len(modules)
    if len(layers) != n_layers or any(x.dim() != 2 or x.shape[0] != n_atoms for x in layers):
        raise ValueError(
            f"{type(model).__name__}.layer_modules(): expected one (N={n_atoms}, F) "
            f"invariant output per layer and forward pass ({n_layers}), got shapes "
            f"{[tuple(x.shape) for x in layers]}")
    return torch.cat([*layers, phi], dim=1)


def model_pass(wrapper, batch: mdata.Batch, forces: bool) -> tuple[dict, np.ndarray]:
    """``(out, features)``: ``wrapper.model``'s output on ``batch`` (with forces if
    ``forces``, else without a graph) and the (N, F) float64 NumPy features
    ``wrapper.features`` names."""
    with (contextlib.nullcontext() if forces else torch.no_grad()), \
            capture(wrapper.model, wrapper.features) as features:
        out = wrapper.model(batch, forces=forces, features=True)
        phi = features(out["features"])
    return out, phi.detach().cpu().to(torch.float64).numpy()


def hold_out(dataset: mdata.AtomsDataset, fraction: float, seed: int) -> tuple:
    """``(reference, held_out)``: a random ``fraction`` of ``dataset``'s structures (at
    least one, at most all but one; seeded by ``seed``) held out, the rest the
    reference, each in data order (needs two structures or more)."""
    if len(dataset) < 2:
        raise ValueError("LatentDistance.fit needs val or at least 2 training structures "
                         "(one is held out to fit the variance map)")
    n_held = min(max(1, round(fraction * len(dataset))), len(dataset) - 1)
    order = np.random.default_rng(seed).permutation(len(dataset))
    return dataset.subset(np.sort(order[n_held:])), dataset.subset(np.sort(order[:n_held]))


def validate(dataset, species) -> None:
    """``dataset.validate`` with energies and forces required; after
    :func:`mlipuq.distributed.init` (collective) each rank checks its share, and a
    bad structure, named by its index in ``dataset``, raises on every rank."""
    def check(share, start):
        share.validate(species, require_energy=True, require_forces=True, offset=start)

    if len(dataset) == 0:  # refused alike on every rank
        check(dataset, 0)
        return
    mdist.map_shards(lambda share, start: check(share, start) if len(share) else None,
                     dataset, offset=True)


def passes(wrapper, dataset, batch_size: int, forces: bool, progress: bool = False,
           desc: str = "latent"):
    """Per batch of ``dataset``: (batch, model output, float64 NumPy features) of
    ``wrapper``'s model (with forces if ``forces``)."""
    model = wrapper.model
    batches = batches_with_progress(
        mdata.iter_batches(dataset, wrapper.cutoff, batch_size, species=wrapper.species,
                           dtype=wrapper.dtype),
        len(dataset), f"{desc} ({type(wrapper).__name__})", progress)
    model.eval()
    for _, batch in batches:
        batch = batch.to(device=model.device)
        yield (batch, *model_pass(wrapper, batch, forces))


def has_neighbours(batch: mdata.Batch) -> np.ndarray:
    """(N,) bool: atoms of ``batch`` with at least one neighbour (the others feel no force)."""
    centres = batch.edge_index[0].cpu().numpy()
    return np.bincount(centres, minlength=len(batch.numbers)) > 0


def reference_features(wrapper, reference, batch_size: int, progress: bool):
    """Raw features (N, F), atomic numbers (N,) and structure indices (N,) of every
    atom of ``reference``, and its number of structures (collective after
    :func:`mlipuq.distributed.init`: each rank computes its share)."""
    def local(share):
        return [(phi, batch.numbers.cpu().numpy(), batch.batch.cpu().numpy(),
                 batch.n_structures) for batch, _, phi in wrapper._passes(
                     share, batch_size, False, progress and mdist.is_main(),
                     "reference features")]

    phis, numbers, structure, n_structures = [], [], [], 0
    for phi, z, index, count in (row for part in mdist.map_shards(local, reference)
                                 for row in part):
        phis.append(phi)
        numbers.append(z)
        structure.append(index + n_structures)
        n_structures += count
    return (np.concatenate(phis), np.concatenate(numbers), np.concatenate(structure),
            n_structures)


def map_terms(wrapper, held_out, batch_size: int, own: bool, progress: bool) -> dict:
    """Arrays over ``held_out`` (collective like :func:`reference_features`): mean
    energies ``e`` and forces ``f`` (only with ``own``: the wrapper's model), their
    references ``e_ref``, ``f_ref``, and the score terms the variance maps
    multiply (``n``, ``q`` per structure, ``fq`` per force component, NaN for
    atoms without neighbours)."""
    def local(share):
        parts: dict[str, list] = {k: [] for k in ("e", "e_ref", "n", "q", "f", "f_ref", "fq")}
        for batch, out, phi in wrapper._passes(share, batch_size, own,
                                               progress and mdist.is_main(), "distance-map fit"):
            u2, n, q = wrapper._score_terms(phi, batch)
            parts["e"].append(out["energy"].detach().cpu().double().numpy())
            parts["e_ref"].append(batch.energy.cpu().double().numpy())
            parts["n"].append(n)
            parts["q"].append(q)
            if own:
                parts["f"].append(out["forces"].detach().cpu().double().numpy().reshape(-1))
            parts["f_ref"].append(batch.forces.cpu().double().numpy().reshape(-1))
            # atoms without neighbours feel no force (variance 0): left out of the fit
            parts["fq"].append(np.repeat(np.where(has_neighbours(batch), u2, np.nan), 3))
        return parts

    shards = mdist.map_shards(local, held_out)
    return {k: np.concatenate(x) for k in shards[0]
            if (x := [part for shard in shards for part in shard[k]])}
