r"""NeuroPrune sparse training for a plain PyTorch loop, with its baselines in the same harness.

Dhurandhar et al. 2024, "NeuroPrune: A Neuro-inspired Topological Sparse Training Algorithm
for Large Language Models", Findings of ACL, arXiv 2404.01306; its settings are
:class:`~topoprune.train.config.NeuroPruneConfig`.
The loss is :math:`\mathcal{L}_\text{task} + \alpha R_\text{mlp} + \beta R_\text{att}` with

* :math:`R_\text{mlp} = \sum_W \sum_i \lVert W_{i,:}\rVert_1 / c_i` over every MLP matrix
  (expand and contract), :math:`c_i` the fraction of row ``i`` with :math:`|w| \ge \varepsilon`
  (:func:`~topoprune.train.penalties.attachment_scores`), recounted on the weights' device after
  every optimiser step (``refresh_every``, default 1) and before every cut of the target schedule.
  In a gated MLP gate and up rows feed the same hidden neuron, so both get the score of the
  neuron's fan-in over ``cat([W_gate, W_up], 1)``, i.e. the mean of the two connectivities;
* :math:`R_\text{att} = \sum_\ell \sum_j (\sum_r |A^\ell_{rj}| + \delta)^{1/2}` with
  :math:`A^\ell = \operatorname{cat}(Q, K, V)` (:func:`~topoprune.train.penalties.attention_group_penalty`);

and redundant heads are removed by dominating set (:mod:`topoprune.train.heads`). Entries with
:math:`|w| < \varepsilon` are pruned for good (a :class:`~topoprune.graph.masks.MaskSet` only
shrinks). Weights are read and written through the model's
:class:`~topoprune.graph.binding.Binding`: fused q/k/v, gate/up and GPT-2 ``Conv1D`` tensors as
``[out, in]`` views keeping gradients.

**Paper mode** (``target=None``): sparsity is an outcome of :math:`\alpha, \beta, \theta`.
**Target mode**: the ``roles`` matrices follow a schedule (cubic by default) to exactly
``target`` at step ``end``, keeping the highest :math:`|w_{ij}|\,c_i` (hubs keep their edges).
Baselines share the harness: ``dense``, ``l1``, ``gmp`` (Zhu & Gupta 2017, arXiv 1710.01878), ``random``.

Hook order in a plain loop (``step`` counts optimiser steps taken, 1 after the first)::

    np_ = NeuroPrune(model, NeuroPruneConfig(...))
    for epoch in range(epochs):
        for batch in loader:
            loss = task_loss(model, batch) + np_.penalty()
            loss.backward()
            np_.before_optimizer_step(opt)       # grads of pruned entries -> 0
            opt.step()
            step += 1
            np_.after_optimizer_step(opt, step)  # update masks; weights and opt. state -> 0
            opt.zero_grad()
        np_.end_epoch(opt)                       # ELIM_REDUNDANT when head_pruning="epoch"

**Multi-process (DDP).** Masks are deterministic functions of the weights, which DDP keeps
identical on every rank (thresholds, stable-sorted top-k, seeded priorities), so no traffic is
needed per step. As a safeguard, under ``torch.distributed`` rank 0's masks are broadcast after
construction, schedule updates, head pruning, loading and every ``sync_every`` steps, and rank
0's head decisions are the ones every rank applies.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..graph.binding import Attention, Binding, canonical, piece_mask
from ..graph.masks import MaskSet, select_keep, sparsity_table
from ..graph.roles import MLP_ROLES, MatrixSpec
from .config import SPARSIFIABLE, NeuroPruneConfig
from .head_distance import layer_theta, live_head_params
from .heads import HeadPruningDecision, prune_model_heads
from .penalties import attachment_scores, attention_group_penalty, l1_penalty, preferential_attachment_penalty
from .schedules import get_schedule
from .proximal import prox_groups, prox_rows
from .structure import StructuredPruner

log = logging.getLogger(__name__)

MASK_FILE = "masks.safetensors"


class NeuroPrune:
    """NeuroPrune controller bound to a live model; see the module notes for the hook order.

    Parameters
    ----------
    model : torch.nn.Module
        Matrices recognised by :func:`topoprune.graph.roles.describe` (BERT, GPT-2, OPT, T5, LLaMA, ...).
    config : NeuroPruneConfig, optional

    Raises
    ------
    ConfigError
        No recognisable MLP or attention matrix; target mode with no matrix of ``roles``.

    Attributes
    ----------
    masks : MaskSet
    head_decisions : list of HeadPruningDecision
        Decisions that removed heads, in order (``replaced_by``: who replaced whom).
    step : int
    """

    def __init__(self, model: torch.nn.Module, config: NeuroPruneConfig | None = None):
        self.model, self.config = model, config or NeuroPruneConfig()
        cfg = self.config
        self.binding = Binding(model)
        self._bound = [s for s in self.binding.specs if s.role in SPARSIFIABLE]
        mlp = [s for s in self._bound if s.role in MLP_ROLES]
        self._layers: list[Attention] = [la for la in self.binding.attention if not la.cross]
        if not mlp and not self._layers:
            raise ConfigError(f"{type(model).__name__}: no recognisable MLP or attention matrices (NeuroPrune "
                              f"needs transformer blocks; roles found: "
                              f"{sorted({s.role for s in self.binding.layout.specs})})")
        sparse = [s for s in self._bound if s.role in cfg.roles]
        self._pa = [s for s in sparse if s.role in MLP_ROLES]
        penalised = cfg.method in ("neuroprune", "l1")
        self._scheduled = sparse if cfg.target is not None else []
        if cfg.target is not None and not sparse:
            raise ConfigError(f"target mode: no matrix with roles {cfg.roles} in {type(model).__name__}")
        thresholded = sparse if penalised and cfg.target is None else []
        if cfg.method != "dense" and cfg.attention_masks:  # every masked method alike: baselines too
            thresholded += [s for la in self._layers for s in la.qkv if s not in thresholded + self._scheduled]
        self._schedule = get_schedule(**cfg.schedule_config().to_dict()) if cfg.target is not None else None
        self.masks = MaskSet()
        self._region = {}  # parameter -> entries under the epsilon threshold (True)
        for s in thresholded:
            self._region[s.tensor] = piece_mask(self._p(s.tensor), s, True, self._region.get(s.tensor, False))
        for s in self._scheduled:
            self.masks.update(s.tensor, torch.ones_like(self._p(s.tensor), dtype=torch.bool))
        self.head_decisions: list[HeadPruningDecision] = []
        self._removed, self._scores, self._priorities, self.step = {}, {}, {}, 0  # layer->heads, name->c, name->rand
        self._refreshes, self._scores_step = 0, 0  # counts of c_i made, and the step of the last
        self._structure = None
        if cfg.neuron_target is not None or cfg.head_target is not None:
            self._structure = StructuredPruner(self.binding, self.masks, cfg, self._layers, self._removed)
        self._threshold()
        self.masks.broadcast(0)
        self.masks.apply_to_weights(model)
        self._refresh_scores()
        log.info("NeuroPrune(%s, target %s): %d MLP pieces, %d attention layers, %d parameters masked",
                 cfg.method, cfg.target, len(mlp), len(self._layers), len(self.masks))

    def _p(self, name: str) -> torch.nn.Parameter:
        return self.binding.parameter(name)

    def _w(self, s: MatrixSpec) -> torch.Tensor:
        """The ``[out, in]`` piece of the parameter: a view (or concatenation of views) with gradient."""
        return self.binding.weight(s)

    def penalty(self) -> torch.Tensor:
        r"""The regulariser to add to the task loss: a float32 scalar, differentiable in the weights.

        ``neuroprune``: :math:`\alpha \sum_W \sum_i \lVert W_{i,:}\rVert_1 / c_i + \beta
        \sum_\ell R_\text{att}(\ell)`; ``l1``: :math:`\alpha \sum |W_\text{mlp}| + \beta
        \sum |W_{qkv}|`; ``dense``, ``gmp``, ``random``, and every method with
        ``penalty_form="proximal"``: zero (no gradient).
        """
        cfg = self.config
        total = torch.zeros((), dtype=torch.float32, device=self._p(self._bound[0].tensor).device)
        alpha, beta, qkv = cfg.mlp_weight, cfg.attn_weight, [la.qkv for la in self._layers]
        if cfg.penalty_form == "proximal" or not self.penalties_active(self.step + 1):
            return total  # proximal: applied as proximal steps after the optimiser step
        if cfg.method == "neuroprune":
            if alpha and self._pa:
                total = total + alpha * sum(preferential_attachment_penalty(self._w(s), self._scores[s.name])
                                            for s in self._pa)
            if beta and qkv:
                total = total + beta * sum(attention_group_penalty(*map(self._w, t), cfg.delta) for t in qkv)
        elif cfg.method == "l1":
            if alpha and self._pa:
                total = total + alpha * sum(l1_penalty(self._w(s)) for s in self._pa)
            if beta and qkv:
                total = total + beta * sum(l1_penalty(self._w(s)) for t in qkv for s in t)
        return total

    def _refresh_scores(self) -> None:
        """Recount the attachment scores :math:`c_i` of the PA and target pieces on the weights'
        device (one pass over each); gate and up share theirs. Logged in :meth:`attachment_summary`."""
        if self.config.method != "neuroprune":
            return
        pieces = {s.name: s for s in self._pa + self._scheduled}
        gated = {(s.tensor.rsplit(".", 2)[0], s.role): s for s in pieces.values() if s.role in ("mlp_gate", "mlp_up")}
        with torch.no_grad():
            for s in pieces.values():
                pair = [gated.get((s.tensor.rsplit(".", 2)[0], r)) for r in ("mlp_gate", "mlp_up")]
                both = s.role in ("mlp_gate", "mlp_up") and None not in pair  # [d_e, 2d]: fan-in via gate and up
                w = [self._w(x).detach() for x in pair] if both else self._w(s).detach()
                self._scores[s.name] = attachment_scores(w, eps=self.config.eps)
        self._refreshes, self._scores_step = self._refreshes + 1, self.step

    def attachment_summary(self) -> dict:
        r"""What the attachment scores were when last counted: evidence that the term acted.

        Returns
        -------
        dict
            ``refreshes`` (counts made, the one at construction included), ``step`` (the step of
            the last count), and over every neuron of the scored pieces ``mean``, ``sd`` and
            ``min`` of :math:`c_i` (``pieces`` of them); at :math:`c_i = 1` for every neuron the
            weighted penalty is plain l1 and the keep-score plain magnitude. Empty unless
            ``method="neuroprune"``.
        """
        if not self._scores:
            return {}
        c = torch.cat([v.detach().float().reshape(-1).cpu() for v in self._scores.values()])  # [neurons]
        return {"refreshes": self._refreshes, "step": self._scores_step, "pieces": len(self._scores),
                "mean": float(c.mean()), "sd": float(c.std(unbiased=False)), "min": float(c.min())}

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the gradients of pruned entries (after ``backward``, before ``optimizer.step``)."""
        self.masks.apply_to_grads(self.model)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        r"""Update and re-apply the masks after ``optimizer.step()``; ``step`` counts steps taken.

        In order: prune thresholded entries now below :math:`\varepsilon`; in target mode cut
        the scheduled pieces to the schedule's sparsity at ``step``; in structured target mode
        prune whole neurons and heads to their scheduled shares; zero pruned weights and
        optimiser state; recount :math:`c_i` when ``step % refresh_every == 0`` (and, in target
        mode, before a cut, which ranks :math:`|w_{ij}|\,c_i`); prune heads
        when ``head_pruning="steps"`` and ``step % head_every_steps == 0``.
        """
        cfg, self.step, sched = self.config, int(step), self._schedule
        if cfg.penalty_form == "proximal" and optimizer is not None and self.penalties_active(self.step):
            self._proximal(optimizer)
        self._threshold()
        if sched is not None and cfg.method == "neuroprune" and sched(self.step) > sched(self.step - 1):
            self._refresh_scores()  # the cut ranks |w| c_i: c_i of the weights it cuts
        self._apply_schedule(self.step)  # sync on a function of the step alone, so every rank joins in:
        if self._structure is not None:
            self._structure.apply(self.step)
        updated = sched is not None and sched(self.step) != sched(self.step - 1)
        if updated or (self._structure is not None and self._structure.due(self.step)) \
                or (cfg.sync_every and self.step % cfg.sync_every == 0):
            self.masks.broadcast(0)
        self.masks.apply_to_weights(self.model)
        self.masks.apply_to_optimizer(optimizer, self.model)
        if self.step % cfg.refresh_every == 0:
            self._refresh_scores()
        self.maybe_prune_heads(self.step, optimizer)

    def penalties_active(self, step: int) -> bool:
        """Whether the penalties act on optimiser step ``step`` (1-based): in paper mode until ``end``."""
        cfg = self.config
        return cfg.scheduled or cfg.end is None or step <= cfg.end

    def _proximal(self, optimizer) -> None:
        """The penalties' proximal steps (:mod:`~topoprune.train.proximal`), after ``optimizer.step()``."""
        cfg = self.config
        if cfg.method not in ("neuroprune", "l1"):
            return
        pa = cfg.method == "neuroprune"
        if cfg.mlp_weight:
            for s in self._pa:
                prox_rows(self.binding, s, optimizer, cfg.mlp_weight, 1.0 / self._scores[s.name] if pa else None)
        if cfg.attn_weight:
            for la in self._layers:
                if pa:
                    prox_groups(self.binding, la.qkv, optimizer, cfg.attn_weight, cfg.delta)
                else:
                    for s in la.qkv:
                        prox_rows(self.binding, s, optimizer, cfg.attn_weight)

    def _threshold(self) -> None:
        with torch.no_grad():
            for name, region in self._region.items():
                self.masks.update(name, ~region | (self._p(name).abs() >= self.config.eps))

    def _apply_schedule(self, step: int) -> bool:
        """Cut each scheduled piece to exactly ``n - round(s_t n)`` kept entries; True if a mask changed."""
        if self._schedule is None:
            return False
        s_t, method, changed = self._schedule(step), self.config.method, False
        for i, s in enumerate(sorted(self._scheduled, key=lambda x: x.name)):
            w, allowed = self._w(s).detach(), canonical(self.masks.masks[s.tensor], s)
            n = w.numel()
            n_keep = n - int(round(s_t * n))  # exact count; select_keep gets n_keep / n and rounds back
            if int(allowed.sum()) <= n_keep:
                continue
            if method == "random":  # fixed priorities: masks are nested as the sparsity grows
                if s.name not in self._priorities:
                    gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + i)
                    self._priorities[s.name] = torch.rand(s.shape, generator=gen).to(w.device)
                keep = select_keep(self._priorities[s.name], n_keep / n, allowed=allowed)
            else:  # neuroprune: |w_ij| c_i; gmp and l1: |w_ij|
                keep = select_keep(w, n_keep / n, self._scores.get(s.name) if method == "neuroprune" else None,
                                   allowed=allowed)
            self.masks.update_piece(self.binding, s, keep)
            changed = True
        return changed

    def maybe_prune_heads(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> list:
        """:meth:`prune_heads` if ``head_pruning="steps"`` and ``step`` is a multiple of ``head_every_steps``."""
        cfg = self.config
        due = cfg.method == "neuroprune" and cfg.head_pruning == "steps" and step > 0
        return self.prune_heads(optimizer) if due and step % cfg.head_every_steps == 0 else []

    def end_epoch(self, optimizer: torch.optim.Optimizer | None = None) -> list:
        """:meth:`prune_heads` if ``head_pruning="epoch"`` (NeuroPrune's per-epoch ELIM_REDUNDANT)."""
        due = self.config.method == "neuroprune" and self.config.head_pruning == "epoch"
        return self.prune_heads(optimizer) if due else []

    def prune_heads(self, optimizer: torch.optim.Optimizer | None = None) -> list[HeadPruningDecision]:
        """ELIM_REDUNDANT on every self-attention layer (:func:`~topoprune.train.heads.prune_model_heads`).

        Removed heads' Q rows (K/V rows once a whole kv group is gone), bias entries and W_O
        columns are masked: they stay zero until physical removal. Weights and optimiser state
        are re-masked afterwards.

        Returns
        -------
        list of HeadPruningDecision
            The decisions of this call that removed heads (also appended to ``head_decisions``).
        """
        cfg, kw = self.config, dict(include_bias=self.config.head_include_bias, fold=self.config.head_fold)
        if cfg.theta_scale == "absolute":
            out = prune_model_heads(self.binding, self.masks, self._layers, self._removed, theta=cfg.theta, **kw)
        else:  # each layer its own threshold, theta times its scale (recorded in its decisions)
            out = [d for la in self._layers if la.has_heads for d in prune_model_heads(
                self.binding, self.masks, [la], self._removed, **kw, theta=layer_theta(
                    cfg.theta, cfg.theta_scale, live_head_params(self.binding, la, self._removed, kw["include_bias"])))]
        self.head_decisions.extend(out)
        self.masks.broadcast(0)
        self.masks.apply_to_weights(self.model)
        if optimizer is not None:
            self.masks.apply_to_optimizer(optimizer, self.model)
        log.info("head pruning at step %d: %d heads removed in %d layers", self.step,
                 sum(len(d.replaced_by) for d in out), len(out))
        return out

    def heads_remaining(self) -> dict[str, int]:
        """Heads left per attention layer (``{layer: n}``), after dominating-set pruning."""
        return {la.key: la.n_heads - len(self._removed.get(la.key, ())) for la in self._layers if la.n_heads}

    def heads_total(self) -> int:
        """Heads of every attention layer before any was pruned."""
        return sum(la.n_heads for la in self._layers if la.n_heads)

    def sparsity_report(self):
        r"""Achieved sparsity per matrix piece, per role and in total: a ``pandas.DataFrame``.

        Columns (:func:`~topoprune.graph.masks.sparsity_table`): ``level`` (``matrix``, ``role``,
        ``total``), ``name``, ``tensor``, ``role``, ``block``, ``side``, ``numel``, ``pruned``
        (masked entries), ``sparsity`` (pruned / numel), ``below_eps`` (share of
        :math:`|w| < \varepsilon` in the weights, masked or not: the two are kept apart),
        ``target`` (scheduled sparsity at ``step``, else NaN), ``method``, ``step``.
        """
        target = self._schedule(self.step) if self._schedule is not None else math.nan
        sched, rows = {s.name for s in self._scheduled}, []
        with torch.no_grad():
            for s in self._bound:
                w, m = self._w(s), self.masks.masks.get(s.tensor)
                rows.append(dict(name=s.name, tensor=s.tensor, role=s.role, block=s.block, side=s.side,
                                 numel=w.numel(), pruned=0 if m is None else int((~canonical(m, s)).sum()),
                                 below=int((w.abs() < self.config.eps).sum()), target=target if s.name in sched
                                 else math.nan))
        return sparsity_table(rows).assign(method=self.config.method, step=self.step)

    def state_dict(self) -> dict:
        """Masks, head decisions (as dicts), step, cached attachment scores and the config."""
        return {"masks": self.masks.state_dict(), "head_decisions": [d.to_dict() for d in self.head_decisions],
                "step": self.step, "scores": {k: v.clone() for k, v in self._scores.items()},
                "config": self.config.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output and zero the model's weights at pruned entries.

        Model weights and optimiser state are the caller's to restore first
        (``model.load_state_dict``, ``optimizer.load_state_dict``).
        """
        saved, now = dict(state.get("config") or {}), self.config.to_dict()
        if saved and saved != now:
            log.warning("restoring NeuroPrune state saved with another config (%s differ)",
                        ", ".join(sorted(k for k in saved if saved[k] != now.get(k))))
        params, masks = dict(self.model.named_parameters()), {}
        for name, m in state["masks"].items():
            if name not in params or tuple(params[name].shape) != tuple(m.shape):
                raise CheckpointError(f"mask {name!r} {tuple(m.shape)} matches no parameter of the model")
            masks[name] = m.to(params[name].device)
        self.masks.load_state_dict(masks)
        for s in self._scheduled:  # a state saved under another config may lack them
            self.masks.update(s.tensor, torch.ones_like(self._p(s.tensor), dtype=torch.bool))
        self.head_decisions = [HeadPruningDecision.from_dict(d) for d in state.get("head_decisions", [])]
        self._removed.clear()  # updated in place: the structured pruner shares it
        self._removed.update({d.layer: tuple(sorted({h for e in self.head_decisions if e.layer == d.layer
                                                     for h in e.replaced_by})) for d in self.head_decisions})
        if self._structure is not None:
            self._structure.restore()
        self.step = int(state.get("step", 0))
        for s in self._bound:
            if s.name in (state.get("scores") or {}):
                self._scores[s.name] = state["scores"][s.name].to(self._p(s.tensor).device, self._p(s.tensor).dtype)
        self.masks.broadcast(0)
        self.masks.apply_to_weights(self.model)

    def save(self, directory) -> Path:
        """Write ``directory/masks.safetensors`` (only rank 0 under ``torch.distributed``).

        Masks by parameter name, attachment scores as ``extra::score::<piece>`` and JSON
        metadata ``{"config", "step", "head_decisions"}`` (see :meth:`MaskSet.save`).
        """
        path, dist = Path(directory) / MASK_FILE, torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return path
        state = self.state_dict()
        meta = {k: state[k] for k in ("config", "step", "head_decisions")}
        return self.masks.save(path, meta, extra={f"score::{k}": v for k, v in state["scores"].items()})

    def load(self, directory, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore what :meth:`save` wrote (see :meth:`load_state_dict`); also zero ``optimizer``'s state."""
        path = Path(directory) / MASK_FILE if Path(directory).is_dir() else Path(directory)
        ms = MaskSet.load(path)
        if "step" not in ms.metadata:
            raise CheckpointError(f"{path}: not a NeuroPrune mask file (no step in its metadata)")
        scores = {k.removeprefix("score::"): v for k, v in ms.extra.items() if k.startswith("score::")}
        self.load_state_dict(dict(ms.metadata, masks=ms.masks, scores=scores))
        if optimizer is not None:
            self.masks.apply_to_optimizer(optimizer, self.model)
        log.info("restored %d masks, %d head decisions, step %d", len(self.masks), len(self.head_decisions), self.step)
