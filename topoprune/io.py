"""Files and directories topoprune writes, and the one-line text of an error.

Nothing a command writes is ever seen half-done, and nothing a user has is replaced unasked:

* :func:`atomic_path` writes one file under a temporary name beside it and renames it into
  place (``os.replace``), so a crash leaves the old file or the new one, never a mixture.
* :class:`OutputDir` builds a whole output directory (a report, a training run, a one-shot run)
  in a temporary sibling ``.<name>.partial-*`` and swaps it onto the destination only when
  :meth:`OutputDir.commit` is called. :func:`check_out` refuses, *before any work*, an empty or
  unwritable destination, one inside the checkpoint being read, one that is a file, one that is a
  non-empty directory not written by topoprune (never touched, even with ``overwrite``), and an
  existing topoprune output unless ``overwrite`` is set.
* New files and directories get the permissions the user's umask allows (``mkstemp`` and
  ``mkdtemp`` would make them private to the owner).

Every output directory holds a small marker, :data:`MARKER` (``.topoprune``: what wrote it, and
which version), so that a later command can tell a topoprune output from a user's directory.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Marker file written into every output directory.
MARKER = ".topoprune"
#: Files that mark a directory written by topoprune (the marker, or the main record of an older version).
OUTPUT_FILES = (MARKER, "report.json", "topoprune.json")


def short(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one line of at most ``limit`` characters (its class name when it has no text)."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file is removed when the block fails; the result gets the permissions of a
    file created under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp (and writers that recreate the file, safetensors) make 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_output(path) -> bool:
    """True when ``path`` is a directory written by topoprune (it holds one of :data:`OUTPUT_FILES`)."""
    path = Path(path)
    return path.is_dir() and any((path / f).is_file() for f in OUTPUT_FILES)


def _inside(path: Path, other: Path) -> bool:
    try:
        path.relative_to(other)
        return True
    except ValueError:
        return False


def _writable_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (which must be a writable directory)."""
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    return parent


def check_out(out, *, overwrite: bool = False, reads=(), option: str = "--out") -> Path:
    """Refuse an output directory that cannot or must not be written; return it as an absolute path.

    Parameters
    ----------
    out : str or Path
        The destination directory.
    overwrite : bool
        Allow replacing an existing topoprune output.
    reads : iterable of path
        Inputs of the command (checkpoints, run directories): the destination may not be one of
        them or lie inside one.
    option : str
        How the destination is named in messages.

    Raises
    ------
    ConfigError
        With a one-line message, before any work is done.
    """
    if out is None or str(out).strip() == "":
        raise ConfigError(f"{option}: an output directory is required (got an empty path)")
    raw = Path(out).expanduser()
    try:
        dest = Path(os.path.abspath(raw))
        for part in dest.parts:
            if len(os.fsencode(part)) > 255 - 40:  # room for the ".<name>.partial-XXXXXXXX" sibling
                raise ConfigError(f"{raw}: file name too long for {option} ({len(os.fsencode(part))} bytes)")
        for src in reads:
            if src is None or not isinstance(src, (str, os.PathLike)):
                continue
            src = Path(os.path.abspath(Path(src).expanduser()))
            try:
                src_is_dir = src.is_dir()
            except OSError as exc:
                raise ConfigError(f"{src}: cannot be read ({exc.strerror or short(exc)})") from None
            if dest == src or (src_is_dir and _inside(dest, src)):
                raise ConfigError(f"{raw}: {option} lies inside the input {src}; choose a directory outside it")
            if _inside(src, dest):
                raise ConfigError(f"{raw}: {option} holds the input {src}; choose another directory")
        if dest.exists() or dest.is_symlink():
            if not dest.is_dir():
                raise ConfigError(f"{raw}: exists and is not a directory")
            if any(dest.iterdir()):
                if not is_output(dest):
                    raise ConfigError(f"{raw}: exists, is not empty and was not written by topoprune; "
                                      f"it is never replaced: choose another {option}")
                if not overwrite:
                    raise ConfigError(f"{raw}: exists (a topoprune output); use --overwrite to replace it")
        parent = _writable_parent(dest)
        if not parent.is_dir():
            raise ConfigError(f"{raw}: cannot be created ({parent} is not a directory)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{raw}: cannot be created ({parent} is not writable)")
    except OSError as exc:
        raise ConfigError(f"{raw}: cannot be used as {option} ({exc.strerror or short(exc)})") from None
    return dest


class OutputDir:
    """Build an output directory beside its destination; swap it in on :meth:`commit`.

    Parameters
    ----------
    out : str or Path
        The destination (checked with :func:`check_out`).
    kind : str
        What is written (``report``, ``train``, ``oneshot``, ...), recorded in :data:`MARKER`.
    overwrite, reads
        As for :func:`check_out`.
    staging : Path, optional
        Use this directory (created if missing) instead of a fresh ``.<name>.partial-*`` sibling:
        a training run keeps its checkpoints there across interruptions.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with OutputDir(root / "report", kind="report") as tmp:
    ...     _ = (tmp / "table.csv").write_text("a,b\\n")
    ...     final = tmp.commit()
    >>> sorted(p.name for p in final.iterdir())
    ['.topoprune', 'table.csv']
    """

    def __init__(self, out, *, kind: str, overwrite: bool = False, reads=(), staging: Path | None = None,
                 option: str = "--out"):
        self.out = check_out(out, overwrite=overwrite, reads=reads, option=option)
        self.kind, self.overwrite, self._staging = kind, overwrite, staging
        self.path: Path | None = None
        self.committed = False
        self._keep = False  # set when the result could not be moved into place and is left for the user

    def __enter__(self) -> OutputDir:
        self.open()
        return self

    def __exit__(self, *exc):
        if not self.committed and self._staging is None and not self._keep:
            self.discard()

    def __truediv__(self, other) -> Path:
        return self.path / other

    def open(self) -> Path:
        """Create the staging directory (with the user's umask) and its marker; return it."""
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            if self._staging is not None:
                self._staging.mkdir(parents=True, exist_ok=True)
                self.path = self._staging
            else:
                self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
                os.chmod(self.path, 0o777 & ~umask())  # mkdtemp makes 0700
        except OSError as exc:
            raise ConfigError(f"{self.out}: cannot be created ({exc.strerror or short(exc)})") from None
        from . import __version__

        with atomic_path(self.path / MARKER) as tmp:
            tmp.write_text(json.dumps({"kind": self.kind, "topoprune_version": __version__}) + "\n")
        return self.path

    def commit(self) -> Path:
        """Move the finished directory onto the destination (replacing an old output atomically)."""
        if self.path is None:
            raise RuntimeError("OutputDir.commit() before open()")
        out = self.out
        fix_modes(self.path)
        if out.exists() and any(out.iterdir()):
            if not (self.overwrite and is_output(out)):  # appeared while we worked
                self._keep = True
                raise ConfigError(f"{out}: was created by someone else while this command ran; "
                                  f"the result is kept in {self.path}")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            with _signals_held():  # no interrupt between the two renames: OUT is never left missing
                os.replace(out, old / out.name)
                os.replace(self.path, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            os.replace(self.path, out)
        self.committed = True
        self.path = out
        return out

    def discard(self) -> None:
        """Remove the staging directory (nothing is left behind)."""
        if self.path is not None and self.path.exists() and not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


def fix_modes(root) -> None:
    """Give every file and directory under ``root`` the permissions of the user's umask.

    Some writers (safetensors, ``save_pretrained``) create files readable by their owner only;
    an output directory is for the user's group as their umask says.
    """
    mask = umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM for the duration of the block (delivered right after it)."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


#: errno values that mean the user's environment or input, not a bug (reported as one line, exit 2).
USER_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EDQUOT, errno.ELOOP,
                         errno.EXDEV, errno.EFBIG})


def os_error_line(exc: OSError) -> str | None:
    """One line for an ``OSError`` caused by the environment (a path, a full disk), else ``None``."""
    if exc.errno not in USER_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or short(exc)
    return f"{where}: {what}" if where else what


def take_lock(directory: Path, name: str, busy: str):
    """Hold the ``flock`` on ``directory/name`` (the open file: closing it releases the lock; ``None``
    where there is no ``flock``). Raises :class:`ConfigError` ``busy`` when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fh = open(Path(directory) / name, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(busy) from None
    return fh


def locked_by_other(staging: Path, name: str = ".lock") -> bool:
    """True when another process holds the ``flock`` on ``staging/name`` (a run or analysis in progress)."""
    lock = Path(staging) / name
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
