"""Several processes, one result: ``torch.distributed`` for fit, predict and select.

mlipuq uses ``torch.distributed`` as metatrain and MACE do: launch with
``torchrun --nproc-per-node N -m mlipuq ...`` (or ``srun`` under SLURM) and
call :func:`init` once per process (the CLI does it). Nothing changes for a
single process: every function here then answers as rank 0 of a world of one.

After :func:`init`, the data-parallel entry points are **collective**: every
rank calls them with the same arguments (the same data set), each rank works
on its contiguous shard (:func:`shard_bounds`), and every rank gets the result
one process would have computed:

* ``LastLayerLaplace.fit``: Gram matrices and residuals summed in float64 over
  shards, one all-reduce;
* ``UQWrapper.predict`` (and so ``calibrate``, ``evaluate`` and the scores of
  ``active.select``): predictions of the shards gathered in data order;
* ``active.select`` with ``fps`` and ``batch_llpr``: a distributed greedy
  search (per pick one global argmax and one broadcast row).

A single ``ase.Atoms`` (the ASE calculator, MD) is never sharded: each rank
predicts its own structures there.

Backends: ``gloo`` on CPU, ``nccl`` when the device is CUDA.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = [
    "init", "finalize", "is_initialized", "active", "rank", "world_size", "local_rank",
    "is_main", "barrier", "device", "shard_bounds", "all_reduce_sum", "all_gather_objects",
    "broadcast_object", "global_argmax", "broadcast_row", "map_shards",
]

_STATE = {"device": None}


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,9],cpu1"`` → ``"gpu03"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def _launch_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or SLURM's variables."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    if world is None or world <= 1:
        return 0, 1, 0
    rank = _env_int("RANK", "SLURM_PROCID")
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID")
    if rank is None:
        raise ValueError(f"WORLD_SIZE={world} but neither RANK nor SLURM_PROCID is set")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("MASTER_ADDR is not set (torchrun sets it; under SLURM export it, "
                             "or SLURM_JOB_NODELIST must name the nodes)")
        os.environ["MASTER_ADDR"] = first_host(nodelist)
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    return rank, world, 0 if local is None else local


def init(backend: Optional[str] = None, *, device: Optional[str] = None,
         timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the launcher's environment variables.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``
    (torchrun) or ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``/
    ``SLURM_JOB_NODELIST`` (srun). Without them (or with a world of one) it
    does nothing and returns False: a single process.

    Parameters
    ----------
    backend
        ``"gloo"`` or ``"nccl"``; default ``"nccl"`` when ``device`` is CUDA,
        else ``"gloo"``.
    device
        ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). With CUDA each
        process takes the GPU ``LOCAL_RANK``.
    timeout_s
        How long collectives wait for the other ranks.

    Returns
    -------
    bool
        True when this process is now part of a group of two or more.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    rank_, world, local = _launch_environment()
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' asked for, but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        _STATE["device"] = torch.device("cuda", torch.cuda.current_device())
    else:
        _STATE["device"] = torch.device("cpu")
    if world <= 1:
        return False
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    dist.init_process_group(backend, rank=rank_, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    log.info("mlipuq.distributed: rank %d of %d (%s, %s)", rank_, world, backend, _STATE["device"])
    return True


def finalize() -> None:
    """Leave the process group (no-op in a single process)."""
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """True when two or more processes share the work."""
    return is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0 if active() else 0


def is_main() -> bool:
    """True on rank 0 (the process that writes files and prints)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def device() -> torch.device:
    """This rank's device: its GPU after ``init(device="cuda")``, else the CPU."""
    return _STATE["device"] or torch.device("cpu")


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


# ------------------------------------------------------------------ sharding
def shard_bounds(n: int, rank_: Optional[int] = None,
                 world: Optional[int] = None) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank_``'s contiguous share of ``n`` items.

    Shares differ in size by at most one; concatenating them in rank order
    gives ``range(n)``, so gathered results keep the data order.
    """
    rank_ = rank() if rank_ is None else int(rank_)
    world = world_size() if world is None else int(world)
    if not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} outside a world of {world}")
    return rank_ * n // world, (rank_ + 1) * n // world


# --------------------------------------------------------------- collectives
def all_reduce_sum(value) -> np.ndarray:
    """Sum a float64 array (or scalar) over ranks; every rank gets the sum."""
    array = np.asarray(value, dtype=np.float64)
    if not active():
        return array.copy()
    tensor = torch.as_tensor(array, dtype=torch.float64).to(_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy().reshape(array.shape)


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank.

    The objects travel between this job's own processes only; nothing is read
    from a file.
    """
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_reduce_scalar(value: float, op) -> float:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=op)
    return float(tensor[0])


def global_argmax(values: np.ndarray, mask: Optional[np.ndarray] = None,
                  offset: int = 0, *, rtol: float = 1e-12) -> tuple[int, float]:
    """(global index, value) of the largest of all ranks' ``values``.

    ``values`` is this rank's shard, starting at global index ``offset``;
    ``mask`` (bool) excludes entries. Values within ``rtol`` (relative) of
    the maximum count as ties, and ties go to the smallest global index: the
    same structure computed in another batch (another shard) differs in the
    last bits, and the pick must not depend on how the data were sharded.
    Returns ``(-1, -inf)`` when nothing is left anywhere.
    """
    v = np.asarray(values, dtype=np.float64)
    if mask is not None:
        v = np.where(mask, v, -np.inf)
    top = _all_reduce_scalar(float(np.max(v)) if len(v) else -np.inf, dist.ReduceOp.MAX
                             if is_initialized() else None)
    if top == -np.inf:
        return -1, -np.inf
    near = np.flatnonzero(v >= top - rtol * abs(top)) if np.isfinite(top) else \
        np.flatnonzero(v == top)
    first = float(offset + near[0]) if len(near) else np.inf
    index = int(_all_reduce_scalar(first, dist.ReduceOp.MIN if is_initialized() else None))
    local = index - offset
    value = float(v[local]) if 0 <= local < len(v) else 0.0
    return index, float(all_reduce_sum(value)) if active() else value


def broadcast_row(rows: np.ndarray, index: int, offset: int, width: int) -> np.ndarray:
    """Global row ``index`` of a row-sharded float64 matrix, on every rank.

    ``rows`` is this rank's shard (starting at global row ``offset``). The
    owner contributes the row and the others zeros to one all-reduce, which
    reproduces the row exactly.
    """
    local = index - offset
    row = np.zeros(width, dtype=np.float64)
    if 0 <= local < len(rows):
        row = np.asarray(rows[local], dtype=np.float64).copy()
    return all_reduce_sum(row) if active() else row


def map_shards(fn, dataset, *, offset: bool = False) -> list:
    """``fn`` applied to this rank's contiguous share of ``dataset`` (a sliceable
    sequence of structures), every rank's result gathered on every rank in rank
    (= data) order; in one process ``[fn(dataset)]``. Collective: a rank whose
    ``fn`` raises makes every rank raise (:func:`raise_if_any_failed`). ``fn``
    must accept an empty share (more ranks than structures). ``offset=True``:
    ``fn(share, start)``, ``start`` the index in ``dataset`` of the share's first
    structure (0 in one process), to name a bad structure by its index."""
    if not active():
        return [fn(dataset, 0) if offset else fn(dataset)]
    start, stop = shard_bounds(len(dataset))
    extra = (start,) if offset else ()
    return all_gather_objects(run_local(fn, dataset[start:stop], *extra))


def gather_concatenated(parts: Sequence[Any], concatenate) -> Any:
    """Gather each rank's result and join them in rank (= data) order."""
    return concatenate([p for rank_parts in all_gather_objects(list(parts)) for p in rank_parts])


def raise_if_any_failed(error: Optional[BaseException]) -> None:
    """Collective: raise on every rank when any rank passes an exception.

    A rank that failed alone would leave the others waiting in the next
    collective; call this (every rank, ``None`` when all went well) between
    local work and the collective that uses it. The failing rank re-raises its
    own exception, the others a :class:`~mlipuq.errors.RankFailedError` that
    quotes it.
    """
    if not active():
        if error is not None:
            raise error
        return
    messages = all_gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for r, message in enumerate(messages):
        if message is not None:
            from mlipuq.errors import RankFailedError

            raise RankFailedError(f"rank {r} failed: {message}", rank=r)


def share_trained_models(models: Sequence[torch.nn.Module], histories: list, failure,
                         what: str = "model") -> list:
    """Collective: give every rank the models trained elsewhere; returns ``histories``
    completed.

    Model k was trained on rank ``k % world_size``, which passes its history in
    ``histories[k]`` (the others None) and ``failure`` ``(k, exception)`` if its training
    failed. That rank broadcasts the weights (the ``state_dict``, fitted reference energies
    and scales included, as CPU tensors) and history, and every other rank loads them into
    its own copy: afterwards every rank holds the same models, bit for bit. A model that
    failed raises on every rank (``what`` names it: "training {what} k failed on rank r").
    """
    world, here = world_size(), rank()
    errors = [e for e in all_gather_objects(
        None if failure is None else (failure[0], f"{type(failure[1]).__name__}: {failure[1]}"))
        if e is not None]
    if errors:
        if failure is not None:
            raise failure[1]
        k, message = min(errors)
        raise RuntimeError(f"training {what} {k} failed on rank {k % world}: {message}")
    for k, model in enumerate(models):
        owner = k % world
        payload = None
        if owner == here:
            payload = {"state": {name: value.detach().cpu() if torch.is_tensor(value)
                                 else value for name, value in model.state_dict().items()},
                       "history": histories[k]}
        payload = broadcast_object(payload, src=owner)
        if owner != here:
            model.load_state_dict(payload["state"])
            histories[k] = payload["history"]
    return histories


def run_local(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on this rank, then :func:`raise_if_any_failed`."""
    result, error = None, None
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # re-raised on every rank just below
        error = exc
    raise_if_any_failed(error)
    return result


def run_sharded(fn, dataset, batch_size: int, progress: bool, distributed: bool, join,
                **options):
    """``fn(dataset, batch_size, progress, **options)`` here; or, when ``distributed``
    and :func:`active`, each rank on its contiguous shard (``allow_empty=True``,
    ``offset`` its first index; progress on the main rank), the ranks' results (None
    for an empty shard) ``join``-ed in rank order on every rank. Collective then."""
    if not (distributed and active()):
        return fn(dataset, batch_size, progress, **options)
    if len(dataset) == 0:
        from mlipuq.errors import InvalidStructureError

        raise InvalidStructureError("the dataset holds no structures")
    start, stop = shard_bounds(len(dataset))
    local = run_local(fn, dataset[start:stop], batch_size, progress and is_main(),
                      allow_empty=True, offset=start, **options)
    return join([p for p in all_gather_objects(local) if p is not None])
