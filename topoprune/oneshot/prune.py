r"""One-shot, training-free pruning of causal LMs: magnitude/Wanda scores with uniform, OWL or NeuroAL allocation.

:func:`prune` works block by block on calibration windows (:mod:`topoprune.oneshot.calibration`):

1. **allocation** -- how much to prune in each block and row (:mod:`topoprune.oneshot.allocation`):

   * ``uniform``: every layer at the target sparsity :math:`s`;
   * ``owl``: per-block outlier ratios of the dense model, Yin et al. (ICML 2024);
   * ``neuroal``: Cunegatti, Custode & Iacca, "Zeroth-Order Adaptive Neuron Alignment Based
     Pruning without Re-Training" (TMLR 2025, arXiv 2411.07066). The **block step** tries
     each :math:`\lambda` of a grid for the ramp :math:`s_b = s - \lambda + 2\lambda b/(L-1)`;
     the **row step** tries each :math:`\lambda` for the per-row allocation driven by the
     activation drop :math:`d_j` credited to row :math:`j`. Each candidate prunes the whole
     stack on sparse-propagated inputs (block :math:`b` sees the output of the already
     pruned blocks :math:`0..b-1`) and is scored by the summed neuron misalignment
     :math:`\sum_\ell NA(\ell)` of every linear layer's input statistic; the smallest wins.

2. **final pass** -- sequential pruning on the (larger) calibration set: each block's input
   statistics are measured on the output of the already pruned blocks, its layers are
   masked with the base pruner's scores at the allocated ratios, and its pruned output feeds
   the next block.

Row step producer -> consumer map (the drop measured at the consumer's input features is
credited to the producer's output rows): q/k/v <- o input; o <- MLP input (gate/up/fc1);
gate/up/fc1 <- down/fc2 input; down/fc2 <- the next block's q/k/v input.

Choices where the NeuroAL paper (arXiv 2411.07066) is silent or where we differ from its
authors' code (each a parameter of :class:`~topoprune.oneshot.config.OneShotConfig`; the values of
the ``"topoprune"`` setting):

* ``gqa_rows="mean"``: with grouped-query attention, k/v rows get the drop averaged over the
  query heads sharing them (the original keeps the block ratio for Mistral's q/k/v);
* ``down_rows="block_output"``: the MLP output projection's rows get the drop of the block's
  own output statistic (the residual features they write). The paper's code credits them with
  the drop at the next block's first layer, but that layer sees the same input in the dense
  and the sparse run of its block, so the drop is zero and they fall back to the block ratio
  (and the last block has no next block). Every fallback is reported in
  :attr:`OneShotResult.fallbacks` (the original is silent);
* ``group="auto"``: magnitude compares within the whole layer (the usual baseline), Wanda
  within each row; row-step allocations always compare within rows;
* ``rebalance=True``: clipped allocations are shifted back to the exact target (see
  :mod:`topoprune.oneshot.allocation`); ties are broken by index, so runs are deterministic;
* search windows are the first ``n_search`` of the calibration windows (the paper uses
  8 x 2048 tokens for the search and 128 x 2048 for the final pass; the CPU defaults here
  are 8 x 512 and 64 x 512).

Named settings (:data:`topoprune.oneshot.config.SETTINGS`, :meth:`OneShotConfig.preset`): ``"topoprune"`` (the knobs
above) and ``"authors"``: ``down_rows="next_input"``, ``group="row"`` in the search and the final
pass, no rebalancing (their code's other fallbacks are not part of it). The defaults are the
setting with the lower held-out perplexity, :data:`topoprune.oneshot.config.DEFAULT_SETTING`.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from . import allocation as al
from ..graph.binding import Linear, Stack, piece_mask
from .calibration import Chunk, capture_inputs, find_blocks, run_block
from .config import OneShotConfig
from ..errors import TensorError
from ..graph.bipartite import row_top_k_mask, top_k_mask
from ..graph.masks import MaskSet

log = logging.getLogger(__name__)

#: Key prefix of a block's output statistic drop in the ``diffs`` of a candidate evaluation.
BLOCK_OUTPUT = "block-output:"
_CONSUMER = {"q": ("o",), "k": ("o",), "v": ("o",), "o": ("mlp_gate", "mlp_in", "mlp_up"),
             "mlp_gate": ("mlp_out",), "mlp_up": ("mlp_out",), "mlp_in": ("mlp_out",)}


@dataclass
class OneShotResult:
    """What :func:`prune` did: masks, allocation, chosen λ and the measured sparsities."""

    masks: MaskSet
    block_sparsity: list[float]
    layers: list[dict]
    sparsity: float
    lambda_block: float | None = None
    lambda_row: float | None = None
    search: dict = field(default_factory=dict)
    fallbacks: dict = field(default_factory=dict)
    outlier_ratios: list[float] | None = None
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the masks, as plain JSON-ready values."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "masks"}


# ----------------------------------------------------------------------------- masks
def _scores(lin: Linear, act: torch.Tensor | None, method: str) -> torch.Tensor:
    return al.magnitude_scores(lin.weight) if method == "magnitude" else al.wanda_scores(lin.weight, act)


def layer_mask(scores: torch.Tensor, row_sparsity, group: str = "row") -> torch.Tensor:
    """Keep-mask [out, in] for per-row sparsities (a scalar: the same for every row).

    ``group="layer"`` with a scalar ranks the whole layer; otherwise each row keeps its
    :func:`~topoprune.oneshot.allocation.keep_counts` share. Exactly ``round(density * numel)``
    entries are kept either way; ties go to the lowest index.
    """
    out, n_in = scores.shape
    rows = np.broadcast_to(np.asarray(row_sparsity, float), (out,))
    if group == "layer" and np.ndim(row_sparsity) == 0:
        k = int(round((1.0 - float(row_sparsity)) * out * n_in))
        return top_k_mask(scores.reshape(-1).float().cpu(), k).reshape(out, n_in).to(scores.device)
    return row_top_k_mask(scores, al.keep_counts(rows, n_in))


def _apply(lin: Linear, mask: torch.Tensor) -> None:
    lin.write(lin.weight * mask.to(lin.weight.device, lin.weight.dtype))


def _plan_of(b: int, lin: Linear, block_s, rows: dict | None):
    if rows is not None and lin.name in rows:
        return rows[lin.name]
    return float(block_s[b])


# ----------------------------------------------------------------------------- row-step drops
def row_drops(blocks: Stack, diffs: dict[str, torch.Tensor], gqa_rows: str = "mean",
              down_rows: str = "block_output"):
    """Per-row activation drops :math:`d_j` for every producer layer, and the layers that fall back.

    Returns ``(drops, fallbacks)``: ``drops[name]`` is a float64 array of the layer's output
    rows; ``fallbacks[name]`` says why a layer keeps its block ratio.
    """
    drops, fallbacks = {}, {}
    for b, lins in enumerate(blocks.linears):
        by_role: dict[str, Linear] = {}
        for lin in lins:
            by_role.setdefault(lin.role, lin)
        nxt = blocks.linears[b + 1] if b + 1 < len(blocks.linears) else []
        for lin in lins:
            if lin.role == "mlp_out" and down_rows == "block_output" and f"{BLOCK_OUTPUT}{b}" in diffs:
                consumer = f"{BLOCK_OUTPUT}{b}"
                why = ""
            elif lin.role == "mlp_out":
                consumer = next((n.name for n in nxt if set(n.roles) & {"q", "k", "v"}), None)
                why = "no consumer (last block)" if not nxt else "no attention input in the next block"
            elif lin.fused:
                consumer, why = None, "fused projection"
            else:
                consumer = next((by_role[r].name for r in _CONSUMER.get(lin.role, ()) if r in by_role), None)
                why = f"no consumer for role {lin.role!r}"
            if consumer is None:
                fallbacks[lin.name] = why
                continue
            d = diffs[consumer].double()
            rows = lin.weight.shape[0]
            if not bool(d.any()):
                fallbacks[lin.name] = f"all-zero alignment vector at {consumer}"
            elif d.numel() == rows:
                drops[lin.name] = d.cpu().numpy()
            elif lin.role in ("k", "v") and lin.n_kv_heads and lin.n_heads % lin.n_kv_heads == 0 \
                    and d.numel() == lin.n_heads * lin.head_dim and rows == lin.n_kv_heads * lin.head_dim:
                if gqa_rows == "mean":  # head h reads kv head h // (n_heads / n_kv)
                    g = d.reshape(lin.n_kv_heads, lin.n_heads // lin.n_kv_heads, lin.head_dim).mean(1)
                    drops[lin.name] = g.reshape(-1).cpu().numpy()
                else:
                    fallbacks[lin.name] = "grouped-query k/v (gqa_rows='block')"
            else:
                fallbacks[lin.name] = f"{d.numel()} consumer features for {rows} rows"
    return drops, fallbacks


def _row_plan(blocks: Stack, block_s, drops: dict, lam: float, cfg: OneShotConfig) -> dict:
    lo, hi = cfg.clip
    plan = {}
    for b, lins in enumerate(blocks.linears):
        for lin in lins:
            if lin.name in drops:
                plan[lin.name] = al.row_sparsities(drops[lin.name], float(block_s[b]), lam, lo=lo, hi=hi,
                                                   rebalance_mean=cfg.rebalance)
    return plan


# ----------------------------------------------------------------------------- passes
def _evaluate(blocks: Stack, chunks: list[Chunk], block_s, rows: dict | None, cfg: OneShotConfig):
    """Prune a candidate on sparse-propagated inputs, restore the weights; return ``(sum NA, diffs)``."""
    total, diffs, x = 0.0, {}, chunks
    for b, layer in enumerate(blocks.layers):
        lins = blocks.linears[b]
        _, dense, out_dense = run_block(layer, x, lins, keep_outputs=False, output_norm=True)
        saved = [lin.weight.detach().clone() for lin in lins]
        try:
            for lin in lins:
                plan = _plan_of(b, lin, block_s, rows)
                _apply(lin, layer_mask(_scores(lin, dense[lin.name], cfg.method), plan,
                                       cfg.comparison if np.ndim(plan) == 0 else "row"))
            x, sparse, out_sparse = run_block(layer, x, lins, output_norm=True)
        finally:
            for lin, w in zip(lins, saved):
                lin.write(w)
        for lin in lins:
            total += al.alignment(dense[lin.name], sparse[lin.name])
            diffs[lin.name] = dense[lin.name] - sparse[lin.name]
        diffs[f"{BLOCK_OUTPUT}{b}"] = out_dense - out_sparse
    return total, diffs


def _outlier_ratios(blocks: Stack, chunks: list[Chunk], m: float) -> list[float]:
    ratios, x = [], chunks
    for b, layer in enumerate(blocks.layers):
        x, stats, _ = run_block(layer, x, blocks.linears[b])
        ratios.append(al.outlier_ratio([al.wanda_scores(lin.weight, stats[lin.name]) for lin in blocks.linears[b]], m))
    return ratios


def _search(blocks, chunks, grid, make, cfg, desc, progress, known=None):
    from tqdm.auto import tqdm

    trace, best = [], None
    for lam in tqdm(grid, desc=desc, unit="λ", disable=not progress, leave=False):
        if known is not None and lam == known[0]:
            total, diffs = known[1], known[2]
        else:
            total, diffs = _evaluate(blocks, chunks, *make(lam), cfg)
        trace.append((float(lam), float(total)))
        log.debug("%s λ=%.2f: NA %.6g", desc, lam, total)
        if best is None or total < best[1]:  # strict: the smaller λ wins ties
            best = (float(lam), float(total), diffs)
    return best, trace


def _check_weights(blocks: Stack) -> None:
    for lin in blocks.all():
        if not bool(torch.isfinite(lin.weight).all()):
            raise TensorError(f"{lin.param}: weight contains NaN or Inf")


def prune(model: torch.nn.Module, windows: torch.Tensor, config: OneShotConfig, *,
          progress: bool = False) -> OneShotResult:
    """Prune ``model`` in place; ``windows`` [n, seq] are the calibration token ids.

    Returns
    -------
    OneShotResult
        Masks by parameter name (True keeps), the block allocation, chosen λ values, the
        search traces (λ, objective) and the measured sparsity of every layer.
    """
    from tqdm.auto import tqdm

    cfg, seconds, t0 = config, {}, time.perf_counter()
    blocks = find_blocks(model)
    _check_weights(blocks)
    model.eval()
    n_blocks = len(blocks)
    weights = [sum(lin.weight.numel() for lin in lins) for lins in blocks.linears]
    lo, hi = cfg.clip
    block_s = al.uniform(cfg.sparsity, n_blocks)
    rows, lam_b, lam_r, search, fallbacks, ratios = None, None, None, {}, {}, None
    if cfg.allocation == "owl":
        chunks = capture_inputs(model, blocks, windows, cfg.batch_size)
        ratios = _outlier_ratios(blocks, chunks, cfg.owl_m)
        block_s = al.owl(ratios, cfg.sparsity, cfg.owl_lambda, lo=lo, hi=hi, weights=weights,
                         rebalance_mean=cfg.rebalance)
        seconds["owl"] = time.perf_counter() - t0
        del chunks
    elif cfg.allocation == "neuroal":
        chunks = capture_inputs(model, blocks, windows[:cfg.n_search], cfg.batch_size)
        if cfg.neuroal_steps in ("both", "block"):
            (lam_b, na_b, diffs), search["block"] = _search(
                blocks, chunks, cfg.blocks_grid, lambda lam: (al.block_ramp(
                    cfg.sparsity, n_blocks, lam, lo=lo, hi=hi, weights=weights, rebalance_mean=cfg.rebalance), None),
                cfg, "NeuroAL block step", progress)
            block_s = al.block_ramp(cfg.sparsity, n_blocks, lam_b, lo=lo, hi=hi, weights=weights,
                                    rebalance_mean=cfg.rebalance)
            log.info("NeuroAL block step: λ=%.2f (objective %.6g)", lam_b, na_b)
        else:
            na_b, diffs = _evaluate(blocks, chunks, block_s, None, cfg)
        seconds["block_step"] = time.perf_counter() - t0
        if cfg.neuroal_steps in ("both", "row"):
            drops, fallbacks = row_drops(blocks, diffs, cfg.gqa_rows, cfg.down_rows)
            (lam_r, na_r, _), search["row"] = _search(
                blocks, chunks, cfg.row_grid, lambda lam: (block_s, _row_plan(blocks, block_s, drops, lam, cfg)),
                cfg, "NeuroAL row step", progress, known=(0.0, na_b, diffs))
            rows = _row_plan(blocks, block_s, drops, lam_r, cfg) if lam_r > 0 else None
            log.info("NeuroAL row step: λ=%.2f (objective %.6g); %d layers keep their block ratio",
                     lam_r, na_r, len(fallbacks))
            seconds["row_step"] = time.perf_counter() - t0 - seconds["block_step"]
        del chunks
    t1 = time.perf_counter()
    masks, layers = MaskSet(), []
    x = capture_inputs(model, blocks, windows, cfg.batch_size)
    for b, layer in enumerate(tqdm(blocks.layers, desc=f"{cfg.method} pruning", unit="block", disable=not progress,
                                   leave=False)):
        lins = blocks.linears[b]
        stats = run_block(layer, x, lins, keep_outputs=False)[1] if cfg.method == "wanda" else None
        for lin in lins:
            plan = _plan_of(b, lin, block_s, rows)
            mask = layer_mask(_scores(lin, (stats or {}).get(lin.name), cfg.method), plan,
                              cfg.comparison if np.ndim(plan) == 0 else "row")
            _apply(lin, mask)
            transposed = lin.transpose
            masks.masks[lin.param] = piece_mask(lin.module.weight, lin, mask).cpu()  # in the stored layout
            kept = int(mask.sum())
            layers.append({"name": lin.param, "block": b, "role": lin.role, "transposed": transposed,
                           "numel": mask.numel(), "kept": kept,
                           "sparsity": 1 - kept / mask.numel(), "target": float(np.mean(plan)),
                           "rows": "row step" if np.ndim(plan) else "block ratio"})
        if b + 1 < n_blocks:
            x, _, _ = run_block(layer, x)
    seconds["final_pass"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    total = sum(r["numel"] for r in layers)
    sparsity = 1 - sum(r["kept"] for r in layers) / total
    log.info("%s/%s: sparsity %.4f over %d layers in %.1f s", cfg.method, cfg.allocation, sparsity, len(layers),
             seconds["total"])
    return OneShotResult(masks, [float(s) for s in block_s], layers, sparsity, lam_b, lam_r,
                         {k: v for k, v in search.items()}, fallbacks, ratios, seconds)
