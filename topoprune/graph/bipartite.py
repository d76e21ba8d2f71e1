"""Weight matrices as graphs: edge selection, bipartite and layered (multipartite) graphs.

A matrix ``W`` of shape ``[out, in]`` is a bipartite graph between its ``in`` input neurons
and ``out`` output neurons; its core representation is the sparse biadjacency matrix
``B`` (``scipy.sparse.csr_array``, shape ``[out, in]``, values ``|w|`` on edges). Degrees
and strengths are vectorised counts over ``B``:

* ``in_degree[i]  = #{j : B[i, j] != 0}`` -- fan-in of output neuron ``i`` (row counts);
* ``out_degree[j] = #{i : B[i, j] != 0}`` -- fan-out of input neuron ``j`` (column counts);
* fractional connectivity ``c_i = in_degree[i] / in`` is NeuroPrune's attachment score
  (Dhurandhar et al. 2024, arXiv 2404.01306), see :meth:`BipartiteGraph.connectivity`.

This module is the project's degree implementation: the analysis and the sparse trainer both
call it. :mod:`~topoprune.graph.degrees` counts the same degrees with torch on a tensor's device,
without building the graph (the analysis's ``device``, the trainer's snapshots and attachment
scores); the tests hold those counts equal to this module's. igraph / networkx
objects are built only on request (:meth:`BipartiteGraph.to_igraph`, :meth:`LayeredGraph.to_networkx`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .config import GraphConfig
from .edges import block_edges, igraph_from_csr, igraph_from_edges  # noqa: F401  (igraph_from_edges: imported from here too)
from .kth import kth_largest
from ..errors import TensorError


def _as_tensor(weight) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return weight.detach()
    return torch.from_numpy(np.asarray(weight))


@dataclass(frozen=True)
class EdgeSelection:
    """Result of :func:`select_edges`: the mask, the rule applied, the weights' zero share and largest ``|w|``."""

    mask: torch.Tensor
    mode: str
    zero_fraction: float
    max_abs: float = float("nan")


def select_edges(weight, config: GraphConfig | None = None, *, name: str = "weight") -> EdgeSelection:
    """Select the entries of ``weight`` that are edges.

    Parameters
    ----------
    weight : torch.Tensor or ndarray, shape [out, in]
    config : GraphConfig
        ``mode="auto"`` keeps the nonzero entries of an already sparse matrix (at least
        ``sparse_fraction`` exact zeros), else entries with ``|w| >= threshold`` if a
        threshold is set, else the ``density`` fraction with the largest ``|w|``.
    name : str
        Tensor name used in error messages.

    Returns
    -------
    EdgeSelection
        ``mask`` is a ``torch.BoolTensor`` of shape [out, in]; ``mode`` the rule applied
        (``nonzero``, ``threshold`` or ``density``).

    Notes
    -----
    Top-``k`` selection breaks ties deterministically: among entries equal to the
    ``k``-th largest ``|w|``, those with the smallest row-major index are kept. Exact
    zeros are never edges. NaN or Inf raises :class:`TensorError`.
    """
    config = config or GraphConfig()
    w = _as_tensor(weight)
    if w.ndim != 2:
        raise TensorError(f"{name}: expected a 2-D matrix, got shape {tuple(w.shape)}")
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    # No |w| copy: every test below reads w's signs (the matrix is the largest object in memory).
    # One cheap reduction first; the full elementwise check only when the sum is not finite.
    if not bool(torch.isfinite(w.sum())) and not bool(torch.isfinite(w).all()):
        raise TensorError(f"{name}: contains NaN or Inf values")
    nonzero = w != 0
    n = w.numel()
    nnz = int(torch.count_nonzero(nonzero))
    zero_fraction = (n - nnz) / n if n else 0.0
    lo, hi = torch.aminmax(w) if nnz else (torch.zeros(()), torch.zeros(()))
    max_abs = max(float(hi), -float(lo))  # max |w| without a |w| copy
    mode = config.mode
    if mode == "auto":
        if n and zero_fraction >= config.sparse_fraction:
            mode = "nonzero"
        else:
            mode = "threshold" if config.threshold is not None else "density"
    if mode == "nonzero" or nnz == 0:
        return EdgeSelection(nonzero, mode, zero_fraction, max_abs)
    if mode == "threshold":
        return EdgeSelection((w.abs() >= config.threshold) & nonzero, mode, zero_fraction, max_abs)
    k = min(max(1, int(round(config.density * n))), nnz)
    if k == nnz:
        return EdgeSelection(nonzero, mode, zero_fraction, max_abs)
    mask = top_k_mask(w.reshape(-1), k, absolute=True)
    return EdgeSelection(mask.reshape(w.shape), mode, zero_fraction, max_abs)


def top_k_mask(flat: torch.Tensor, k: int, *, absolute: bool = False) -> torch.BoolTensor:
    """Mask of the ``k`` largest entries of 1-D ``flat`` (of ``|flat|`` with ``absolute``); ties at
    the boundary go to the lowest index.

    O(n): the k-th largest value by selection (on CPU :func:`~topoprune.graph.kth.kth_largest`,
    numpy's introselect on a sampled bracket, ~8x faster than ``torch.kthvalue`` and without a copy
    of ``flat``), then the entries above it plus the first of those equal to it -- the same set a
    stable descending sort would give. With ``absolute`` the comparisons read ``flat``'s signs
    (``|x| > t`` as ``x > t or x < -t``), so no ``|flat|`` copy is made either. Used for edges
    and for pruning masks.
    """
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if flat.device.type == "cpu":
        kth = torch.as_tensor(kth_largest(flat.numpy(), k, absolute=absolute))  # exact, no copy of ``flat``
    else:
        kth = torch.kthvalue(flat.abs() if absolute else flat, n - k + 1).values

    def above(t):
        return (flat > t) | (flat < -t) if absolute else flat > t

    def equal(t):
        return (flat == t) | (flat == -t) if absolute else flat == t

    mask = above(kth)
    need = k - int(torch.count_nonzero(mask))
    if need > 0:
        eq = equal(kth)
        if int(torch.count_nonzero(eq)) <= need:  # the usual case: no real tie, no index search
            mask |= eq
        else:
            mask[eq.nonzero().squeeze(1)[:need]] = True
    return mask


def row_top_k_mask(scores: torch.Tensor, k) -> torch.BoolTensor:
    """Mask of the ``k[j]`` largest entries of each row ``j`` of ``scores`` [out, in]; ties to the lowest index.

    ``k`` is an int or a length-``out`` integer sequence. The per-row threshold comes from a
    values-only row sort (numpy, no index array); entries above it are kept, then the first
    entries equal to it in column order -- the set a stable descending sort per row would give.
    """
    out, n = scores.shape
    k = torch.as_tensor(np.broadcast_to(np.asarray(k, dtype=np.int64), (out,)).copy())
    if bool((k < 0).any()) or bool((k > n).any()):
        raise ValueError(f"row keep counts must be in [0, {n}]")
    s = scores.detach().float().cpu()
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    ordered = torch.from_numpy(np.sort(s.numpy(), axis=1))  # ascending, values only
    kth = ordered.gather(1, (n - k).clamp(max=n - 1)[:, None])  # k-th largest (unused where k == 0)
    mask = s > kth
    need = k - mask.sum(1)
    eq = s == kth
    mask |= eq & (eq.cumsum(1) <= need[:, None])
    mask[k == 0] = False
    return mask.to(scores.device)


def edge_mask(weight, config: GraphConfig | None = None, *, name: str = "weight") -> torch.Tensor:
    """Boolean edge mask of ``weight``, shape [out, in]; see :func:`select_edges`."""
    return select_edges(weight, config, name=name).mask


def _csr(mask: torch.Tensor, values: torch.Tensor | None) -> sp.csr_array:
    # One nonzero() pass over the flat mask is already CSR order: row = idx // in, col = idx % in.
    # The pass runs on the mask's device; only the CSR arrays come to the CPU.
    mask = mask.detach()
    n_out, n_in = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)
    indices = (flat % n_in).to(torch.int32).cpu().numpy()
    counts = torch.bincount(flat // n_in, minlength=n_out).cpu().numpy()
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64 if flat.numel() > 2**31 - 1 else np.int32)
    if values is not None:
        data = values.detach().reshape(-1).to(flat.device)[flat].abs().to(torch.float32).cpu().numpy()
    else:
        data = np.ones(indices.size, np.float32)
    return sp.csr_array((data, indices, indptr), shape=(n_out, n_in))


@dataclass(frozen=True)
class BipartiteGraph:
    """Bipartite graph of one weight matrix, held as its biadjacency matrix.

    Attributes
    ----------
    biadjacency : scipy.sparse.csr_array, shape [out, in]
        ``|w|`` on edges, zero elsewhere.
    name : str
    """

    biadjacency: sp.csr_array
    name: str = ""

    @property
    def n_out(self) -> int:
        return self.biadjacency.shape[0]

    @property
    def n_in(self) -> int:
        return self.biadjacency.shape[1]

    @property
    def n_edges(self) -> int:
        return int(self.biadjacency.nnz)

    @property
    def density(self) -> float:
        n = self.n_out * self.n_in
        return self.n_edges / n if n else 0.0

    def in_degree(self) -> np.ndarray:
        """Fan-in of each output neuron, shape [out] (row counts)."""
        return np.diff(self.biadjacency.indptr).astype(np.int64)

    def out_degree(self) -> np.ndarray:
        """Fan-out of each input neuron, shape [in] (column counts)."""
        return np.bincount(self.biadjacency.indices, minlength=self.n_in).astype(np.int64)

    def in_strength(self) -> np.ndarray:
        """Sum of ``|w|`` over each output neuron's edges, shape [out]."""
        return np.asarray(self.biadjacency.sum(axis=1)).ravel()

    def out_strength(self) -> np.ndarray:
        """Sum of ``|w|`` over each input neuron's edges, shape [in]."""
        return np.asarray(self.biadjacency.sum(axis=0)).ravel()

    def connectivity(self, axis: str = "in") -> np.ndarray:
        r"""Fractional connectivity :math:`c_i = \deg(i) / n_\text{other}`.

        ``axis="in"`` gives each output neuron's share of possible incoming edges (a row
        of ``W``): NeuroPrune's attachment score for MLP neurons, Eq. (1) of
        arXiv 2404.01306 penalises row ``i`` by :math:`\lVert W_i\rVert_1 / c_i`.
        """
        if axis == "in":
            return self.in_degree() / max(self.n_in, 1)
        if axis == "out":
            return self.out_degree() / max(self.n_out, 1)
        raise ValueError(f"axis must be 'in' or 'out', got {axis!r}")

    def edge_list(self) -> np.ndarray:
        """Edges as ``[n_edges, 2]`` node ids: inputs are ``0..in-1``, outputs ``in..in+out-1``; in the
        order igraph is given them (:func:`~topoprune.graph.edges.block_edges`)."""
        return block_edges(self.biadjacency, 0, self.n_in)[0]

    def to_igraph(self, weighted: bool = False):
        """An undirected ``igraph.Graph``; vertex attribute ``part`` is 0 (input) / 1 (output)."""
        g = igraph_from_csr(self.n_in + self.n_out, [(0, self.n_in, self.biadjacency)], weighted)
        g.vs["part"] = [0] * self.n_in + [1] * self.n_out
        return g

    def to_networkx(self, weighted: bool = True):
        """An undirected ``networkx.Graph`` with ``bipartite`` node attributes (0 input, 1 output)."""
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(self.n_in), bipartite=0)
        g.add_nodes_from(range(self.n_in, self.n_in + self.n_out), bipartite=1)
        coo = self.biadjacency.tocoo()
        if weighted:
            g.add_weighted_edges_from(zip(coo.col.tolist(), (coo.row + self.n_in).tolist(), coo.data.tolist()))
        else:
            g.add_edges_from(zip(coo.col.tolist(), (coo.row + self.n_in).tolist()))
        return g


def bipartite_graph(weight, config: GraphConfig | None = None, *, name: str = "") -> BipartiteGraph:
    """Build the :class:`BipartiteGraph` of ``weight`` (shape ``[out, in]``)."""
    w = _as_tensor(weight)
    return BipartiteGraph(_csr(edge_mask(w, config, name=name or "weight"), w), name)


def from_mask(mask, weight=None, *, name: str = "") -> BipartiteGraph:
    """Build a :class:`BipartiteGraph` from a given boolean edge mask (e.g. a pruning mask)."""
    m = _as_tensor(mask).bool()
    return BipartiteGraph(_csr(m, _as_tensor(weight) if weight is not None else None), name)


@dataclass(frozen=True)
class LayeredGraph:
    """A multipartite graph: named node layers joined by biadjacency blocks.

    Attributes
    ----------
    layers : tuple of (str, int)
        Name and size of each node layer, in order.
    edges : tuple of (int, int, csr_array)
        ``(src, dst, B)`` with ``B`` of shape ``[size(dst), size(src)]``.
    """

    layers: tuple[tuple[str, int], ...]
    edges: tuple[tuple[int, int, sp.csr_array], ...] = field(default=())

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([n for _, n in self.layers])]).astype(np.int64)

    @property
    def n_nodes(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_edges(self) -> int:
        return int(sum(b.nnz for _, _, b in self.edges))

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges [E, 2], weights [E])`` over global node ids, block by block in the order igraph is
        given them (:func:`~topoprune.graph.edges.block_edges`)."""
        off = self.offsets
        parts, weights = [], []
        for src, dst, b in self.edges:
            e, w = block_edges(b, int(off[src]), int(off[dst]))
            parts.append(e)
            weights.append(w)
        if not parts:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        return np.concatenate(parts).astype(np.int64), np.concatenate(weights)

    def degree(self) -> np.ndarray:
        """Total degree of every node, shape [n_nodes] (vectorised over the blocks)."""
        off, deg = self.offsets, np.zeros(self.n_nodes, np.int64)
        for src, dst, b in self.edges:
            g = BipartiteGraph(b)
            deg[off[dst]:off[dst + 1]] += g.in_degree()
            deg[off[src]:off[src + 1]] += g.out_degree()
        return deg

    def layer_of(self) -> np.ndarray:
        """Layer index of every node."""
        return np.repeat(np.arange(len(self.layers)), [n for _, n in self.layers])

    def blocks(self) -> list[tuple[int, int, sp.csr_array]]:
        """``(src_offset, dst_offset, B)`` of every biadjacency block, over global node ids."""
        off = self.offsets
        return [(int(off[src]), int(off[dst]), b) for src, dst, b in self.edges]

    def to_igraph(self, weighted: bool = False):
        g = igraph_from_csr(self.n_nodes, self.blocks(), weighted)
        g.vs["layer"] = self.layer_of().tolist()
        return g

    def to_networkx(self, weighted: bool = True):
        import networkx as nx

        edges, w = self.edge_arrays()
        g = nx.Graph()
        for node, layer in enumerate(self.layer_of().tolist()):
            g.add_node(node, layer=layer)
        if weighted:
            g.add_weighted_edges_from(zip(edges[:, 0].tolist(), edges[:, 1].tolist(), w.tolist()))
        else:
            g.add_edges_from(edges.tolist())
        return g


def expand_kv(b: sp.csr_array, n_heads: int, n_kv_heads: int, head_dim: int) -> sp.csr_array:
    """Repeat key/value head rows so each query head sees its kv head (grouped-query attention)."""
    if not n_kv_heads or n_kv_heads == n_heads or not head_dim:
        return b
    group = n_heads // n_kv_heads
    rows = np.arange(n_heads * head_dim)
    src = (rows // head_dim) // group * head_dim + rows % head_dim  # kv row feeding query-head row
    return b[src]


def attention_graph(q: BipartiteGraph, k: BipartiteGraph, v: BipartiteGraph, o: BipartiteGraph, *,
                    n_heads: int = 0, n_kv_heads: int = 0, head_dim: int = 0) -> LayeredGraph:
    """Layered graph residual -> heads -> residual of one attention block.

    A residual dimension ``j`` joins head neuron ``r`` (row ``r`` of Q, or the row of K/V
    that head ``r`` reads under grouped-query attention) when any of ``Q[r, j]``,
    ``K[r', j]``, ``V[r', j]`` is an edge, with weight the sum of their ``|w|``; head neuron
    ``r`` joins output dimension ``i`` when ``O[i, r]`` is an edge.
    """
    if n_kv_heads and head_dim and n_kv_heads != n_heads and (
            n_heads % n_kv_heads or (n_heads * head_dim, n_kv_heads * head_dim) != (q.n_out, k.n_out)):
        raise TensorError(f"{q.name}: {n_heads} heads and {n_kv_heads} key-value heads of size {head_dim} "
                          f"(config.json) do not fit q {q.biadjacency.shape} and k {k.biadjacency.shape}")
    kk = expand_kv(k.biadjacency, n_heads, n_kv_heads, head_dim)
    vv = expand_kv(v.biadjacency, n_heads, n_kv_heads, head_dim)
    if not (q.biadjacency.shape == kk.shape == vv.shape):
        raise TensorError(f"{q.name}: q/k/v shapes {q.biadjacency.shape}, {kk.shape}, {vv.shape} do not align")
    qkv = (q.biadjacency + kk + vv).tocsr()
    d, h = q.n_in, q.n_out
    return LayeredGraph((("residual_in", d), ("heads", h), ("residual_out", o.n_out)),
                        ((0, 1, qkv), (1, 2, o.biadjacency)))


def mlp_graph(mlp_in: BipartiteGraph, mlp_out: BipartiteGraph, up: BipartiteGraph | None = None) -> LayeredGraph:
    """Layered graph residual -> hidden -> residual of one MLP (gate and up merged)."""
    first = mlp_in.biadjacency if up is None else (mlp_in.biadjacency + up.biadjacency).tocsr()
    return LayeredGraph((("residual_in", mlp_in.n_in), ("hidden", mlp_in.n_out), ("residual_out", mlp_out.n_out)),
                        ((0, 1, first), (1, 2, mlp_out.biadjacency)))


def stack(graphs: list[LayeredGraph]) -> LayeredGraph:
    """Chain block graphs through the residual stream into one whole-model multipartite graph.

    Each graph's ``residual_out`` layer becomes the next graph's ``residual_in`` (the
    same node set), giving residual_0 -> heads_0 -> residual_1 -> hidden_0 -> residual_2 ...
    Skip connections are identities and are not added as edges.
    """
    layers: list[tuple[str, int]] = []
    edges: list[tuple[int, int, sp.csr_array]] = []
    for i, g in enumerate(graphs):
        base = len(layers) - 1 if layers else 0
        if layers and layers[-1][1] != g.layers[0][1]:
            raise TensorError(f"block {i}: residual width {g.layers[0][1]} != previous {layers[-1][1]}")
        new = g.layers if not layers else g.layers[1:]
        layers.extend((f"{name}_{i}", n) for name, n in new)
        edges.extend((base + s, base + d, b) for s, d, b in g.edges)
    return LayeredGraph(tuple(layers), tuple(edges))
