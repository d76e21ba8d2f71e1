"""The output directory of a many-checkpoint analysis: staged, locked, resumable.

An analysis of several checkpoints (:mod:`topoprune.graph.zoo`) writing ``OUT`` is built in the
sibling ``.OUT.partial/`` (:func:`staging_path`) and renamed onto ``OUT`` only when every
checkpoint has been dealt with, so ``OUT`` is always absent, an earlier output, or this complete
one. Unlike the temporary sibling of a single report, the staging directory has a fixed name and
survives an interruption: each finished checkpoint's sub-report is swapped complete into
``.OUT.partial/checkpoints/<label>/`` (built beside it with :class:`~topoprune.io.OutputDir`), the
tensors finished so far of the checkpoint being analysed are kept in ``.OUT.partial/.journals/<label>/``
(:mod:`~topoprune.graph.journal`), and :data:`RECORD` holds the analysis settings and which checkpoint each label stands for.

Rules (:class:`ZooDir`):

* Without ``resume`` or ``overwrite``, an existing ``OUT`` or an interrupted analysis in
  ``.OUT.partial/`` is refused; a non-empty ``OUT`` that topoprune did not write is refused always.
* ``resume`` continues the interrupted analysis, or else extends the finished one in ``OUT``
  (its sub-reports are linked into a new staging directory; ``OUT`` is replaced at the end).
  Sub-reports are reused only for the same checkpoint (same path) under the same settings;
  different settings are refused, naming what changed.
* ``overwrite`` discards an interrupted analysis and replaces ``OUT`` at the end.
* Two analyses cannot write the same ``OUT`` at once (the staging directory is locked).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..io import OutputDir, atomic_path, check_out, locked_by_other, short, take_lock
from .journal import n_entries

log = logging.getLogger(__name__)

#: Settings and checkpoints of the analysis, in the staging directory and in ``OUT``.
RECORD = "zoo.json"
#: Where the sub-reports go, one directory per checkpoint label.
SUBREPORTS = "checkpoints"
#: Where the finished tensors of the checkpoints being analysed are kept (:mod:`~topoprune.graph.journal`).
JOURNALS = ".journals"
_LOCK = ".lock"


def staging_path(out) -> Path:
    """Where the analysis writing ``out`` is built until it finishes: the sibling ``.<name>.partial``."""
    out = Path(os.path.abspath(Path(out).expanduser()))
    return out.parent / f".{out.name}.partial"


def _diff(stored, requested, prefix: str = "") -> list[str]:
    if not (isinstance(stored, dict) and isinstance(requested, dict)):
        return [] if stored == requested else [f"{prefix.rstrip('.')} {stored!r} -> {requested!r}"]
    out = []
    for key in sorted(set(stored) | set(requested)):
        out += _diff(stored.get(key), requested.get(key), f"{prefix}{key}.")
    return out


def _read_record(home: Path) -> dict | None:
    path = home / RECORD
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc.get("settings"), dict) or not isinstance(doc.get("checkpoints"), list):
            raise ValueError("no settings or checkpoints")
        return doc
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged analysis record ({short(exc, 120)})") from None


def _finished(home: Path) -> list[str]:
    """Labels of the complete sub-reports under ``home`` (hidden entries are unfinished ones)."""
    sub = home / SUBREPORTS
    if not sub.is_dir():
        return []
    return sorted(p.name for p in sub.iterdir()
                  if not p.name.startswith(".") and p.is_dir() and (p / "report.json").is_file())


class ZooDir:
    """Check, create, resume and finish the output directory of a many-checkpoint analysis.

    Parameters
    ----------
    out : str or Path
        The destination directory.
    settings : dict
        The analysis settings (JSON-like); stored in :data:`RECORD` and compared on ``resume``.
    resume, overwrite : bool
        See the module docstring; they exclude each other.
    reads : iterable of path
        The checkpoints read: ``out`` may not lie inside one or hold one.

    Raises
    ------
    ConfigError, CheckpointError
        At construction, before any work: a destination in the way, an interrupted analysis
        without ``resume``/``overwrite``, or settings that differ from the stored ones.
    """

    def __init__(self, out, settings: dict, *, resume: bool = False, overwrite: bool = False, reads=()):
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the analysis or replace it")
        self.raw, self.settings, self.resume, self.overwrite = str(out), settings, resume, overwrite
        self.out = check_out(out, overwrite=True, reads=reads)  # a directory topoprune did not write is refused here
        self.staging = staging_path(self.out)
        self.path = self.staging
        self._stored: dict = {}  # label -> source of the reusable sub-reports
        self._link_from: Path | None = None
        self._lock = None
        self._opened = False
        had_out = self.out.is_dir() and any(self.out.iterdir())
        if self.staging.exists() and locked_by_other(self.staging, _LOCK):
            raise ConfigError(f"{self.raw}: another topoprune analyze is writing this output right now "
                              f"({self.staging})")
        if not resume:
            if self.staging.exists() and not overwrite:
                n = len(_finished(self.staging))
                raise ConfigError(f"{self.raw}: an interrupted analysis is in {self.staging} ({n} checkpoint"
                                  f"{'' if n == 1 else 's'} finished); continue it with --resume or discard it "
                                  "with --overwrite")
            if had_out and not overwrite:
                raise ConfigError(f"{self.raw}: exists (a topoprune output); use --overwrite to replace it "
                                  "or --resume to extend it")
            return
        home = self.staging if self.staging.exists() else self.out if had_out else None
        if home is None:
            log.info("%s: nothing to resume; starting afresh", self.raw)
            return
        record = _read_record(home)
        if record is None:
            if home == self.out:
                raise ConfigError(f"{self.raw}: not an analysis of several checkpoints (no {RECORD}); nothing to "
                                  "--resume (replace it with --overwrite)")
            record = {"settings": settings, "checkpoints": []}  # interrupted before its record was written
        changed = _diff(record["settings"], settings)
        if changed:
            raise ConfigError(f"{self.raw}: --resume needs the settings the analysis was started with; changed: "
                              + "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else ""))
        sources = {c.get("checkpoint"): c.get("path") for c in record["checkpoints"] if isinstance(c, dict)}
        self._stored = {label: sources[label] for label in _finished(home) if sources.get(label)}
        self._link_from = (self.out / SUBREPORTS) if home == self.out else None

    # ------------------------------------------------------------------ lifecycle
    def open(self, checkpoints: list[dict]) -> Path:
        """Create (or reuse) and lock the staging directory; keep only reusable sub-reports; write the record.

        ``checkpoints``: one dict per checkpoint to analyse, with ``checkpoint`` (the label),
        ``path`` and ``step``.
        """
        if self.overwrite and self.staging.exists():
            shutil.rmtree(self.staging)
        OutputDir(self.out, kind="zoo", overwrite=True, staging=self.staging).open()
        self._opened = True
        self._lock = take_lock(self.staging, _LOCK, f"{self.raw}: another topoprune analyze is writing this output "
                                                    "right now")
        sub = self.staging / SUBREPORTS
        sub.mkdir(exist_ok=True)
        wanted = {c["checkpoint"]: c["path"] for c in checkpoints}
        if self._link_from is not None:
            self._link(self._link_from, sub, [lb for lb, src in self._stored.items() if wanted.get(lb) == src])
        for entry in sub.iterdir():  # unfinished builds, other checkpoints, other settings
            if entry.name.startswith(".") or wanted.get(entry.name) != self._stored.get(entry.name) \
                    or not (entry / "report.json").is_file():
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
        self._stored = {lb: src for lb, src in self._stored.items() if (sub / lb).is_dir()}
        journals = self.staging / JOURNALS
        for entry in journals.iterdir() if journals.is_dir() else ():  # each checks its checkpoint and settings
            if entry.name not in wanted or entry.name in self._stored:
                shutil.rmtree(entry, ignore_errors=True)
        self.write_record(checkpoints)
        return self.staging

    def write_record(self, checkpoints: list[dict], **extra) -> Path:
        """(Re)write :data:`RECORD`: the version, the settings, the checkpoints and ``extra``."""
        from .. import __version__

        doc = {"topoprune_version": __version__, "settings": self.settings, "checkpoints": checkpoints, **extra}
        with atomic_path(self.staging / RECORD) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
        return self.staging / RECORD

    def finished(self, label: str) -> bool:
        """True when the sub-report of ``label`` is complete and reusable."""
        return label in self._stored and (self.staging / SUBREPORTS / label / "report.json").is_file()

    def n_finished(self) -> int:
        return len(_finished(self.staging)) if self._opened else 0

    def journal(self, label: str) -> Path:
        """Where the analysis of checkpoint ``label`` keeps its finished tensors until its sub-report is saved."""
        return self.staging / JOURNALS / label

    def n_journaled(self) -> int:
        """Finished tensors and blocks kept of checkpoints whose analysis did not finish."""
        journals = self.staging / JOURNALS
        return sum(n_entries(p) for p in journals.iterdir()) if self._opened and journals.is_dir() else 0

    def subreport(self, label: str) -> Path:
        return self.staging / SUBREPORTS / label

    def save(self, label: str, source: str, write) -> Path:
        """Build the sub-report of ``label`` with ``write(directory)`` and swap it in complete."""
        target = OutputDir(self.subreport(label), kind="report", overwrite=True)
        with target:
            write(target.path)
            final = target.commit()
        self._stored[label] = source
        return final

    def commit(self) -> Path:
        """Rename the finished analysis onto ``out`` (replacing the output it extended or overwrote)."""
        self.release()
        (self.staging / _LOCK).unlink(missing_ok=True)
        staged = OutputDir(self.out, kind="zoo", overwrite=True, staging=self.staging)
        staged.path = self.staging
        staged.overwrite = self.overwrite or self.resume
        final = staged.commit()
        self.path = final
        return final

    def abandon(self) -> None:
        """After a failure or an interrupt: keep the finished sub-reports for ``--resume``, else remove all."""
        self.release()
        if not self._opened or not self.staging.exists():
            return
        if self.n_finished() == 0 and self.n_journaled() == 0:
            shutil.rmtree(self.staging, ignore_errors=True)
        else:
            (self.staging / _LOCK).unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ZooDir:
        return self

    def __exit__(self, exc_type, *exc):
        if self.path == self.staging:  # not committed
            self.abandon()
            n, parts = self.n_finished(), self.n_journaled()
            if (n or parts) and exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                log.warning("%d finished checkpoint%s%s kept in %s; continue with --resume", n, "" if n == 1 else "s",
                            f" and {parts} finished tensor(s) of the next" if parts else "", self.staging)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _link(source: Path, dest: Path, labels) -> None:
        """Hard-link (copy where links are impossible) the sub-reports ``labels`` of a finished output."""
        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        for label in labels:
            if not (dest / label).exists():
                shutil.copytree(source / label, dest / label, copy_function=link)


__all__ = ["ZooDir", "staging_path", "RECORD", "SUBREPORTS"]
