"""Saving the benchmarks' figures: PNG and SVG under ``figures/``, each written beside its
destination and swapped in when complete (a run interrupted while saving leaves the old figure)."""
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
    paths = []
    for ext in ("png", "svg"):
        paths.append(directory / f"{stem}.{ext}")
        with atomic_path(paths[-1]) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
