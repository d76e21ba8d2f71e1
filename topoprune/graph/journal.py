"""The finished part of one checkpoint's analysis, kept on disk so an interrupted analysis resumes.

An analysis given a journal (``analyze_report(..., journal=DIR)``; the command line keeps one beside
``--out`` while it runs) records each tensor as soon as every matrix read from it is complete —
its report rows with fits and modularity, its degree sequences and edge-density maps — and each
block's layered-graph rows as soon as they are. Analysed again with the same settings, the same
checkpoint reads them back instead of recomputing them: a 7B-shaped checkpoint interrupted after
twenty minutes loses at most the matrices in flight, not the twenty minutes. The result is the
report the uninterrupted analysis gives: rows are stored as JSON (a float's ``repr`` reads back the
same float), arrays in ``.npz`` files read without pickle.

Layout of ``DIR``::

    manifest.json      the settings and the checkpoint: its path, and its files' sizes and mtimes
    t-<sha1>.npz       one tensor: ``rows`` (JSON text), ``in_<i>``/``out_<i>`` degrees and
                       ``pattern_<i>`` of its ``i``-th matrix
    b-<sha1>.json      the layered rows of one block (or of the whole model)

Every entry is written to a temporary name and renamed, so an entry is complete or absent. A
journal written under other settings, or for a checkpoint whose files have changed since, is
emptied when opened (with a warning): its entries describe another analysis.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..io import atomic_path, short, take_lock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
#: Bumped when what an entry holds changes: older journals are then emptied, not misread.
FORMAT = 1


def _plain(value):
    """A JSON-ready copy of a row value (numpy scalars as Python numbers)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def source_signature(path) -> list | None:
    """``[name, size, mtime_ns]`` of the checkpoint file, or of the files at the top of its directory;
    ``None`` when ``path`` is not a file or directory (a model or state dict in memory)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        return [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in files]
    except OSError:
        return None


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as fh:  # np.savez would append ".npz" to the temporary path's name
        np.savez(fh, **arrays)


def _is_entry(path: Path) -> bool:
    return path.suffix in (".npz", ".json") and path.name[:2] in ("t-", "b-")


def _key(kind: str, name: str) -> str:
    return f"{kind}-{hashlib.sha1(name.encode()).hexdigest()[:20]}"


class Journal:
    """The finished tensors and blocks of one checkpoint's analysis in ``directory``.

    Parameters
    ----------
    directory : path
        Created when missing. Entries of another analysis found there are removed.
    settings : dict
        What decides the results (:meth:`~topoprune.graph.config.AnalysisConfig.results_settings`).
    source : path
        The checkpoint analysed; its signature (:func:`source_signature`) is kept with the
        entries, which are discarded when it has changed.

    Raises
    ------
    CheckpointError
        When ``directory`` cannot be created or written (one line naming it).
    ConfigError
        When another analysis holds it (its ``.lock``, held until :meth:`close`).
    """

    def __init__(self, directory, settings: dict, source):
        self.dir, self._lock = Path(directory), None
        self.manifest = dict(format=FORMAT, settings=settings, source=str(os.path.abspath(source)),
                             files=source_signature(source))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = take_lock(self.dir, LOCK, f"{self.dir}: another topoprune analyze is using this journal "
                                                   "(and output) right now")
            stored = self._stored_manifest()
            if stored != json.loads(json.dumps(self.manifest)):
                entries = self._entries()
                if entries and stored is not None:
                    log.warning("%s: %d finished tensor(s) and block(s) of an analysis with other settings or of "
                                "a changed checkpoint; discarded", self.dir, len(entries))
                for p in entries:
                    p.unlink()
                with atomic_path(self.dir / MANIFEST) as tmp:
                    tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")
        except OSError as exc:
            raise CheckpointError(f"{self.dir}: cannot keep the analysis journal here ({short(exc, 150)})") from None
        self._names = {p.stem for p in self._entries()}
        if self._names:
            log.info("%s: resuming with %d finished tensor(s) and block(s)", self.dir, len(self._names))

    def close(self) -> None:
        """Let another analysis use the journal."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _stored_manifest(self) -> dict | None:
        try:
            return json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def _entries(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if _is_entry(p)]

    def __len__(self) -> int:
        return len(self._names)

    # ------------------------------------------------------------------ tensors
    def has_tensor(self, name: str) -> bool:
        return _key("t", name) in self._names

    def tensor(self, name: str) -> list[tuple[dict, tuple | None, np.ndarray | None]] | None:
        """``[(row, (in_deg, out_deg) or None, pattern or None), ...]`` of tensor ``name``, or ``None``
        when it is not finished (or its entry cannot be read: it is then recomputed)."""
        key = _key("t", name)
        if key not in self._names:
            return None
        try:
            with np.load(self.dir / f"{key}.npz", allow_pickle=False) as z:
                rows = json.loads(str(z["rows"]))
                out = []
                for i, row in enumerate(rows):
                    deg = (z[f"in_{i}"], z[f"out_{i}"]) if f"in_{i}" in z else None
                    out.append((row, deg, z[f"pattern_{i}"] if f"pattern_{i}" in z else None))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("%s: unreadable journal entry of %s (%s); analysed again", self.dir, name, short(exc, 100))
            self._names.discard(key)
            return None
        return out

    def put_tensor(self, name: str, results) -> None:
        """Record tensor ``name`` as finished: ``results`` as :meth:`tensor` returns them."""
        arrays = {"rows": np.array(json.dumps([{k: _plain(v) for k, v in row.items()} for row, _, _ in results]))}
        for i, (_, deg, pattern) in enumerate(results):
            if deg is not None:
                arrays[f"in_{i}"], arrays[f"out_{i}"] = np.asarray(deg[0]), np.asarray(deg[1])
            if pattern is not None:
                arrays[f"pattern_{i}"] = np.asarray(pattern)
        key = _key("t", name)
        self._write(key, ".npz", lambda tmp: _savez(tmp, arrays))

    # ------------------------------------------------------------------ blocks
    def block(self, name: str) -> list[dict] | None:
        """The layered rows of block ``name`` (any string naming it), or ``None`` when not finished."""
        key = _key("b", name)
        if key not in self._names:
            return None
        try:
            return json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable journal entry of %s (%s); analysed again", self.dir, name, short(exc, 100))
            self._names.discard(key)
            return None

    def put_block(self, name: str, rows: list[dict]) -> None:
        text = json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows])
        self._write(_key("b", name), ".json", lambda tmp: tmp.write_text(text))

    def _write(self, key: str, suffix: str, write) -> None:
        try:
            with atomic_path(self.dir / f"{key}{suffix}") as tmp:
                write(tmp)
        except OSError as exc:  # a full disk costs the resume, not the analysis
            log.warning("%s: could not record a finished entry (%s)", self.dir, short(exc, 120))
            return
        self._names.add(key)

    def remove(self) -> None:
        """Delete the journal (the analysis it served is complete)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def beside(out) -> Path:
    """The journal of the analysis writing report directory ``out``: its hidden sibling ``.<name>.journal``."""
    out = Path(os.path.abspath(Path(out).expanduser()))
    return out.parent / f".{out.name}.journal"


def n_entries(directory) -> int:
    """Finished tensors and blocks recorded in the journal ``directory`` (0 when there is none)."""
    try:
        return sum(_is_entry(p) for p in Path(directory).iterdir())
    except OSError:
        return 0


def settle(directory, error: BaseException | None = None) -> int:
    """Deal with the journal ``directory`` when its analysis ends; return the entries kept.

    Removed after success (``error`` is ``None``), after bad input (a ``TopopruneError``: the
    checkpoint or the settings must change, and the entries with them), after a file-system error
    (reported as such; the report could not be written) and when it holds nothing; kept after an
    interrupt, a lost cluster, a killed worker or any other failure, for the next run to resume.
    """
    from ..errors import ClusterError, TopopruneError

    n = n_entries(directory)
    bad_input = isinstance(error, (TopopruneError, OSError)) and not isinstance(error, ClusterError)
    if error is None or bad_input or not n:
        shutil.rmtree(directory, ignore_errors=True)
        return 0
    return n


def for_output(out, *, resume: bool, overwrite: bool) -> Path:
    """The journal of a one-checkpoint analysis writing the report directory ``out`` (:func:`beside`):
    an interrupted analysis kept there is continued with ``resume``, discarded with ``overwrite``
    alone, and refused otherwise.

    Raises
    ------
    ConfigError
        An interrupted analysis is kept and neither ``resume`` nor ``overwrite`` says what to do with it.
    """
    from ..errors import ConfigError

    from ..io import locked_by_other

    journal = beside(out)
    kept = n_entries(journal)
    if journal.is_dir() and locked_by_other(journal, LOCK):
        raise ConfigError(f"{out}: another topoprune analyze is writing this output right now ({journal})")
    if kept and not resume:
        if not overwrite:
            raise ConfigError(f"{out}: an interrupted analysis is kept in {journal} ({kept} tensor(s) finished); "
                              "continue it with --resume or discard it with --overwrite")
        shutil.rmtree(journal)
    elif resume and not kept:
        log.info("%s: no interrupted analysis to resume; starting afresh", out)
    return journal


def block_name(key) -> str:
    """The journal name of block ``(side, block)``, or ``"model"`` for the whole-model graphs' rows."""
    if key == "model":
        return key
    side, block = key
    return f"{side}:{block}"


__all__ = ["Journal", "source_signature", "block_name", "beside", "for_output", "n_entries", "settle", "MANIFEST"]
