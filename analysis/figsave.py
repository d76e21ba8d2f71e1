"""Saving the benchmarks' figures: PNG and SVG under ``figures/``, each written beside its
destination and swapped in when complete (a run interrupted while saving leaves the old figure).

The files depend only on the figure: the SVG's element ids are drawn with a fixed salt
(``svg.hashsalt``) and no date is written, so redrawing from the same results gives the same bytes."""
from __future__ import annotations

from pathlib import Path

from topoprune.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: str, dpi: int = 150, directory: Path = FIGURES) -> list[Path]:
    """Write ``fig`` as ``directory/stem.png`` and ``.svg`` atomically, close it, return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    paths = []
    for ext in ("png", "svg"):
        paths.append(directory / f"{stem}.{ext}")
        with atomic_path(paths[-1]) as tmp, mpl.rc_context({"svg.hashsalt": f"topoprune-{stem}"}):
            fig.savefig(tmp, format=ext, dpi=dpi, metadata={"Date": None} if ext == "svg" else None)
    plt.close(fig)
    return paths
