"""The per-matrix work of an analysis on a Dask cluster (``scheduler=`` / ``--scheduler``).

The client (the process running :func:`~topoprune.graph.analysis.analyze_report`) reads only the
checkpoint's metadata, to know which tensors hold which matrices. It submits one small task per
tensor: the checkpoint's absolute path, the tensor's name, its
:class:`~topoprune.graph.roles.MatrixSpec` (role, orientation, heads) and the
:class:`~topoprune.graph.config.AnalysisConfig`. The worker reads the tensor from that path, runs
the code of a local analysis on it (:func:`~topoprune.graph.analysis.matrix_row`, with the local
pool's task, fits and modularity, run in place) and returns the report rows, degree sequences and
edge-density maps. Block and whole-model graphs are rebuilt on a worker from their blocks' tensors.
No tensor travels through the scheduler, and the results are those of a local run.

* ``local:N`` starts a :class:`distributed.LocalCluster` of N one-thread worker processes (capped
  like ``n_jobs``), closed when the analysis ends: on success, on error and on an interrupt.
* An address (``tcp://10.0.0.5:8786``) connects to a running cluster within ``connect_timeout``;
  its workers need the checkpoint at the same path and the versions of topoprune and of the
  libraries that compute the metrics that the client has (checked by every task).

``distributed`` is imported only when a scheduler is used (``pip install 'topoprune[cluster]'``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import uuid
from collections import OrderedDict, defaultdict
from concurrent.futures import CancelledError
from importlib import metadata

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..errors import CheckpointError, ClusterError, ConfigError
from ..io import short
from .analysis import (_block_graphs, _check_memory, _check_threshold, _layered_metrics, _matrix, _model_graphs,
                       matrix_row, tensor_rows)
from .config import AnalysisConfig, local_workers
from .loading import open_checkpoint
from .roles import MatrixSpec
from .journal import block_name
from .timing import edges_of
from .workers import deferred_signals, map_large_allocations, n_workers

log = logging.getLogger(__name__)

#: What to install for ``--scheduler``.
INSTALL_HINT = "pip install 'topoprune[cluster]'"
#: Packages whose versions decide the results: a worker must have those of the client.
VERSIONED = ("topoprune", "torch", "numpy", "scipy", "igraph", "powerlaw")
#: Checkpoints a worker keeps open (one per running analysis; a pickle or GGUF is costly to reopen).
_OPEN_MAX = 2
_open, _open_lock = OrderedDict(), threading.Lock()


def check_request(source) -> str:
    """The absolute checkpoint path a cluster's workers read, once ``--scheduler`` is known to be usable.

    Raises
    ------
    ConfigError
        ``source`` is held in memory (a model, a state dict), or ``distributed`` is not installed.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"scheduler (--scheduler) needs a checkpoint path that the workers can read; a {type(source).__name__} "
                          "held in memory cannot be sent (save it, e.g. with save_pretrained, and give the path)")
    require_distributed()
    return os.path.abspath(os.path.expanduser(os.fspath(source)))


def require_distributed() -> None:
    """Refuse ``--scheduler`` when ``distributed`` is not installed (without importing it)."""
    if importlib.util.find_spec("distributed") is None:
        raise ConfigError(f"--scheduler needs the 'distributed' package: {INSTALL_HINT}")


# ----------------------------------------------------------------------------- on the workers
def versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED`, less local labels such as ``+cpu`` (``"-"``: missing)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def _where() -> str:
    """The address of the Dask worker running this task (``a Dask worker`` outside one)."""
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return "a Dask worker"


def _checkpoint(path: str, token: str, expected: dict[str, str]):
    """The checkpoint at ``path``, opened once per analysis (``token``) in this worker process, set up as the
    local pool's: one BLAS and torch thread (as Dask sets up its workers), large allocations mapped."""
    threadpool_limits(1)
    torch.set_num_threads(1)
    map_large_allocations()
    with _open_lock:
        key = (path, token)
        if key in _open:
            _open.move_to_end(key)
            return _open[key]
        mine = versions()
        bad = [f"{k} {mine.get(k)} (the client has {v})" for k, v in expected.items() if mine.get(k) != v]
        if bad:
            raise ClusterError(f"{_where()}: {', '.join(bad)}; workers need the client's versions")
        try:
            ckpt = open_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (on {_where()}: workers read the checkpoint at the same path)") from None
        _open[key] = ckpt
        while len(_open) > _OPEN_MAX:
            _open.popitem(last=False)[1].close()
        return ckpt


def _load(ckpt, tensor: str):
    """Tensor ``tensor`` of ``ckpt``, read once the memory of this machine is known to hold it."""
    if tensor not in {t.name for t in ckpt.tensors()}:
        raise CheckpointError(f"{ckpt.source}: has no tensor {tensor!r} on {_where()} (workers need the same "
                              "checkpoint at the same path)")
    _check_memory(ckpt, [tensor])
    return ckpt.load(tensor)


def forget(token: str) -> None:
    """Close the checkpoints this worker keeps open for the analysis ``token``."""
    with _open_lock:
        for key in [k for k in _open if k[1] == token]:
            _open.pop(key).close()


class _Warnings(logging.Handler):
    """Collects the warnings this thread logs under ``topoprune``, to be logged again by the client."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.thread, self.records = threading.get_ident(), []

    def emit(self, record):
        if record.thread == self.thread:
            self.records.append((record.name, record.levelno, record.getMessage()))

    def __enter__(self):
        logging.getLogger("topoprune").addHandler(self)
        return self.records

    def __exit__(self, *exc):
        logging.getLogger("topoprune").removeHandler(self)


def tensor_task(path: str, tensor: str, specs: list[MatrixSpec], config: AnalysisConfig, token: str,
                expected: dict[str, str]) -> tuple[list[tuple[dict, tuple | None, np.ndarray | None]], list]:
    """Read ``tensor`` and analyse the matrices ``specs`` describe in it, as a local analysis does.

    Returns
    -------
    results : list of (row, degrees, pattern)
        Per spec: the report row (fits, modularity and the stages' seconds included), the ``(in, out)``
        degree sequences (``None`` without edges) and the edge-density map (``None`` when not kept).
    warnings : list of (logger, level, message)
        What the analysis logged at warning level or above.
    """
    with _Warnings() as warnings:
        ckpt, results, patterns, degrees = _checkpoint(path, token, expected), [], {}, {}
        for spec, row, _, fut in tensor_rows(lambda: _load(ckpt, tensor), specs, config, None, patterns, degrees):
            if fut is not None:
                row.update(fut.result())
            results.append((row, degrees.pop(spec.name, None), patterns.pop(spec.name, None)))
    return results, warnings


def _graphs(path, members, config: AnalysisConfig, token, expected) -> dict:
    """``{(side, block): {role: (graph, spec)}}`` of ``members`` (``(tensor, spec)`` in analysis order)."""
    ckpt = _checkpoint(path, token, expected)
    bare = dataclasses.replace(config, fits=False, matrix_modularity=False, pattern_size=0)
    keep: dict = defaultdict(dict)
    by_tensor: dict[str, list[MatrixSpec]] = defaultdict(list)
    for tensor, spec in members:
        by_tensor[tensor].append(spec)
    for tensor, specs in by_tensor.items():
        loaded = _load(ckpt, tensor)
        for spec in specs:
            _, g, _ = matrix_row(_matrix(loaded, spec), spec, bare)
            if g is not None:
                keep[(spec.side, spec.block)][spec.role] = (g, spec)
        del loaded
    return keep


def layered_task(path: str, members: list[tuple[str, MatrixSpec]], whole: bool, config: AnalysisConfig, token: str,
                 expected: dict[str, str]) -> tuple[list[dict], list]:
    """Layered-graph rows of one block's matrices, or (``whole``) of the whole model's.

    The graphs are rebuilt from the tensors, as the local analysis builds them from its
    matrices' graphs; returns ``(rows, warnings)`` as :func:`tensor_task` does.
    """
    with _Warnings() as warnings:
        keep = _graphs(path, members, config, token, expected)
        built = {key: _block_graphs(graphs) for key, graphs in sorted(keep.items())}
        keep.clear()
        if whole:
            rows = [_layered_metrics(lg, key, config) for key, lg in _model_graphs(built)]
        else:
            rows = [_layered_metrics(lg, {"side": side, "block": block, "component": component}, config)
                    for (side, block), graphs in built.items() for component, lg in graphs]
    return rows, warnings


# ----------------------------------------------------------------------------- on the client
def _probe(address: str, timeout: float) -> None:
    """Fail at once, naming ``address``, when nothing listens there (TCP addresses only)."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        protocol, location = parse_address(address)
        if protocol not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--scheduler {address}: not a scheduler address ({short(exc)}); "
                          "give e.g. tcp://10.0.0.5:8786 or local:N") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or short(exc)
        raise ClusterError(f"cannot connect to the Dask scheduler at {address} ({reason})") from None


@contextlib.contextmanager
def _level(name: str, level: int):
    """Logger ``name`` at ``level`` for the time of the block."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _forkserver() -> None:
    """Have the local cluster's workers forked by a fork server that ignores SIGINT and logs quietly.

    A Ctrl-C in a terminal reaches every process of its group: a starting worker would die with a
    traceback. Workers forked by a server started with SIGINT ignored ignore it too; this process
    closes them. The server imports the analysis code once for all workers and ends with this process.
    """
    from multiprocessing import forkserver

    from distributed.utils import get_mp_context

    # after distributed sets its own preloads; the fits' and modularity's modules as the local pool does
    get_mp_context().set_forkserver_preload(["distributed", __name__, "igraph", "powerlaw", "scipy.optimize"])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the server, which its children keep
    env = "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"
    before = os.environ.get(env)
    os.environ[env] = "critical"  # read when the server imports distributed
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
        if before is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = before


def _start_local(distributed, n: int, stack: contextlib.ExitStack):
    """A started :class:`distributed.LocalCluster` of ``n`` one-thread worker processes; ``stack``
    closes it and removes its scratch directory."""
    import dask

    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="topoprune-dask-"))
    fork = threading.current_thread() is threading.main_thread() \
        and "forkserver" in multiprocessing.get_all_start_methods()
    method = {"distributed.worker.multiprocessing-method": "forkserver"} if fork else {}
    stack.enter_context(dask.config.set({"temporary-directory": scratch, **method}))
    stack.enter_context(_level("distributed", logging.ERROR))  # its scheduler and nannies run in this process
    log.info("starting a local Dask cluster of %d worker process%s", n, "" if n == 1 else "es")
    with deferred_signals():  # a cluster half started could not be closed
        if fork:
            _forkserver()
        try:
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                               dashboard_address=":0", silence_logs=logging.ERROR)
        except Exception as exc:  # e.g. a script without a main guard, run again by every new process
            raise ClusterError(f"the local Dask cluster did not start ({short(exc)}); from a Python script, "
                               "start it under `if __name__ == '__main__':`") from None
        stack.callback(_close_quietly, cluster)
    return cluster


@contextlib.contextmanager
def connect(config: AnalysisConfig, n_tasks: int):
    """A :class:`distributed.Client` of ``config.scheduler``; a started local cluster is closed on exit.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached within ``config.connect_timeout`` (one line naming it).
    """
    require_distributed()
    import distributed

    n_local = local_workers(config.scheduler)
    with contextlib.ExitStack() as stack:
        if n_local is not None:
            target = _start_local(distributed, n_workers(n_local, n_tasks), stack)
        else:
            _probe(config.scheduler, config.connect_timeout)
            target = config.scheduler
        client = distributed.Client.__new__(distributed.Client)  # kept when __init__ fails, to be closed at once
        try:
            client.__init__(target, timeout=config.connect_timeout, set_as_default=False)
        except Exception as exc:  # OSError, TimeoutError; garbage from something that is no scheduler
            with contextlib.suppress(Exception):
                client.close(timeout=1)
            raise ClusterError(f"cannot connect to the Dask scheduler at {config.scheduler} "
                               f"({type(exc).__name__}: {short(exc)})") from None
        stack.callback(_close_quietly, client)
        if n_local is None and not client.scheduler_info().get("workers"):
            log.warning("the Dask cluster at %s has no workers yet: the analysis waits for some", config.scheduler)
        yield client


def _close_quietly(obj) -> None:
    """Close a client or cluster; what distributed logs while its workers go is not the user's concern."""
    with _level("distributed", logging.CRITICAL):
        obj.close()


def _result(future, what: str, scheduler: str):
    """The result of a task (whose warnings are logged here); a lost worker or a cancelled task as
    one line naming ``what``."""
    from distributed import KilledWorker

    try:
        value, warnings = future.result()
    except KilledWorker as exc:
        last = getattr(getattr(exc, "last_worker", None), "address", None)
        raise ClusterError(f"{what}: the Dask worker analysing it died "
                           + (f"({last}; its log says why)" if last else f"({short(exc)})")) from None
    except CancelledError as exc:
        raise ClusterError(f"{what}: cancelled by the Dask cluster at {scheduler} ({short(exc)})") from None
    for name, level, message in warnings:
        logging.getLogger(name).log(level, "%s", message)
    return value


def analyze_on_cluster(path: str, order: list[str], by_tensor: dict[str, list[MatrixSpec]], config: AnalysisConfig,
                       bar, journal=None, stored: dict | None = None,
                       stored_blocks: dict | None = None) -> tuple[list[dict], dict, dict, list[dict]]:
    """Analyse the tensors ``order`` of the checkpoint at ``path`` on the cluster ``config.scheduler``.

    Parameters
    ----------
    path : str
        Absolute checkpoint path, read by the workers (:func:`check_request`).
    order, by_tensor : list of str, dict
        Tensor names in analysis order; tensor name -> the :class:`MatrixSpec` of its matrices.
    config : AnalysisConfig
        The analysis settings.
    bar : Progress
        Progress over matrices, advanced as each tensor's task completes.
    journal, stored, stored_blocks : optional
        As for :func:`~topoprune.graph.local.analyze_locally` (the whole model's rows: ``"model"``).

    Returns
    -------
    rows, degrees, patterns, layered, workers
        What the local analysis collects, in the same order; ``workers``: the cluster's worker count.
    """
    from distributed import as_completed

    members = [(t, s) for t in order for s in by_tensor[t] if s.block >= 0]
    blocks: dict = defaultdict(list)
    if config.block_modularity or config.model_modularity:
        for tensor, spec in members:
            blocks[(spec.side, spec.block)].append((tensor, spec))
    stored, stored_blocks = stored or {}, stored_blocks or {}  # finished earlier: not submitted
    whole = bool(config.model_modularity and blocks) and "model" not in stored_blocks
    blocks = {k: v for k, v in blocks.items() if k not in stored_blocks}
    todo = [t for t in order if t not in stored]
    token, expected, n_local = uuid.uuid4().hex, versions(), local_workers(config.scheduler)
    with connect(config, len(todo) + len(blocks) + whole) as client:
        futures: list = []
        try:
            def submit(fn, name, what, detail, **kw):
                return client.submit(fn, path, what, detail, config, token, expected, pure=False,
                                     key=f"topoprune-{name}-{token}", **kw)

            tensor_futures = {submit(tensor_task, f"tensor-{i}", t, by_tensor[t]): t for i, t in enumerate(todo)}
            layered_futures = [(submit(layered_task, f"block-{i}", items, False), f"{side} block {block}".lstrip(),
                                (side, block)) for i, ((side, block), items) in enumerate(sorted(blocks.items()))]
            if whole:  # the largest task: first in line
                layered_futures.append((submit(layered_task, "model", members, True, priority=1), "whole-model graph",
                                        "model"))
            futures, results = [*tensor_futures, *(f for f, _, _ in layered_futures)], dict(stored)
            for fut in as_completed(list(tensor_futures), loop=client.loop):
                tensor = tensor_futures[fut]
                results[tensor] = _result(fut, tensor, config.scheduler)
                if journal is not None:
                    journal.put_tensor(tensor, results[tensor])
                bar.advance(len(by_tensor[tensor]), sum(edges_of(r) for r, _, _ in results[tensor]),
                            by_tensor[tensor][-1].name)
            done = [(spec, *out) for t in order for spec, out in zip(by_tensor[t], results.pop(t))]  # local order
            rows = [row for _, row, _, _ in done]
            degrees = {spec.name: deg for spec, _, deg, _ in done if deg is not None}
            patterns = {spec.name: pattern for spec, _, _, pattern in done if pattern is not None}
            _check_threshold(rows, config)
            layered_rows = dict(stored_blocks)
            for fut, what, key in layered_futures:
                layered_rows[key] = _result(fut, what, config.scheduler)
                if journal is not None:
                    journal.put_block(block_name(key), layered_rows[key])
            last = sorted(layered_rows, key=lambda k: (k == "model", () if k == "model" else k))  # blocks, model
            layered = [row for key in last for row in layered_rows[key]]
            workers = max(1, len(client.scheduler_info().get("workers", ())))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                client.cancel(futures)  # a running cluster stops the work nobody waits for any more
            if not isinstance(exc, KeyboardInterrupt):
                _release(client, token, n_local)
            raise
        _release(client, token, n_local)
    return rows, degrees, patterns, layered, workers


def _release(client, token: str, n_local: int | None) -> None:
    """Have a running cluster's workers close the checkpoint (a pickle or GGUF may be large)."""
    if n_local is None:
        with contextlib.suppress(Exception):
            client.run(forget, token, on_error="ignore")
