"""The graph core: checkpoints in, graphs, degree distributions, power-law fits, modularity and reports out.

=================  ==============================================================
``loading``        read checkpoints tensor by tensor (safetensors, torch, GGUF, modules)
``guards``         checks on what a checkpoint declares (memory, geometry, file names)
``roles``          name every 2-D weight by its role, in ``[out, in]`` orientation
``binding``        the same for a live model: blocks, attention/MLP matrices, one oriented read/write
``masks``          keep-masks by parameter name (:class:`~topoprune.graph.masks.MaskSet`)
``bipartite``      weight matrices as bipartite graphs; layered block and model graphs
``degrees``        the same degrees counted with torch on a tensor's device
``edges``          edge lists streamed into igraph and packed for worker processes
``metrics``        degree statistics, Gini, Leiden modularity
``fits``           discrete power-law fits with likelihood-ratio tests
``analysis``       :func:`analyze`: one report row per matrix
``report``         the :class:`Report`, its summaries, save/load/compare
``zoo``            many checkpoints in one analysis: combined tables, metrics across checkpoints
``zoodir``         the staged, resumable output directory of such an analysis
``workers``        the process pool of an analysis
``timing``         seconds per matrix and stage, the per-stage summary, the progress bar
``config``         the frozen settings of all of the above
=================  ==============================================================

Everything above the core (training, one-shot pruning, plotting, the command line) builds on
these modules; nothing here imports from above.
"""
from .analysis import analyze, analyze_report
from .report import Report, summarize

__all__ = ["analyze", "analyze_report", "summarize", "Report"]
