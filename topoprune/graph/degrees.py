r"""Degrees counted with torch on a tensor's own device, without building the graph.

The same counts as :class:`~topoprune.graph.bipartite.BipartiteGraph` (``in_degree``,
``out_degree``, ``connectivity``), read straight off a mask or a weight matrix by reductions, so
that a GPU tensor never leaves the GPU and a training step can afford them every step:

* :func:`mask_degrees` -- row and column counts of an edge mask (the analysis on a ``device``,
  the trainer's topology rows);
* :func:`threshold_in_degree` -- row counts of :math:`|w| \ge \varepsilon` on a weight matrix,
  the fan-in behind NeuroPrune's attachment score :math:`c_i = \deg_\text{in}(i) / n_\text{in}`
  (Dhurandhar et al. 2024, "NeuroPrune", Findings of ACL, arXiv 2404.01306, Sec. 3).

The graph code in :mod:`~topoprune.graph.bipartite` is the oracle: the tests hold every count
here equal to the graph's.
"""
from __future__ import annotations

import numpy as np
import torch


def mask_degrees(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """In- and out-degrees of the bipartite graph whose edges are the True entries of ``mask``.

    Parameters
    ----------
    mask : torch.BoolTensor, shape [out, in]
        An edge mask (:func:`~topoprune.graph.bipartite.select_edges`, a pruning mask), on any device.

    Returns
    -------
    (ndarray, ndarray)
        ``in_degree`` [out] (row counts) and ``out_degree`` [in] (column counts), int64 on the
        CPU, counted by torch reductions on the mask's device: the counts
        :meth:`~topoprune.graph.bipartite.BipartiteGraph.in_degree` and
        :meth:`~topoprune.graph.bipartite.BipartiteGraph.out_degree` read from the graph's CSR
        form, without building it.

    Notes
    -----
    The mask is summed as bytes into int32 counts (exact: a row or column has fewer than
    2**31 entries). Summing the bool tensor with ``dtype=torch.int64`` converts it to an int64
    copy first: eight bytes per entry, twice the memory of the float32 matrix, and 2-4x slower.
    """
    m = mask.detach()
    if m.dtype != torch.bool:
        m = m != 0
    u = m.contiguous().view(torch.uint8)  # [out, in], one byte per entry, no copy
    return (u.sum(1, dtype=torch.int32).cpu().numpy().astype(np.int64),
            u.sum(0, dtype=torch.int32).cpu().numpy().astype(np.int64))


def threshold_in_degree(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""Fan-in of every output neuron of ``weight`` with edges :math:`|w_{ij}| \ge t`, on its device.

    .. math::

        \deg_\text{in}(i) = \#\{j : |W_{ij}| \ge t,\ W_{ij} \ne 0\},

    the row counts of :func:`~topoprune.graph.bipartite.bipartite_graph` in ``threshold`` mode
    (exact zeros are never edges), in one pass over the weights and without a ``|w|`` copy.

    Parameters
    ----------
    weight : torch.Tensor, shape [out, in]
        Any floating dtype, any device; read without gradient.
    threshold : float
        :math:`t \ge 0`.

    Returns
    -------
    torch.Tensor, shape [out]
        int32 counts on ``weight``'s device.

    Notes
    -----
    A half-precision matrix is compared with the smallest value of its dtype at or above
    :math:`t` (a bfloat16 ``1e-3`` rounds down to ``9.9945e-4``), which selects exactly the
    entries the graph code selects after widening them to float32.
    NaN entries compare false and are not counted; callers that must reject them check first
    (:func:`~topoprune.graph.bipartite.select_edges` raises on them).
    """
    w = weight.detach()  # [out, in]
    if threshold > 0:
        t = _ceil_in_dtype(threshold, w.dtype)
        edges = (w >= t).logical_or_(w <= -t)  # |w| >= t, and so w != 0
    else:
        edges = w != 0
    return edges.view(torch.uint8).sum(1, dtype=torch.int32)  # [out]


def _ceil_in_dtype(threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """The smallest value of ``dtype`` that is >= ``threshold`` (0-d tensor of that dtype)."""
    t = torch.tensor(threshold, dtype=torch.float64)
    c = t.to(dtype)
    if float(c) < threshold:
        c = torch.nextafter(c, torch.tensor(float("inf"), dtype=dtype))
    return c
