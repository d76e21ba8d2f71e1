"""What the benchmark scripts share: results files, resuming them, the machine record, markdown tables.

A results file is JSON under ``analysis/results/``, rewritten whole after every run (written beside
itself and swapped in, so an interrupted benchmark leaves the previous complete file), so that
``--resume`` continues where a run stopped; stored runs are dropped only with ``--fresh``
(:func:`kept`, :func:`load_done`). Which stored results a script may keep is decided by its code
fingerprint (:mod:`analysis.fingerprint`); figures are saved by :mod:`analysis.figsave`. Every
script records the machine with :func:`machine` and prints its tables with :func:`markdown_table`.
Scripts are run from the repository root as modules (``python -m analysis.bench_compact``), so
that they import these helpers, and the package, without editing ``sys.path``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_results(path: Path) -> dict:
    """The results stored at ``path``; an empty results record where there are none yet."""
    return json.loads(path.read_text()) if path.is_file() else {"settings": {}, "runs": {}, "latency": {}}


def save_results(path: Path, results: dict) -> None:
    """Write ``results`` to ``path`` atomically (never half-written)."""
    from topoprune.io import atomic_path  # not at import: a memory benchmark's child must import it itself

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))


def markdown_table(columns, rows) -> list[str]:
    """A markdown table as lines: the header, its rule, one line per row (cells written with ``str``)."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def fresh_option(parser) -> None:
    """Add ``--fresh`` to a benchmark's ``parser``: the one way to drop the runs its results file holds."""
    parser.add_argument("--fresh", action="store_true",
                        help="drop the runs the results file holds and measure afresh (git keeps the old file)")


def results_options(parser, out: Path, *, workdir: str | None = None) -> None:
    """Add a benchmark's ``--workdir`` (under ``~/.cache/topoprune``, where its runs' models are kept),
    ``--out`` (its results file, default ``out``), ``--resume`` and ``--fresh``."""
    if workdir:
        parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "topoprune" / workdir,
                            help="where the runs' models are kept")
    parser.add_argument("--out", type=Path, default=out, help="the results file")
    parser.add_argument("--resume", action="store_true", help="continue the stored runs made with the same settings "
                        "and code")
    fresh_option(parser)


def kept(stored: dict, same: bool, args, empty: dict, path: Path) -> dict:
    """The results a benchmark run continues: ``stored``, or ``empty`` -- never stored runs dropped unasked.

    With ``--resume`` the stored results are continued where they were made with the same
    settings and code (``same``). ``--fresh`` starts from ``empty``. Without either, or with
    ``--resume`` against runs of other settings or code, a file that holds runs is refused with one
    line naming it and exit code 2, rather than overwritten by the first new run.
    """
    n = len(stored.get("runs") or stored.get("rows") or {})
    if getattr(args, "fresh", False) or n == 0:
        return empty
    if args.resume and same:
        return stored
    if args.resume:
        refuse(f"{path}: its {n} stored runs were made with other settings or code; pass --fresh to measure "
               "afresh (git keeps the old file)")
    refuse(f"{path}: holds {n} stored runs; pass --resume to continue them or --fresh to measure afresh")


def refuse(message: str) -> None:
    """End a benchmark on a user's mistake: ``error: message`` on one line, exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def load_done(path: Path, args) -> list[dict]:
    """Finished rows of an earlier run of a benchmark that stores a list of ``rows`` (with ``--resume``;
    rows that failed are run again). A file that holds rows is refused without ``--resume`` or
    ``--fresh`` (:func:`kept`)."""
    if getattr(args, "fresh", False) or not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"# cannot resume from {path} ({exc}); starting afresh", file=sys.stderr, flush=True)
        return []
    kept(old, True, args, {}, path)
    return [r for r in old.get("rows", []) if "key" in r and not r.get("error")] if args.resume else []


def offline_env() -> None:
    """Keep Hugging Face libraries off the network (the benchmarks read only installed weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def machine() -> dict:
    """The machine a benchmark ran on: CPUs (usable and present, and their model), memory, GPU,
    torch threads, platform and the versions of the libraries measured (those installed)."""
    import importlib

    import torch

    import topoprune

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for name in ("numpy", "scipy", "networkx", "powerlaw", "igraph", "safetensors", "transformers"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            versions[name] = None
    return dict(nproc=nproc, cpu_count=os.cpu_count(), cpus=os.cpu_count(), cpu=cpu,
                mem_total_gb=round(mem / 1e9, 1) if mem else None, gpu=bool(torch.cuda.is_available()),
                torch_threads=torch.get_num_threads(), platform=platform.platform(), processor=platform.processor(),
                python=platform.python_version(), torch=torch.__version__, **versions, topoprune=topoprune.__version__)
