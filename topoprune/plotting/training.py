"""Topology trajectories of a training run (``topology_history.csv``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .common import new_axes

#: Panels of :func:`plot_topology_history`: (title, metric suffix).
PANELS = (("sparsity", "sparsity"), ("connectivity sd (fraction)", "in_conn_sd"), ("degree Gini", "in_gini"),
          ("dead-neuron share", "in_dead"), ("power-law alpha (in)", "in_alpha"), ("MLP modularity", "modularity"))


def plot_topology_history(history: pd.DataFrame, axes=None):
    """Six panels over training steps: sparsity, connectivity sd, Gini, dead share, alpha, modularity.

    ``history`` has a ``step`` column and ``<component>/<metric>`` columns (``mlp``,
    ``attention``), as written by :class:`topoprune.train.topology.TopologyHistory`. Returns the
    array of Axes.
    """
    if axes is None:
        _, axes = new_axes(2, 3, figsize=(12, 6))
    axes = axes.ravel()
    for ax, (title, metric) in zip(axes, PANELS):
        for component, style in (("mlp", "-o"), ("attention", "--s")):
            col = f"{component}/{metric}"
            if col in history.columns and pd.to_numeric(history[col], errors="coerce").notna().any():
                ax.plot(history["step"], pd.to_numeric(history[col], errors="coerce"), style, ms=3, label=component)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.has_data():
            ax.legend(frameon=False, fontsize=8)
    if "heads/remaining" in history.columns:
        twin = axes[0].twinx()
        twin.plot(history["step"], history["heads/remaining"], ":", color="grey")
        twin.set_ylabel("heads remaining", color="grey")
    return axes


def save_training_figures(run_dir, out_dir=None, formats=("png", "svg")) -> list[Path]:
    """Write ``topology`` figures of a run directory (with ``topology_history.csv``)."""
    from matplotlib.figure import Figure

    from ..errors import CheckpointError
    from ..io import atomic_path

    run_dir = Path(run_dir)
    csv = run_dir / "topology_history.csv"
    if not csv.is_file():
        raise CheckpointError(f"{run_dir}: no topology_history.csv (not a training run)")
    try:
        history = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        history = pd.DataFrame()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{csv}: not a readable topology history ({' '.join(str(exc).split())[:150]})") from None
    if history.empty:
        raise CheckpointError(f"{csv}: no topology snapshots to plot")
    if "step" not in history.columns:
        raise CheckpointError(f"{csv}: not a topology history (no 'step' column)")
    out = Path(out_dir) if out_dir else run_dir / "figures"
    fig = Figure(figsize=(12, 6), layout="constrained")
    plot_topology_history(history, fig.subplots(2, 3))
    paths = []
    for fmt in formats:
        with atomic_path(out / f"topology.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
        paths.append(out / f"topology.{fmt}")
    return paths
