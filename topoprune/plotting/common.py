"""Shared plotting helpers: role labels, paper style, axes, fitted-curve evaluation."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..graph.roles import ROLES

ROLE_LABELS = {
    "q": "query (q)", "k": "key (k)", "v": "value (v)", "o": "attention output (o)",
    "cross_q": "cross query", "cross_k": "cross key", "cross_v": "cross value", "cross_o": "cross output",
    "mlp_in": "MLP in", "mlp_gate": "MLP gate", "mlp_up": "MLP up", "mlp_out": "MLP out",
    "embedding": "embedding", "lm_head": "LM head", "linear": "linear", "other": "other",
}
SIDE_LABELS = {"in": "in-degree", "out": "out-degree"}
OVERLAYS = ("power_law", "lognormal")
#: Fitted curves may run far below the data; the axis limits follow the data (and shared axes).
NO_AUTOSCALE = {"scalex": False, "scaley": False}

#: rcParams of :func:`save_figures` (paper figures: small fonts, text kept as text in SVG).
PAPER_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 7, "legend.framealpha": 0.85, "figure.titlesize": 11, "lines.markersize": 3,
    "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none", "svg.hashsalt": "topoprune",
    "savefig.dpi": 150, "image.interpolation": "nearest",
}


@dataclass(frozen=True)
class FigureConfig:
    """What :func:`~topoprune.plotting.save_figures` draws.

    Parameters
    ----------
    formats : tuple of str
        Matplotlib output formats; every figure is written once in each.
    grid_blocks : int
        Blocks shown in the per-block CCDF grids (``ccdf_blocks_<role>``): every block of a
        model with at most this many, else this many evenly spaced blocks, the first and the
        last included (:func:`grid_blocks`); 0 shows every block. ``block_trends`` and
        ``ccdf_by_role`` always show every block. At the default, a 32-block (7B-class)
        model's grids stay eight panels wide instead of 32 (an 80-inch figure that takes a
        minute to draw).
    """

    formats: tuple[str, ...] = ("png", "svg")
    grid_blocks: int = 8

    def __post_init__(self):
        if self.grid_blocks < 0:
            raise ConfigError(f"grid_blocks must be >= 0 (0: every block), got {self.grid_blocks}")
        if not self.formats:
            raise ConfigError("formats must name at least one output format")


def grid_blocks(blocks, most: int) -> list:
    """The blocks a per-block grid shows: all of ``blocks`` (sorted, unique) when there are at
    most ``most`` of them or ``most`` is 0, else ``most`` of them evenly spaced, first and last
    included (``most`` = 1: the first)."""
    blocks = sorted(set(blocks))
    if most <= 0 or len(blocks) <= most:
        return blocks
    idx = np.unique(np.round(np.linspace(0, len(blocks) - 1, most)).astype(int))
    return [blocks[i] for i in idx]


@contextlib.contextmanager
def paper_style():
    """Context in which figures use :data:`PAPER_STYLE` (``with paper_style(): ...``)."""
    import matplotlib as mpl

    with mpl.rc_context(PAPER_STYLE):
        yield


# --------------------------------------------------------------------------- helpers


def new_axes(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """A pyplot figure with a grid of axes (array, ``squeeze=False``)."""
    import matplotlib.pyplot as plt

    figsize = figsize or (3.6 * ncols, 3.0 * nrows)
    _, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained", **kwargs)
    return axes


def as_float(value) -> float:
    """``value`` as a float; NaN for None, strings and other non-numbers."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def fit_params(fit, side: str) -> dict | None:
    """``alpha, xmin, verdict`` from a dict, report row (``in_alpha``...) or PowerLawFit."""
    if fit is None:
        return None
    if hasattr(fit, "as_dict"):
        fit = fit.as_dict()

    def pick(key):
        for k in (key, f"{side}_{key}"):
            try:
                v = fit[k]
            except (KeyError, IndexError, TypeError):
                continue
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return v
        return None

    verdict = pick("verdict")
    return {"alpha": as_float(pick("alpha")), "xmin": as_float(pick("xmin")),
            "verdict": str(verdict) if verdict not in (None, "") else ""}


def positive_degrees(degrees) -> np.ndarray:
    x = np.asarray(degrees if degrees is not None else [], dtype=np.float64).ravel()
    return x[np.isfinite(x) & (x > 0)]


def power_law_ccdf(k: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    from scipy.special import zeta

    return zeta(alpha, k) / zeta(alpha, xmin)


def lognormal_ccdf(x: np.ndarray, xmin: float, k: np.ndarray) -> np.ndarray | None:
    """Discrete lognormal fitted by powerlaw to ``x >= xmin``, as ``P(K >= k | K >= xmin)``."""
    import powerlaw
    from scipy.special import log_ndtr

    tail = x[x >= xmin]
    if tail.size < 10 or np.unique(tail).size < 3:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            dist = powerlaw.Fit(x, discrete=True, xmin=xmin, verbose=0).lognormal
            mu, sigma = float(dist.mu), float(dist.sigma)
        except Exception:  # a failed optional overlay must not sink a figure
            return None
    if not (np.isfinite(mu) and np.isfinite(sigma) and sigma > 0):
        return None

    def log_q(v):  # log survival of the continuous lognormal at v
        return log_ndtr(-(np.log(v) - mu) / sigma)

    with np.errstate(all="ignore"):
        out = np.exp(log_q(k - 0.5) - log_q(xmin - 0.5))
    return out if np.all(np.isfinite(out)) else None


def log_axes(ax) -> None:
    """Log-log axes; degrees as plain numbers (1, 10, 30, 100), probabilities as powers of 10."""
    from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _power_of_ten(value, _pos=None) -> str:
    if value <= 0:
        return ""
    e = math.log10(value)
    if abs(e - round(e)) > 1e-6:
        return ""
    e = int(round(e))
    return "1" if e == 0 else f"$10^{{{e}}}$"


def thin_points(xs: np.ndarray, ps: np.ndarray, max_points: int | None):
    """At most ~``max_points`` CCDF points, spread evenly in log x (display only)."""
    if not max_points or xs.size <= max_points:
        return xs, ps
    grid = np.geomspace(xs[0], xs[-1], max_points)
    idx = np.unique(np.concatenate([np.searchsorted(xs, grid).clip(0, xs.size - 1), [xs.size - 1]]))
    return xs[idx], ps[idx]


def fit_label(params: dict) -> str:
    return f"power law: $\\alpha$ = {params['alpha']:.2f}, $k_{{min}}$ = {params['xmin']:g}"


def verdict_text(verdict: str) -> str:
    return verdict.replace("_", " ")


def role_order(roles) -> list[str]:
    known = [r for r in ROLES if r in set(roles)]
    return known + sorted(set(roles) - set(known))


def matrix_rows(report, role: str | None = None) -> pd.DataFrame:
    m = report.matrices
    if role is not None:
        m = m[m["role"] == role]
    if m.empty:
        return m
    key = m.assign(_side=m["side"].fillna("").astype(str), _block=pd.to_numeric(m["block"], errors="coerce"))
    return key.sort_values(["_side", "_block", "name"], kind="stable").drop(columns=["_side", "_block"])


def degrees_of(report, name: str, side: str):
    pair = report.degrees.get(name)
    if pair is None:
        return None
    return pair[0 if side == "in" else 1]


def check_side(side: str) -> int:
    if side not in SIDE_LABELS:
        raise ValueError(f"side must be 'in' or 'out', got {side!r}")
    return 0 if side == "in" else 1


def empty_panel(ax, text: str):
    # No tick changes: the axes may share locators with panels that do have data.
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    return ax


def report_fit_config(report):
    """The report's :class:`~topoprune.graph.config.FitConfig` (defaults when absent or unreadable)."""
    from ..graph.config import FitConfig

    cfg = (report.meta or {}).get("config", {}).get("fit") if isinstance(report.meta, dict) else None
    try:
        return FitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (cfg or {}).items()})
    except Exception:
        return FitConfig()


def block_label(row, several_sides: bool) -> str:
    block = as_float(row.get("block"))
    text = f"block {int(block)}" if np.isfinite(block) and block >= 0 else str(row.get("name"))
    return f"{row.get('side')} {text}" if several_sides and row.get("side") else text


# --------------------------------------------------------------------------- CCDFs


