"""Topology during training without stalling it: degrees now, fits and modularity in the background.

A synchronous snapshot (:func:`~topoprune.train.topology.topology_snapshot`) runs the whole analysis
in the training process -- on MiniLM about 2.6 s, several training steps, every time. A
:class:`TopologyTracker` splits the same computation:

* **now, in the training process**: the edges of every attention and MLP matrix (the analysis's own
  edge rule, :func:`~topoprune.graph.bipartite.select_edges`, ``|w| >= eps``, on the training
  device) and their degrees -- vectorised row and column counts -- and the degree statistics
  (:func:`~topoprune.graph.metrics.degree_stats`): sparsity, degree sd, connectivity sd, Gini,
  dead neurons. A few milliseconds per matrix;
* **later, in one background process** at low priority: the power-law fits of the in-degrees and
  the Leiden modularity of the MLP graphs, from the degree sequences and a bit-packed copy of each
  MLP edge mask (a few hundred kB). :meth:`TopologyTracker.poll` collects the snapshots that are
  ready, with the step they belong to; :meth:`TopologyTracker.finish` waits for the rest.

The completed snapshot equals the synchronous one (the same edges, degrees, fit and Leiden seed;
a test compares them).

When the training loop leaves no core idle (a CPU run on few cores), the background process cannot
keep up with frequent snapshots: it runs at low priority and its work is CPU time the loop would
otherwise use. Rather than pile up work that the end of training would wait for, a snapshot whose
background work has not started when a newer snapshot is taken keeps its degree statistics only
(``skip_stale``, the default; :attr:`TopologyTracker.skipped` counts them). The work is submitted
per matrix, so at most the matrices already handed to the process are finished in vain; the last
snapshot, and every snapshot that is waited for (evaluation, checkpoints, the end), is complete. If the background work fails -- the process dies, or raises -- the failure
is reported once (a warning) and training goes on with the degree statistics only.

The degree sequences of the last snapshot stay available per role (:attr:`TopologyTracker.degrees`)
for TensorBoard histograms and end-of-run figures.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import pandas as pd
import torch

from ..graph.binding import Binding
from ..graph.bipartite import from_mask, select_edges
from ..graph.degrees import mask_degrees
from ..graph.config import FitConfig, GraphConfig, ModularityConfig
from ..graph.fits import fit_degrees
from ..graph.metrics import degree_stats, edge_modularity
from ..graph.roles import ATTENTION_ROLES, MLP_ROLES
from .topology import summarize_topology

log = logging.getLogger(__name__)

#: Niceness of the background process where the idle scheduling class is not available.
BACKGROUND_NICE = 15


def background_priority(nice: int, pid: int = 0) -> str:
    """Lower the CPU priority of process ``pid`` (0: this one) for background work; return what was set.

    ``nice > 0``: Linux's ``SCHED_IDLE`` class where available -- the process runs only on cycles
    no normal process wants (CFS weight 3 against 1024 for a normal process, 36 at niceness 15),
    so training threads that use every core are not preempted by it, which matters for OpenMP
    threads that wait for each other at every operation -- else niceness ``nice``. ``0``: unchanged.
    """
    if not nice:
        return "normal"
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass
    try:
        if pid:
            os.setpriority(os.PRIO_PROCESS, pid, max(nice, os.getpriority(os.PRIO_PROCESS, pid)))
        else:
            os.nice(nice)
        return f"nice {nice}"
    except (AttributeError, OSError):  # pragma: no cover - not permitted
        return "normal"


def _background_init(parent: int) -> None:
    """Start-up of the background process. Its priority is set from the training process only
    (:meth:`TopologyTracker._lower` at once, :meth:`TopologyTracker._waiting` while the run waits):
    lowering it here as well, after the imports, would undo a raise made in the meantime and leave
    the run waiting on an idle-class process that a busy machine never schedules."""
    from ..graph.workers import worker_init

    worker_init(parent)


def heavy_metrics(jobs: list, fit: FitConfig | None, modularity: ModularityConfig | None) -> dict:
    """In-degree power-law fits and MLP modularity of a snapshot's matrices (run in the background).

    Parameters
    ----------
    jobs : list of (name, in_degrees, packed_mask or None, shape)
        ``packed_mask`` (``numpy.packbits`` of the ``[out, in]`` edge mask) is given for the
        matrices whose modularity is wanted.
    """
    out = {}
    for name, in_deg, packed, shape in jobs:
        row = {}
        if fit is not None:
            f = fit_degrees(in_deg, fit).as_dict("in_")
            row.update(in_alpha=f["in_alpha"], in_verdict=f["in_verdict"])
        if modularity is not None and packed is not None:
            bits = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
            g = from_mask(torch.from_numpy(bits))
            com = edge_modularity(g.n_in + g.n_out, g.edge_list(), None, modularity)
            row.update(modularity=com.modularity, n_communities=com.n_communities)
        out[name] = row
    return out


class TopologyTracker:
    """Snapshots of a training model's topology: cheap statistics now, the rest in the background.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (wrappers such as DDP are unwrapped).
    eps : float
        Edges are weights with ``|w| >= eps``.
    fits, modularity : bool
        In-degree power-law fits; Leiden modularity of the MLP matrices.
    seed : int
        Seed of the community detection.
    background : bool
        Run fits and modularity in a background process (else at once, in this process).
    nice : int
        Priority of the background process: > 0 the idle scheduling class, or this niceness where
        that is not available (:func:`background_priority`); 0: as the training process.
    work : callable
        The background computation, ``work(jobs, fit, modularity) -> {name: {column: value}}``
        (:func:`heavy_metrics`; a module-level function, as it is pickled for the worker).
    skip_stale : bool
        Drop the background work of a snapshot that has not started when a newer snapshot is
        taken (``False``: every snapshot is completed, however long the backlog).
    rank, world : int
        Under ``torch.distributed``: this process's rank and the number of ranks. Every rank
        takes the same snapshots and does the background work of every ``world``-th matrix
        (``jobs[rank::world]``); :meth:`exchange`, called by every rank at the same points, brings
        the shares to rank 0, which alone completes snapshots.

    Attributes
    ----------
    degrees : dict
        ``{role: (in_degrees [n_rows total], out_degrees [n_cols total])}`` of the last snapshot,
        every matrix of the role concatenated (int64 arrays).
    failed : str or None
        Why the background work stopped (after it failed once, snapshots hold degree statistics only).
    skipped : list of int
        Steps whose fits and modularity were dropped because newer snapshots came first.
    by_rank : dict
        ``{rank: matrices}`` whose fits and modularity each rank computed, over the completed
        snapshots (rank 0's view).
    """

    def __init__(self, model: torch.nn.Module, *, eps: float, fits: bool = True, modularity: bool = True,
                 seed: int = 0, background: bool = True, nice: int = BACKGROUND_NICE, work=heavy_metrics,
                 skip_stale: bool = True, rank: int = 0, world: int = 1):
        while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        self.binding = Binding(model)
        self.specs = [s for s in self.binding.specs if s.role in ATTENTION_ROLES + MLP_ROLES]
        self.graph = GraphConfig(threshold=eps, mode="threshold")
        self.fit = FitConfig() if fits else None
        self.modularity = ModularityConfig(seed=seed) if modularity else None
        self.background, self.nice, self.work, self.skip_stale = background, nice, work, skip_stale
        self.skipped: list[int] = []
        self.degrees: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.failed: str | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[int, tuple[list[Future], pd.DataFrame, dict | None]] = {}
        self.rank, self.world = int(rank), max(1, int(world))
        self.last_step: int | None = None
        self._lowered: set[int] = set()  # background processes whose priority is lowered
        self.by_rank: dict[int, int] = {}
        self._remote: dict[int, dict[int, dict | None]] = {}  # rank 0: step -> {rank: its share, None if dropped}
        self._dropped: list[int] = []  # other ranks: steps whose share was dropped, to report at the next exchange

    # -- the cheap part ---------------------------------------------------------------------
    def rows(self) -> tuple[pd.DataFrame, list]:
        """Per-matrix degree statistics now, and the jobs of the background part."""
        rows, jobs, degrees = [], [], {}
        with torch.no_grad():
            for spec in self.specs:
                w = self.binding.weight(spec).detach()
                mask = select_edges(w, self.graph, name=spec.tensor).mask  # [out, in]
                n_out, n_in = mask.shape
                in_deg, out_deg = mask_degrees(mask)  # int64, counted on the weights' device
                n_edges = int(in_deg.sum())
                degrees.setdefault(spec.role, ([], []))
                degrees[spec.role][0].append(in_deg)
                degrees[spec.role][1].append(out_deg)
                comp = "mlp" if spec.role in MLP_ROLES else "attention"
                row = {"name": spec.name, "role": spec.role, "component": comp, "block": spec.block, "side": spec.side,
                       "n_out": n_out, "n_in": n_in, "n_edges": n_edges, "status": "ok" if n_edges else "all_zero",
                       "in_verdict": "", "in_alpha": np.nan, "modularity": np.nan}
                if n_edges:
                    row.update(degree_stats(in_deg, n_in, prefix="in_"))
                    row.update(degree_stats(out_deg, n_out, prefix="out_"))
                    packed = None
                    if self.modularity is not None and comp == "mlp":
                        packed = np.packbits(mask.cpu().numpy().reshape(-1))
                    if self.fit is not None or packed is not None:
                        jobs.append((spec.name, in_deg, packed, (n_out, n_in)))
                rows.append(row)
        self.degrees = {role: (np.concatenate(i), np.concatenate(o)) for role, (i, o) in degrees.items()}
        # the analysis's row order, so that means over matrices are summed in the same order
        df = pd.DataFrame(rows).sort_values(["side", "block", "role", "name"], kind="stable").reset_index(drop=True)
        return df, jobs

    def snapshot(self, step: int, heads_remaining: dict | None = None) -> dict:
        """The degree statistics of now (fits and modularity follow from :meth:`poll`)."""
        df, jobs = self.rows()
        self.last_step = step
        wanted = bool(jobs) and (self.fit is not None or self.modularity is not None)
        if wanted and self.failed is not None and self.rank != 0:
            self._dropped.append(step)  # rank 0 is waiting for this rank's share
        elif wanted and self.failed is None:
            if self.skip_stale:
                self._drop_stale()
            mine = jobs[self.rank::self.world]  # [matrices of this rank]
            try:
                if self.background:
                    pool = self._executor() if mine else None
                    futures = [pool.submit(self.work, [job], self.fit, self.modularity) for job in mine]
                    self._lower(pool)
                else:
                    futures = [_done(self.work(mine, self.fit, self.modularity))]
            except Exception as exc:  # a broken pool refuses new work; a synchronous failure lands here
                self._fail(exc)
                if self.rank != 0:
                    self._dropped.append(step)
            else:
                self._pending[step] = (futures, df, heads_remaining)
        return summarize_topology(df, heads_remaining)

    def _drop_stale(self) -> None:
        """Cancel the pending snapshots whose work has not all started (they keep degree statistics)."""
        for step in sorted(self._pending):
            futures = self._pending[step][0]
            if any([f.cancel() for f in futures]):  # every one tried: none of a dropped snapshot's work is left
                del self._pending[step]
                self.skipped.append(step)
                self._remote.pop(step, None)
                if self.rank != 0:
                    self._dropped.append(step)
                log.debug("step %d: fits and modularity skipped (the background process is behind)", step)

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("topology fits and modularity stopped (%s); training goes on with degree statistics only",
                        self.failed)
        if self.rank != 0:
            self._dropped += list(self._pending)
        self._pending.clear()
        self.close()

    # -- the background part -------------------------------------------------------------------
    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_background_init, initargs=(os.getpid(),))
        return self._pool

    def _lower(self, pool) -> None:
        """Lower the new background process's priority from here, at once: in the process itself
        (its initializer) it would come only after seconds of imports at full priority."""
        for pid in list(getattr(pool, "_processes", None) or ()):
            if pid not in self._lowered:
                self._lowered.add(pid)
                background_priority(self.nice, pid)

    def _waiting(self, on: bool) -> None:
        """While training waits for the background work, run it at normal priority (an idle-class
        process on a machine that other jobs keep busy would otherwise make the wait unbounded);
        lower it again afterwards."""
        for pid in list(self._lowered):
            try:
                if on:
                    os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
                else:
                    background_priority(self.nice, pid)
            except (AttributeError, OSError):  # not Linux, not permitted, or the process is gone
                pass

    def _results(self, futures: list[Future]) -> dict | None:
        """This rank's share of a snapshot (waits for it); None if the background work failed."""
        heavy: dict = {}
        try:
            for future in futures:
                heavy.update(future.result())
        except Exception as exc:  # the worker raised, or died (BrokenProcessPool)
            self._fail(exc)
            return None
        return heavy

    def _ready(self, step: int) -> bool:
        return all(f.done() for f in self._pending[step][0]) and len(self._remote.get(step, ())) == self.world - 1

    def _complete(self, step: int) -> dict | None:
        futures, df, heads = self._pending.pop(step)
        heavy = self._results(futures)
        remote = self._remote.pop(step, {})
        if heavy is None:
            return None
        if any(part is None for part in remote.values()):  # another rank dropped its share
            self.skipped.append(step)
            return None
        for r, part in [(0, heavy), *remote.items()]:
            self.by_rank[r] = self.by_rank.get(r, 0) + len(part)
        for part in remote.values():
            heavy.update(part)
        df = df.copy()
        for col in ("in_alpha", "in_verdict", "modularity"):
            df[col] = [heavy.get(n, {}).get(col, df.at[i, col]) for i, n in enumerate(df["name"])]
        return summarize_topology(df, heads)

    def poll(self) -> list[tuple[int, dict]]:
        """The completed snapshots (step, all metrics) that are ready, in step order."""
        ready = [s for s in sorted(self._pending) if self._ready(s)]
        return [(s, snap) for s in ready if s in self._pending and (snap := self._complete(s)) is not None]

    def finish(self) -> list[tuple[int, dict]]:
        """Wait for every pending snapshot; return them completed, in step order (after
        :meth:`exchange` with ``wait``, when there are several ranks)."""
        self._waiting(True)
        try:
            return [(s, snap) for s in sorted(self._pending) if s in self._pending
                    and (snap := self._complete(s)) is not None]
        finally:
            self._waiting(False)

    def exchange(self, wait: bool) -> None:
        """Under ``torch.distributed``, hand the finished shares of the other ranks to rank 0.

        A collective (``all_gather_object``): every rank calls it at the same points. ``wait``:
        each rank first finishes its whole share, so that afterwards rank 0 can :meth:`finish`
        without waiting for anyone. Nothing happens with one rank.
        """
        if self.world == 1:
            return
        parts: dict[int, dict | None] = {}
        if self.rank != 0:
            self._waiting(wait)
            for step in sorted(self._pending):
                if step in self._pending and (wait or all(f.done() for f in self._pending[step][0])):
                    parts[step] = self._results(self._pending.pop(step)[0])  # a failure clears the rest
            parts.update({step: None for step in self._dropped})
            self._dropped = []
            if wait:
                self._waiting(False)
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, parts)
        if self.rank == 0:
            for r, got in enumerate(gathered[1:], start=1):
                for step, part in (got or {}).items():
                    if step in self._pending:  # else rank 0 has dropped the step itself
                        self._remote.setdefault(step, {})[r] = part

    def close(self) -> None:
        """End the background process (pending snapshots are dropped: :meth:`finish` first)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except Exception:  # pragma: no cover - a broken pool has nothing left to wait for
                pass


def _done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut
