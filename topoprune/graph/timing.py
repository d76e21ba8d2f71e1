"""Where an analysis spends its time: seconds per matrix and stage, a per-stage summary, the progress bar.

Every analysed matrix records the seconds of each of its :data:`STAGES`:

==============  ===================================================================================
``read``        reading its tensor from the checkpoint, orienting it and casting it to float32 on the
                analysis's device (a fused tensor's read time is shared among its matrices by size)
``edges``       selecting the edges (density / threshold / nonzero), the CSR graph, the packed edges
                sent to a worker and the edge-density map
``degrees``     in- and out-degrees, strengths and their statistics
``fits``        the power-law fits of both degree sequences
``modularity``  Leiden community detection on the matrix's graph
==============  ===================================================================================

A stage that did not run (no fits, no modularity, no edges) counts 0 s. The times are measured
in the process that ran the stage (the analysis's own process, a pool worker, a Dask worker),
and :func:`~topoprune.graph.analysis.analyze_report` keeps them in ``report.meta["timing"]``
(saved in ``report.json``), not in the matrices table, whose values do not depend on how fast a
machine is::

    {"device": "cpu", "backend": "processes", "workers": 2, "wall_s": 12.5,
     "matrices": [{"name": ..., "n_edges": ..., "t_read": ..., ..., "t_modularity": ...}, ...],
     "stages": [{"stage": "read", "seconds": ..., "edges": ..., "edges_per_s_per_core": ...}, ...]}

:func:`timing_table` and :func:`stage_table` give both lists as tables. A stage's ``seconds`` are
summed over the matrices, i.e. over the processes that ran it side by side, so
``edges_per_s_per_core = edges / seconds`` is what one core does: ``workers`` busy workers do about
``workers`` times as many edges per second of wall time. Block and whole-model graphs are not
included. :class:`Progress` is the analysis's progress bar.
"""
from __future__ import annotations

import math
import time

import pandas as pd

#: The stages of a matrix's analysis, in order.
STAGES = ("read", "edges", "degrees", "fits", "modularity")
#: The per-matrix time columns, one per stage.
TIME_COLUMNS = tuple(f"t_{s}" for s in STAGES)


class Stopwatch:
    """Adds the seconds since the previous :meth:`lap` (or since it was made) to ``into["t_<stage>"]``."""

    def __init__(self, into: dict):
        self.into, self.last = into, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        key = f"t_{stage}"
        self.into[key] = self.into.get(key, 0.0) + (now - self.last)
        self.last = now


def edges_of(row: dict) -> int:
    """The edge count of a report row (0 when it has none, e.g. ``status="nonfinite"``)."""
    n = row.get("n_edges")
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) else 0


def collect(rows: list[dict], *, device: str, backend: str, workers: int, wall_s: float) -> dict:
    """The ``report.meta["timing"]`` entry from the analysed rows (which keep their ``t_*`` keys)."""
    matrices = [dict(name=r["name"], n_edges=edges_of(r), **{c: float(r.get(c, 0.0)) for c in TIME_COLUMNS})
                for r in rows]
    edges = sum(m["n_edges"] for m in matrices)
    stages = []
    for stage, col in zip(STAGES, TIME_COLUMNS):
        seconds = sum(m[col] for m in matrices)
        stages.append(dict(stage=stage, seconds=seconds, edges=edges,
                           edges_per_s_per_core=edges / seconds if seconds > 0 else None))
    return dict(device=device, backend=backend, workers=int(workers), wall_s=float(wall_s), matrices=matrices,
                stages=stages)


def _timing(report) -> dict:
    meta = report if isinstance(report, dict) else getattr(report, "meta", None) or report.attrs
    return meta.get("timing") or {}


def timing_table(report) -> pd.DataFrame:
    """One row per matrix: ``name``, ``n_edges`` and the :data:`TIME_COLUMNS` (seconds).

    Parameters
    ----------
    report : Report, DataFrame or dict
        A :class:`~topoprune.graph.report.Report` (saved and loaded too), the table
        :func:`~topoprune.analyze` returns (its ``attrs``), or the report's ``meta``.
    """
    return pd.DataFrame(_timing(report).get("matrices", []), columns=["name", "n_edges", *TIME_COLUMNS])


def stage_table(report) -> pd.DataFrame:
    """One row per stage: ``stage``, ``seconds`` (summed over matrices), ``edges``, ``edges_per_s_per_core``."""
    return pd.DataFrame(_timing(report).get("stages", []),
                        columns=["stage", "seconds", "edges", "edges_per_s_per_core"])


def _si(x) -> str:
    """``1234567`` -> ``"1.23M"``."""
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_stages(report) -> list[str]:
    """The per-stage summary as lines of text (the command line prints them at ``-v``)."""
    t = _timing(report)
    if not t:
        return []
    lines = [f"time per stage ({t['workers']} worker{'s' if t['workers'] != 1 else ''}, {t['backend']}, "
             f"device {t['device']}; {t['wall_s']:.2f} s wall):",
             f"  {'stage':<12}{'seconds':>10}{'edges':>10}{'edges/s/core':>14}"]
    for s in t["stages"]:
        rate = _si(s["edges_per_s_per_core"])
        lines.append(f"  {s['stage']:<12}{s['seconds']:>10.3f}{_si(s['edges']):>10}{rate:>14}")
    return lines


class Progress:
    """The progress bar of an analysis: matrices done / total, elapsed and remaining time (ETA), matrices
    per second and, as postfix, edges per second and the last matrix's name.

    Parameters
    ----------
    total : int
        Matrices to analyse.
    enabled : bool
        Show the bar (``False``: nothing is drawn, as under ``--quiet`` or without a terminal).
    file : file-like, optional
        Where the bar goes (tqdm's default: stderr).
    """

    def __init__(self, total: int, enabled: bool, file=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc="analyze", unit="matrix", leave=False,
                        dynamic_ncols=True, file=file)
        self.edges, self.start = 0, time.perf_counter()

    def advance(self, n_matrices: int, n_edges: int, name: str = "") -> None:
        """Count ``n_matrices`` more matrices done, holding ``n_edges`` edges; ``name`` the last one."""
        self.edges += int(n_edges)
        rate = self.edges / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{_si(rate)} edges/s {name[-40:]}".rstrip(), refresh=False)
        self.bar.update(n_matrices)

    def finished(self, pending: dict, wait: bool = False) -> None:
        """Count the matrices of ``pending`` (``{future: (n_edges, name)}``) whose work is done (``wait``: all of
        them, as they finish), and forget them."""
        from concurrent.futures import as_completed

        for fut in (as_completed(list(pending)) if wait else [f for f in list(pending) if f.done()]):
            self.advance(1, *pending.pop(fut))

    def close(self) -> None:
        self.bar.close()
