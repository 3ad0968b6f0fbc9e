"""Plain containers passed between stages (sources → kNN graph → forward → reverse → sinks)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class KnnGraph:
    """Directed kNN lists in pool order.

    ``neighbors[i]`` holds the ``k`` nearest *other* points of ``i`` (int64, ``-1`` where fewer
    exist), sorted by (distance, index); ``distances`` are Euclidean (float32, ``inf`` where
    ``neighbors`` is ``-1``).
    """

    neighbors: np.ndarray
    distances: np.ndarray

    @property
    def n(self) -> int:
        return int(self.neighbors.shape[0])

    @property
    def k(self) -> int:
        return int(self.neighbors.shape[1])


@dataclass(frozen=True)
class CsrGraph:
    """The symmetrised neighbourhood ``N(i) = kNN(i) ∪ {j : i ∈ kNN(j)}`` in CSR form.

    Row ``i`` is ``indices[indptr[i]:indptr[i+1]]`` (int32, sorted ascending, no self, no
    duplicates) with Euclidean ``distances`` (float32) aligned to it.
    """

    indptr: np.ndarray
    indices: np.ndarray
    distances: np.ndarray

    @property
    def n(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def n_edges(self) -> int:
        return int(self.indices.shape[0])


@runtime_checkable
class EmbeddingBlocks(Protocol):
    """Out-of-core embeddings: ``len(sizes)`` row blocks in pool order (one per partition).

    ``load(i)`` returns block ``i`` as float32 ``(sizes[i], dim)``, L2-normalised per
    modality and validated (finite, non-zero). Implementations are picklable so that Dask
    workers can load their own blocks from storage. An optional ``costly_reads`` attribute
    (default False) says that reading the blocks again costs more than reading local
    files (deflated, remote): the graph then avoids reading them repeatedly sooner.
    """

    sizes: list[int]
    dim: int

    def load(self, i: int) -> np.ndarray: ...


@dataclass
class ArrayBlocks:
    """:class:`EmbeddingBlocks` over an in-memory array, split into blocks of ``block_rows``."""

    array: np.ndarray
    block_rows: int = 65536

    def __post_init__(self) -> None:
        self.array = np.ascontiguousarray(self.array, dtype=np.float32)
        n = self.array.shape[0]
        self.sizes = [min(self.block_rows, n - s) for s in range(0, n, self.block_rows)] or [0]
        self.dim = int(self.array.shape[1])

    def load(self, i: int) -> np.ndarray:
        start = i * self.block_rows
        return self.array[start : start + self.sizes[i]]


class SubsetBlocks:
    """:class:`EmbeddingBlocks` of some rows of ``blocks`` (sorted global ``rows``), keeping
    its partitions: block ``i`` holds the chosen rows of ``blocks``' block ``i``."""

    def __init__(self, blocks: EmbeddingBlocks, rows: np.ndarray) -> None:
        self.blocks = blocks
        self.dim = blocks.dim
        self.costly_reads = bool(getattr(blocks, "costly_reads", False))
        bounds = np.concatenate([[0], np.cumsum(blocks.sizes)])
        cuts = np.searchsorted(rows, bounds)
        self.local = [rows[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(blocks.sizes))]
        self.sizes = [len(r) for r in self.local]

    def load(self, i: int) -> np.ndarray:
        return self.blocks.load(i)[self.local[i]] if self.sizes[i] else _empty(self.dim)

    def iter_chunks(self, i: int, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of block ``i``, about ``rows`` source rows read at a time (from
        the source's ``iter_rows`` when it has one, else from its whole block)."""
        for a, _, x in self.iter_rows(i, np.arange(self.sizes[i]), rows):
            yield a, x

    def iter_rows(
        self, i: int, local: np.ndarray, rows: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(a, b, rows local[a:b])`` of block ``i`` for its sorted rows ``local``."""
        chosen = self.local[i][np.asarray(local, dtype=np.int64)]
        own = getattr(self.blocks, "iter_rows", None)
        if own is not None:
            yield from own(i, chosen, rows)
        elif chosen.size:
            x = self.blocks.load(i)
            for a in range(0, chosen.size, max(1, rows)):
                b = min(chosen.size, a + rows)
                yield a, b, np.ascontiguousarray(x[chosen[a:b]], dtype=np.float32)


def _empty(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)


@dataclass(frozen=True)
class Ranking:
    """What every selection method returns.

    ``order``: row ids (int64, positions in the method's input), best first; rows absent
    from it are never kept (filters list only their survivors). ``columns``: per-row arrays
    (one value per input row) written to ``ranking.parquet``, e.g. ``forward_score``.
    ``info``: JSON-able facts for ``run.json`` (device and variant used, statistics).
    """

    order: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
