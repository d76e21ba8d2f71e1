"""Errors topoprune raises for bad input: one line, naming the file or tensor at fault.

The CLI turns every :class:`TopopruneError` into that line on stderr and exit code 2;
library users catch them like any ``ValueError``.
"""
from __future__ import annotations


class TopopruneError(ValueError):
    """Base class: bad input or settings, reported as one line (CLI exit code 2)."""


class CheckpointError(TopopruneError):
    """A checkpoint path or file that cannot be read as weights."""


class ConfigError(TopopruneError):
    """A setting (density, threshold, hyperparameter) outside its valid range."""


class TensorError(TopopruneError):
    """A weight tensor that cannot be analysed (NaN/Inf, wrong shape)."""


class DataError(TopopruneError):
    """A data file, column, label set, corpus or tokenizer that cannot make a training task."""


class ClusterError(TopopruneError):
    """A Dask cluster that cannot be reached, or a worker lost or mismatched while analysing a tensor."""
