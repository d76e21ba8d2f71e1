"""An analysis run on this machine: the tensors read here one at a time, fits and modularity in a
local process pool (:mod:`~topoprune.graph.workers`), finished work recorded in a
:class:`~topoprune.graph.journal.Journal` as it completes.

Memory: a matrix's graph is dropped once its row and task are made, unless block or model
modularity needs it; a block's layered graphs are built and submitted as soon as its last matrix is
read, and the matrices' graphs then dropped (kept as block graphs for the whole-model graph). At
most two tasks per worker wait at a time (:class:`~topoprune.graph.workers.Bounded`).
"""
from __future__ import annotations

import functools
from collections import Counter, defaultdict
from concurrent.futures import Future

from threadpoolctl import threadpool_limits

from .analysis import _block_graphs, _check_threshold, _layered_metrics, _model_graphs, tensor_rows
from .bipartite import LayeredGraph
from .config import AnalysisConfig
from .edges import PackedEdges
from .journal import Journal, block_name
from .timing import edges_of
from .workers import Bounded, Inline, executor as start_executor, n_workers, stop


def done(value=0) -> Future:
    """A future already holding ``value``."""
    return Inline().submit(lambda: value)


def packed_layered(lg: LayeredGraph, pool, config: AnalysisConfig):
    """``lg`` as a task for ``pool``: itself inline, else ``(layers, ((src, dst, PackedEdges), ...))``."""
    if isinstance(pool, Inline):
        return lg
    return lg.layers, tuple((s, d, PackedEdges.of(b, config.modularity.weighted)) for s, d, b in lg.edges)


class _Recorder:
    """Writes each tensor (each block) to the journal once all its matrices' (layered rows') futures are done."""

    def __init__(self, journal: Journal | None, degrees: dict, patterns: dict):
        self.journal, self.degrees, self.patterns = journal, degrees, patterns
        self.tensors: dict[str, list] = {}
        self.blocks: dict = defaultdict(list)

    def tensor(self, name: str, items: list) -> None:
        if self.journal is not None:
            self.tensors[name] = items

    def block(self, key, fut: Future) -> None:
        if self.journal is not None:
            self.blocks[key].append(fut)

    def flush(self) -> None:
        """Record what is finished (rows updated with their futures' results)."""
        for name, items in list(self.tensors.items()):
            if all(f is None or f.done() for _, _, f in items):
                for _, row, f in items:
                    if f is not None:
                        row.update(f.result())
                self.journal.put_tensor(name, [(row, self.degrees.get(s.name), self.patterns.get(s.name))
                                               for s, row, _ in items])
                del self.tensors[name]
        for key, futs in list(self.blocks.items()):
            if all(f.done() for f in futs):
                self.journal.put_block(block_name(key), [f.result() for f in futs])
                del self.blocks[key]


def analyze_locally(ckpt, order, by_tensor, config: AnalysisConfig, bar, journal: Journal | None = None,
                    stored: dict | None = None, stored_blocks: dict | None = None):
    """Analyse the tensors ``order`` of ``ckpt`` here, fits and modularity in the local pool.

    Parameters
    ----------
    ckpt, order, by_tensor, config, bar
        The open checkpoint, the tensor names in analysis order, tensor name -> its matrices'
        specs, the settings and the :class:`~topoprune.graph.timing.Progress` bar.
    journal : Journal, optional
        Where finished tensors and blocks are recorded.
    stored, stored_blocks : dict, optional
        Finished tensors (name -> ``[(row, degrees, pattern), ...]``) and blocks (``(side, block)`` ->
        layered rows) of an earlier run, used instead of analysing them again.

    Returns
    -------
    rows, degrees, patterns, layered, workers
        See :func:`~topoprune.graph.analysis.analyze_report`; ``workers``: the processes the
        per-matrix work ran in, 1 for this process alone.
    """
    stored, stored_blocks = stored or {}, stored_blocks or {}
    rows, futures, keep, layered, patterns, degrees = [], [], defaultdict(dict), [], {}, {}
    layers = config.block_modularity or config.model_modularity
    remaining = Counter((s.side, s.block) for t in order for s in by_tensor[t] if s.block >= 0)
    built: dict = {}
    for key, block_rows in stored_blocks.items():
        layered.extend(((0, key, i), done(row)) for i, row in enumerate(block_rows))
    record = _Recorder(journal, degrees, patterns)
    limits = threadpool_limits(1)  # idle BLAS threads spinning here would starve the workers
    executor, finished, pending = Inline(), False, {}
    try:
        n_tasks = sum(len(by_tensor[t]) for t in order if t not in stored)
        executor = start_executor(config.n_jobs, n_tasks)
        workers = n_workers(config.n_jobs, n_tasks)
        pool = executor if isinstance(executor, Inline) else Bounded(executor, 2 * workers)  # running + waiting
        for tensor_name in order:
            if tensor_name in stored:
                for spec, (row, deg, pattern) in zip(by_tensor[tensor_name], stored[tensor_name]):
                    rows.append(row)
                    futures.append(None)
                    if deg is not None:
                        degrees[spec.name] = deg
                    if pattern is not None:
                        patterns[spec.name] = pattern
                continue
            items = []
            for spec, row, g, fut in tensor_rows(functools.partial(ckpt.load, tensor_name), by_tensor[tensor_name],
                                                 config, pool, patterns, degrees):
                rows.append(row)
                futures.append(fut)
                items.append((spec, row, fut))
                pending[fut or done()] = (edges_of(row), spec.name)  # none: done already
                bar.finished(pending)
                key = (spec.side, spec.block)
                if layers and spec.block >= 0 and key not in stored_blocks:
                    if g is not None:
                        keep[key][spec.role] = (g, spec)
                    remaining[key] -= 1
                    if not remaining[key] and key in keep:
                        _submit_block(key, keep.pop(key), built, layered, pool, config, record)
                g = fut = None
            record.tensor(tensor_name, items)
            record.flush()
        _check_threshold(rows, config)
        if config.model_modularity:
            for key, lg in _model_graphs(dict(sorted(built.items()))):
                task = packed_layered(lg, pool, config)
                del lg
                fut = pool.submit(_layered_metrics, task, key, config)
                layered.append(((1, key["side"]), fut))
        built.clear()
        bar.finished(pending, wait=True)
        for row, fut in zip(rows, futures):
            if fut is not None:
                row.update(fut.result())
        futures.clear()
        layered = [f.result() for _, f in sorted(layered, key=lambda x: x[0])]
        record.flush()
        finished = True
    finally:
        stop(executor, kill=not finished)  # after an error or an interrupt: end the workers, wait for nothing
        limits.restore_original_limits()
    return rows, degrees, patterns, layered, workers


def _submit_block(key, graphs: dict, built: dict, layered: list, pool, config: AnalysisConfig, record) -> None:
    """Submit the layered-graph rows of block ``key`` (``(side, block)``) from its matrices' ``graphs``;
    keep the block graphs in ``built`` for the whole-model graph only when that is measured."""
    block_graphs = _block_graphs(graphs)
    graphs.clear()
    if config.model_modularity:
        built[key] = block_graphs
    for i, (component, lg) in enumerate(block_graphs):
        row_key = {"side": key[0], "block": key[1], "component": component}
        fut = pool.submit(_layered_metrics, packed_layered(lg, pool, config), row_key, config)
        layered.append(((0, key, i), fut))
        record.block(key, fut)


__all__ = ["analyze_locally", "packed_layered", "done"]
