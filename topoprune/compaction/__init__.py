"""Compaction: a pruned model made physically smaller and faster, reloadable with one call.

=================  ==============================================================
``config``         the defaults of ``topoprune compact``: output directory, dtypes
``plan``           which attention heads and MLP neurons a pruned model can lose exactly
``surgery``        smaller weight tensors and head counts, on the shared model binding
``run``            :func:`compact`, :func:`save_compact`, :func:`load_compact`, ``topoprune compact``
=================  ==============================================================
"""
from .run import compact, load_compact, run_compact, save_compact

__all__ = ["compact", "load_compact", "save_compact", "run_compact"]
