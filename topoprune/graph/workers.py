"""Worker processes of an analysis: how many, how they start, and how they end.

* :func:`n_workers` caps the count at the CPUs this process may use and at the number of
  matrices to analyse (a worker without work only costs its start-up).
* :func:`worker_init` runs in every worker: one BLAS/OpenMP thread, Ctrl-C left to the parent,
  and the worker ends when its parent does (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, a
  thread watching the parent's pid elsewhere), so a killed ``topoprune`` leaves no orphans.
* :class:`Bounded` lets only a few tasks wait for a worker at a time, so the arguments of tasks
  submitted faster than the workers finish them do not pile up in the parent.
* :func:`stop` shuts an executor down: waiting for it after success, terminating its processes
  at once after an error or an interrupt (a long Leiden run is not waited for).
* :func:`deferred_signals` holds Ctrl-C and SIGTERM back while worker processes start (those of
  a local Dask cluster, :mod:`~topoprune.graph.cluster`), so none is left half started.
* :func:`map_large_allocations` has glibc give every large allocation its own memory map, handed
  back to the system when freed (the analysing processes' memory then stays near its working set).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor

log = logging.getLogger(__name__)

#: Most workers ``n_jobs=-1`` starts.
MAX_AUTO_WORKERS = 8
#: Linux ``prctl`` option that sends a signal to a process when its parent dies.
PR_SET_PDEATHSIG = 1
#: glibc ``mallopt`` parameter: the size from which an allocation gets its own memory map.
M_MMAP_THRESHOLD = -3
#: What :func:`map_large_allocations` sets it to (bytes).
MMAP_THRESHOLD = 4 << 20
_mapped: list[bool] = []


class Inline(Executor):
    """Runs submitted work at once (``n_jobs=1``), with the Executor interface."""

    def submit(self, fn, /, *args, **kwargs):
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


class Bounded(Executor):
    """``executor`` with at most ``limit`` tasks submitted and not yet finished: :meth:`submit` waits
    for a free slot. A queued task's arguments live in the parent until a worker takes it; without a
    bound, reading matrices faster than the workers cluster them kept every queued graph there."""

    def __init__(self, executor: Executor, limit: int):
        self.executor, self._slots = executor, threading.Semaphore(max(1, limit))

    def submit(self, fn, /, *args, **kwargs):
        self._slots.acquire()
        try:
            fut = self.executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _: self._slots.release())
        return fut

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def n_workers(n_jobs: int, n_tasks: int | None = None) -> int:
    """Worker count for ``n_jobs`` (-1: one per CPU, at most :data:`MAX_AUTO_WORKERS`).

    Never more than the CPUs available, nor than ``n_tasks`` (the matrices to analyse) when given.
    """
    n = min(cpu_count(), MAX_AUTO_WORKERS) if n_jobs == -1 else min(n_jobs, cpu_count())
    if n_tasks is not None:
        n = min(n, n_tasks)
    return max(1, n)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (its parent) ends."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)
        if armed:
            return
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="topoprune-parent-watch", daemon=True).start()


def worker_init(parent_pid: int | None = None) -> None:
    """Initializer of every worker process.

    One BLAS/OpenMP thread (pools of several processes on few cores thrash: 2 workers ran 2.2x
    slower without this on 2 cores); SIGINT ignored and SIGTERM at its default (the parent
    handles a Ctrl-C and ends its workers itself); exit when the parent ``parent_pid`` dies.
    """
    import torch
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    threadpool_limits(1)
    torch.set_num_threads(1)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM back until the block ends (main thread only), then handle them as
    they would have been: for starting worker processes that an interrupt must not leave half started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # KeyboardInterrupt, or whatever the handler does


def map_large_allocations() -> bool:
    """Give every allocation of :data:`MMAP_THRESHOLD` bytes or more its own memory map (glibc).

    glibc's threshold starts at 128 KiB and grows, each time such a map is freed, up to 32 MiB; the
    analysis's masks, edge lists and smaller float32 matrices (1–32 MB) are then carved out of the
    heap, whose freed space the next, differently sized matrix only partly reuses. A fixed 4 MiB
    threshold returns each one to the system when it is freed: on four blocks of a 3B-shaped
    checkpoint with modularity, the main process peaked at 0.67 GB instead of 0.94–1.0 GB, for
    about 4 % more wall time. Process-wide and once per process (the pool's forked workers inherit
    it); a no-op where the C library has no ``mallopt``. Returns whether the threshold is set.
    """
    if not _mapped:
        ok = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                ok = ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            except (OSError, AttributeError):
                ok = False
        _mapped.append(ok)
    return _mapped[0]


def executor(n_jobs: int, n_tasks: int | None = None) -> Executor:
    """A started pool of :func:`n_workers` processes, or :class:`Inline` for one worker."""
    n = n_workers(n_jobs, n_tasks)
    if n <= 1:
        return Inline()
    # fork shares the imported modules (no re-import cost); workers touch no torch state.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    if method == "fork":  # import the workers' heavy modules once here, not once per worker (~0.7 s each)
        import igraph  # noqa: F401
        import powerlaw  # noqa: F401
        import scipy.optimize  # noqa: F401
    ex = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(method),
                             initializer=worker_init, initargs=(os.getpid(),))
    try:
        for f in [ex.submit(int, 0) for _ in range(n)]:  # start workers now, before tensors are loaded
            f.result()
    except BaseException:
        stop(ex, kill=True)
        raise
    return ex


def stop(ex: Executor, *, kill: bool) -> None:
    """Shut ``ex`` down: wait for its work, or (``kill``) cancel it and end its processes at once."""
    if not kill or not isinstance(ex, ProcessPoolExecutor):
        ex.shutdown(wait=True, cancel_futures=True)
        return
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
