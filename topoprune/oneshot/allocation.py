r"""How much to prune where: sparsity allocations and base-pruner scores for one-shot pruning.

Pure functions on tensors and arrays (no model, no hooks); :mod:`topoprune.oneshot.prune` drives
them block by block. A higher score means *keep*.

Scores (W is a layer's weight ``[out, in]``, ``a`` its input statistic, length ``in``):

* magnitude: :math:`S_{ij} = |W_{ij}|`;
* Wanda (Sun et al. 2024, arXiv 2306.11695): :math:`S_{ij} = |W_{ij}|\,a_j` with
  :math:`a_j = \sqrt{\sum_{\text{tokens}} x_j^2 / n_\text{samples}}`, compared within each
  output row.

Allocations of a global sparsity :math:`s` over :math:`L` blocks:

* uniform: every layer at :math:`s`;
* OWL (Yin et al., ICML 2024, arXiv 2310.05175): block outlier ratio
  :math:`D_b` = share of the block's entries with :math:`S > M\,\overline{S}` (:math:`M = 5`),
  min-max scaled into a band of width :math:`2\lambda` (:math:`\lambda = 0.08`); more
  outliers, lower sparsity;
* NeuroAL block step (Cunegatti et al., TMLR 2025, arXiv 2411.07066):
  :math:`s_b = \operatorname{clip}(s - \lambda + 2\lambda\,b/(L-1),\ 0.01,\ 0.99)`;
* NeuroAL row step: :math:`x_j = 2\lambda\,\operatorname{minmax}(d_j)`,
  :math:`\rho_j = x_j - \bar x + (1 - s_\ell)`, :math:`s_j = \operatorname{clip}(1-\rho_j)`, where
  :math:`d_j` is the activation drop credited to output row :math:`j`;
* neuron alignment: :math:`NA = \lVert a^d/\sum a^d - a^s/\sum a^s\rVert_2 / n`.

Choice beyond the papers (parameter ``rebalance``, default on): clipping moves the mean
sparsity off target; with ``rebalance`` a common shift :math:`c` is found by bisection so
that :math:`\sum_i w_i \operatorname{clip}(v_i + c) = s \sum_i w_i` holds again (it changes
nothing when no value is clipped, so the paper's formulas are reproduced exactly there).
Keep counts are then rounded by largest remainder so each layer keeps exactly
``round(density * numel)`` entries.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError, TensorError

#: NeuroAL block-step λ grid (0.25 is dropped when the target sparsity is >= 0.8).
BLOCK_GRID = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12, 0.15, 0.20, 0.25)
#: NeuroAL row-step λ grid (0 reproduces the block solution).
ROW_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12, 0.15, 0.20, 0.25)


def block_grid(sparsity: float) -> tuple[float, ...]:
    """The block-step grid for ``sparsity`` (13 values at >= 0.8, else 14)."""
    return BLOCK_GRID[:-1] if sparsity >= 0.8 else BLOCK_GRID


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """``sparsity`` as a float in the open interval (0, 1), else :class:`ConfigError`."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0 \
            or not math.isfinite(sparsity):
        raise ConfigError(f"{name} must be in (0, 1), got {sparsity!r}")
    return float(sparsity)


# ----------------------------------------------------------------------------- scores
def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """:math:`|W|`, float32, shape [out, in]."""
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Wanda's :math:`|W_{ij}|\\,a_j`, float32, shape [out, in]; ``act`` has shape [in]."""
    if act.ndim != 1 or act.shape[0] != weight.shape[1]:
        raise TensorError(f"activation statistic of length {tuple(act.shape)} does not match weight "
                          f"{tuple(weight.shape)}")
    return weight.detach().abs().float() * act.float()[None, :]


def activation_norm(sum_sq: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Wanda's input statistic :math:`a_j = \\sqrt{\\sum x_j^2 / n_\\text{samples}}` from the summed squares."""
    if n_samples <= 0:
        raise ConfigError("no calibration samples were seen")
    return torch.sqrt(sum_sq.double() / n_samples).float()


def outlier_ratio(scores: list[torch.Tensor], m: float = 5.0) -> float:
    """OWL's layerwise outlier distribution of one block: share of entries above ``m`` times the mean.

    The mean is taken over all entries of the block's layers together (``scores`` is the list
    of their score matrices).
    """
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.double().sum()) for s in scores) / total
    return sum(int((s > m * mean).sum()) for s in scores) / total


# ----------------------------------------------------------------------------- allocations
def rebalance(values, weights, target: float, lo: float = 0.01, hi: float = 0.99) -> np.ndarray:
    """Shift ``values`` by one constant so the ``weights``-weighted mean of the clipped values is ``target``.

    Returns ``clip(values + c, lo, hi)`` with ``c`` found by bisection (60 halvings). Values
    that need no clipping come back unchanged up to float rounding.
    """
    v, w = np.asarray(values, float), np.asarray(weights, float)
    if not lo <= target <= hi:
        raise ConfigError(f"target {target} is outside the clip bounds [{lo}, {hi}]")

    def mean_at(c):
        return float((w * np.clip(v + c, lo, hi)).sum() / w.sum())

    if abs(mean_at(0.0) - target) < 1e-12:
        return np.clip(v, lo, hi)
    a, b = lo - v.max(), hi - v.min()
    for _ in range(60):
        mid = 0.5 * (a + b)
        a, b = (mid, b) if mean_at(mid) < target else (a, mid)
    return np.clip(v + 0.5 * (a + b), lo, hi)


def uniform(sparsity: float, n_blocks: int) -> np.ndarray:
    """Every block at ``sparsity``."""
    return np.full(n_blocks, check_sparsity(sparsity))


def block_ramp(sparsity: float, n_blocks: int, lam: float, *, lo: float = 0.01, hi: float = 0.99,
               weights=None, rebalance_mean: bool = True) -> np.ndarray:
    """NeuroAL's block step: a linear ramp over depth, first block densest.

    :math:`s_b = \\operatorname{clip}(s - \\lambda + 2\\lambda\\,b/(L-1), lo, hi)`; ``weights``
    (parameters per block, default equal) enter only the rebalancing after clipping.
    """
    s = check_sparsity(sparsity)
    if lam < 0:
        raise ConfigError(f"lambda must be >= 0, got {lam}")
    b = np.arange(n_blocks, dtype=float)
    raw = s - lam + 2 * lam * b / max(1, n_blocks - 1) if n_blocks > 1 else np.full(1, s)
    w = np.ones(n_blocks) if weights is None else np.asarray(weights, float)
    return rebalance(raw, w, s, lo, hi) if rebalance_mean else np.clip(raw, lo, hi)


def owl(outlier_ratios, sparsity: float, lam: float = 0.08, *, lo: float = 0.01, hi: float = 0.99, weights=None,
        rebalance_mean: bool = True) -> np.ndarray:
    """OWL's block sparsities: outlier ratios min-max scaled to ``[0, 2 lam]`` as densities around ``1 - s``."""
    s = check_sparsity(sparsity)
    r = np.asarray(outlier_ratios, float)
    span = r.max() - r.min()
    x = (r - r.min()) / span * 2 * lam if span > 0 else np.zeros_like(r)
    raw = 1.0 - (x - x.mean() + (1.0 - s))
    w = np.ones(len(r)) if weights is None else np.asarray(weights, float)
    return rebalance(raw, w, s, lo, hi) if rebalance_mean else np.clip(raw, lo, hi)


def row_sparsities(drop, layer_sparsity: float, lam: float, *, lo: float = 0.01, hi: float = 0.99,
                   rebalance_mean: bool = True) -> np.ndarray:
    """NeuroAL's row step for one producer layer: rows that lost more activation keep more weights.

    ``drop`` (length ``out``) is :math:`d_j`, the dense minus sparse activation statistic at the
    consumer's input feature written by row :math:`j`. ``lam = 0`` (or a constant drop) returns
    ``layer_sparsity`` for every row.
    """
    d = np.asarray(drop, float)
    span = d.max() - d.min() if d.size else 0.0
    x = (d - d.min()) / span * 2 * lam if span > 0 and lam > 0 else np.zeros_like(d)
    raw = 1.0 - (x - x.mean() + (1.0 - layer_sparsity))
    return rebalance(raw, np.ones_like(raw), layer_sparsity, lo, hi) if rebalance_mean else np.clip(raw, lo, hi)


def keep_counts(row_sparsity, n_in: int, total_keep: int | None = None) -> np.ndarray:
    """Integer entries to keep per row, summing exactly to ``total_keep``.

    ``total_keep`` defaults to ``round(sum((1 - s_j) * n_in))``. Largest-remainder rounding;
    among equal remainders the lower row index gets the extra entry.
    """
    want = (1.0 - np.asarray(row_sparsity, float)) * n_in
    total = int(round(float(want.sum()))) if total_keep is None else int(total_keep)
    base = np.floor(want).astype(np.int64)
    extra = total - int(base.sum())
    if extra > 0:
        order = np.argsort(-(want - base), kind="stable")
        base[order[:extra]] += 1
    elif extra < 0:
        order = np.argsort(want - base, kind="stable")
        base[order[:-extra]] -= 1
    return np.clip(base, 0, n_in)


def alignment(dense: torch.Tensor, sparse: torch.Tensor) -> float:
    """Neuron misalignment of one layer: :math:`\\lVert a^d/\\sum a^d - a^s/\\sum a^s\\rVert_2 / n`.

    Zero for identical statistics. A statistic that sums to zero is compared as all zeros.
    """
    if dense.shape != sparse.shape or dense.ndim != 1:
        raise TensorError(f"alignment needs two vectors of one length, got {tuple(dense.shape)} and "
                          f"{tuple(sparse.shape)}")
    d, s = dense.double(), sparse.double()
    d = d / d.sum() if float(d.sum()) != 0 else d
    s = s / s.sum() if float(s.sum()) != 0 else s
    return float(torch.linalg.vector_norm(d - s) / d.numel())
