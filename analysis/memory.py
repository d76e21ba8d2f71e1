"""Peak memory of an analysis, measured in a fresh process, and the load other processes put on the machine.

``ru_maxrss`` only grows, so an analysis's peak is measured in a process of its own
(:func:`run_rss_child`), which must import nothing heavy before the analysis starts
(``analysis.llama_checkpoint.rss_child``). On a small shared machine a concurrent job skews
timings, so the CPU time other processes used during a measurement is recorded next to it
(:class:`CpuMeter`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9  # decimal gigabytes throughout

RSS_SLACK = 0.6 * GB


class CpuMeter:
    """CPU time used on the machine by *other* processes while a block runs (on a small shared
    machine a concurrent job skews timings, so the load is recorded next to them)."""

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as fh:
                v = [int(x) for x in fh.readline().split()[1:]]
        except OSError:
            return float("nan")
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self.t0, self.b0, self.o0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.b0) - (self._own() - self.o0)
        self.foreign_cpus = max(other, 0.0) / wall if wall > 0 else float("nan")  # average busy CPUs

    def __float__(self):
        return float(self.foreign_cpus)


def run_rss_child(path: Path, n_jobs: int, modularity: bool = False, *, module: str = "analysis.bench_analysis",
                  extra: tuple = ()) -> dict:
    """Run ``python -m module --rss-child PATH N_JOBS MODULARITY *extra`` (from the repository root) in a
    fresh process (``analysis.llama_checkpoint.rss_child``); return what it printed, with the CPUs other
    processes kept busy."""
    # Linux keeps ru_maxrss across exec: a child exec'd straight from this (large) process would
    # report this process's peak. A shell that forks before exec gives it a fresh count.
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh",
           sys.executable, "-m", module, "--rss-child", str(path), str(n_jobs),
           str(int(modularity)), *map(str, extra)]
    with CpuMeter() as meter:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["foreign_cpus"] = float(meter)
    return out
