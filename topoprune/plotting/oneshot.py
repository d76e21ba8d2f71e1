"""Figures of a one-shot pruning run: allocation over depth, the λ searches, row sparsities."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ROLE_LABELS, new_axes, role_order


def plot_allocation(record: dict, row_sparsity: dict | None = None, axes=None):
    """Three panels from a run's ``topoprune.json`` record.

    1. measured sparsity of every layer over block index, by role, with the block allocation
       and the target;
    2. the NeuroAL objective (summed neuron misalignment) over each λ grid, chosen λ marked;
    3. distribution of per-row sparsities by role (``row_sparsity``: role -> array), which the
       row step spreads out and uniform allocation keeps at one value.
    """
    if axes is None:
        _, axes = new_axes(1, 3, figsize=(13, 3.6))
    ax1, ax2, ax3 = np.ravel(axes)
    layers = record["layers"]
    roles = role_order({r["role"] for r in layers})
    for role in roles:
        rows = [r for r in layers if r["role"] == role]
        ax1.plot([r["block"] for r in rows], [r["sparsity"] for r in rows], ".", ms=4,
                 label=ROLE_LABELS.get(role, role))
    blocks = record["block_sparsity"]
    ax1.step(range(len(blocks)), blocks, where="mid", color="black", lw=1, label="block allocation")
    ax1.axhline(record["config"]["sparsity"], color="grey", ls="--", lw=0.8, label="target")
    ax1.set_xlabel("block")
    ax1.set_ylabel("sparsity")
    ax1.set_title(f"{record['config']['method']} + {record['config']['allocation']}")
    ax1.legend(frameon=False, fontsize=7, ncol=2)
    search = record.get("search") or {}
    chosen = {"block": record.get("lambda_block"), "row": record.get("lambda_row")}
    for step, style in (("block", "-o"), ("row", "-s")):
        if search.get(step):
            lam, obj = zip(*search[step])
            ax2.plot(lam, obj, style, ms=3, label=f"{step} step")
            if chosen[step] is not None:
                ax2.plot([chosen[step]], [dict(search[step])[chosen[step]]], "k*", ms=9)
    if ax2.has_data():
        ax2.set_xlabel("λ")
        ax2.set_ylabel("Σ neuron misalignment")
        ax2.set_title("NeuroAL λ search (★ chosen)")
        ax2.legend(frameon=False, fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no λ search\n(allocation: %s)" % record["config"]["allocation"], ha="center",
                 va="center", transform=ax2.transAxes)
        ax2.set_axis_off()
    for role in role_order(row_sparsity or {}):
        ax3.hist(np.asarray(row_sparsity[role]), bins=40, range=(0, 1), histtype="step",
                 label=ROLE_LABELS.get(role, role))
    ax3.set_xlabel("row sparsity")
    ax3.set_ylabel("rows")
    ax3.set_yscale("log")
    ax3.set_title("per-row sparsity")
    if ax3.has_data():
        ax3.legend(frameon=False, fontsize=7)
    return axes


def save_oneshot_figures(record: dict, row_sparsity: dict | None, out_dir, formats=("png", "svg")) -> list[Path]:
    """Write ``allocation.{png,svg}`` into ``out_dir`` (atomically)."""
    from matplotlib.figure import Figure

    from ..io import atomic_path
    from .common import paper_style

    paths = []
    with paper_style():
        fig = Figure(figsize=(13, 3.6), layout="constrained")
        plot_allocation(record, row_sparsity, fig.subplots(1, 3))
        for fmt in formats:
            path = Path(out_dir) / f"allocation.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt)
            paths.append(path)
    return paths
