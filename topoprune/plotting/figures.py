"""Trends over blocks, sparsity patterns, and the standard figure set written to disk."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .common import (
    FigureConfig,
    ROLE_LABELS,
    grid_blocks,
    SIDE_LABELS,
    empty_panel,
    report_fit_config,
    matrix_rows,
    new_axes,
    as_float,
    role_order,
    paper_style,
)
from .ccdf import role_colors, plot_block_grid, plot_role_ccdfs


def plot_block_trends(report, axes=None):
    """Power-law exponents and modularity against block index.

    Three panels: alpha of the in-degrees, alpha of the out-degrees (mean over a
    role's matrices in a block; NaN fits left out) and the bipartite-graph modularity
    per role, plus the modularity of each block's layered attention and MLP graphs when
    ``report.layered`` has rows. A dotted line marks the upper bound of the alpha search
    (fits there are not power laws).

    Parameters
    ----------
    report : Report
    axes : sequence of 3 Axes, optional
        A new 1 x 3 figure when None.

    Returns
    -------
    numpy.ndarray of Axes
        The three panels.
    """
    from matplotlib.ticker import MaxNLocator

    if axes is None:
        axes = new_axes(1, 3, figsize=(11.5, 3.3))
    flat = np.asarray(axes, dtype=object).ravel()
    if flat.size < 3:
        raise ValueError(f"plot_block_trends needs 3 axes, got {flat.size}")
    m = report.matrices.copy()
    m["block"] = pd.to_numeric(m["block"], errors="coerce")
    m = m[(m["block"] >= 0) & (m["status"] == "ok")] if len(m) else m
    lay = report.layered if isinstance(report.layered, pd.DataFrame) else pd.DataFrame()
    titles = [r"power-law $\alpha$ of in-degrees", r"power-law $\alpha$ of out-degrees", "modularity $Q$"]
    for ax, title in zip(flat, titles):
        ax.set_title(title)
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    flat[0].set_ylabel(r"$\alpha$")
    flat[1].set_ylabel(r"$\alpha$")
    flat[2].set_ylabel("$Q$")
    if m.empty and lay.empty:
        for ax in flat[:3]:
            empty_panel(ax, "no block matrices")
        return flat[:3]
    sides = sorted(m["side"].fillna("").astype(str).unique()) if len(m) else [""]
    styles = dict(zip(sides, ["-", "--", ":", "-."]))
    colors = role_colors(m["role"].dropna().unique()) if len(m) else {}
    hi = report_fit_config(report).alpha_range[1]
    side_of = m["side"].fillna("").astype(str) if len(m) else pd.Series(dtype=str)
    for panel, col in ((0, "in_alpha"), (1, "out_alpha"), (2, "modularity")):
        ax = flat[panel]
        for role in colors:
            for side in sides:
                grp = m[(m["role"] == role) & (side_of == side)]
                vals = pd.to_numeric(grp[col], errors="coerce")
                mean = vals.groupby(grp["block"]).mean().dropna()
                if mean.empty:
                    continue
                label = ROLE_LABELS.get(role, role) + (f" ({side})" if len(sides) > 1 and side else "")
                ax.plot(mean.index, mean.values, ls=styles.get(side, "-"), marker="o", ms=3.5, lw=1.2,
                        color=colors[role], label=label)
                if panel < 2:  # open markers: most of the block's fits are not power laws
                    pl = (grp[col.replace("alpha", "verdict")] == "power_law").groupby(grp["block"]).mean()
                    other = mean.index[pl.reindex(mean.index).fillna(0).to_numpy() < 0.5]
                    ax.plot(other, mean[other].values, ls="none", marker="o", ms=3.5, mfc="white",
                            mec=colors[role], mew=1.0)
        if panel < 2:
            ax.axhline(hi, color="0.5", lw=0.8, ls=":", label=r"$\alpha$ search bound", zorder=0)
            ax.set_ylim(1, hi + 0.5)
    if not lay.empty and {"modularity", "component", "block"} <= set(lay.columns):
        lay = lay.assign(block=pd.to_numeric(lay["block"], errors="coerce"),
                         modularity=pd.to_numeric(lay["modularity"], errors="coerce"))
        lsides = sorted(lay["side"].fillna("").astype(str).unique()) if "side" in lay else [""]
        marks = {"attention": ("s", "-"), "cross_attention": ("^", "-."), "mlp": ("D", "--")}
        for (comp, side), grp in lay.groupby(["component", lay.get("side", pd.Series("", index=lay.index))
                                              .fillna("").astype(str)], sort=True):
            g = grp.groupby("block")["modularity"].mean().dropna()
            if g.empty:
                continue
            marker, ls = marks.get(comp, ("x", ":"))
            name = {"attention": "attention", "cross_attention": "cross-attention", "mlp": "MLP"}.get(comp, comp)
            label = f"layered {name} graph" + (f" ({side})" if len(lsides) > 1 and side else "")
            flat[2].plot(g.index, g.values, color="k", marker=marker, ms=4, ls=ls, lw=1.6, label=label)
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for ax in flat[:3]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if len(m):
        handles += [Line2D([], [], ls="none", marker="o", ms=4, color="0.3"),
                    Line2D([], [], ls="none", marker="o", ms=4, mfc="white", mec="0.3")]
        labels += [r"$\alpha$: power-law verdict", r"$\alpha$: other verdict"]
    if handles:
        flat[2].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return flat[:3]


# --------------------------------------------------------------------------- patterns


def plot_pattern(report, name: str, ax=None, *, title: str | None = None, colorbar: bool = False,
                 cmap: str = "Greys", vmax: float | None = None):
    """Sparsity pattern of one matrix: its edge-density map as an image (black = edges).

    The map (``report.patterns[name]``, at most ``pattern_size`` cells a side) is the
    share of edges among the weights of each cell; at full resolution it is the binary
    adjacency (biadjacency) matrix itself, like Figure 1 of NeuroPrune.

    Parameters
    ----------
    report : Report
    name : str
        Matrix name (a ``report.matrices["name"]`` value).
    ax : Axes, optional
        A new figure when None.
    title : str, optional
        Default: role and block.
    colorbar : bool
        Add a colour bar ("edge density").
    cmap : str
        Colormap; white = no edge.
    vmax : float, optional
        Density shown black; default 1 for a full-resolution (binary) map, else the
        map's 99.5th percentile (so that a coarse map's structure is visible).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    KeyError
        No pattern is stored under ``name`` (unknown name, ``pattern_size=0``, or a
        matrix with non-finite weights).
    """
    if name not in report.patterns:
        have = ", ".join(list(report.patterns)[:5])
        raise KeyError(f"no sparsity pattern for {name!r} (patterns stored for: {have or 'none'})")
    if ax is None:
        ax = new_axes(figsize=(3.4, 3.2))[0, 0]
    pat = np.asarray(report.patterns[name], dtype=np.float32)
    rows = report.matrices[report.matrices["name"] == name] if "name" in report.matrices else pd.DataFrame()
    row = rows.iloc[0] if len(rows) else None
    n_out = int(as_float(row["n_out"])) if row is not None and np.isfinite(as_float(row["n_out"])) else pat.shape[0]
    n_in = int(as_float(row["n_in"])) if row is not None and np.isfinite(as_float(row["n_in"])) else pat.shape[1]
    full = pat.shape == (n_out, n_in)
    if vmax is None:
        top = float(np.percentile(pat, 99.5)) if pat.size else 0.0
        vmax = 1.0 if full or top <= 0 else min(1.0, top)
    im = ax.imshow(pat, cmap=cmap, vmin=0.0, vmax=vmax, extent=(0, n_in, n_out, 0), aspect="auto",
                   interpolation="nearest")
    ax.set_xlabel(f"inputs ({n_in})")
    ax.set_ylabel(f"outputs ({n_out})")
    if title is None:
        if row is not None:
            block = as_float(row.get("block"))
            where = f"block {int(block)}" if np.isfinite(block) and block >= 0 else ""
            role = row.get("role")
            title = ROLE_LABELS.get(role, str(role)) + (f", {where}" if where else "")
        else:
            title = name
    ax.set_title(title)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label("edge density")
    return ax


def default_patterns(report) -> list[str]:
    """q, o, mlp_in and mlp_out of the first and last block (those present with a pattern)."""
    m = matrix_rows(report)
    if m.empty:
        return []
    m = m[m["name"].isin(list(report.patterns))]
    block = pd.to_numeric(m["block"], errors="coerce")
    blocks = sorted(block[block >= 0].unique())
    roles = ("q", "o", "mlp_in", "mlp_gate", "mlp_out")
    names = []
    for b in dict.fromkeys([blocks[0], blocks[-1]] if blocks else []):
        sel = m[block == b]
        for role in roles:
            if role == "mlp_gate" and (sel["role"] == "mlp_in").any():
                continue
            hit = sel[sel["role"] == role]
            if len(hit):
                names.append(hit.iloc[0]["name"])
    if not names:  # no known roles: the first few matrices
        names = list(m["name"][:4])
    return names


def plot_patterns(report, names=None, axes=None):
    """Sparsity patterns of several matrices (default :func:`default_patterns`).

    Returns
    -------
    numpy.ndarray of Axes
        One per pattern drawn (a single "no patterns" panel when there is none).
    """
    names = default_patterns(report) if names is None else [n for n in names if n in report.patterns]
    n = max(len(names), 1)
    if axes is None:
        ncols = min(n, 4)
        axes = new_axes(math.ceil(n / ncols), ncols, figsize=(2.8 * ncols, 2.7 * math.ceil(n / ncols)))
    flat = np.asarray(axes, dtype=object).ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    if not names:
        empty_panel(flat[0], "no sparsity patterns")
        return flat[:1]
    for ax, name in zip(flat, names):
        plot_pattern(report, name, ax=ax)
    return flat[:n]


# --------------------------------------------------------------------------- saving


def new_figure(nrows: int, ncols: int, figsize, **kwargs):
    """A pyplot-free figure (nothing to close, backend untouched) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _save_png(fig, path: Path) -> None:
    """PNG with a 256-colour palette: a third of the size of RGBA, no visible change for plots."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    try:
        from PIL import Image

        with Image.open(io.BytesIO(buf.getvalue())) as im:
            pal = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            pal.save(path, format="PNG", optimize=True)
    except Exception:  # Pillow missing or failing: keep matplotlib's own PNG
        Path(path).write_bytes(buf.getvalue())


def write_figure(fig, out_dir: Path, stem: str, formats) -> list[Path]:
    """Save ``fig`` as ``out_dir/stem.<fmt>`` for each format, atomically, without dates."""
    from ..io import atomic_path

    paths = []
    for i, fmt in enumerate(formats):
        path = out_dir / f"{stem}.{fmt}"
        meta = {"Date": None} if fmt in ("svg", "pdf") else {}
        with atomic_path(path) as tmp:
            if fmt == "png":
                _save_png(fig, tmp)
            else:
                fig.savefig(tmp, format=fmt, metadata=meta)  # format=: the temp name ends in .tmp
        paths.append(path)
        if i == 0:  # keep the constrained layout found for the first format (halves the drawing time)
            fig.set_layout_engine("none")
    return paths


def save_figures(report, out_dir, *, config: FigureConfig | None = None, formats=None,
                 patterns=None, progress: bool = False) -> list[Path]:
    """Draw the standard figures of a report and write each in every format.

    Files (``<stem>.<format>`` in ``out_dir``, each written atomically):

    * ``ccdf_by_role_in``, ``ccdf_by_role_out`` -- :func:`plot_role_ccdfs`;
    * ``ccdf_blocks_<role>`` for ``mlp_in`` (``mlp_gate`` if there is no ``mlp_in``),
      ``mlp_out`` and ``q`` when present -- :func:`plot_block_grid`, in-degrees in the
      top row and out-degrees in the bottom row, one column per block shown (at most
      ``config.grid_blocks``, evenly spaced; the title says how many of how many);
    * ``block_trends`` -- :func:`plot_block_trends`;
    * ``patterns`` -- :func:`plot_pattern` of ``patterns`` (default
      :func:`default_patterns`), when the report has sparsity patterns.

    Parameters
    ----------
    report : Report
    out_dir : path
        Created if missing.
    config : FigureConfig, optional
        Formats and the blocks of the per-block grids (default :class:`FigureConfig`).
    formats : sequence of str, optional
        Matplotlib output formats, instead of ``config.formats``.
    patterns : sequence of str, optional
        Matrix names for the pattern panel.
    progress : bool
        A progress bar on stderr (figures written / total, the one being drawn).

    Returns
    -------
    list of Path
        The files written.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config or FigureConfig()
    formats = tuple(formats) if formats is not None else config.formats
    if report.matrices.attrs:  # pandas deep-copies attrs (a 7B report's timing: 50 kB) on every filter
        bare = report.matrices.copy(deep=False)
        bare.attrs = {}
        report = dataclasses.replace(report, matrices=bare)
    m = report.matrices
    roles = role_order(m["role"].dropna().unique()) if len(m) else []
    grid_roles = [r for r in ("mlp_in", "mlp_gate", "mlp_out", "q") if r in roles]
    if "mlp_in" in grid_roles and "mlp_gate" in grid_roles:
        grid_roles.remove("mlp_gate")
    names = default_patterns(report) if patterns is None else [p for p in patterns if p in report.patterns]
    written: list[Path] = []
    bar = tqdm(total=3 + len(grid_roles) + bool(names), disable=not progress, desc="figures", unit="figure",
               leave=False, dynamic_ncols=True)

    def save(fig, stem):
        bar.set_postfix_str(stem, refresh=False)
        written.extend(write_figure(fig, out, stem, formats))
        bar.update(1)

    with paper_style(), bar:
        for side in ("in", "out"):
            n = max(len(roles), 1)
            ncols = min(n, 4)
            nrows = math.ceil(n / ncols)
            fig, axes = new_figure(nrows, ncols, (3.3 * ncols + 0.8, 2.9 * nrows))
            plot_role_ccdfs(report, side=side, axes=axes)
            fig.suptitle(f"{SIDE_LABELS[side].capitalize()} distributions by role (CCDF, log-log)")
            save(fig, f"ccdf_by_role_{side}")
        for role in grid_roles:
            blocks = pd.to_numeric(m.loc[m["role"] == role, "block"], errors="coerce")
            n_blocks = blocks.nunique()
            shown = grid_blocks(blocks.dropna(), config.grid_blocks)
            subset = len(shown) < n_blocks
            n = int(blocks.isin(shown).sum()) if subset else len(blocks)
            fig, axes = new_figure(2, n, (max(2.5 * n + 0.4, 6.0), 5.0), sharey=True)
            for i, side in enumerate(("in", "out")):
                for ax in axes[i, 1:]:
                    ax.sharex(axes[i, 0])
                plot_block_grid(report, role=role, side=side, axes=axes[i], blocks=shown if subset else None)
            _outer_labels_rows(axes)
            which = f"in {len(shown)} of {n_blocks} blocks" if subset else "by block"
            fig.suptitle(f"{ROLE_LABELS.get(role, role)} {which}: in-degree (top), out-degree (bottom)")
            save(fig, f"ccdf_blocks_{role}")
        fig, axes = new_figure(1, 3, (12.0, 3.4))
        plot_block_trends(report, axes=axes[0])
        save(fig, "block_trends")
        if names:
            ncols = len(names) if len(names) <= 5 else 4
            if patterns is None and len(names) % 2 == 0 and len(names) > 5:
                ncols = len(names) // 2
            nrows = math.ceil(len(names) / ncols)
            fig, axes = new_figure(nrows, ncols, (2.6 * ncols, 2.5 * nrows))
            plot_patterns(report, names, axes=axes)
            fig.suptitle(_pattern_title(report))
            save(fig, "patterns")
    return written


def _pattern_title(report) -> str:
    """Figure title saying what an edge is (from the rows' ``edge_mode`` and the config)."""
    graph = (report.meta or {}).get("config", {}).get("graph", {}) if isinstance(report.meta, dict) else {}
    modes = set(report.matrices.get("edge_mode", pd.Series(dtype=object)).dropna().astype(str)) - {"nan", ""}
    what = ""
    if modes == {"density"} and graph.get("density"):
        what = f", edges: largest {100 * graph['density']:g}% of |w|"
    elif modes == {"threshold"} and graph.get("threshold") is not None:
        what = f", edges: |w| $\\geq$ {graph['threshold']:g}"
    elif modes == {"nonzero"}:
        what = ", edges: nonzero weights"
    return f"Sparsity patterns{what} (share of edges per cell; black = dense)"


def _outer_labels_rows(grid: np.ndarray) -> None:
    """y labels on the first column only (rows have their own x labels)."""
    for (_, j), ax in np.ndenumerate(np.atleast_2d(grid)):
        if j > 0:
            ax.set_ylabel("")

