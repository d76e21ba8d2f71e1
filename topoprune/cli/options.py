"""The analysis options of the command line, parsed and checked before any work (nothing printed here).

Each bad option is a :class:`~topoprune.errors.ConfigError` naming it: ``--density`` together with
``--threshold``, a reversed ``--layers 3-1``, a negative or absurd block index, an out-of-range
``--jobs``, a malformed ``--scheduler`` or ``--device`` (checked by
:class:`~topoprune.graph.config.AnalysisConfig`), ``--device cuda`` on a machine without CUDA,
``--scheduler`` without the ``distributed`` package. :func:`setting_options` holds the one-shot
options that a named NeuroAL setting presets.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from ..errors import CheckpointError, ConfigError

#: Largest block index ``--layers`` accepts.
MAX_BLOCK = 99_999


def default(cls, name: str):
    """The default of field ``name`` of the config dataclass ``cls``: every CLI default has that one home."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def parse_layers(text: str | None):
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``; reversed ranges, negative and absurd indices are refused."""
    if not text:
        return None
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            if re.fullmatch(r"-\s*\d+(\s*-.*)?", part):
                raise ConfigError(f"--layers: {part} is negative; block indices start at 0")
            raise ConfigError(f"--layers: {part!r} is not a block index; use block indices like 0,2,5-7")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if a > b:
            raise ConfigError(f"--layers: {part} is reversed; write {b}-{a}")
        if b > MAX_BLOCK:
            raise ConfigError(f"--layers: {part} goes beyond block {MAX_BLOCK}")
        out.extend(range(a, b + 1))
    return tuple(out)


def parse_roles(text: str | None):
    """``"q, k,mlp_in"`` -> ``("q", "k", "mlp_in")``; roles are checked by the analysis."""
    return tuple(r.strip() for r in text.split(",") if r.strip()) if text else None


def analysis_options(f):
    """The analysis options of ``analyze`` and ``compare`` (their defaults and choices from the config classes)."""
    from ..graph.config import DEVICES, NONFINITE, AnalysisConfig, GraphConfig, ModularityConfig

    options = [
        click.option("--density", type=float, default=None,
                     help=f"Fraction of entries kept as edges, by |w| [{default(GraphConfig, 'density')}]."),
        click.option("--threshold", type=float, default=None, help="Keep entries with |w| >= THRESHOLD instead."),
        click.option("--layers", default=None, help="Block indices, e.g. 0,2,5-7 [all]."),
        click.option("--roles", default=None, help="Roles, e.g. q,k,mlp_in [all]."),
        click.option("--fits/--no-fits", default=default(AnalysisConfig, "fits"), show_default=True,
                     help="Power-law fits."),
        click.option("--modularity/--no-modularity", default=default(AnalysisConfig, "matrix_modularity"),
                     show_default=True, help="Leiden modularity of every matrix graph."),
        click.option("--block-modularity", is_flag=True, help="Also the layered attention/MLP graph of each block."),
        click.option("--model-graph", is_flag=True,
                     help="Also the whole-model multipartite graph (blocks stacked through the residual stream)."),
        click.option("--embeddings", is_flag=True, help="Also analyse embeddings and the LM head."),
        click.option("--nonfinite", type=click.Choice(NONFINITE), default=default(AnalysisConfig, "nonfinite"),
                     show_default=True, help="NaN/Inf in a matrix: stop, or flag it in the status column and go on."),
        click.option("-j", "--jobs", type=int, default=default(AnalysisConfig, "n_jobs"), show_default=True,
                     help="Worker processes (-1: one per CPU)."),
        click.option("--device", default=default(AnalysisConfig, "device"), show_default=True,
                     help=f"Where edge selection and degrees run ({', '.join(DEVICES)}: cuda when available); "
                          "fits and community detection stay on the CPU."),
        click.option("--seed", type=int, default=default(ModularityConfig, "seed"), show_default=True,
                     help="Seed of the community detection."),
        click.option("--scheduler", metavar="ADDRESS", default=default(AnalysisConfig, "scheduler"),
                     help="Run the per-matrix work on a Dask cluster: a running scheduler's address "
                          "(tcp://HOST:PORT; workers read CHECKPOINT at the same path), or local:N for N local "
                          "worker processes [the local process pool, -j]."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def analysis_request(checkpoint, density, threshold, layers, roles, fits, modularity, block_modularity,
                     model_graph, embeddings, nonfinite, jobs, seed, scheduler=None, device="cpu"):
    """``(source, kwargs of analyze_report)`` from the analysis options, every option checked."""
    from ..graph.config import AnalysisConfig, GraphConfig, ModularityConfig, resolve_device
    from ..assets import default_checkpoint

    if density is not None and threshold is not None:
        raise ConfigError(f"--density {density:g} and --threshold {threshold:g} contradict each other: "
                          "--density keeps a share of the entries, --threshold those with |w| >= it; give one")
    graph = GraphConfig(threshold=threshold, **({} if density is None else {"density": density}))
    config = AnalysisConfig(graph=graph, modularity=ModularityConfig(seed=seed), fits=fits,
                            matrix_modularity=modularity, block_modularity=block_modularity,
                            model_modularity=model_graph,
                            include_embeddings=embeddings, nonfinite=nonfinite, n_jobs=jobs, scheduler=scheduler,
                            device=device)
    if scheduler is None:
        resolve_device(device)  # no CUDA device here: refused before any work (a cluster's workers have theirs)
    if scheduler is not None:
        from ..graph.cluster import require_distributed

        require_distributed()
    kwargs = dict(config=config, layers=parse_layers(layers), roles=parse_roles(roles))
    source = checkpoint if checkpoint is not None else default_checkpoint()
    return source, kwargs


def check_input(source) -> None:
    """Refuse a missing or unreadable input path before anything else is looked at."""
    try:
        found = Path(source).expanduser().exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise CheckpointError(f"{source}: cannot be read ({exc.strerror})") from None
    if not found:
        raise CheckpointError(f"{source}: no such file or directory")


class _OneLine:
    """Mixin for a click parameter type: a bad value is a :class:`ConfigError` naming the option, so the
    command line reports it in one line ``error: ...`` with exit code 2 (not click's usage block)."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise ConfigError(f"{param.opts[-1] if param else 'value'}: {exc.message}") from None


class OneLineChoice(_OneLine, click.Choice):
    """A :class:`click.Choice` whose bad value is one line ``error: ...``, exit code 2."""


class OneLineIntRange(_OneLine, click.IntRange):
    """A :class:`click.IntRange` whose bad value (not an integer, out of range) is one line, exit code 2."""


def grid_blocks_option(help_prefix: str = ""):
    """``--grid-blocks`` of ``analyze`` and ``plot``, its default from :class:`FigureConfig`."""
    from ..plotting.common import FigureConfig

    return click.option("--grid-blocks", type=OneLineIntRange(min=0), default=default(FigureConfig, "grid_blocks"),
                        show_default=True,
                        help=help_prefix + "Blocks shown in the per-block CCDF figures, evenly spaced, first and "
                                           "last included (0: every block).")


def setting_options(f):
    """``--setting`` and the knobs it presets (``--group``, ``--down-rows``, ``--rebalance``), plus ``--gqa-rows``.

    The knobs default to ``None``: "as the setting says" (:meth:`OneShotConfig.preset`); given
    explicitly, they override the setting.
    """
    from ..oneshot.config import DEFAULT_SETTING, DOWN_ROWS, GQA_ROWS, GROUPS, SETTINGS, OneShotConfig

    def per_setting(name, show=str):
        return "[" + "; ".join(f"{k}: {show(v[name])}" for k, v in SETTINGS.items()) + "]"

    options = [
        click.option("--setting", type=OneLineChoice(tuple(SETTINGS)), default=DEFAULT_SETTING, show_default=True,
                     help="NeuroAL setting: as its authors' code runs it (--down-rows next_input, --group row, "
                          "--no-rebalance; lower held-out perplexity), or ours; the options below override it."),
        click.option("--group", type=OneLineChoice(GROUPS), default=None,
                     help="Comparison group (auto: layer for magnitude, row for wanda) " + per_setting("group")),
        click.option("--down-rows", type=OneLineChoice(DOWN_ROWS), default=None,
                     help="Row-step drop of the MLP output projection's rows: the block's output, or the next "
                          "block's input " + per_setting("down_rows")),
        click.option("--rebalance/--no-rebalance", default=None,
                     help="Shift clipped allocations back onto the target sparsity "
                          + per_setting("rebalance", lambda v: "on" if v else "off")),
        click.option("--gqa-rows", type=OneLineChoice(GQA_ROWS), default=default(OneShotConfig, "gqa_rows"),
                     show_default=True, help="Row step of grouped-query k/v: head-averaged drop, or the block ratio."),
    ]
    for option in reversed(options):
        f = option(f)
    return f
