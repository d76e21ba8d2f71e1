"""A fingerprint of the code a benchmark measures, stored with its results.

``--resume`` reuses stored results only when the fingerprint matches: results produced by other
code are measured afresh, never mixed with new ones.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_fingerprint(*parts: str) -> str:
    """SHA-256 (first 16 hex digits) of the package sources under ``parts`` (e.g. ``"train"``,
    ``"models.py"``) and of the calling benchmark's own script, in a fixed order."""
    import inspect

    files: list[Path] = []
    for part in parts:
        path = ROOT / "topoprune" / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    caller = Path(inspect.stack()[1].filename).resolve()
    h = hashlib.sha256()
    for f in [*files, *([caller] if caller.is_file() else [])]:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
