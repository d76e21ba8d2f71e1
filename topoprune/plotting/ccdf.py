"""Degree CCDFs with fitted power law and lognormal: one matrix, per role, per block."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .common import (
    ROLE_LABELS,
    NO_AUTOSCALE,
    OVERLAYS,
    SIDE_LABELS,
    block_label,
    check_side,
    degrees_of,
    empty_panel,
    report_fit_config,
    fit_label,
    fit_params,
    log_axes,
    lognormal_ccdf,
    matrix_rows,
    new_axes,
    as_float,
    positive_degrees,
    power_law_ccdf,
    role_order,
    thin_points,
    verdict_text,
)


def ccdf(degrees) -> tuple[np.ndarray, np.ndarray]:
    """Empirical complementary CDF ``P(X >= x)`` of the positive values of ``degrees``.

    Parameters
    ----------
    degrees : array_like
        Values (degrees); zeros, negatives and non-finite values are left out.

    Returns
    -------
    x : ndarray
        The distinct positive values, ascending.
    p : ndarray
        ``P(X >= x)`` over the positive values (``p[0] == 1``); both empty when there
        are none.

    Examples
    --------
    >>> x, p = ccdf([1, 1, 2, 3, 0])
    >>> x.tolist(), p.tolist()
    ([1.0, 2.0, 3.0], [1.0, 0.5, 0.25])
    """
    x = positive_degrees(degrees)
    if x.size == 0:
        return np.empty(0), np.empty(0)
    values, counts = np.unique(x, return_counts=True)
    p = np.cumsum(counts[::-1])[::-1] / x.size
    return values, p


def plot_ccdf(degrees, *, fit=None, side: str = "in", ax=None, label: str | None = None,
              overlay=OVERLAYS, color=None, legend: bool = True, max_points: int | None = 100, **kwargs):
    """Log-log CCDF of a degree sequence, with the fitted power law and a lognormal.

    Parameters
    ----------
    degrees : array_like of int
        Degree sequence; zeros (dead neurons) are not shown (log axes).
    fit : dict, pandas.Series, PowerLawFit or None
        ``alpha``, ``xmin`` (and optionally ``verdict``) of a power-law fit, or a report
        row, whose ``{side}_alpha``, ``{side}_xmin``, ``{side}_verdict`` are used.
        Overlays are skipped when it is None or its alpha / xmin are NaN (e.g. verdict
        ``too_few_points``).
    side : {"in", "out"}
        Which columns of a report row ``fit`` describes; also names the x axis.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    label : str, optional
        Legend label of the data points.
    overlay : sequence of {"power_law", "lognormal"}
        Fitted curves to draw over the tail ``k >= xmin``, each scaled to the empirical
        CCDF at ``xmin``.
    color : color, optional
        Colour of the data points (the fitted curves use fixed colours).
    legend : bool
        Draw a legend (its title gives the fit's verdict).
    max_points : int or None
        Draw at most about this many points, evenly spread in log ``k`` (the largest
        degree always kept); None draws every distinct degree. Display only: the fit
        overlays use all the data.
    **kwargs
        Passed to ``ax.plot`` for the data points.

    Returns
    -------
    matplotlib.axes.Axes
    """
    check_side(side)
    if ax is None:
        ax = new_axes()[0, 0]
    unknown = set(overlay or ()) - set(OVERLAYS)
    if unknown:
        raise ValueError(f"unknown overlay(s) {sorted(unknown)}; choose from {OVERLAYS}")
    x = positive_degrees(degrees)
    ax.set_xlabel(f"{SIDE_LABELS[side]} $k$")
    ax.set_ylabel(r"$P(K \geq k)$")
    if x.size == 0:
        return empty_panel(ax, "no edges")
    xs, ps = ccdf(x)
    style = dict(ls="none", marker="o", ms=3, mfc="none", mew=0.7, alpha=0.85)
    style.update(kwargs)
    ax.plot(*thin_points(xs, ps, max_points), color=color, label=label, **style)
    log_axes(ax)
    params = fit_params(fit, side)
    verdict = params["verdict"] if params else ""
    usable = (params is not None and np.isfinite(params["alpha"]) and params["alpha"] > 1
              and np.isfinite(params["xmin"]) and params["xmin"] >= 1 and np.any(x >= params["xmin"]))
    if usable and overlay:
        xmin = params["xmin"]
        scale = float(np.mean(x >= xmin))  # empirical P(K >= xmin)
        k = np.unique(np.round(np.geomspace(xmin, x.max(), 200)))  # integers, even in log k
        if "power_law" in overlay:
            y = scale * power_law_ccdf(k, params["alpha"], xmin)
            keep = y > 0
            ax.plot(k[keep], y[keep], color="C3", lw=1.6, label=fit_label(params), **NO_AUTOSCALE)
        if "lognormal" in overlay:
            y = lognormal_ccdf(x, xmin, k)
            if y is not None:
                y = scale * y
                keep = y > 0
                ax.plot(k[keep], y[keep], color="C0", lw=1.4, ls="--", label="lognormal (same tail)",
                        **NO_AUTOSCALE)
        ax.axvline(xmin, color="0.6", lw=0.6, ls=":", zorder=0)
    title = f"verdict: {verdict_text(verdict)}" if verdict else None
    if legend and ax.get_legend_handles_labels()[0]:
        leg = ax.legend(loc="lower left", title=title, handlelength=1.8)
        if title:
            leg.get_title().set_fontsize("small")
    elif legend and title:  # nothing to list (e.g. too few points to fit): still say so
        ax.text(0.03, 0.04, title, transform=ax.transAxes, ha="left", va="bottom", fontsize="small",
                color="0.3")
    return ax


def plot_role_ccdfs(report, side: str = "in", roles=None, axes=None, *, pooled_fit: bool = True):
    """One panel per role: a faint CCDF per matrix (coloured by block) and the pooled fit.

    Parameters
    ----------
    report : Report
        From :func:`topoprune.analyze_report` or :func:`topoprune.graph.report.load_report`.
    side : {"in", "out"}
        Degree direction.
    roles : sequence of str, optional
        Roles to show (default: every role with a matrix, in :data:`~topoprune.graph.roles.ROLES`
        order).
    axes : array of Axes, optional
        At least as many axes as roles (extra ones are hidden); a new figure when None.
    pooled_fit : bool
        Fit a power law (:func:`topoprune.graph.fits.fit_degrees`, with the report's fit
        settings) to the pooled degrees of the role's matrices and overlay it.

    Returns
    -------
    numpy.ndarray of Axes
        The panels used, in role order (a single "no matrices" panel when none).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    from ..graph.fits import fit_degrees

    check_side(side)
    m = report.matrices
    present = role_order(m["role"].dropna().unique()) if len(m) else []
    roles = present if roles is None else [r for r in roles if r in present]
    n = max(len(roles), 1)
    if axes is None:
        ncols = min(n, 4)
        axes = new_axes(math.ceil(n / ncols), ncols)
    flat = np.asarray(axes, dtype=object).ravel()
    if flat.size < n:
        raise ValueError(f"plot_role_ccdfs needs {n} axes, got {flat.size}")
    for ax in flat[n:]:
        ax.set_visible(False)
    if not roles:
        empty_panel(flat[0], "no matrices")
        return flat[:1]
    blocks = pd.to_numeric(m["block"], errors="coerce")
    blocks = blocks[blocks >= 0]
    bmin, bmax = (float(blocks.min()), float(blocks.max())) if len(blocks) else (0.0, 1.0)
    norm = Normalize(bmin, bmax if bmax > bmin else bmin + 1)
    cmap = colormaps["viridis"]
    fit_config = report_fit_config(report)
    for ax, role in zip(flat, roles):
        rows = matrix_rows(report, role)
        seqs = []
        for _, row in rows.iterrows():
            deg = degrees_of(report, row["name"], side)
            if deg is None or not np.any(positive_degrees(deg)):
                continue
            seqs.append(deg)
            xs, ps = ccdf(deg)
            block = as_float(row.get("block"))
            c = cmap(norm(block)) if np.isfinite(block) and block >= 0 else "0.5"
            ax.plot(*thin_points(xs, ps, 150), color=c, lw=0.8, alpha=0.55)
        title = f"{ROLE_LABELS.get(role, role)}"
        if not seqs:
            empty_panel(ax, "no edges")
            ax.set_title(title)
            continue
        pooled = np.concatenate([np.asarray(s).ravel() for s in seqs])
        fit = None
        if pooled_fit:
            fit = fit_degrees(pooled, fit_config)
        plot_ccdf(pooled, fit=fit, side=side, ax=ax, color="k", label=f"pooled, {len(seqs)} matri{'x' if len(seqs) == 1 else 'ces'}",
                  ms=2.5, mew=0.6)
        ax.set_title(f"{title}: {SIDE_LABELS[side]}")
    if len(blocks) and bmax > bmin:
        fig = flat[0].figure
        sm = ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, ax=list(flat[:n]), shrink=0.8, aspect=30, pad=0.01)
        cb.set_label("block (faint curves: one per matrix)")
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
    return flat[:n]


def plot_block_grid(report, role: str = "mlp_in", side: str = "in", axes=None, *, blocks=None):
    """CCDF with fit overlays of one role's matrix in every block (or in ``blocks``), one panel per block.

    Parameters
    ----------
    report : Report
    role : str
        Matrix role (see :data:`~topoprune.graph.roles.ROLES`).
    side : {"in", "out"}
        Degree direction.
    axes : array of Axes, optional
        At least one axis per matrix of the role (extra ones are hidden); a new figure
        (shared axes, up to 6 panels a row) when None.
    blocks : sequence of int, optional
        Only the matrices of these blocks (e.g. :func:`~topoprune.plotting.common.grid_blocks`
        of a deep model's blocks); default every block.

    Returns
    -------
    numpy.ndarray of Axes
        One per matrix shown, ordered by (side, block); a single "no matrices" panel when the
        role is absent.
    """
    check_side(side)
    rows = matrix_rows(report, role)
    if blocks is not None and not rows.empty:
        rows = rows[pd.to_numeric(rows["block"], errors="coerce").isin([float(b) for b in blocks])]
    n = max(len(rows), 1)
    created = axes is None
    if created:
        ncols = min(n, 6)
        axes = new_axes(math.ceil(n / ncols), ncols, figsize=(2.9 * ncols, 2.6 * math.ceil(n / ncols)),
                         sharex=True, sharey=True)
    flat = np.asarray(axes, dtype=object).ravel()
    if flat.size < n:
        raise ValueError(f"plot_block_grid needs {n} axes, got {flat.size}")
    for ax in flat[n:]:
        ax.set_visible(False)
    if rows.empty:
        empty_panel(flat[0], f"no {role} matrices")
        return flat[:1]
    several_sides = rows["side"].fillna("").nunique() > 1
    for ax, (_, row) in zip(flat, rows.iterrows()):
        deg = degrees_of(report, row["name"], side)
        plot_ccdf(deg, fit=row, side=side, ax=ax, color="0.15", max_points=60)
        ax.set_title(block_label(row, several_sides))
    if created:
        flat[0].figure.suptitle(f"{ROLE_LABELS.get(role, role)}: {SIDE_LABELS[side]} CCDF by block")
        _outer_labels(np.asarray(axes))
    return flat[:n]


def _outer_labels(grid: np.ndarray) -> None:
    """Keep axis labels on the left column and bottom row of a shared grid only."""
    grid = np.atleast_2d(grid)
    for (i, j), ax in np.ndenumerate(grid):
        if j > 0:
            ax.set_ylabel("")
        if i < grid.shape[0] - 1 and grid[i + 1, j].get_visible():
            ax.set_xlabel("")


# --------------------------------------------------------------------------- trends


def role_colors(roles) -> dict:
    return {r: f"C{i % 10}" for i, r in enumerate(role_order(roles))}


