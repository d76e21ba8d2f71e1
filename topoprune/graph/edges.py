"""Edge lists without Python-object copies: streamed into igraph, packed for worker processes.

igraph's ``Graph(n, edges=...)`` converts its argument pair by pair. Handed a list of ``(int, int)``
tuples (or an ``[E, 2]`` ndarray, which it turns into Python objects itself) it holds ~130 bytes per
edge in Python objects next to the 32 bytes per edge of the graph: ~150 MB more for a 5632 x 2048
matrix at density 0.1 (1.15 M edges). :func:`igraph_from_csr` and :func:`igraph_from_edges` hand it a
generator over chunks of :data:`CHUNK` edges instead, so only one chunk of Python objects exists at a
time. The edges come in the order of ``BipartiteGraph.edge_list`` / ``LayeredGraph.edge_arrays``
(:func:`block_edges`), so the graph, and Leiden's seeded result, is the same whichever way it is built.

That order is chosen for igraph's Leiden, whose local moving visits a node's incident edges by edge id
(``from``/``to``/weight arrays of 8 bytes an edge each): the edges of the side with the larger degree
(the inputs of a ``B [n_dst, n_src]`` block with ``n_dst >= n_src``, else the outputs) are made
contiguous, i.e. the block is walked column by column when ``n_dst >= n_src`` and row by row otherwise.
Measured on random 10 %-density LLaMA-7B-shaped matrices (median of 3, seeded): Leiden on a 4096 x 4096
block 4.5 -> 3.3 s, on an 11008 x 4096 one 11.4 -> 7.8 s; a 4096 x 11008 one stays row by row (11.4 s,
13.4 s column by column).

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


def by_columns(b) -> bool:
    """Whether block ``b`` (shape ``[n_dst, n_src]``) is walked column by column: ``n_dst >= n_src``."""
    return b.shape[0] >= b.shape[1]


def _oriented(b):
    """``(M, by_columns)``: ``b`` as CSR, or as CSC when it is walked column by column."""
    if by_columns(b):
        return sp.csc_array(b), True
    return sp.csr_array(b), False


def _walk(m, cols_major: bool, src_off: int, dst_off: int, chunk: int):
    """``(src ids, dst ids, values)`` of the stored entries of ``m`` in storage order, whole rows
    (CSR) or columns (CSC) of about ``chunk`` entries at a time."""
    indptr, n_major = m.indptr, m.shape[1 if cols_major else 0]
    step = max(1, chunk * n_major // max(m.nnz, 1))
    for a in range(0, n_major, step):
        z = min(a + step, n_major)
        lo, hi = int(indptr[a]), int(indptr[z])
        minor = m.indices[lo:hi].astype(np.int64)
        major = np.repeat(np.arange(a, z, dtype=np.int64), np.diff(indptr[a:z + 1]))
        src, dst = (major, minor) if cols_major else (minor, major)
        yield src + src_off, dst + dst_off, m.data[lo:hi]


def block_edges(b, src_off: int = 0, dst_off: int = 0):
    """``(edges [E, 2] int64, values [E])`` of block ``b`` in the order igraph is given them
    (column by column when :func:`by_columns`, else row by row)."""
    m, cols_major = _oriented(b)
    parts = list(_walk(m, cols_major, src_off, dst_off, max(m.nnz, 1)))
    if not parts:
        return np.zeros((0, 2), np.int64), np.zeros(0, b.dtype)
    src, dst, val = (np.concatenate(x) for x in zip(*parts))
    return np.column_stack([src, dst]), val


def _csr_pairs(blocks):
    """``(src, dst)`` node ids of every stored entry of each ``(src_offset, dst_offset, M, by_columns)``,
    in the order of :func:`block_edges`, about :data:`CHUNK` edges at a time."""
    for src_off, dst_off, m, cols_major in blocks:
        for src, dst, _ in _walk(m, cols_major, src_off, dst_off, CHUNK):
            yield from zip(src.tolist(), dst.tolist())


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
    No ``[E, 2]`` array or list of the edges is built; a block walked column by column
    (:func:`by_columns`) is converted to CSC first (8 bytes an edge, while igraph reads it).
    """
    blocks = [(int(s), int(d), *_oriented(b)) for s, d, b in blocks]
    weights = None
    if weighted:
        weights = np.concatenate([m.data for _, _, m, _ in blocks]) if blocks else np.zeros(0, np.float32)
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
