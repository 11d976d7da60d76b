"""The base of streamed data sets: structures read one block at a time.

:class:`StreamedDataset` is an :class:`~mlipuq.data.AtomsDataset` whose
structures come from a reader block by block (:data:`BLOCK_SIZE` at a time,
only the last block held); :mod:`mlipuq.streaming` builds the extxyz and
database readers on it and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Iterable, Iterator, Optional

import ase
import numpy as np

from mlipuq.atoms_dataset import AtomsDataset
from mlipuq.distributed import shard_bounds

BLOCK_SIZE = 256  #: structures read (and held) at a time


# ---------------------------------------------------------------- lazy blocks
class _Blocks(Sequence):
    """The ``_structures`` of a :class:`StreamedDataset`: ``reader.read(keys)``
    block by block, holding only the last block read."""

    def __init__(self, reader, keys: np.ndarray, block_size: int):
        self.reader, self.keys, self.block_size = reader, keys, int(block_size)
        self._block: Optional[tuple[int, list]] = None  # (block number, structures)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, k):
        n, k = len(self.keys), int(k)
        if not -n <= k < n:
            raise IndexError(f"index {k} out of range for {n} structures")
        block, j = divmod(k % n, self.block_size)
        return _checked(self._load(block)[j])

    def __iter__(self) -> Iterator[ase.Atoms]:
        for block in range(-(-len(self.keys) // self.block_size)):
            for item in self._load(block):
                yield _checked(item)

    def _load(self, block: int) -> list:
        if self._block is None or self._block[0] != block:
            self._block = None  # release the old block before reading the next
            start = block * self.block_size
            self._block = (block, self.reader.read(self.keys[start:start + self.block_size]))
        return self._block[1]

    @property
    def cached(self) -> int:
        """Number of structures held in memory (at most ``block_size``)."""
        return 0 if self._block is None else len(self._block[1])

    def __getstate__(self):  # a pickled pool carries no structures
        return {**self.__dict__, "_block": None}


def _checked(item):
    """A structure of a block, or raise the error met reading it (a bad frame or
    row fails when it is used, not the whole block)."""
    if isinstance(item, Exception):
        raise item.with_traceback(None)
    return item


class StreamedDataset(AtomsDataset):
    """An :class:`~mlipuq.data.AtomsDataset` read block by block from a source.

    Not built directly: use :class:`LazyExtxyz`, :class:`DatabaseDataset` or
    ``mlipuq.load(path, lazy=True)`` / ``mlipuq.load("pool.db")``.

    Parameters
    ----------
    reader
        Object with a ``name`` and ``read(keys)``, which returns one
        ``ase.Atoms`` per key, or the exception met reading that one.
    keys
        (n,) int64 frame indices or row ids of the source, in dataset order.
    block_size
        Structures read and held at a time (memory: one block).

    Notes
    -----
    An int index returns the structure held in the current block: treat it as
    read-only. ``validate``, ``energies``, ``n_atoms`` and ``write`` stream
    through the whole source; a bad frame or row raises when it is used.
    """

    def __init__(self, reader, keys, *, block_size: int = BLOCK_SIZE):
        if not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self._reader = reader
        self._structures = _Blocks(reader, np.asarray(keys, dtype=np.int64), int(block_size))

    # sequence protocol: never materialises
    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[ase.Atoms]:
        return iter(self._structures)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self._structures[index]
        if isinstance(index, slice):
            return self._view(self._keys[index])
        return self.subset(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._reader.name!r}, {len(self)} structures)"

    @property
    def _keys(self) -> np.ndarray:
        return self._structures.keys

    @property
    def block_size(self) -> int:
        """Structures read and held at a time."""
        return self._structures.block_size

    @property
    def cached(self) -> int:
        """Number of structures currently held in memory (at most one block)."""
        return self._structures.cached

    # lazy views
    def subset(self, indices: Iterable[int]) -> "StreamedDataset":
        """A lazy view of the structures at ``indices`` (positions, in that
        order; a boolean mask of length ``len(self)`` is accepted)."""
        return self._view(self._keys[self._positions(indices)])

    def shard(self, rank: Optional[int] = None, world_size: Optional[int] = None) -> "StreamedDataset":
        """Lazy view of this rank's contiguous block
        (:func:`mlipuq.distributed.shard_bounds`; defaults: this process)."""
        start, stop = shard_bounds(len(self), rank, world_size)
        return self[start:stop]

    def _view(self, keys: np.ndarray) -> "StreamedDataset":
        view = object.__new__(type(self))
        StreamedDataset.__init__(view, self._reader, keys, block_size=self.block_size)
        return view

    def _positions(self, indices) -> np.ndarray:
        """``indices`` (integers, negative ones from the end, or a boolean mask)
        as an index array into the keys (which raise ``IndexError`` out of range)."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices))
        if idx.dtype == bool and idx.shape != (len(self),):
            raise ValueError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
        return idx if idx.size else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------ extxyz
