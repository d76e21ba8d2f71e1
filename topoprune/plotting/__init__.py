"""Figures of a :class:`~topoprune.graph.report.Report`: degree CCDFs with fits, trends, patterns;
and of many checkpoints: the main metrics across them (:func:`plot_trajectory`).

Every ``plot_*`` function draws into ``ax``/``axes`` when given (else it makes a new
figure with :mod:`matplotlib.pyplot`) and returns the Axes (or an array of Axes); none of
them saves or shows anything. :func:`save_figures` draws the standard set of figures on
pyplot-free :class:`matplotlib.figure.Figure` objects and writes each as PNG and SVG,
atomically, so it neither needs nor changes the pyplot backend (a notebook's inline
backend keeps working) and leaves no figure open.

Degree conventions follow :mod:`topoprune.graph.analysis`: ``side="in"`` is the fan-in of each
output neuron (rows of ``W``, ``report.degrees[name][0]``), ``side="out"`` the fan-out of
each input neuron (columns, ``report.degrees[name][1]``).

Fitted curves (discrete distributions, as in :mod:`topoprune.graph.fits`) are drawn over the
fitted tail ``k >= xmin`` and scaled by the empirical ``P(K >= xmin)``, so they meet the
data at ``xmin`` (what ``powerlaw.Fit.power_law.plot_ccdf(ax=fit.plot_ccdf())`` shows for
the tail):

* power law, :math:`P(K \\ge k) = \\zeta(\\alpha, k) / \\zeta(\\alpha, x_{min})`;
* lognormal fitted by ``powerlaw.Fit(data, discrete=True, xmin=xmin).lognormal`` (maximum
  likelihood on the same tail); with powerlaw's rounding of the continuous law to the
  integers, :math:`P(K \\ge k) = Q(k - \\tfrac12) / Q(x_{min} - \\tfrac12)` where ``Q`` is
  the lognormal survival function (evaluated in log space: tail fits often have extreme
  ``mu``, ``sigma``).

Examples
--------
>>> import torch, topoprune
>>> from topoprune import plotting
>>> rep = topoprune.analyze_report({"layers.0.mlp.fc1.weight": torch.randn(256, 64)}, n_jobs=1)
>>> ax = plotting.plot_ccdf(rep.degrees["layers.0.mlp.fc1.weight"][0], fit=rep.matrices.iloc[0])
>>> paths = plotting.save_figures(rep, "figs")                      # doctest: +SKIP
"""
from .common import PAPER_STYLE, ROLE_LABELS, FigureConfig, paper_style
from .ccdf import ccdf, plot_block_grid, plot_ccdf, plot_role_ccdfs
from .figures import default_patterns, plot_block_trends, plot_pattern, plot_patterns, save_figures
from .trajectory import plot_trajectory, save_trajectory

__all__ = ["ccdf", "plot_ccdf", "plot_role_ccdfs", "plot_block_grid", "plot_block_trends", "plot_pattern",
           "plot_patterns", "default_patterns", "save_figures", "plot_trajectory", "save_trajectory", "paper_style",
           "PAPER_STYLE", "ROLE_LABELS", "FigureConfig"]
