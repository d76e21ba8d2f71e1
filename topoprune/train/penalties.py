r"""NeuroPrune's differentiable regularisers, written against the canonical ``[out, in]`` layout.

Dhurandhar et al. 2024, "NeuroPrune: A Neuro-inspired Topological Sparse Training Algorithm
for Large Language Models", Findings of ACL 2024, arXiv 2404.01306, Sections 3-4.

* :func:`preferential_attachment_penalty` -- the MLP term, Eq. (1) as reconstructed: a
  weighted l1 norm where row ``i`` is weighted by ``1 / c_i``, ``c_i`` its fractional
  connectivity (:func:`attachment_scores`), so poorly connected neurons are shrunk harder
  ("the rich get richer").
* :func:`attention_group_penalty` -- the attention term, Eq. (2): the :math:`l_{1,0.5}`
  group norm over the input dimensions of the concatenated ``[Q; K; V]`` projections.
* :func:`l1_penalty` -- the paper's plain l1 baseline.

Every weight is an ``nn.Linear``-style ``[out, in]`` tensor. GPT-2 ``Conv1D`` weights are
``[in, out]``: pass ``weight.t()`` (see :class:`topoprune.graph.roles.MatrixSpec`, ``transpose``).
Half-precision weights (float16 / bfloat16) are summed in float32 and the penalty is
returned in float32; gradients still reach the original parameter through the cast.
"""
from __future__ import annotations

import logging
import math

import torch

from ..graph.config import GraphConfig
from ..errors import ConfigError, TensorError
from ..graph.bipartite import bipartite_graph
from ..graph.degrees import threshold_in_degree

log = logging.getLogger(__name__)

#: NeuroPrune's magnitude below which an entry does not count as a connection (paper, Sec. 3).
EPSILON = 1e-4
#: Default smoothing of the square root in :func:`attention_group_penalty`.
DELTA = 1e-8


def _acc(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in a dtype safe to accumulate in (float32 for half precision)."""
    return weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight


def _check_matrix(weight: torch.Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TensorError(f"{name}: expected a 2-D [out, in] tensor, got {shape}")


def attachment_scores(weight, eps: float = EPSILON, floor: float | None = None) -> torch.Tensor:
    r"""Fractional connectivity :math:`c_i` of every row (output neuron) of ``weight``.

    .. math::

        c_i = \frac{\#\{j : |W_{ij}| \ge \varepsilon\}}{n_\text{in}}
            = \frac{n_\text{in} - n_i}{n_\text{in}},

    with :math:`n_i` the number of entries of row ``i`` below :math:`\varepsilon`
    (Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 3). The count is one pass over the
    weights on their own device (:func:`topoprune.graph.degrees.threshold_in_degree`): the
    fan-in of the matrix's bipartite graph in ``threshold`` mode, equal to
    :meth:`~topoprune.graph.bipartite.BipartiteGraph.connectivity` ``("in")`` of
    :func:`~topoprune.graph.bipartite.bipartite_graph` (the tests hold them equal). It is cheap
    enough for the trainer to recount every step, so that the weights :math:`1/c_i` describe
    the current graph: a score counted on the dense weights is :math:`\approx 1` for every
    neuron, and with it the weighted penalty is plain l1 and the keep-score :math:`|w|\,c_i`
    plain magnitude.

    Parameters
    ----------
    weight : torch.Tensor, shape [out, in], or a sequence of them
        Several matrices with the same rows (a gated MLP's gate and up projections, which feed
        the same hidden neurons) give the fan-in over their concatenation along the inputs,
        counted without building it.
    eps : float
        Connection threshold :math:`\varepsilon` (paper: 1e-4). Exact zeros are never edges.
    floor : float or None
        Lower clamp on :math:`c_i` so a dead row (no entry above ``eps``) does not divide
        by zero in :func:`preferential_attachment_penalty`. Default ``1 / in``: a dead row
        is weighted like a row with a single connection. Must be in (0, 1].

    Returns
    -------
    torch.Tensor, shape [out]
        On ``weight``'s device and dtype, without gradient (the paper treats the weights
        ``1 / c_i`` as constants, recomputed as training proceeds).

    Raises
    ------
    ConfigError
        ``eps`` negative or ``floor`` outside (0, 1].
    TensorError
        ``weight`` not 2-D, the matrices' rows differ, or an entry is NaN / Inf.
    """
    ws = list(weight) if isinstance(weight, (list, tuple)) else [weight]
    for w in ws:
        _check_matrix(w, "weight")
    if len({w.shape[0] for w in ws}) != 1:
        raise TensorError(f"weight: the matrices' rows differ: {[tuple(w.shape) for w in ws]}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"connection threshold eps must be a finite number >= 0, got {eps!r}")
    n_in = sum(w.shape[1] for w in ws)
    if floor is None:
        floor = 1.0 / max(n_in, 1)
    if not (isinstance(floor, (int, float)) and 0.0 < floor <= 1.0):
        raise ConfigError(f"connectivity floor must be in (0, 1], got {floor!r}")
    with torch.no_grad():
        for w in ws:  # one reduction; the elementwise check only when the sum is not finite
            if not bool(torch.isfinite(w.sum())) and not bool(torch.isfinite(w).all()):
                raise TensorError("weight: contains NaN or Inf values")
        degree = sum(threshold_in_degree(w, eps) for w in ws)  # [out] int32, on the weights' device
        c = (degree.float() / max(n_in, 1)).to(ws[0].dtype)  # [out]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("attachment scores: %d of %d rows below the floor %.3g", int((c < floor).sum()), c.numel(), floor)
    return c.clamp_min(floor)


def preferential_attachment_penalty(weight: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    r"""Weighted l1 norm with row weights inverse to connectivity (NeuroPrune Eq. 1, reconstructed).

    .. math::

        R(W) = \sum_{i=1}^{n_\text{out}} \frac{\lVert W_{i,:}\rVert_1}{c_i},

    applied to both MLP matrices of a layer: :math:`L_\text{in}` (rows of
    ``intermediate.dense`` / ``fc1``) and :math:`L_\text{out}` (rows of ``output.dense`` /
    ``fc2``); :math:`R_\text{mlp} = R(L_\text{in}) + R(L_\text{out})` (Dhurandhar et al.
    2024, arXiv 2404.01306, Sec. 3; the exact normalisation of the printed equation is
    not known).

    Parameters
    ----------
    weight : torch.Tensor, shape [out, in]
    scores : torch.Tensor, shape [out]
        Connectivities :math:`c_i`, normally :func:`attachment_scores` of ``weight``;
        detached here, so the gradient flows through ``weight`` only:
        :math:`\partial R / \partial W_{ij} = \operatorname{sign}(W_{ij}) / c_i`.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    _check_matrix(weight, "weight")
    if scores.shape != weight.shape[:1]:
        raise TensorError(f"scores: expected shape ({weight.shape[0]},) for a weight of shape "
                          f"{tuple(weight.shape)}, got {tuple(scores.shape)}")
    w = _acc(weight)
    row_l1 = w.abs().sum(dim=1)  # [out]
    return (row_l1 / scores.detach().to(row_l1.dtype)).sum()


def attention_group_penalty(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    r"""The :math:`l_{1,0.5}` input-dimension group penalty on one attention layer (NeuroPrune Eq. 2).

    With :math:`A = \operatorname{cat}([W_Q, W_K, W_V], 0)` of shape ``[n_q + 2 n_kv, d]``
    (HF ``[out, in]`` layout), group ``j`` is column ``j`` of ``A``: every weight that reads
    input dimension ``j`` in any head of Q, K or V. The penalty (after Hu et al. 2017,
    JMLR 18(30); Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 4) is

    .. math::

        R_\text{att} = \sum_{j=1}^{d} \Bigl( \sum_{r} |A_{rj}| + \delta \Bigr)^{1/2}.

    The outer :math:`q = 1/2` shrinks whole groups sharply (zeroing group ``j``
    disconnects input dimension ``j`` from the layer) while the inner :math:`p = 1` still
    allows sparsity inside a group, unlike an l2 group lasso.

    Parameters
    ----------
    q : torch.Tensor, shape [n_heads * head_dim, d]
    k, v : torch.Tensor, shape [n_kv_heads * head_dim, d]
        May have fewer rows than ``q`` (grouped-query attention): the groups are columns,
        so only the input width ``d`` must agree.
    delta : float
        Smoothing :math:`\delta \ge 0`. :math:`\sqrt{s}` has slope :math:`1 / (2\sqrt{s})`,
        infinite at :math:`s = 0`: once a group is all zero the gradient would be
        ``inf`` (and ``0 * inf = nan`` through ``|.|``), poisoning the optimiser state.
        With :math:`\delta > 0` the slope is bounded by :math:`1 / (2\sqrt{\delta})`
        (5e3 for the default 1e-8); the value is offset by at most
        :math:`d\sqrt{\delta}` (1e-4 per input dimension), a constant that does not
        change the gradient elsewhere. Pass ``delta=0`` for the exact value.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    for name, w in (("q", q), ("k", k), ("v", v)):
        _check_matrix(w, name)
    if not q.shape[1] == k.shape[1] == v.shape[1]:
        raise TensorError(f"q/k/v input widths differ: {q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise ConfigError(f"delta must be a finite number >= 0, got {delta!r}")
    # Column sums of |cat([q, k, v], 0)| without materialising the concatenation.
    group = _acc(q).abs().sum(0) + _acc(k).abs().sum(0) + _acc(v).abs().sum(0)  # [d]
    return torch.sqrt(group + delta).sum()


def l1_penalty(weight: torch.Tensor) -> torch.Tensor:
    r"""Plain l1 norm :math:`\sum_{ij} |W_{ij}|`, the paper's baseline regulariser.

    Dhurandhar et al. 2024 (arXiv 2404.01306) compare NeuroPrune on T5 and OPT against
    l1 applied to the same attention and MLP matrices, with the same coefficient grid.

    Parameters
    ----------
    weight : torch.Tensor, any shape

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    return _acc(weight).abs().sum()


def strengths(weight: torch.Tensor, eps: float = EPSILON) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted degrees of ``weight``'s bipartite graph (edges :math:`|w| \ge \varepsilon`).

    The same graph as :func:`attachment_scores`
    (:meth:`~topoprune.graph.bipartite.BipartiteGraph.in_strength` and ``out_strength``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Row strengths :math:`\sum_j |W_{ij}|` [out] and column strengths :math:`\sum_i |W_{ij}|`
        [in], float32 on the CPU, over edges only.
    """
    _check_matrix(weight, "weight")
    graph = bipartite_graph(weight.detach().cpu(), GraphConfig(threshold=eps, mode="threshold"))
    return (torch.as_tensor(graph.in_strength(), dtype=torch.float32),
            torch.as_tensor(graph.out_strength(), dtype=torch.float32))
