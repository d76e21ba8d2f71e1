r"""Structured target mode: a share of every MLP's hidden neurons and of every layer's heads, pruned whole.

NeuroPrune prunes weights, so whole neurons die only as a side effect; a model gets smaller and
faster only when whole neurons and heads go (:mod:`topoprune.compaction`). With
``neuron_target`` (and/or ``head_target``) every MLP loses exactly ``round(s_t * width)`` hidden
neurons (every attention layer ``round(s_t * heads)`` heads) at step ``t``, ``s_t`` rising on the
run's schedule (:mod:`~topoprune.train.schedules`) to the target at ``end``. A pruned neuron is
masked everywhere it lives -- its fan-in rows (gate and up in a gated MLP) with their bias entries
and its fan-out column -- and a pruned head its Q/K/V rows, bias entries and W_O columns; masks
only shrink, so the choice at each update is among the survivors. The pruned structure is read
back from the masks (a neuron whose W_out column is all masked is pruned), so a resumed run
needs no extra state.

**Which ones go** -- the lowest scores, per layer (every layer keeps the same widths, so the
compacted model loads with plain ``from_pretrained``):

* ``neuroprune``: graph strengths from the project's one graph implementation
  (:func:`~topoprune.train.penalties.strengths`, edges :math:`|w| \ge \varepsilon`): a neuron
  scores :math:`s^\text{in}_i \cdot s^\text{out}_i`, the weighted fan-in of its rows times the
  weighted fan-out of its column -- a hub in both directions is kept; a head scores the strength
  of its Q (and, without grouped-query attention, K/V) rows times that of its W_O columns;
* ``gmp`` and ``l1``: the L2 norm of the neuron's (head's) weights, the usual structured
  magnitude baseline;
* ``random``: seeded random priorities.

With grouped-query attention the same number of query heads goes from every key/value group
(``round(s_t * group)``), so that the groups stay uniform; a key/value head goes with all of its
queries.
"""
from __future__ import annotations

import logging

import torch

from ..graph.binding import Binding
from ..graph.masks import MaskSet
from .penalties import strengths
from .schedules import get_schedule

log = logging.getLogger(__name__)


def _rows(keep: torch.Tensor, hd: int) -> torch.Tensor:
    """A head mask [H] as a row mask [H * hd, 1]."""
    return keep.repeat_interleave(hd)[:, None]


class StructuredPruner:
    """Prunes whole MLP neurons and attention heads to scheduled shares (see the module notes).

    Parameters
    ----------
    binding : Binding
    masks : MaskSet
        The run's masks (updated in place).
    config : NeuroPruneConfig
        ``neuron_target``, ``head_target``, the schedule fields (resolved), ``method``,
        ``eps``, ``seed``.
    layers : list of Attention
        The attention layers whose heads may go.
    removed : dict
        Heads removed so far per layer key (shared with head pruning; updated in place).
    """

    def __init__(self, binding: Binding, masks: MaskSet, config, layers, removed: dict):
        self.binding, self.masks, self.config, self.removed = binding, masks, config, removed
        sched = config.schedule_config()
        common = dict(initial=0.0, start=sched.start, end=sched.end, frequency=sched.frequency)
        self._neurons = get_schedule(sched.name, target=config.neuron_target, **common) \
            if config.neuron_target else None
        self._heads = get_schedule(sched.name, target=config.head_target, **common) if config.head_target else None
        self.mlps = list(binding.mlp) if self._neurons else []
        self.layers = [la for la in layers if la.has_heads] if self._heads else []
        self._ensure_masks()

    def _ensure_masks(self) -> None:
        """Every tensor (and bias) a pruned neuron or head touches has a mask."""
        b, masks = self.binding, self.masks
        for spec in [s for m in self.mlps for s in (*m.inputs, m.out)] + \
                [s for la in self.layers for s in (la.q, la.k, la.v, la.o)]:
            for name in (spec.tensor, b.bias_name(spec)):
                if name is not None and name not in masks:
                    masks.update(name, torch.ones_like(b.parameter(name), dtype=torch.bool))

    def restore(self) -> None:
        """After the masks were loaded (a resumed run): masks for every tensor, removed heads from the masks."""
        self._ensure_masks()
        for layer in self.layers:
            gone = tuple(int(h) for h in torch.nonzero(~self.head_alive(layer)).flatten())
            if gone:
                self.removed[layer.key] = tuple(sorted(set(self.removed.get(layer.key, ())) | set(gone)))

    def due(self, step: int) -> bool:
        """A scheduled share changes at ``step`` (a function of the step alone: every rank agrees)."""
        return any(s is not None and s(step) != s(step - 1) for s in (self._neurons, self._heads))

    # -- what is pruned now (read from the masks) --------------------------------------------
    def _piece_mask(self, spec) -> torch.Tensor:
        from ..graph.binding import canonical

        return canonical(self.masks.masks[spec.tensor], spec)

    def neuron_alive(self, mlp) -> torch.Tensor:
        """[width] True for neurons not pruned (their W_out column is not all masked)."""
        return self._piece_mask(mlp.out).any(dim=0)

    def head_alive(self, layer) -> torch.Tensor:
        """[heads] True for heads not pruned (their W_O columns are not all masked)."""
        m = self._piece_mask(layer.o)  # [d, H * hd]
        return m.reshape(m.shape[0], layer.n_heads, layer.head_dim).any(dim=2).any(dim=0)

    # -- scores ---------------------------------------------------------------------------------
    def _generator(self, key: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + sum(map(ord, key)))

    def neuron_scores(self, mlp) -> torch.Tensor:
        """[width] keep-scores of ``mlp``'s hidden neurons (higher is kept)."""
        b, method = self.binding, self.config.method
        with torch.no_grad():
            if method == "random":
                return torch.rand(mlp.width, generator=self._generator(mlp.key))
            w_in = [b.weight(s).detach().float().cpu() for s in mlp.inputs]
            w_out = b.weight(mlp.out).detach().float().cpu()
            if method == "neuroprune":
                s_in = sum(strengths(w, self.config.eps)[0] for w in w_in)  # [width]
                return s_in * strengths(w_out, self.config.eps)[1]
            return torch.sqrt(sum(w.pow(2).sum(1) for w in w_in) + w_out.pow(2).sum(0))

    def head_scores(self, layer) -> torch.Tensor:
        """[heads] keep-scores of ``layer``'s query heads (higher is kept)."""
        b, method, n, hd = self.binding, self.config.method, layer.n_heads, layer.head_dim
        with torch.no_grad():
            if method == "random":
                return torch.rand(n, generator=self._generator(layer.key))
            q = b.weight(layer.q).detach().float().cpu()  # [n * hd, d]
            o = b.weight(layer.o).detach().float().cpu()  # [d, n * hd]
            extra = [] if (layer.n_kv_heads or n) != n else [b.weight(s).detach().float().cpu() for s in (layer.k, layer.v)]
            if method == "neuroprune":
                rows = strengths(q, self.config.eps)[0] + sum(strengths(w, self.config.eps)[0] for w in extra)
                return rows.reshape(n, hd).sum(1) * strengths(o, self.config.eps)[1].reshape(n, hd).sum(1)
            sq = q.pow(2).sum(1) + sum(w.pow(2).sum(1) for w in extra) + o.pow(2).sum(0)
            return torch.sqrt(sq.reshape(n, hd).sum(1))

    # -- pruning ---------------------------------------------------------------------------------
    @staticmethod
    def _drop(scores: torch.Tensor, alive: torch.Tensor, n_drop: int) -> torch.Tensor:
        """``alive`` less its ``n_drop`` lowest-scoring members (ties: the lower index goes first)."""
        keep = alive.clone()
        if n_drop <= 0:
            return keep
        order = torch.argsort(torch.where(alive, scores, torch.full_like(scores, float("inf"))), stable=True)
        keep[order[:n_drop]] = False
        return keep

    def _prune_neurons(self, mlp, keep: torch.Tensor) -> None:
        b = self.binding
        for spec in mlp.inputs:
            self.masks.update_piece(b, spec, keep.to(b.parameter(spec.tensor).device)[:, None])
            if b.bias_name(spec) is not None:
                self.masks.update_piece(b, spec, keep.to(b.parameter(spec.tensor).device), bias=True)
        self.masks.update_piece(b, mlp.out, keep.to(b.parameter(mlp.out.tensor).device)[None, :])

    def _prune_heads(self, layer, keep: torch.Tensor) -> None:
        b, hd = self.binding, layer.head_dim
        kv = layer.n_kv_heads or layer.n_heads
        keep_kv = keep.reshape(kv, -1).any(dim=1)
        device = b.parameter(layer.q.tensor).device
        for spec, k in ((layer.q, keep), (layer.k, keep_kv), (layer.v, keep_kv)):
            self.masks.update_piece(b, spec, _rows(k, hd).to(device))
            if b.bias_name(spec) is not None:
                self.masks.update_piece(b, spec, _rows(k, hd)[:, 0].to(device), bias=True)
        self.masks.update_piece(b, layer.o, _rows(keep, hd)[:, 0][None, :].to(device))
        gone = tuple(int(h) for h in torch.nonzero(~keep).flatten())
        self.removed[layer.key] = tuple(sorted(set(self.removed.get(layer.key, ())) | set(gone)))

    def apply(self, step: int) -> bool:
        """Prune to the scheduled shares at ``step``; True when a mask changed."""
        changed = False
        if self._neurons is not None:
            share = self._neurons(step)
            for mlp in self.mlps:
                alive = self.neuron_alive(mlp).cpu()
                n_drop = int(round(share * mlp.width)) - int((~alive).sum())
                if n_drop > 0:
                    self._prune_neurons(mlp, self._drop(self.neuron_scores(mlp), alive, n_drop))
                    changed = True
        if self._heads is not None:
            share = self._heads(step)
            for layer in self.layers:
                alive = self.head_alive(layer).cpu()
                n, kv = layer.n_heads, layer.n_kv_heads or layer.n_heads
                group = n // kv
                scores = self.head_scores(layer)
                keep = alive.clone()
                if group > 1:  # the same number from every key/value group
                    per_group = min(group - 1, int(round(share * group)))
                    for g in range(kv):
                        sl = slice(g * group, (g + 1) * group)
                        keep[sl] = self._drop(scores[sl], alive[sl], per_group - int((~alive[sl]).sum()))
                else:
                    keep = self._drop(scores, alive, min(n - 1, int(round(share * n))) - int((~alive).sum()))
                if bool((keep != alive).any()):
                    self._prune_heads(layer, keep)
                    changed = True
        return changed
