"""The directory of a training run: built beside its destination, resumable, never overwritten unasked.

A run ``OUT`` is trained in the sibling ``.OUT.partial/`` (:func:`staging_path`) and renamed onto
``OUT`` only when it has finished, so ``OUT`` is always either absent, an earlier finished run, or
this finished run. The staging directory holds the Trainer checkpoints and ``run.json`` (the
settings the run was started with); it survives an interruption so that ``--resume`` continues it.

Rules (:class:`RunDir`):

* Without ``resume`` or ``overwrite``, an existing non-empty ``OUT`` or an interrupted run in
  ``.OUT.partial/`` is refused. A non-empty ``OUT`` that topoprune did not write is refused always.
* ``resume`` continues the interrupted run in ``.OUT.partial/``, else the finished run ``OUT``
  (its checkpoints are linked into a new staging directory; ``OUT`` is replaced only when the
  continued run has finished). The stored settings must equal the requested ones in everything
  but the step budget (:data:`BUDGET_KEYS`).
* ``overwrite`` discards an interrupted run and replaces a finished one when the new one ends.

A checkpoint is *complete* when :func:`mark_complete` has written :data:`CHECKPOINT_MARK` into it
after the Trainer's files, the masks and the head decisions; the mark lists every file with its
size, so a truncated file makes the checkpoint incomplete again. :func:`newest_complete`
chooses the checkpoint a run resumes from; older and broken checkpoints are removed by
:func:`rotate` only after a newer one is complete.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..io import MARKER, OutputDir, atomic_path, check_out, is_output, locked_by_other, short

log = logging.getLogger(__name__)

#: Written last into a checkpoint: its step and the size of every file in it.
CHECKPOINT_MARK = "topoprune-checkpoint.json"
#: Settings of the run, written when it starts.
RUN_CONFIG = "run.json"
#: Settings a resumed run may change: the step budget.
BUDGET_KEYS = ("epochs", "max_steps")
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def staging_path(out) -> Path:
    """Where run ``out`` is trained until it finishes: the sibling ``.<name>.partial``."""
    out = Path(os.path.abspath(Path(out).expanduser()))
    return out.parent / f".{out.name}.partial"


def checkpoints(ckdir) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` directory in ``ckdir``, newest first."""
    ckdir = Path(ckdir)
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckdir.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return sorted(found, reverse=True)


def mark_complete(ckpt, step: int) -> Path:
    """Record that checkpoint directory ``ckpt`` is complete (call after every file is written)."""
    ckpt = Path(ckpt)
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != CHECKPOINT_MARK and not p.name.startswith(".")}
    with atomic_path(ckpt / CHECKPOINT_MARK) as tmp:
        tmp.write_text(json.dumps({"step": int(step), "files": files}, indent=1))
    return ckpt / CHECKPOINT_MARK


def is_complete(ckpt) -> tuple[bool, str]:
    """``(True, "")`` for a complete checkpoint, else ``(False, why)``."""
    ckpt = Path(ckpt)
    mark = ckpt / CHECKPOINT_MARK
    if not mark.is_file():
        return False, "interrupted while being written (no completion mark)"
    try:
        doc = json.loads(mark.read_text())
        files = dict(doc["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"damaged completion mark ({short(exc, 80)})"
    if "masks.safetensors" not in files:
        return False, "no masks"
    for name, size in files.items():
        p = ckpt / name
        if not p.is_file():
            return False, f"{name} is missing"
        if p.stat().st_size != size:
            return False, f"{name} is truncated ({p.stat().st_size} of {size} bytes)"
    return True, ""


def newest_complete(ckdir) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint in ``ckdir`` and the newer incomplete ones (with the reason)."""
    skipped = []
    for _, path in checkpoints(ckdir):
        ok, why = is_complete(path)
        if ok:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def rotate(ckdir, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest complete checkpoints (and incomplete ones older than them)."""
    complete = [p for _, p in checkpoints(ckdir) if is_complete(p)[0]]
    if not complete:
        return []
    newest_kept = complete[:max(1, keep)]
    oldest_step = int(_CKPT.match(newest_kept[-1].name).group(1))
    removed = []
    for step, path in checkpoints(ckdir):
        if path not in newest_kept and step < oldest_step:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _diff(stored: dict, requested: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(requested)):
        if not prefix and key in BUDGET_KEYS + ("out",):
            continue
        a, b = stored.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


class RunDir:
    """Check, create, resume and finish the directory of one training run.

    Parameters
    ----------
    out : str or Path
        The run directory.
    config : dict
        The requested settings (JSON-like); stored in :data:`RUN_CONFIG` and compared on resume.
    resume, overwrite : bool
        See the module docstring; they exclude each other.
    reads : iterable of path
        Inputs (model directory, data file): ``out`` may not lie inside one.
    rank : int
        Process rank: only rank 0 checks, creates, links, deletes or renames anything; other
        ranks call :meth:`follow` once rank 0 has called :meth:`open`.

    Raises
    ------
    ConfigError, CheckpointError
        At construction, before any work: a destination in the way, nothing to resume, or
        settings that differ from those of the run being resumed.
    """

    def __init__(self, out, config: dict, *, resume: bool = False, overwrite: bool = False, reads=(), rank: int = 0):
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
        self.config, self.resume, self.overwrite, self.rank = config, resume, overwrite, rank
        raw = out
        self.out = check_out(out, overwrite=True, reads=reads)  # a non-topoprune directory is refused here
        if not (resume or overwrite) and self.out.is_dir() and any(self.out.iterdir()):
            raise ConfigError(f"{raw}: exists (a finished run); continue it with --resume or replace it with "
                              "--overwrite")
        self.staging = staging_path(self.out)
        self.checkpoint_dir = self.staging / "checkpoints"
        self.resume_from: Path | None = None  # the checkpoint training continues from
        self.discarded: list[tuple[Path, str]] = []  # newer incomplete checkpoints, removed at open()
        self._link_from: Path | None = None  # checkpoints of a finished run to continue
        self._lock = None
        if rank != 0:  # rank 0 checks and prepares; the others follow it after a barrier (see follow())
            return
        interrupted = self.staging.exists()
        if interrupted and locked_by_other(self.staging):
            raise ConfigError(f"{raw}: another topoprune train is writing this run right now ({self.staging})")
        if not resume:
            if interrupted and not overwrite:
                found, _ = newest_complete(self.checkpoint_dir)
                where = f" (last complete checkpoint: {found.name})" if found else ""
                raise ConfigError(f"{raw}: an interrupted run is in {self.staging}{where}; continue it with "
                                  "--resume or discard it with --overwrite")
            return
        stored = None
        for home, ckdir in ((self.staging, self.checkpoint_dir), (self.out, self.out / "checkpoints")):
            found, skipped = newest_complete(ckdir)
            if found is None:
                continue
            self.resume_from, self.discarded = found, skipped
            self._link_from = None if home == self.staging else ckdir
            stored = self._stored_config(home)
            break
        if self.resume_from is None:
            broken = [p for p in (self.checkpoint_dir, self.out / "checkpoints") if checkpoints(p)]
            raise CheckpointError(f"{raw}: no complete checkpoint to resume from"
                                  + (f" (the checkpoints in {broken[0]} are incomplete)" if broken else ""))
        if stored is not None:
            changed = _diff(stored, config)
            if changed:
                raise ConfigError(f"{raw}: --resume needs the settings the run was started with; changed: "
                                  + "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
                                  + " (only --epochs and --max-steps may change)")

    @staticmethod
    def _stored_config(home: Path) -> dict | None:
        for name, pick in ((RUN_CONFIG, lambda d: d.get("config")), ("topoprune.json", lambda d: d.get("config"))):
            path = home / name
            if path.is_file():
                try:
                    cfg = pick(json.loads(path.read_text()))
                except (OSError, ValueError, AttributeError) as exc:
                    raise CheckpointError(f"{path}: damaged run record ({short(exc, 120)})") from None
                if isinstance(cfg, dict):
                    return cfg
        return None

    def open(self) -> Path:
        """Create (or reuse) the staging directory and lock it; return the checkpoint directory.

        Rank 0 only: discards an interrupted run under ``overwrite``, links a finished run's
        checkpoints under ``resume``, removes incomplete checkpoints newer than the one resumed
        from, and writes :data:`RUN_CONFIG`. Other ranks only compute the paths.
        """
        if self.rank != 0:
            return self.checkpoint_dir
        if (self.overwrite or self._link_from is not None) and self.staging.exists():
            shutil.rmtree(self.staging)  # an interrupted run being discarded, or one without a complete checkpoint
        staged = OutputDir(self.out, kind="train", overwrite=True, staging=self.staging)
        staged.open()
        self._take_lock()
        if self._link_from is not None:
            self._link_checkpoints(self._link_from)
            self.resume_from = self.checkpoint_dir / self.resume_from.name
        for path, _ in self.discarded:
            shutil.rmtree(self.checkpoint_dir / path.name, ignore_errors=True)
        from .. import __version__

        with atomic_path(self.staging / RUN_CONFIG) as tmp:
            tmp.write_text(json.dumps({"topoprune_version": __version__, "config": self.config}, indent=1))
        return self.checkpoint_dir

    def follow(self) -> None:
        """On ranks other than 0, after rank 0's :meth:`open`: the checkpoint to resume from."""
        if self.rank != 0 and self.resume:
            self.resume_from, _ = newest_complete(self.checkpoint_dir)
            if self.resume_from is None:
                raise CheckpointError(f"{self.out}: no complete checkpoint to resume from")

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fh = open(self.staging / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConfigError(f"{self.out}: another topoprune train is writing this run right now") from None
        self._lock = fh

    def _link_checkpoints(self, source: Path) -> None:
        """Hard-link (copy where links are impossible) a finished run's checkpoints into staging."""
        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for _, path in checkpoints(source):
            target = self.checkpoint_dir / path.name
            if not target.exists():
                shutil.copytree(path, target, copy_function=link)

    def commit(self) -> Path:
        """Rename the finished run onto ``out`` (replacing the run it continued or overwrote)."""
        if self.rank != 0:
            return self.out
        self.release()
        (self.staging / ".lock").unlink(missing_ok=True)
        staged = OutputDir(self.out, kind="train", overwrite=True, staging=self.staging)
        staged.path = self.staging
        if self.out.exists() and any(self.out.iterdir()) and not is_output(self.out):
            raise ConfigError(f"{self.out}: was created by someone else during training; "
                              f"the finished run is kept in {self.staging}")
        return staged.commit()

    def release(self) -> None:
        """Drop the lock (the staging directory stays for ``--resume``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def describe(self) -> str:
        """Where an interrupted run's checkpoints are, for a message."""
        found, _ = newest_complete(self.checkpoint_dir)
        return (f"checkpoints kept in {self.staging} (newest complete: {found.name}); continue with --resume"
                if found else f"no complete checkpoint yet in {self.staging}")


__all__ = ["RunDir", "staging_path", "checkpoints", "mark_complete", "is_complete", "newest_complete", "rotate",
           "CHECKPOINT_MARK", "RUN_CONFIG", "BUDGET_KEYS", "MARKER"]
