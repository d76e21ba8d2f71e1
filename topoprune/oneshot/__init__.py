"""One-shot, training-free pruning of causal LMs: magnitude/Wanda with uniform, OWL or NeuroAL allocation.

=================  ==============================================================
``allocation``     how much to prune where: uniform, OWL, NeuroAL's block and row steps
``calibration``    calibration text, block-by-block capture and replay, perplexity
``config``         :class:`OneShotConfig` and :class:`EvalConfig`: every setting and default
``prune``          :func:`prune`: the pruning passes
``run``            :func:`run_oneshot`: one ``topoprune oneshot`` run, end to end
=================  ==============================================================
"""
from .config import EvalConfig, OneShotConfig
from .prune import OneShotResult, prune
from .run import run_oneshot

__all__ = ["OneShotConfig", "OneShotResult", "EvalConfig", "prune", "run_oneshot"]
