r"""How far apart the heads of each attention layer are, and a threshold that scales with the layer.

ELIM_REDUNDANT (Dhurandhar et al. 2024, "NeuroPrune", Findings of ACL, arXiv 2404.01306, Sec. 3)
joins two heads of a layer when the l∞ distance of their parameters :math:`P_h = [Q_h, K_h, V_h]`
is at most :math:`\theta` (:func:`~topoprune.train.heads.similarity_graph`), and the paper
expects heads to grow more alike as sparse training goes on. This module measures that:

* :func:`head_distances` -- the ``[k, k]`` matrix :math:`D_{hg} = \lVert P_h - P_g \rVert_\infty`;
* :func:`layer_scale` -- the layer's weight scale :math:`s = \operatorname{median}_h \lVert P_h \rVert_\infty`,
  the typical largest entry of a head;
* :func:`layer_theta` -- the threshold a layer gets: :math:`\theta` itself (``"absolute"``, the
  paper) or :math:`\theta \cdot s` (``"layer"``), so that one :math:`\theta` means the same
  on models whose weights have another scale (the paper's 0.15 is an absolute distance, tuned
  on its models);
* :func:`live_head_params` and :func:`distance_summary` -- per attention layer of a bound model,
  the parameters of its live heads, and the minimum and median distance between them, absolute
  and relative to :math:`s`.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError, TensorError
from .heads import head_params, layer_tensors

#: How a head-similarity threshold is read: an absolute l∞ distance, or a share of the layer's scale.
THETA_SCALES = ("absolute", "layer")


def head_distances(params: torch.Tensor) -> torch.Tensor:
    r"""Pairwise l∞ distances :math:`D_{hg} = \max_p |P_{hp} - P_{gp}|` between the rows of ``params``.

    Parameters
    ----------
    params : torch.Tensor, shape [k, P]
        One row per head (:func:`~topoprune.train.heads.head_params`).

    Returns
    -------
    torch.Tensor, shape [k, k]
        Symmetric, zero diagonal, float32 or float64 as ``params``; computed one row at a time
        (``[k, P]`` memory, not ``[k, k, P]``).
    """
    if params.ndim != 2:
        raise TensorError(f"params: expected [heads, P], got shape {tuple(params.shape)}")
    k = params.shape[0]
    d = torch.zeros(k, k, dtype=params.dtype, device=params.device)  # [k, k]
    if params.shape[1]:
        for h in range(k):
            d[h] = (params - params[h]).abs().amax(dim=1)
    return d


def layer_scale(params: torch.Tensor) -> float:
    r"""The median over heads of :math:`\lVert P_h \rVert_\infty` (0 for an empty layer)."""
    if params.ndim != 2:
        raise TensorError(f"params: expected [heads, P], got shape {tuple(params.shape)}")
    if not params.numel():
        return 0.0
    return float(params.abs().amax(dim=1).median())


def layer_theta(theta: float, scale_mode: str, params: torch.Tensor) -> float:
    r"""The threshold ELIM_REDUNDANT uses on a layer: ``theta`` or ``theta * layer_scale(params)``."""
    if scale_mode not in THETA_SCALES:
        raise ConfigError(f"theta scale must be one of {', '.join(THETA_SCALES)}, got {scale_mode!r}")
    return float(theta) if scale_mode == "absolute" else float(theta) * layer_scale(params)


def _pairs(d: torch.Tensor) -> torch.Tensor:
    k = d.shape[0]
    return d[~torch.eye(k, dtype=torch.bool, device=d.device)]  # [k * (k - 1)] off-diagonal entries


def live_head_params(binding, layer, removed: dict | None = None, include_bias: bool = False) -> torch.Tensor:
    """:func:`~topoprune.train.heads.head_params` of a bound attention layer's heads not yet removed.

    Returns
    -------
    torch.Tensor, shape [live heads, P]
    """
    (q, k, v, _o), biases = layer_tensors(binding, layer)
    gone = set((removed or {}).get(layer.key, ()))
    live = [h for h in range(layer.n_heads) if h not in gone]
    return head_params(q, k, v, layer.n_heads, layer.n_kv_heads, layer.head_dim, include_bias, biases)[live]


def distance_summary(binding, layers, removed: dict | None = None, include_bias: bool = False) -> list[dict]:
    """Per attention layer: how far apart its live heads are.

    Parameters
    ----------
    binding : topoprune.graph.binding.Binding
    layers : list of topoprune.graph.binding.Attention
        Layers without a known head layout are skipped.
    removed : dict of str to tuple of int, optional
        Heads already removed per layer key (left out, as ELIM_REDUNDANT leaves them out).
    include_bias : bool
        Append the Q/K/V biases to each head's parameters, as ``head_include_bias`` does.

    Returns
    -------
    list of dict
        ``layer``, ``block``, ``heads`` (live), ``scale`` (:func:`layer_scale`), ``min`` and
        ``median`` of the distances between distinct live heads (NaN with fewer than two), and
        ``min_rel``, ``median_rel`` the same divided by ``scale``.
    """
    out = []
    for la in (la for la in layers if la.has_heads):
        params = live_head_params(binding, la, removed, include_bias)  # [live, P]
        scale = layer_scale(params)
        pairs = _pairs(head_distances(params)) if params.shape[0] > 1 else torch.empty(0)
        lo, mid = (float(pairs.min()), float(pairs.median())) if pairs.numel() else (math.nan, math.nan)
        out.append({"layer": la.key, "block": la.q.block, "heads": params.shape[0], "scale": scale, "min": lo,
                    "median": mid, "min_rel": lo / scale if scale else math.nan,
                    "median_rel": mid / scale if scale else math.nan})
    return out
