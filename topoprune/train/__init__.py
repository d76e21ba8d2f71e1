"""Sparse training: NeuroPrune (Dhurandhar et al. 2024, arXiv 2404.01306) and its baselines.

=================  ==============================================================
``config``         :class:`NeuroPruneConfig`: every NeuroPrune setting and default
``neuroprune``     :class:`NeuroPrune`, the controller of a training loop
``penalties``      preferential-attachment and attention row-group penalties
``heads``          redundant-head pruning by dominating set, and the head surgery
``schedules``      target-sparsity schedules (cubic, linear, ...)
``topology``       topology snapshots of a live model during training
``callbacks``      :class:`NeuroPruneTrainer` / :class:`NeuroPruneCallback` for transformers' Trainer
``data``           training tasks: tweets, Penn Treebank, span corruption, user files
``run``            :func:`train`: one ``topoprune train`` run, end to end
``rundir``         the run directory: staged, locked, resumable
=================  ==============================================================

``NeuroPruneTrainer``, ``NeuroPruneCallback``, ``TrainConfig`` and ``train`` import
transformers' Trainer on first use.
"""
from .config import NeuroPruneConfig
from .neuroprune import NeuroPrune

_LAZY = {"NeuroPruneTrainer": "callbacks", "NeuroPruneCallback": "callbacks", "TrainingDiverged": "callbacks",
         "TrainConfig": "run", "train": "run"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NeuroPrune", "NeuroPruneConfig", *_LAZY]
