"""Analyse the embedded all-MiniLM-L6-v2 checkpoint and draw its degree, trend and pattern figures.

Usage::

    python -m analysis.make_figures [--checkpoint PATH] [--figures DIR] [--report DIR]

Writes PNG + SVG figures to ``figures/`` (see :func:`topoprune.plotting.save_figures`)
and the full report (tables, degree sequences, patterns) to ``--report`` (default: a
directory under the system temp dir, so nothing large lands in the repository).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import topoprune  # noqa: E402
from topoprune.assets import default_checkpoint  # noqa: E402
from topoprune.plotting import save_figures  # noqa: E402
from topoprune.graph.report import save_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: embedded MiniLM)")
    ap.add_argument("--figures", type=Path, default=ROOT / "figures", help="output directory for figures")
    ap.add_argument("--report", type=Path, default=Path(tempfile.gettempdir()) / "topoprune-minilm-report",
                    help="where to save the report (default: under the temp dir)")
    ap.add_argument("--formats", default="png,svg", help="comma-separated figure formats")
    args = ap.parse_args(argv)

    checkpoint = args.checkpoint or default_checkpoint()  # the embedded all-MiniLM-L6-v2
    t0 = time.perf_counter()
    report = topoprune.analyze_report(checkpoint, block_modularity=True)
    t1 = time.perf_counter()
    save_report(report, args.report)
    paths = save_figures(report, args.figures, formats=tuple(args.formats.split(",")))
    t2 = time.perf_counter()

    print(f"analysed {len(report.matrices)} matrices of {checkpoint} in {t1 - t0:.1f} s; report: {args.report}")
    total = 0
    for p in paths:
        size = p.stat().st_size
        total += size
        try:
            shown = p.relative_to(ROOT)
        except ValueError:
            shown = p
        print(f"  {shown}  {size / 1024:.0f} KiB")
    print(f"{len(paths)} figure files, {total / 1024:.0f} KiB, drawn in {t2 - t1:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
