"""``analyze(checkpoint) -> DataFrame``: one tidy row per weight matrix (its columns, the
:class:`~topoprune.graph.report.Report` and :func:`~topoprune.graph.report.summarize` are in
:mod:`topoprune.graph.report`).

The pipeline streams the checkpoint one tensor at a time: load -> orient/split
(:mod:`~topoprune.graph.roles`) -> bipartite graph (:mod:`~topoprune.graph.bipartite`) -> degree statistics
and modularity (:mod:`~topoprune.graph.metrics`) -> power-law fits (:mod:`~topoprune.graph.fits`).
Optionally, each block's layered attention and MLP graphs are assembled from the
matrices' graphs and their modularity measured (``df.attrs["layered"]``).

The per-matrix work (fits, modularity) runs in a local process pool (``n_jobs``), or with
``scheduler`` on a Dask cluster whose workers read the tensors themselves
(:mod:`~topoprune.graph.cluster`); the results are the same. Edge selection, the edge list and, on a
GPU, the degrees run as torch operations on ``device`` (the CPU, or a CUDA device), with the same
results; on the CPU the degrees are read off the edge list's CSR form (row lengths, column counts:
milliseconds, against a pass over the dense mask). The seconds each
matrix spends in each stage are kept in ``report.meta["timing"]`` (:mod:`~topoprune.graph.timing`).

Degenerate matrices do not stop the run: an all-zero matrix gets ``status="all_zero"``
and NaN metrics; NaN/Inf stop it with an error naming the tensor unless
``nonfinite="flag"`` (then ``status="nonfinite"``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from concurrent.futures import Executor, Future

import numpy as np
import pandas as pd
import torch

from .. import __version__
from .config import AnalysisConfig, ConfigError, GraphConfig, resolve_device
from ..errors import CheckpointError, TensorError
from .fits import fit_degrees
from .binding import canonical
from .bipartite import (BipartiteGraph, LayeredGraph, attention_graph, from_mask, mlp_graph,
                        select_edges, stack)
from .degrees import mask_degrees
from .edges import PackedEdges
from .guards import analysis_bytes, check_memory
from .loading import open_checkpoint
from .metrics import degree_stats, modularity
from .report import COLUMNS, Report
from .roles import ROLES, MatrixSpec, describe
from .timing import Progress, Stopwatch, collect, edges_of
from .workers import Inline as _Inline
from .workers import map_large_allocations, n_workers  # noqa: F401  (n_workers: also part of this interface)

log = logging.getLogger(__name__)

def edge_density_map(mask: torch.Tensor, size: int) -> np.ndarray:
    """Share of edges per cell of a ``<= size x size`` grid over a boolean mask."""
    h, w = mask.shape
    m = mask.to(torch.float32)[None, None]
    out = torch.nn.functional.adaptive_avg_pool2d(m, (min(h, size), min(w, size)))
    return out[0, 0].cpu().numpy().astype(np.float32)


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


def _matrix(tensor: torch.Tensor, spec: MatrixSpec, device=None) -> torch.Tensor:
    """The ``[out, in]`` matrix ``spec`` describes in a loaded tensor, as float32 (or float64), on ``device``."""
    w = canonical(tensor, spec)
    if device is not None:
        w = w.to(device)
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    return w


def _heavy_metrics(in_deg, out_deg, graph, config: AnalysisConfig) -> dict:
    """Power-law fits and modularity of one matrix: the costly part, run in a worker.

    ``graph`` (for modularity only) is the matrix's :class:`BipartiteGraph`, or in a worker process
    its :class:`~topoprune.graph.edges.PackedEdges`. The dict holds the seconds of both as ``t_fits``
    and ``t_modularity``.
    """
    out: dict = {}
    clock = Stopwatch(out)
    if config.fits:
        out.update(fit_degrees(in_deg, config.fit).as_dict("in_"))
        out.update(fit_degrees(out_deg, config.fit).as_dict("out_"))
        clock.lap("fits")
    if config.matrix_modularity:
        if isinstance(graph, PackedEdges):
            graph = BipartiteGraph(graph.csr())
        com = modularity(graph, config.modularity)
        out.update(modularity=com.modularity, n_communities=com.n_communities)
        clock.lap("modularity")
    return out


def _layered_metrics(lg, key: dict, config: AnalysisConfig) -> dict:
    """Degrees and modularity of a block or whole-model graph ``lg`` (a LayeredGraph, or packed)."""
    if not isinstance(lg, LayeredGraph):
        lg = LayeredGraph(lg[0], tuple((s, d, p.csr()) for s, d, p in lg[1]))
    deg = lg.degree()
    row = dict(key, n_layers=len(lg.layers), n_nodes=lg.n_nodes, n_edges=lg.n_edges,
               mean_degree=float(deg.mean()) if deg.size else np.nan)
    if len(lg.layers) == 3:  # a block graph: the middle (heads / hidden) layer's degrees
        row.update(degree_stats(deg[lg.offsets[1]:lg.offsets[2]], lg.layers[0][1] + lg.layers[2][1],
                                prefix="hidden_"))
    com = modularity(lg, config.modularity)
    row.update(modularity=com.modularity, n_communities=com.n_communities)
    return row


def matrix_row(w: torch.Tensor, spec: MatrixSpec, config: AnalysisConfig, executor: Executor | None = None,
               patterns: dict | None = None,
               degrees: dict | None = None) -> tuple[dict, BipartiteGraph | None, Future | None]:
    """Metrics of one oriented matrix ``w`` ([out, in]) as a report row, and its graph.

    The cheap part (edges, degree statistics) is computed here, as torch operations on ``w``'s
    device; fits and modularity are submitted to ``executor`` and returned as a future of a dict to
    merge into the row. A process pool receives the degrees and, for modularity, the graph packed
    (:class:`PackedEdges`), never an edge list; :class:`~topoprune.graph.workers.Inline`
    (``n_jobs=1``) the graph itself. ``patterns`` and ``degrees``, when given, receive the edge-density
    map and the int32 ``(in, out)`` degree sequences under the matrix's name. The row holds the
    seconds of the stages run here (``t_edges``, ``t_degrees``; :mod:`~topoprune.graph.timing`).
    """
    row = {c: np.nan for c in COLUMNS}
    row.update(name=spec.name, tensor=spec.tensor, role=spec.role, component=spec.component, block=spec.block,
               side=spec.side, n_out=int(w.shape[0]), n_in=int(w.shape[1]), n_heads=spec.n_heads,
               n_kv_heads=spec.n_kv_heads, head_dim=spec.head_dim, status="ok")
    for side in ("in", "out"):
        row[f"{side}_verdict"] = ""
    clock = Stopwatch(row)
    try:
        sel = select_edges(w, config.graph, name=spec.tensor)
    except TensorError:
        if config.nonfinite == "error":
            raise
        row["status"] = "nonfinite"
        clock.lap("edges")
        return row, None, None
    g = from_mask(sel.mask, w, name=spec.name)
    if patterns is not None and config.pattern_size:
        patterns[spec.name] = edge_density_map(sel.mask.cpu(), config.pattern_size)  # on the CPU: exact everywhere
    row.update(zero_fraction=sel.zero_fraction, max_abs=sel.max_abs, edge_mode=sel.mode, n_edges=g.n_edges,
               edge_density=g.density)
    if g.n_edges == 0:
        row["status"] = "all_zero"
        clock.lap("edges")
        return row, g, None
    fut, executor, graph = None, executor or _Inline(), None
    if config.matrix_modularity:
        graph = g if isinstance(executor, _Inline) else PackedEdges.of(
            g.biadjacency, config.modularity.weighted, mask=sel.mask)
    clock.lap("edges")
    if sel.mask.is_cuda:
        in_deg, out_deg = mask_degrees(sel.mask)  # torch reductions on the GPU
    else:  # the CSR just built: a bincount, where a pass over the dense mask costs ~50x more
        in_deg, out_deg = g.in_degree(), g.out_degree()
    del sel  # the dense mask is not needed while the metrics run (inline: here, now)
    if degrees is not None:
        degrees[spec.name] = (in_deg.astype(np.int32), out_deg.astype(np.int32))
    row.update(degree_stats(in_deg, g.n_in, g.in_strength(), prefix="in_"))
    row.update(degree_stats(out_deg, g.n_out, g.out_strength(), prefix="out_"))
    clock.lap("degrees")
    if config.fits or config.matrix_modularity:
        fut = executor.submit(_heavy_metrics, in_deg, out_deg, graph, config)
    del graph
    return row, g, fut


def tensor_rows(load, specs: list[MatrixSpec], config: AnalysisConfig, executor: Executor | None = None,
                patterns: dict | None = None, degrees: dict | None = None):
    """:func:`matrix_row` of every matrix ``specs`` describes in one tensor, which ``load()`` reads.

    Yields
    ------
    (spec, row, graph, future)
        As :func:`matrix_row` returns them, the matrix read onto ``config.device``; ``row["t_read"]``
        is the seconds of its orientation and cast plus its share, by size, of reading the tensor.
    """
    device = resolve_device(config.device)
    start = time.perf_counter()
    tensor = load()
    loaded = time.perf_counter() - start
    sizes = [s.shape[0] * s.shape[1] for s in specs]
    for spec, size in zip(specs, sizes):
        start = time.perf_counter()
        w = _matrix(tensor, spec, device)
        read = time.perf_counter() - start + loaded * (size / sum(sizes) if sum(sizes) else 1 / len(specs))
        row, g, fut = matrix_row(w, spec, config, executor, patterns, degrees)
        row["t_read"] = read
        del w
        yield spec, row, g, fut


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
        One row per matrix with the columns of :data:`COLUMNS`; ``df.attrs`` holds ``config``,
        ``version``, ``source``, ``model_type``, ``known_layout`` and ``timing``
        (:mod:`~topoprune.graph.timing`).
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
                   journal=None, **options) -> Report:
    """Like :func:`analyze`, returning the full :class:`Report`.

    ``journal``, a directory, keeps the finished tensors and blocks as the analysis goes
    (:class:`~topoprune.graph.journal.Journal`): run again with the same settings on the same
    checkpoint, the analysis reads them back instead of recomputing them, and gives the same report.
    ``report.meta["resumed"]`` counts the matrices read back. The caller removes the journal when done.
    """
    config = _config_from(config, density, threshold, layers=tuple(layers) if layers is not None else None,
                          roles=tuple(roles) if roles is not None else None, **options)
    path, start = None, time.perf_counter()
    if config.scheduler is not None:  # workers read the tensors themselves: a path, and distributed installed
        from .cluster import check_request

        path = check_request(source)
    device = config.device if path is not None else str(resolve_device(config.device))  # a cluster's: its workers'
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
        book = _open_journal(journal, source, config)
        stored, stored_blocks = _stored(book, order, by_tensor, config, local=path is None)
        resumed = sum(len(by_tensor[t]) for t in stored)
        bar = Progress(len(specs) - resumed, progress)
        try:
            if path is not None:
                from .cluster import analyze_on_cluster

                rows, degrees, patterns, layered, workers = analyze_on_cluster(
                    path, order, by_tensor, config, bar, book, stored, stored_blocks)
            else:
                from .local import analyze_locally

                _check_memory(ckpt, [t for t in order if t not in stored])
                map_large_allocations()
                rows, degrees, patterns, layered, workers = analyze_locally(
                    ckpt, order, by_tensor, config, bar, book, stored, stored_blocks)
        finally:
            bar.close()
            if book is not None:
                book.close()
    finally:
        ckpt.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values(["side", "block", "role", "name"], kind="stable").reset_index(drop=True)
    backend = "dask" if path is not None else "processes" if workers > 1 else "inline"
    timing = collect(rows, device=device, backend=backend, workers=workers, wall_s=time.perf_counter() - start)
    meta = dict(config=config.to_dict(), version=__version__, source=ckpt.source, model_type=layout.model_type,
                known_layout=layout.known, timing=timing, resumed=resumed)
    df.attrs.update(meta)
    return Report(df, pd.DataFrame(layered), degrees, patterns, meta)


def _open_journal(directory, source, config: AnalysisConfig):
    if directory is None:
        return None
    from .journal import Journal, source_signature

    if source_signature(source) is None:
        raise ConfigError("journal: needs a checkpoint file or directory to resume from, not a model in memory")
    return Journal(directory, config.results_settings(), source)


def _stored(journal, order, by_tensor, config: AnalysisConfig, local: bool) -> tuple[dict, dict]:
    """The finished tensors and blocks ``journal`` holds that this analysis can use: here (``local``) a
    tensor only when the layered graphs it feeds are finished too, nothing with whole-model modularity
    (the whole-model graph is built from every matrix's graph); on a cluster, whose layered tasks read
    the tensors themselves, every finished one."""
    from .journal import block_name

    if journal is None or not len(journal) or (local and config.model_modularity):
        return {}, {}
    keys = {(s.side, s.block) for t in order for s in by_tensor[t] if s.block >= 0}
    blocks = {}
    if config.block_modularity or config.model_modularity:  # block rows are measured with either
        blocks = {k: r for k in sorted(keys) if (r := journal.block(block_name(k))) is not None}
    if config.model_modularity:
        model = journal.block("model")
        if model is not None:
            blocks["model"] = model
    tensors = {}
    for t in order:
        if local and config.block_modularity and any((s.side, s.block) not in blocks
                                                     for s in by_tensor[t] if s.block >= 0):
            continue
        found = journal.tensor(t)
        if found is not None and len(found) == len(by_tensor[t]):
            tensors[t] = found
    return tensors, blocks


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

