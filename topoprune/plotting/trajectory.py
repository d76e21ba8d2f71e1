"""The main metrics across the checkpoints of a many-checkpoint analysis.

:func:`plot_trajectory` draws three panels -- power-law alpha (fan-in), connectivity sd and
modularity -- with one line per role (or per component when there are many roles) over the
training step, or over the checkpoint order when some checkpoint has no step. The numbers are
those of :func:`topoprune.graph.zoo.trajectory`; :func:`save_trajectory` writes the figure as
``trajectory.png`` and ``trajectory.svg`` (pyplot-free, atomically).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..graph.zoo import TRAJECTORY_METRICS, trajectory
from .common import ROLE_LABELS, new_axes, paper_style, role_order

#: Line styles cycled over the groups (colours come from the axes' colour cycle).
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_trajectory(report: pd.DataFrame, axes=None, *, by: str = "auto"):
    """Alpha, connectivity sd and modularity per role (or component) across checkpoints.

    Parameters
    ----------
    report : DataFrame
        The combined per-matrix table of a many-checkpoint analysis (``OUT/report.csv``:
        ``checkpoint`` first, ``step`` when known).
    axes : sequence of 3 Axes, optional
        Where to draw (default: a new pyplot figure).
    by : {"auto", "role", "component"}
        See :func:`topoprune.graph.zoo.trajectory`.

    Returns
    -------
    numpy.ndarray of Axes
    """
    import numpy as np

    if axes is None:
        axes = new_axes(1, len(TRAJECTORY_METRICS), figsize=(12, 3.4))
    axes = np.asarray(axes).ravel()
    table = trajectory(report, by=by)
    labels, xkind = table.attrs["labels"], table.attrs["x"]
    groups = role_order(table["group"].unique()) if table.attrs["by"] == "role" else sorted(table["group"].unique())
    legend = False
    for ax, (metric, title) in zip(axes, TRAJECTORY_METRICS.items()):
        for i, group in enumerate(groups):
            rows = table[table["group"] == group]
            if metric not in rows or rows[metric].isna().all():
                continue
            ax.plot(rows["x"], rows[metric], marker=_MARKERS[i % len(_MARKERS)], ms=3, lw=1,
                    label=ROLE_LABELS.get(group, str(group)))
        ax.set_title(title)
        ax.set_xlabel("step" if xkind == "step" else "checkpoint")
        if xkind == "checkpoint" and labels:
            ticks = list(range(len(labels)))
            if len(labels) > 12:  # keep the axis readable
                ticks = ticks[:: -(-len(labels) // 12)]
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=30, ha="right")
        if ax.has_data() and not legend:  # one legend: the lines are the same groups in every panel
            ax.legend(frameon=False, fontsize=7)
            legend = True
        elif not ax.has_data():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    return axes


def save_trajectory(report: pd.DataFrame, out_dir, *, formats=("png", "svg"), by: str = "auto") -> list[Path]:
    """Write ``trajectory.<fmt>`` of :func:`plot_trajectory` into ``out_dir`` (created if missing).

    Returns
    -------
    list of Path
        The files written.
    """
    from .figures import new_figure, write_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with paper_style():
        fig, axes = new_figure(1, len(TRAJECTORY_METRICS), (12.0, 3.6))
        plot_trajectory(report, axes[0], by=by)
        n = len(dict.fromkeys(report["checkpoint"])) if "checkpoint" in report else 0
        fig.suptitle(f"Topology across {n} checkpoint{'' if n == 1 else 's'} (means over matrices)")
        return write_figure(fig, out, "trajectory", tuple(formats))


__all__ = ["plot_trajectory", "save_trajectory"]
