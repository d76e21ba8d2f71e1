r"""Redundant attention-head removal as a dominating-set problem (NeuroPrune ELIM_REDUNDANT).

Dhurandhar et al. 2024, "NeuroPrune", Findings of ACL, arXiv 2404.01306, Sec. 3 (Algorithm ELIM_REDUNDANT).
After every epoch and for every attention layer:

1. :func:`head_params` -- flatten each head's parameters :math:`P_h = [Q_h, K_h, V_h]`;
2. :func:`similarity_graph` -- :math:`S_{hg} = [\max |P_h - P_g| \le \theta]`, unit diagonal;
3. :func:`find_dominating` -- the paper's greedy scan: head ``h`` is replaced by a head
   whose closed neighbourhood strictly contains its own (ties go to the later head);
4. :func:`fold_heads` -- add each removed head's W_O slice to its replacer's, zero it:
   :math:`O_h W_{O,h} + O_g W_{O,g} \approx O_g (W_{O,h} + W_{O,g})` since the heads are
   within :math:`\theta`.

:func:`prune_layer_heads` computes a :class:`HeadPruningDecision` without touching the
weights; :func:`apply_head_mask` carries it out in place, and :func:`prune_model_heads` does
both for every attention layer of a bound model (:class:`topoprune.graph.binding.Binding`),
writing back and masking the removed heads. HF ``prune_heads()`` is gone in
transformers v5, so heads are removed by zeroing (Q/K/V rows and biases, W_O columns);
physical removal is a separate step.

All tensors are in the canonical ``[out, in]`` layout: head ``h`` owns rows
``h*hd:(h+1)*hd`` of Q/K/V and columns ``h*hd:(h+1)*hd`` of W_O. For GPT-2 ``Conv1D`` pass
``weight.t()`` and row slices of it for the fused ``c_attn``: these are views, so the in-place
edits of :func:`apply_head_mask` reach the parameters.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, TensorError

log = logging.getLogger(__name__)

#: The paper's default similarity threshold (GLUE and summarisation experiments).
THETA = 0.15


def _kv_heads(n_heads: int, n_kv_heads: int | None) -> int:
    kv = n_kv_heads or n_heads
    if n_heads < 1 or kv < 1 or n_heads % kv:
        raise ConfigError(f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({kv})")
    return kv


def _check_theta(theta: float) -> None:
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta >= 0):
        raise ConfigError(f"head similarity threshold theta must be a finite number >= 0, got {theta!r}")


def _check_rows(t: torch.Tensor, rows: int, name: str, ndim: int = 2) -> None:
    if t.ndim != ndim or t.shape[0] != rows:
        want = f"[{rows}, in]" if ndim == 2 else f"[{rows}]"
        raise TensorError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


def head_params(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv_heads: int | None,
                head_dim: int, include_bias: bool = False, biases: Sequence | None = None) -> torch.Tensor:
    r"""Flattened parameters :math:`P_h = [Q_h, K_h, V_h]` of every query head.

    Parameters
    ----------
    q : torch.Tensor, shape [n_heads * head_dim, d]
    k, v : torch.Tensor, shape [n_kv_heads * head_dim, d]
    n_heads, head_dim : int
    n_kv_heads : int or None
        Key/value heads (``None`` or 0: as many as query heads). Under grouped-query
        attention query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``, so its
        :math:`P_h` holds that group's K/V slice: heads of one group then differ only in
        Q, which is what makes them interchangeable or not.
    include_bias, biases : bool, (bq, bk, bv) or None
        Append the head's Q/K/V bias entries (the paper is silent; default weights only);
        ``biases`` (``None`` entries for projections without one) is required then.

    Returns
    -------
    torch.Tensor, shape [n_heads, P]
        ``P = (head_dim * d) * 3`` (plus ``3 * head_dim`` with biases), detached.
    """
    kv = _kv_heads(n_heads, n_kv_heads)
    _check_rows(q, n_heads * head_dim, "q")
    _check_rows(k, kv * head_dim, "k")
    _check_rows(v, kv * head_dim, "v")
    group = n_heads // kv
    kv_index = torch.arange(n_heads, device=q.device) // group  # [n_heads] kv head of each query head
    parts = [q.detach().reshape(n_heads, -1),                                   # [H, hd*d]
             k.detach().reshape(kv, -1)[kv_index], v.detach().reshape(kv, -1)[kv_index]]
    if include_bias:
        if biases is None:
            raise ConfigError("include_bias=True needs biases=(bq, bk, bv)")
        for b, heads, name in zip(biases, (n_heads, kv, kv), "qkv"):
            if b is None:
                continue
            _check_rows(b, heads * head_dim, f"{name} bias", ndim=1)
            b = b.detach().reshape(heads, head_dim)
            parts.append(b if heads == n_heads else b[kv_index])
    dtype = torch.promote_types(q.dtype, torch.float32)
    return torch.cat([p.to(dtype) for p in parts], dim=1)


def similarity_graph(params: torch.Tensor, theta: float = THETA) -> torch.Tensor:
    r"""Head-similarity adjacency :math:`S_{hg} = [\lVert P_h - P_g \rVert_\infty \le \theta]`.

    ``params`` [k, P]: one row per head (:func:`head_params`); ``theta``: the largest
    element-wise difference of two similar heads (paper default 0.15). Returns the symmetric
    ``[k, k]`` BoolTensor with a unit diagonal (closed neighbourhoods).
    """
    _check_theta(theta)
    if params.ndim != 2:
        raise TensorError(f"params: expected [heads, P], got shape {tuple(params.shape)}")
    n = params.shape[0]
    sim = torch.ones(n, n, dtype=torch.bool, device=params.device)  # [k, k]
    if params.shape[1]:
        for h in range(n):  # one row at a time: [k, P] memory instead of [k, k, P]
            sim[h] = (params - params[h]).abs().amax(dim=1) <= theta
    sim.fill_diagonal_(True)
    return sim


def find_dominating(S) -> list[int]:
    r"""Replacer of every head, by the paper's greedy FIND_DOMINATING scan.

    For each head ``h``, start with ``best = h`` and scan ``g = 0 .. k-1``; with
    :math:`N[x]` the closed neighbourhood (row ``x`` of ``S``), move ``best`` to ``g`` when

    * :math:`N[g] \supsetneq N[\text{best}]` (``S[best] - S[g]`` has no ``+1`` and some ``-1``), or
    * :math:`N[g] = N[\text{best}]` and ``best < g`` (ties go to the later head).

    ``rep[h]`` is ``best`` after the scan (Dhurandhar et al. 2024, arXiv 2404.01306,
    Algorithm FIND_DOMINATING; quadratic number of neighbourhood comparisons).

    Parameters
    ----------
    S : array-like of bool, shape [k, k]

    Returns
    -------
    list of int
        ``rep[h] == h`` keeps head ``h``; otherwise ``rep[h]`` replaces it. The replacer is
        never itself replaced (the bests of a scan form a chain under inclusion, so no
        neighbourhood strictly contains, or later equals, the final one), so every fold is
        a single hop.
    """
    s = np.asarray(S.detach().cpu() if isinstance(S, torch.Tensor) else S).astype(bool)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise TensorError(f"similarity graph must be a square matrix, got shape {s.shape}")
    k = s.shape[0]
    # subset[a, b]: N[a] is contained in N[b], i.e. no column where a has 1 and b has 0.
    subset = (s.astype(np.int64) @ (~s).astype(np.int64).T) == 0  # [k, k]
    rep = []
    for h in range(k):
        best = h
        for g in range(k):
            larger = subset[best, g] and not subset[g, best]
            tie = subset[best, g] and subset[g, best] and best < g
            if larger or tie:
                best = g
        rep.append(best)
    return rep


def _check_rep(rep: Sequence[int], n_heads: int) -> list[int]:
    rep = [int(r) for r in rep]
    if len(rep) != n_heads or any(not 0 <= r < n_heads for r in rep):
        raise ConfigError(f"rep must list a head in 0..{n_heads - 1} for each of {n_heads} heads, got {rep}")
    for h, r in enumerate(rep):
        if rep[r] != r:
            raise ConfigError(f"rep is not single-hop: head {h} is replaced by {r}, itself replaced by {rep[r]}")
    return rep


def fold_heads(o_weight: torch.Tensor, rep: Sequence[int], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Fold every removed head's W_O slice into its replacer's.

    :math:`W_{O}[:, r(h)] \mathrel{+}= W_{O}[:, h]`, then :math:`W_O[:, h] = 0` for each
    ``h`` with ``rep[h] != h`` (slices of ``head_dim`` columns).

    Parameters
    ----------
    o_weight : torch.Tensor, shape [out, n_heads * head_dim]
    rep : sequence of int
        From :func:`find_dominating`; must be single-hop (a replacer is not replaced).
    head_dim : int

    Returns
    -------
    new_o : torch.Tensor, shape [out, n_heads * head_dim]
        A new tensor; ``o_weight`` is not modified.
    mask : torch.BoolTensor, shape [n_heads]
        True for kept heads.
    """
    if o_weight.ndim != 2 or head_dim < 1 or o_weight.shape[1] % head_dim:
        raise TensorError(f"o_weight: {tuple(o_weight.shape)} is not [out, n_heads * {head_dim}]")
    n_heads = o_weight.shape[1] // head_dim
    rep = _check_rep(rep, n_heads)
    old = o_weight.detach().reshape(o_weight.shape[0], n_heads, head_dim)  # [out, H, hd]
    new = old.clone()
    removed = [h for h, r in enumerate(rep) if r != h]
    for h in removed:
        new[:, rep[h]] += old[:, h]
    new[:, removed] = 0
    mask = torch.tensor([r == h for h, r in enumerate(rep)], dtype=torch.bool, device=o_weight.device)
    return new.reshape(o_weight.shape), mask


@dataclass(frozen=True)
class HeadPruningDecision:
    """Which heads of one attention layer ELIM_REDUNDANT keeps, and who replaces the rest.

    Attributes
    ----------
    layer : str
        Module or tensor name of the layer (free text).
    block : int
        Block index (-1 if unknown).
    n_heads : int
        Query heads in the layer.
    kept : tuple of int
        Heads still present after this decision.
    replaced_by : dict of int to int
        ``{removed: replacer}`` for the heads removed by this decision.
    previously_removed : tuple of int
        Heads removed before (left out of the similarity graph).
    theta : float
    """

    layer: str
    block: int
    n_heads: int
    kept: tuple[int, ...]
    replaced_by: dict[int, int] = field(default_factory=dict)
    previously_removed: tuple[int, ...] = ()
    theta: float = THETA

    @property
    def removed(self) -> tuple[int, ...]:
        """Heads removed by this decision, in order."""
        return tuple(sorted(self.replaced_by))

    def rep(self) -> list[int]:
        """Replacer of every head (itself when kept or previously removed)."""
        return [self.replaced_by.get(h, h) for h in range(self.n_heads)]

    def head_mask(self, device=None) -> torch.Tensor:
        """BoolTensor [n_heads], True for kept heads."""
        mask = torch.zeros(self.n_heads, dtype=torch.bool, device=device)
        mask[list(self.kept)] = True
        return mask

    def to_dict(self) -> dict:
        """JSON-ready dict (``replaced_by`` keys as strings, as JSON requires)."""
        return {"layer": self.layer, "block": self.block, "n_heads": self.n_heads, "theta": self.theta,
                "kept": list(self.kept), "replaced_by": {str(h): r for h, r in sorted(self.replaced_by.items())},
                "previously_removed": list(self.previously_removed)}

    @classmethod
    def from_dict(cls, d: dict) -> HeadPruningDecision:
        """Inverse of :meth:`to_dict`."""
        return cls(layer=d["layer"], block=int(d["block"]), n_heads=int(d["n_heads"]), kept=tuple(d["kept"]),
                   replaced_by={int(h): int(r) for h, r in d["replaced_by"].items()},
                   previously_removed=tuple(d.get("previously_removed", ())), theta=float(d["theta"]))


def prune_layer_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, *, n_heads: int,
                      head_dim: int, theta: float = THETA, n_kv_heads: int | None = None,
                      include_bias: bool = False, biases: Sequence | None = None,
                      removed: Sequence[int] = (), layer: str = "", block: int = -1) -> HeadPruningDecision:
    r"""ELIM_REDUNDANT's decision for one attention layer; the weights are not modified.

    Builds :math:`S` from :func:`head_params` and :func:`similarity_graph`; if :math:`S`
    has no off-diagonal edge nothing is removed, else :func:`find_dominating` picks the
    replacers (Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 3).

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``[n_heads * head_dim, d]`` and ``[n_kv_heads * head_dim, d]``.
    o : torch.Tensor, shape [out, n_heads * head_dim]
        Output projection (shape check only).
    n_heads, head_dim, n_kv_heads, include_bias, biases
        See :func:`head_params`.
    theta : float
        Similarity threshold (>= 0; paper default 0.15).
    removed : sequence of int
        Heads removed earlier (e.g. in a previous epoch). They are left out of the graph:
        their zeroed parameters would otherwise be similar to every small head and could
        be picked as replacers of live heads.
    layer, block
        Recorded in the decision.

    Returns
    -------
    HeadPruningDecision
    """
    _check_theta(theta)
    if o.ndim != 2 or o.shape[1] != n_heads * head_dim:
        raise TensorError(f"o: expected shape [out, {n_heads * head_dim}], got {tuple(o.shape)}")
    gone = sorted({int(h) for h in removed})
    if any(not 0 <= h < n_heads for h in gone):
        raise ConfigError(f"removed heads {gone} outside 0..{n_heads - 1}")
    live = [h for h in range(n_heads) if h not in gone]
    params = head_params(q, k, v, n_heads, n_kv_heads, head_dim, include_bias, biases)[live]  # [live, P]
    sim = similarity_graph(params, theta)
    replaced: dict[int, int] = {}
    if int(sim.sum()) > len(live):  # some off-diagonal edge
        for i, r in enumerate(find_dominating(sim)):
            if r != i:
                replaced[live[i]] = live[r]
    kept = tuple(h for h in live if h not in replaced)
    log.info("%s: %d of %d heads redundant at theta=%g (%s)", layer or f"block {block}", len(replaced),
             len(live), theta, ", ".join(f"{h}->{r}" for h, r in replaced.items()) or "none")
    return HeadPruningDecision(layer, block, n_heads, kept, replaced, tuple(gone), float(theta))


def apply_head_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                    decision: HeadPruningDecision, *, head_dim: int, n_kv_heads: int | None = None,
                    biases: Sequence | None = None, fold: bool = True) -> torch.Tensor:
    """Carry out ``decision`` in place: fold W_O, zero the removed heads' Q/K/V rows and biases.

    Runs under ``torch.no_grad()``. Q rows (and bias entries) of every head not in
    ``decision.kept`` are zeroed; under grouped-query attention a kv head's K/V rows are
    zeroed only when every query head of its group is gone, since the others still read
    them. W_O is replaced by :func:`fold_heads` of it (removed heads' columns folded into
    their replacers', then zero), so the layer's output is unchanged when removed and
    replacing heads are identical and approximately unchanged when they are within theta.

    Parameters
    ----------
    q, k, v, o : torch.Tensor
        As in :func:`prune_layer_heads`; modified in place (views such as ``weight.t()``
        are fine).
    decision : HeadPruningDecision
    head_dim : int
    n_kv_heads : int or None
    biases : (bq, bk, bv) or None
        Bias vectors to zero alongside (``None`` entries skipped).
    fold : bool
        Fold removed heads' W_O columns into their replacers' (the paper), else only zero them;
        folding is exact only for identical heads.

    Returns
    -------
    torch.BoolTensor, shape [n_heads]
        True for kept heads.
    """
    n_heads = decision.n_heads
    kv = _kv_heads(n_heads, n_kv_heads)
    _check_rows(q, n_heads * head_dim, "q")
    _check_rows(k, kv * head_dim, "k")
    _check_rows(v, kv * head_dim, "v")
    mask = decision.head_mask(device=q.device)  # [H]
    group = n_heads // kv
    kv_mask = mask.reshape(kv, group).any(dim=1)  # [kv] still read by some query head
    row_q = mask.repeat_interleave(head_dim)      # [H * hd]
    row_kv = kv_mask.repeat_interleave(head_dim)  # [kv * hd]
    with torch.no_grad():
        if fold:
            new_o, _ = fold_heads(o, decision.rep(), head_dim)
            o.copy_(new_o)
        else:
            o[:, ~row_q] = 0
        q[~row_q] = 0
        k[~row_kv] = 0
        v[~row_kv] = 0
        for b, rows, name in zip(biases or (), (row_q, row_kv, row_kv), "qkv"):
            if b is not None:
                _check_rows(b, rows.numel(), f"{name} bias", ndim=1)
                b[~rows.to(b.device)] = 0
    return mask


def layer_tensors(binding, layer) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Copies of a bound attention layer's ``[out, in]`` Q, K, V, W_O and its Q/K/V biases (None if absent).

    Parameters
    ----------
    binding : topoprune.graph.binding.Binding
    layer : topoprune.graph.binding.Attention
    """
    qkvo = [binding.weight(s).detach().clone() for s in (layer.q, layer.k, layer.v, layer.o)]
    biases = [None if binding.bias(s) is None else binding.bias(s).detach().clone() for s in layer.qkv]
    return qkvo, biases


def prune_model_heads(binding, masks, layers, removed: dict, *, theta: float = THETA,
                      include_bias: bool = False, fold: bool = True) -> list[HeadPruningDecision]:
    """ELIM_REDUNDANT on the attention ``layers`` of a bound model: decide, fold, write back, mask.

    :func:`prune_layer_heads` decides each layer (heads in ``removed[layer.key]`` are left out
    of the graph; under ``torch.distributed`` rank 0 decides for every rank) and
    :func:`apply_head_mask` acts on copies of the ``[out, in]`` pieces, which are written back
    through the binding. Removed heads' Q rows (K/V rows once a whole kv group is gone), their
    bias entries and W_O columns are masked in ``masks`` (a
    :class:`~topoprune.graph.masks.MaskSet`), so they stay zero until physical removal.

    Parameters
    ----------
    binding : topoprune.graph.binding.Binding
    masks : topoprune.graph.masks.MaskSet
    layers : list of topoprune.graph.binding.Attention
        Layers without a known head layout or W_O are skipped.
    removed : dict of str to tuple of int
        Heads already removed per layer key; updated in place.
    theta, include_bias
        As for :func:`prune_layer_heads`.
    fold : bool
        As for :func:`apply_head_mask`.

    Returns
    -------
    list of HeadPruningDecision
        The decisions that removed heads.
    """
    from ..graph.masks import broadcast_object

    layers = [la for la in layers if la.has_heads]
    decisions = []
    for la in layers:
        (q, k, v, o), biases = layer_tensors(binding, la)
        decisions.append(prune_layer_heads(q, k, v, o, n_heads=la.n_heads, head_dim=la.head_dim, theta=theta,
                                           n_kv_heads=la.n_kv_heads, include_bias=include_bias, biases=biases,
                                           removed=removed.get(la.key, ()), layer=la.key, block=la.q.block))
    applied = []
    for la, d in zip(layers, broadcast_object(decisions, 0)):
        if not d.replaced_by:
            continue
        (q, k, v, o), biases = layer_tensors(binding, la)
        kept = apply_head_mask(q, k, v, o, d, head_dim=la.head_dim, n_kv_heads=la.n_kv_heads, biases=biases,
                               fold=fold)
        for s, new in zip((la.q, la.k, la.v, la.o), (q, k, v, o)):
            binding.write(s, new)
        rows_q = kept.repeat_interleave(la.head_dim)  # [H * hd]
        rows_kv = kept.reshape(la.n_kv_heads or la.n_heads, -1).any(dim=1).repeat_interleave(la.head_dim)
        for s, rows, bias in zip(la.qkv, (rows_q, rows_kv, rows_kv), biases):
            masks.update_piece(binding, s, rows[:, None])
            if bias is not None:
                binding.write_bias(s, bias)
                masks.update_piece(binding, s, rows, bias=True)
        masks.update_piece(binding, la.o, rows_q[None, :])
        removed[la.key] = tuple(sorted(set(removed.get(la.key, ())) | set(d.replaced_by)))
        applied.append(d)
    return applied
