"""Edge lists without Python-object copies: streamed into igraph, packed for worker processes.

igraph's ``Graph(n, edges=...)`` converts its argument pair by pair. Handed a list of ``(int, int)``
tuples (or an ``[E, 2]`` ndarray, which it turns into Python objects itself) it holds ~130 bytes per
edge in Python objects next to the 32 bytes per edge of the graph: ~150 MB more for a 5632 x 2048
matrix at density 0.1 (1.15 M edges). :func:`igraph_from_csr` and :func:`igraph_from_edges` hand it a
generator over chunks of :data:`CHUNK` edges instead, so only one chunk of Python objects exists at a
time. The edges keep the order of ``BipartiteGraph.edge_list`` / ``LayeredGraph.edge_arrays`` (row-major
over each biadjacency block, as ``tocoo`` gives them): the graph, and so Leiden's seeded result, is the same.

:class:`PackedEdges` is what a worker process receives for a matrix's modularity instead of an
``[E, 2]`` int64 edge array (16 bytes per edge): the edge mask packed to bits (``n_out * n_in / 8``
bytes, 1.4 MB for the matrix above), or the CSR column indices (4 bytes per edge) when these are
smaller, as for very sparse graphs; ``|w|`` travels only for weighted modularity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: Edges converted to Python objects at a time while igraph reads them.
CHUNK = 1 << 16


def _array_pairs(src: np.ndarray, dst: np.ndarray):
    chunk = CHUNK
    for i in range(0, len(src), chunk):
        yield from zip(src[i:i + chunk].tolist(), dst[i:i + chunk].tolist())


def _csr_pairs(blocks):
    """``(col + src_offset, row + dst_offset)`` of every stored entry of each ``(src_offset, dst_offset, B)``,
    in stored (row-major) order, about :data:`CHUNK` edges (whole rows) at a time."""
    chunk = CHUNK
    for src_off, dst_off, b in blocks:
        indptr, n_rows = b.indptr, b.shape[0]
        step = max(1, chunk * n_rows // max(b.nnz, 1))
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            lo, hi = int(indptr[r0]), int(indptr[r1])
            cols = b.indices[lo:hi].astype(np.int64) + src_off
            rows = np.repeat(np.arange(r0 + dst_off, r1 + dst_off, dtype=np.int64), np.diff(indptr[r0:r1 + 1]))
            yield from zip(cols.tolist(), rows.tolist())


def _graph(n: int, pairs, weights):
    import igraph as ig

    g = ig.Graph(n=int(n), edges=pairs)
    if weights is not None:
        g.es["weight"] = np.asarray(weights, dtype=float).tolist()
    return g


def igraph_from_edges(n: int, edges: np.ndarray, weights=None):
    """Undirected ``igraph.Graph`` on ``n`` nodes from an ``[E, 2]`` edge array (optional weights)."""
    edges = np.asarray(edges)
    return _graph(n, _array_pairs(edges[:, 0], edges[:, 1]), weights)


def igraph_from_csr(n: int, blocks, weighted: bool = False):
    """Undirected ``igraph.Graph`` on ``n`` nodes from biadjacency blocks ``(src_offset, dst_offset, B)``.

    ``B`` (shape ``[n_dst, n_src]``) joins node ``src_offset + j`` to ``dst_offset + i`` for every
    stored entry ``B[i, j]``; with ``weighted`` the entries' values are the edge attribute ``weight``.
    No ``[E, 2]`` array or list of the edges is built.
    """
    blocks = list(blocks)
    weights = None
    if weighted:
        weights = np.concatenate([b.data for *_, b in blocks]) if blocks else np.zeros(0, np.float32)
    return _graph(n, _csr_pairs(blocks), weights)


@dataclass(frozen=True)
class PackedEdges:
    """A biadjacency matrix's structure in the fewest bytes, to send to another process.

    ``bits`` is the edge mask packed row by row (``np.packbits(mask, axis=1)``), or ``indices`` the
    CSR column indices, whichever is smaller; ``data`` holds the stored values (``|w|``) only when
    they are needed. :meth:`csr` gives back the matrix, with values 1 where ``data`` was left out.
    """

    shape: tuple[int, int]
    indptr: np.ndarray
    bits: np.ndarray | None = None
    indices: np.ndarray | None = None
    data: np.ndarray | None = None

    @classmethod
    def of(cls, b: sp.csr_array, values: bool = False, mask=None) -> PackedEdges:
        """Pack ``b`` (its values too with ``values``); ``mask``, when given, is ``b``'s boolean
        structure as a dense array or tensor, spares building it for the bit-packed form."""
        n_out, n_in = b.shape
        data = b.data if values else None
        if b.nnz * b.indices.itemsize <= n_out * ((n_in + 7) // 8) or not b.has_canonical_format:
            return cls((n_out, n_in), b.indptr, indices=b.indices, data=data)
        if mask is None:
            mask = np.zeros((n_out, n_in), bool)
            mask[np.repeat(np.arange(n_out), np.diff(b.indptr)), b.indices] = True
        mask = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask, bool)
        return cls((n_out, n_in), b.indptr, bits=np.packbits(mask, axis=1), data=data)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.bits, self.indices, self.data) if a is not None)

    def csr(self) -> sp.csr_array:
        n_out, n_in = self.shape
        indices = self.indices
        if indices is None:
            indices = np.nonzero(np.unpackbits(self.bits, axis=1, count=n_in))[1].astype(np.int32)
        data = self.data if self.data is not None else np.ones(indices.size, np.float32)
        return sp.csr_array((data, indices, self.indptr), shape=(n_out, n_in))
