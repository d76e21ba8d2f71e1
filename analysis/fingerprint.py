"""A fingerprint of the code a benchmark measures, stored with its results.

``--resume`` reuses stored results only when the fingerprint matches: results produced by other
code are measured afresh, never mixed with new ones. A benchmark names its measuring code (the
functions that train and measure, and the tables of settings they run) so that edits of its
tables, figures and help texts keep its results.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_fingerprint(*parts: str, measured: tuple = ()) -> str:
    """SHA-256 (first 16 hex digits) of the package sources under ``parts`` (e.g. ``"train"``,
    ``"models.py"``), in a fixed order, and of the benchmark's measuring code.

    Parameters
    ----------
    *parts
        Sub-packages or modules of ``topoprune`` whose sources the results depend on.
    measured
        The benchmark's measuring code: functions and classes (their source) and settings tables
        (their ``repr``). Empty: the calling script's whole text.
    """
    files: list[Path] = []
    for part in parts:
        path = ROOT / "topoprune" / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    if measured:
        for item in measured:
            code = inspect.isfunction(item) or inspect.isclass(item)
            h.update((inspect.getsource(item) if code else repr(item)).encode())
    else:
        caller = Path(inspect.stack()[1].filename).resolve()
        if caller.is_file():
            h.update(str(caller.relative_to(ROOT)).encode())
            h.update(caller.read_bytes())
    return h.hexdigest()[:16]


def provenance() -> dict:
    """The commit the working tree is at, and whether it has uncommitted changes to the package
    or the benchmarks, for a results file's ``"commit"`` (read by ``analysis/stale.py``)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "topoprune", "analysis/*.py")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": bool(dirty)}
