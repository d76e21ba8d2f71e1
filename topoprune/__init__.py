"""topoprune: Transformers as networks -- weight graphs, degree distributions, power-law fits,
modularity, and topology-driven sparse training and pruning.

Four jobs on one graph core (:mod:`topoprune.graph`): **analyze** a checkpoint, **train**
sparse with NeuroPrune (:mod:`topoprune.train`), **prune one-shot** with NeuroAL
(:mod:`topoprune.oneshot`), and **compact** a pruned model into a smaller, faster one
(:mod:`topoprune.compaction`). Figures are in :mod:`topoprune.plotting`, the model zoo (the
embedded MiniLM, SmolLM2, tiny test models) in :mod:`topoprune.models`.

>>> import topoprune
>>> df = topoprune.analyze("path/to/model", density=0.1)    # doctest: +SKIP
>>> topoprune.summarize(df)                                   # doctest: +SKIP

``topoprune.NeuroPrune``, ``NeuroPruneConfig``, ``NeuroPruneTrainer``, ``OneShotConfig``,
``prune``, ``run_oneshot``, ``compact`` and ``load_compact`` are imported on first use.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, TensorError, TopopruneError  # noqa: E402
from .graph import Report, analyze, analyze_report, summarize  # noqa: E402

_LAZY = {"NeuroPrune": "train", "NeuroPruneConfig": "train", "NeuroPruneTrainer": "train",
         "OneShotConfig": "oneshot", "prune": "oneshot", "run_oneshot": "oneshot",
         "compact": "compaction", "load_compact": "compaction"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["analyze", "analyze_report", "summarize", "Report", "TopopruneError", "CheckpointError", "ConfigError",
           "TensorError", "__version__", *_LAZY]
