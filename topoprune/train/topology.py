"""Topology of a model while it trains: the analysis code, summarised into a few scalars.

:func:`topology_snapshot` runs :func:`topoprune.graph.analysis.analyze` on the live module with
NeuroPrune's notion of an edge (``|w| >= eps``, the same graph code the trainer's
attachment scores come from) and reduces the per-matrix table to scalars per component
(``mlp``, ``attention``): sparsity, degree sd and fractional-connectivity sd (the paper's
"connectivity sd"), Gini, dead-neuron share, power-law alpha and the share of
``power_law`` verdicts, and the modularity of the MLP graphs. :class:`TopologyHistory`
collects snapshots and writes ``topology_history.csv``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..graph.analysis import analyze
from ..graph.config import AnalysisConfig, GraphConfig
from ..graph.roles import ATTENTION_ROLES, MLP_ROLES
from .penalties import EPSILON

log = logging.getLogger(__name__)

#: Metrics per component in a snapshot, named ``<component>/<metric>``.
SNAPSHOT_METRICS = ("sparsity", "in_sd", "in_conn_sd", "in_gini", "in_dead", "out_dead", "in_alpha",
                    "power_law_share", "modularity")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP / accelerate wrappers
        model = model.module
    return model


def topology_snapshot(model: torch.nn.Module, *, eps: float = EPSILON, fits: bool = True, modularity: bool = True,
                      heads_remaining: dict | None = None, seed: int = 0) -> dict:
    """Scalars describing the current topology of ``model``'s attention and MLP matrices.

    Parameters
    ----------
    model : nn.Module
        The model being trained (wrappers such as DDP are unwrapped).
    eps : float
        Edges are weights with ``|w| >= eps`` (NeuroPrune's epsilon, :data:`~topoprune.train.penalties.EPSILON`).
    fits, modularity : bool
        Power-law fits of the in-degrees; Leiden modularity of the MLP matrix graphs.
    heads_remaining : dict, optional
        ``{layer: n_heads_left}``; adds ``heads/remaining`` (their sum).

    Returns
    -------
    dict
        ``{"mlp/sparsity": ..., "attention/in_conn_sd": ..., ...}``: see
        :data:`SNAPSHOT_METRICS`; components absent from the model are left out.
    """
    from ..graph.config import ModularityConfig

    config = AnalysisConfig(graph=GraphConfig(threshold=eps, mode="threshold"), fits=fits,
                            matrix_modularity=modularity, modularity=ModularityConfig(seed=seed),
                            roles=ATTENTION_ROLES + MLP_ROLES, n_jobs=1, pattern_size=0)
    with torch.no_grad():
        df = analyze(_unwrap(model), config=config)
    return summarize_topology(df, heads_remaining)


def summarize_topology(df: pd.DataFrame, heads_remaining: dict | None = None) -> dict:
    """Reduce an :func:`~topoprune.analyze` table to the scalars of :func:`topology_snapshot`."""
    out: dict = {}
    for component in ("mlp", "attention"):
        sub = df[(df["component"] == component) & (df["status"].isin(["ok", "all_zero"]))]
        if sub.empty:
            continue
        entries = (sub["n_out"] * sub["n_in"]).astype(float)
        out[f"{component}/sparsity"] = float(1 - sub["n_edges"].fillna(0).sum() / entries.sum())
        for col in ("in_sd", "in_conn_sd", "in_gini", "in_dead", "out_dead", "in_alpha"):
            out[f"{component}/{col}"] = float(pd.to_numeric(sub[col], errors="coerce").mean())
        out[f"{component}/power_law_share"] = float((sub["in_verdict"] == "power_law").mean())
        if component == "mlp":
            out["mlp/modularity"] = float(pd.to_numeric(sub["modularity"], errors="coerce").mean())
    if heads_remaining:
        out["heads/remaining"] = int(sum(heads_remaining.values()))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def _both_nan(a, b) -> bool:
    return isinstance(a, float) and isinstance(b, float) and a != a and b != b


class TopologyHistory:
    """Snapshots over training: one row per ``(step, epoch)``; writes ``topology_history.csv``."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, step: int, epoch: float | None, metrics: dict) -> None:
        self.rows.append({"step": int(step), "epoch": epoch, **metrics})

    def update(self, step: int, metrics: dict) -> dict:
        """Complete the snapshot of ``step`` with ``metrics``; return the entries that changed."""
        for row in reversed(self.rows):
            if row["step"] == int(step):
                changed = {k: v for k, v in metrics.items() if row.get(k) != v and not _both_nan(row.get(k), v)}
                row.update(metrics)
                return changed
        return {}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def load(self, path) -> None:
        """Replace the rows by those of a CSV written by :meth:`save` (missing values become ``None``)."""
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:  # saved before the first snapshot
            frame = pd.DataFrame()
        self.rows = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                     for row in frame.to_dict(orient="records")]
        for row in self.rows:
            row["step"] = int(row["step"])

    def save(self, path) -> Path:
        from ..io import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            self.frame().to_csv(tmp, index=False)
        return path
