"""The command group itself: one-line errors, clean interrupts, and quiet logging on stderr.

Bad input (a :class:`~topoprune.errors.TopopruneError`, a refused pickle, an ``OSError`` caused
by a path or a full disk) ends with one line ``error: ...`` and exit code 2; SIGINT and SIGTERM
end a command cleanly (``finally`` blocks run: worker processes end, temporary directories go)
with ``interrupted`` and exit code 130 or 143; anything else is a bug, still one line (exit 1)
unless ``--debug``.
"""
from __future__ import annotations

import logging
import pickle
import signal
import sys
import threading

import click

from ..errors import TopopruneError


class OneLine(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    root = logging.getLogger("topoprune")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


#: What a refused pickle is reported as (torch's own message is many lines and suggests unsafe loading).
REFUSED_PICKLE = "refused: loading this pickle would execute code (only plain tensors and containers are allowed)"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that ``finally`` blocks clean up as for Ctrl-C."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the clean-up is not interrupted again
    raise Terminated()


def _user_error_line(exc: BaseException) -> str | None:
    """The one line for an exception caused by the user's input or environment, else ``None``."""
    from ..io import os_error_line

    if isinstance(exc, TopopruneError):
        return " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError):
        return REFUSED_PICKLE
    if isinstance(exc, OSError):
        return os_error_line(exc)
    return None


class Group(click.Group):
    """Turns bad input into one line and exit code 2, interrupts into "interrupted" and 130/143."""

    def invoke(self, ctx):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            click.echo("interrupted", err=True)
            ctx.exit(143 if isinstance(exc, Terminated) else 130)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            line = _user_error_line(exc)
            if line is not None:
                click.echo(f"error: {line}", err=True)
                ctx.exit(2)
            # a bug, not bad input: still one line unless --debug
            click.echo(f"error: internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                       "rerun with --debug for details", err=True)
            ctx.exit(1)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
