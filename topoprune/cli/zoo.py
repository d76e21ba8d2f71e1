"""``topoprune analyze`` of several checkpoints: sub-reports, combined tables, trajectory figure.

The output is built in ``.OUT.partial/`` (:class:`~topoprune.graph.zoodir.ZooDir`) and renamed
onto ``OUT`` at the end; a failure or an interrupt keeps the finished sub-reports there for
``--resume``.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import click

from .options import analysis_request


def analyze_many(paths, members, out, *, overwrite, figures, as_json, resume, keep_going, progress, opts,
                 print_table):
    """Analyse ``members`` (:func:`~topoprune.graph.zoo.find_checkpoints`) into ``out``; print the result.

    Parameters
    ----------
    paths : sequence of Path
        The paths given on the command line (``out`` may not lie inside one).
    members : list of Member
        The checkpoints, in order.
    out : str
        The output directory.
    overwrite, as_json, resume, keep_going : bool
        The ``analyze`` options of the same names.
    figures : FigureConfig or None
        Each checkpoint's figures (``--plots``, ``--grid-blocks``); None: none.
    progress : bool
        Progress bars on stderr.
    opts : dict
        The analysis options (:func:`~topoprune.cli.options.analysis_request`).
    print_table : callable
        Prints the per-checkpoint model summary.
    """
    from ..graph.report import save_report, summarize
    from ..graph.zoo import analyze_zoo, finish, settings
    from ..graph.zoodir import RECORD, ZooDir
    from ..plotting.trajectory import save_trajectory

    _, kwargs = analysis_request(members[0].path, **opts)
    recorded = settings(kwargs["config"], kwargs["layers"], kwargs["roles"], plots=figures is not None,
                        **_figure_settings(figures))
    zoo = ZooDir(out, recorded, resume=resume, overwrite=overwrite,
                 reads=[*paths, *(m.path for m in members)])  # refusals come before any work

    def write(report, directory):
        save_report(report, directory, summary=summarize(report))
        if figures is not None:
            from ..plotting import save_figures

            save_figures(report, directory / "figures", config=figures, progress=progress)

    if progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logging.getLogger("topoprune")])  # warnings above the bar
    else:
        redirect = nullcontext()
    with zoo:
        zoo.open([m.record() for m in members])
        with redirect:
            result = analyze_zoo(members, zoo, keep_going=keep_going, progress=progress, write=write, **kwargs)
        tables = finish(result, zoo)
        save_trajectory(tables["report"], zoo.staging / "figures")
        final = zoo.commit()
    if as_json:
        click.echo((final / RECORD).read_text())
        return
    n, a, r, f = len(members), len(result.analysed), len(result.reused), len(result.failed)
    click.echo(f"{n} checkpoints: {a} analysed" + (f", {r} reused" if r else "")
               + (f", {f} failed (see failed.csv)" if f else "") + f"; report in {out}/")
    summary = tables["summary"]
    print_table(summary[summary["level"] == "model"])


def _figure_settings(figures) -> dict:
    """What the figures add to the settings a resumed run must share: ``grid_blocks`` when it is not
    the default (a run started before the setting existed drew its grids at the default's place)."""
    from ..plotting.common import FigureConfig

    if figures is None or figures.grid_blocks == FigureConfig().grid_blocks:
        return {}
    return {"grid_blocks": figures.grid_blocks}
