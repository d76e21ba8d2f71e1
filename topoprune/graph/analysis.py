"""``analyze(checkpoint) -> DataFrame``: one tidy row per weight matrix; ``summarize(df)``.

The pipeline streams the checkpoint one tensor at a time: load -> orient/split
(:mod:`~topoprune.graph.roles`) -> bipartite graph (:mod:`~topoprune.graph.bipartite`) -> degree statistics
and modularity (:mod:`~topoprune.graph.metrics`) -> power-law fits (:mod:`~topoprune.graph.fits`).
Optionally, each block's layered attention and MLP graphs are assembled from the
matrices' graphs and their modularity measured (``df.attrs["layered"]``).

Degenerate matrices do not stop the run: an all-zero matrix gets ``status="all_zero"``
and NaN metrics; NaN/Inf stop it with an error naming the tensor unless
``nonfinite="flag"`` (then ``status="nonfinite"``).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from .. import __version__
from .config import AnalysisConfig, ConfigError, GraphConfig
from ..errors import CheckpointError, TensorError
from .fits import fit_degrees
from .bipartite import BipartiteGraph, LayeredGraph, _csr, attention_graph, mlp_graph, select_edges, stack
from .guards import analysis_bytes, check_memory
from .loading import open_checkpoint
from .metrics import degree_stats, edge_modularity
from .roles import ROLES, MatrixSpec, describe
from .workers import Inline as _Inline
from .workers import executor as _executor
from .workers import n_workers, stop  # noqa: F401  (n_workers: part of this module's interface)
from .workers import worker_init as _one_thread  # noqa: F401  (the workers' initializer)

log = logging.getLogger(__name__)

ID_COLUMNS = ["name", "tensor", "role", "component", "block", "side", "n_out", "n_in",
              "n_heads", "n_kv_heads", "head_dim", "status"]
_STATS = ["n", "mean", "sd", "conn_mean", "conn_sd", "gini", "max", "dead", "strength_mean", "strength_sd",
          "strength_gini"]
_FIT = ["alpha", "xmin", "sigma", "ks_d", "n_tail", "R_lognormal", "p_lognormal", "R_exponential",
        "p_exponential", "R_truncated_power_law", "p_truncated_power_law", "verdict"]
#: Column schema of :func:`analyze`, declared once. ``in_*`` describe output neurons'
#: fan-in (rows of W), ``out_*`` input neurons' fan-out (columns of W).
COLUMNS = (ID_COLUMNS + ["edge_mode", "n_edges", "edge_density", "zero_fraction", "max_abs"]
           + [f"{side}_{c}" for side in ("in", "out") for c in _STATS + _FIT]
           + ["modularity", "n_communities"])


@dataclass
class Report:
    """Everything an analysis produced; what ``topoprune analyze --out`` saves.

    Attributes
    ----------
    matrices : DataFrame
        One row per matrix (:data:`COLUMNS`); the table :func:`analyze` returns.
    layered : DataFrame
        One row per block graph (attention / MLP layered graphs) when
        ``block_modularity`` is set, else empty.
    degrees : dict
        ``name -> (in_degree [out], out_degree [in])`` int arrays, for CCDF plots.
    patterns : dict
        ``name -> [h, w]`` float32 edge-density maps (share of entries that are edges per
        cell, at most ``pattern_size`` a side) for sparsity-pattern images.
    meta : dict
        ``config``, ``version``, ``source``, ``model_type``, ``known_layout``.
    """

    matrices: pd.DataFrame
    layered: pd.DataFrame = field(default_factory=pd.DataFrame)
    degrees: dict = field(default_factory=dict)
    patterns: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def edge_density_map(mask: torch.Tensor, size: int) -> np.ndarray:
    """Share of edges per cell of a ``<= size x size`` grid over a boolean mask."""
    h, w = mask.shape
    m = mask.to(torch.float32)[None, None]
    out = torch.nn.functional.adaptive_avg_pool2d(m, (min(h, size), min(w, size)))
    return out[0, 0].numpy().astype(np.float32)


def _config_from(config: AnalysisConfig | None, density, threshold, **overrides) -> AnalysisConfig:
    config = config or AnalysisConfig()
    graph = config.graph
    if density is not None or threshold is not None:
        graph = GraphConfig(density=graph.density if density is None else density,
                            threshold=threshold if threshold is not None else graph.threshold,
                            mode=graph.mode, sparse_fraction=graph.sparse_fraction)
    config = dataclasses.replace(config, graph=graph, **{k: v for k, v in overrides.items() if v is not None})
    if config.roles is not None:
        bad = [r for r in config.roles if r not in ROLES]
        if bad:
            raise ConfigError(f"unknown role(s) {bad}; choose from {', '.join(ROLES)}")
    return config


def _matrix(tensor: torch.Tensor, spec: MatrixSpec) -> torch.Tensor:
    w = tensor.t() if spec.transpose else tensor
    if spec.rows is not None:
        w = torch.cat([w[a:b] for a, b in spec.rows]) if len(spec.rows) > 1 else w[spec.rows[0][0]:spec.rows[0][1]]
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    return w


def _heavy_metrics(in_deg, out_deg, n_nodes, edges, weights, config: AnalysisConfig) -> dict:
    """Power-law fits and modularity of one matrix: the costly part, run in a worker."""
    out: dict = {}
    if config.fits:
        out.update(fit_degrees(in_deg, config.fit).as_dict("in_"))
        out.update(fit_degrees(out_deg, config.fit).as_dict("out_"))
    if config.matrix_modularity:
        com = edge_modularity(n_nodes, edges, weights if config.modularity.weighted else None, config.modularity)
        out.update(modularity=com.modularity, n_communities=com.n_communities)
    return out


def _layered_metrics(lg: LayeredGraph, key: dict, config: AnalysisConfig) -> dict:
    deg = lg.degree()
    row = dict(key, n_layers=len(lg.layers), n_nodes=lg.n_nodes, n_edges=lg.n_edges,
               mean_degree=float(deg.mean()) if deg.size else np.nan)
    if len(lg.layers) == 3:  # a block graph: the middle (heads / hidden) layer's degrees
        row.update(degree_stats(deg[lg.offsets[1]:lg.offsets[2]], lg.layers[0][1] + lg.layers[2][1],
                                prefix="hidden_"))
    edges, w = lg.edge_arrays()
    com = edge_modularity(lg.n_nodes, edges, w if config.modularity.weighted else None, config.modularity)
    row.update(modularity=com.modularity, n_communities=com.n_communities)
    return row


def matrix_row(w: torch.Tensor, spec: MatrixSpec, config: AnalysisConfig, executor: Executor | None = None,
               patterns: dict | None = None) -> tuple[dict, BipartiteGraph | None, Future | None]:
    """Metrics of one oriented matrix ``w`` ([out, in]) as a report row, and its graph.

    The cheap part (edges, degree statistics) is computed here; fits and modularity are
    submitted to ``executor`` and returned as a future of a dict to merge into the row.
    """
    row = {c: np.nan for c in COLUMNS}
    row.update(name=spec.name, tensor=spec.tensor, role=spec.role, component=spec.component, block=spec.block,
               side=spec.side, n_out=int(w.shape[0]), n_in=int(w.shape[1]), n_heads=spec.n_heads,
               n_kv_heads=spec.n_kv_heads, head_dim=spec.head_dim, status="ok")
    for side in ("in", "out"):
        row[f"{side}_verdict"] = ""
    try:
        sel = select_edges(w, config.graph, name=spec.tensor)
    except TensorError:
        if config.nonfinite == "error":
            raise
        row["status"] = "nonfinite"
        return row, None, None
    g = BipartiteGraph(_csr(sel.mask, w), spec.name)
    if patterns is not None and config.pattern_size:
        patterns[spec.name] = edge_density_map(sel.mask, config.pattern_size)
    row.update(zero_fraction=sel.zero_fraction, max_abs=sel.max_abs, edge_mode=sel.mode, n_edges=g.n_edges,
               edge_density=g.density)
    if g.n_edges == 0:
        row["status"] = "all_zero"
        return row, g, None
    in_deg, out_deg = g.in_degree(), g.out_degree()
    row.update(degree_stats(in_deg, g.n_in, g.in_strength(), prefix="in_"))
    row.update(degree_stats(out_deg, g.n_out, g.out_strength(), prefix="out_"))
    fut = None
    if config.fits or config.matrix_modularity:
        edges = g.edge_list() if config.matrix_modularity else None
        weights = g.biadjacency.tocoo().data if config.matrix_modularity and config.modularity.weighted else None
        fut = (executor or _Inline()).submit(_heavy_metrics, in_deg, out_deg, g.n_in + g.n_out, edges, weights,
                                             config)
    return row, g, fut


def _select(specs, config: AnalysisConfig):
    out = []
    for s in specs:
        if not config.include_embeddings and s.role in ("embedding", "lm_head"):
            continue
        if config.blocks_only and s.block < 0:
            continue
        if config.layers is not None and s.block not in config.layers:
            continue
        if config.roles is not None and s.role not in config.roles:
            continue
        out.append(s)
    return out


def _model_graphs(built: dict) -> list[tuple[dict, LayeredGraph]]:
    """Whole-model multipartite graphs: each side's self-attention and MLP block graphs stacked
    through the residual stream in block order (cross-attention is left out)."""
    out = []
    for side in sorted({s for s, _ in built}):
        chain = [lg for (s, b) in sorted(k for k in built if k[0] == side)
                 for comp, lg in built[(s, b)] if comp in ("attention", "mlp")]
        if chain:
            try:
                out.append(({"side": side, "block": -1, "component": "model"}, stack(chain)))
            except TensorError as exc:
                log.warning("whole-model graph of %s side skipped: %s", side or "the", exc)
    return out


def _block_graphs(graphs: dict) -> list[tuple[dict, LayeredGraph]]:
    """Layered attention / MLP graphs of one block from its matrices' graphs."""
    built = []
    for prefix, component in (("", "attention"), ("cross_", "cross_attention")):
        if all(prefix + r in graphs for r in "qkvo"):
            (q, spec), (k, _), (v, _), (o, _) = (graphs[prefix + r] for r in "qkvo")
            built.append((component, attention_graph(q, k, v, o, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads,
                                                     head_dim=spec.head_dim)))
    first = graphs.get("mlp_in") or graphs.get("mlp_gate")
    if first and "mlp_out" in graphs:
        up = graphs["mlp_up"][0] if "mlp_gate" in graphs and "mlp_up" in graphs else None
        built.append(("mlp", mlp_graph(first[0], graphs["mlp_out"][0], up)))
    return built


def analyze(source, density: float | None = None, *, threshold: float | None = None,
            config: AnalysisConfig | None = None, layers=None, roles=None, progress: bool = False,
            **options) -> pd.DataFrame:
    """Measure the topology of every weight matrix of a checkpoint.

    Parameters
    ----------
    source : path, nn.Module, state dict or Checkpoint
        See :func:`topoprune.graph.loading.open_checkpoint`.
    density : float, optional
        Fraction of entries kept as edges, largest ``|w|`` first (default 0.1).
    threshold : float, optional
        Keep entries with ``|w| >= threshold`` instead.
    config : AnalysisConfig, optional
        Full settings; ``density``, ``threshold``, ``layers``, ``roles`` and keyword
        ``options`` (any :class:`AnalysisConfig` field) override it.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    pandas.DataFrame
        One row per matrix with the columns of :data:`COLUMNS`; ``df.attrs`` holds
        ``config``, ``version``, ``source``, ``model_type`` and ``known_layout``.
        :func:`analyze_report` returns this table with degree sequences, layered-graph
        rows and sparsity patterns.

    Raises
    ------
    CheckpointError, TensorError, ConfigError
        One-line messages naming the file or tensor.

    Examples
    --------
    >>> import torch
    >>> df = analyze({"layers.0.mlp.fc1.weight": torch.randn(64, 32)}, fits=False, n_jobs=1)
    >>> df.loc[0, "role"], int(df.loc[0, "n_edges"])
    ('mlp_in', 205)
    """
    return analyze_report(source, density, threshold=threshold, config=config, layers=layers, roles=roles,
                          progress=progress, **options).matrices


def analyze_report(source, density: float | None = None, *, threshold: float | None = None,
                   config: AnalysisConfig | None = None, layers=None, roles=None, progress: bool = False,
                   **options) -> Report:
    """Like :func:`analyze`, returning the full :class:`Report`."""
    config = _config_from(config, density, threshold, layers=tuple(layers) if layers is not None else None,
                          roles=tuple(roles) if roles is not None else None, **options)
    ckpt = open_checkpoint(source)
    try:
        layout = describe(ckpt)
        if not layout.specs:
            raise CheckpointError(f"{ckpt.source}: no 2-D floating-point weight matrices to analyse "
                                  f"({len(layout.skipped)} tensors, all 1-D, empty or non-float)")
        specs = _select(layout.specs, config)
        if not specs:
            raise ConfigError(f"{ckpt.source}: no matrix matches the layer/role selection")
        shard = {t.name: t.shard for t in ckpt.tensors()}
        by_tensor: dict[str, list[MatrixSpec]] = defaultdict(list)
        for s in specs:
            by_tensor[s.tensor].append(s)
        order = sorted(by_tensor, key=lambda t: (shard.get(t, ""), specs.index(by_tensor[t][0])))
        _check_memory(ckpt, order)
        rows, futures, keep, layered, patterns, degrees = [], [], defaultdict(dict), [], {}, {}
        bar = _progress(len(specs), progress)
        limits = threadpool_limits(1)  # idle BLAS threads spinning here would starve the workers
        executor, done = _Inline(), False
        try:
            executor = _executor(config.n_jobs, len(specs))
            for tensor_name in order:
                tensor = ckpt.load(tensor_name)
                for spec in by_tensor[tensor_name]:
                    bar.set_postfix_str(spec.name[-40:], refresh=False)
                    row, g, fut = matrix_row(_matrix(tensor, spec), spec, config, executor, patterns)
                    rows.append(row)
                    futures.append(fut)
                    if g is not None and g.n_edges:
                        degrees[spec.name] = (g.in_degree().astype(np.int32), g.out_degree().astype(np.int32))
                    if (config.block_modularity or config.model_modularity) and g is not None and spec.block >= 0:
                        keep[(spec.side, spec.block)][spec.role] = (g, spec)
                    bar.update(1)
                del tensor
            _check_threshold(rows, config)
            built = {key: _block_graphs(graphs) for key, graphs in sorted(keep.items())}
            keep.clear()
            for (side, block), graphs in built.items():
                for component, lg in graphs:
                    key = {"side": side, "block": block, "component": component}
                    layered.append(executor.submit(_layered_metrics, lg, key, config))
            if config.model_modularity:
                for key, lg in _model_graphs(built):
                    layered.append(executor.submit(_layered_metrics, lg, key, config))
            for row, fut in zip(rows, futures):
                if fut is not None:
                    row.update(fut.result())
            layered = [f.result() for f in layered]
            done = True
        finally:
            stop(executor, kill=not done)  # after an error or an interrupt: end the workers, wait for nothing
            limits.restore_original_limits()
            bar.close()
    finally:
        ckpt.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values(["side", "block", "role", "name"], kind="stable").reset_index(drop=True)
    meta = dict(config=config.to_dict(), version=__version__, source=ckpt.source, model_type=layout.model_type,
                known_layout=layout.known)
    df.attrs.update(meta)
    return Report(df, pd.DataFrame(layered), degrees, patterns, meta)


def _check_memory(ckpt, names) -> None:
    """Refuse, before any work, a tensor too large for the memory available (stored + float32 copy)."""
    infos = {t.name: t for t in ckpt.tensors()}
    need = {n: analysis_bytes(infos[n].shape, infos[n].dtype) for n in names if n in infos}
    if need:
        largest = max(need, key=need.get)
        check_memory(largest, need[largest], "analyse")


def _check_threshold(rows: list[dict], config: AnalysisConfig) -> None:
    """Refuse a threshold above every weight; warn when it leaves some matrices without edges."""
    t = config.graph.threshold
    empty = [r for r in rows if r["status"] == "all_zero" and r["edge_mode"] == "threshold" and r["max_abs"] > 0]
    if t is None or not empty:
        return
    if len(empty) == len(rows):
        largest = max(r["max_abs"] for r in rows)
        raise ConfigError(f"threshold {t:g} is above every weight (the largest |w| is {largest:.4g}): "
                          "no matrix has an edge; use a smaller threshold or a density")
    log.warning("threshold %g is above every weight of %d of %d matrices: they have no edges (status all_zero)",
                t, len(empty), len(rows))


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="analyze", unit="matrix", leave=False, dynamic_ncols=True)


def summarize(df, layered: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-role, per-block and whole-model summaries of an :func:`analyze` table.

    Parameters
    ----------
    df : DataFrame or Report
        The per-matrix table (or a :class:`Report`, whose layered graphs are then used).
    layered : DataFrame, optional
        Layered-graph rows; their modularity joins the block rows.

    Returns
    -------
    pandas.DataFrame
        Rows with ``level`` in ``{"role", "block", "model"}`` and the group key in
        ``key``; numeric columns are means over the group's matrices (WeightWatcher-style),
        plus ``n_matrices``, ``n_edges_total`` and the share of ``power_law`` verdicts.
    """
    if isinstance(df, Report):
        df, layered = df.matrices, df.layered if layered is None else layered
    ok = df[df["status"] == "ok"]
    numeric = [c for c in df.columns if c not in ID_COLUMNS and c not in ("edge_mode",)
               and pd.api.types.is_numeric_dtype(df[c])]
    parts = []
    groupings = [("role", ok["role"]), ("block", ok["side"].astype(str) + ":" + ok["block"].astype(str)),
                 ("model", pd.Series("model", index=ok.index))]
    for level, key in groupings:
        if ok.empty:
            break
        grp = ok.groupby(key, sort=True)
        summ = grp[numeric].mean()
        summ.insert(0, "n_matrices", grp.size())
        summ.insert(1, "n_edges_total", grp["n_edges"].sum())
        for side in ("in", "out"):
            summ[f"{side}_power_law_share"] = grp[f"{side}_verdict"].apply(lambda v: float((v == "power_law").mean()))
        summ = summ.reset_index(names="key")
        summ.insert(0, "level", level)
        parts.append(summ)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["level", "key"])
    if layered is not None and len(layered):
        whole = layered[layered["component"] == "model"]
        if len(whole):
            out.loc[out["level"] == "model", "layered_modularity_model"] = float(whole["modularity"].mean())
        lay = layered[layered["component"] != "model"]
        out = out.merge(
            lay.pivot_table(index=lay["side"].astype(str) + ":" + lay["block"].astype(str), columns="component",
                            values="modularity").add_prefix("layered_modularity_").reset_index(names="key")
            .assign(level="block"), on=["level", "key"], how="left")
    return out
