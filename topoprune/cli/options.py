"""The analysis options of the command line, parsed and checked before any work (nothing printed here).

Each bad option is a :class:`~topoprune.errors.ConfigError` naming it: ``--density`` together with
``--threshold``, a reversed ``--layers 3-1``, a negative or absurd block index, an out-of-range
``--jobs`` or a malformed ``--scheduler`` (checked by :class:`~topoprune.graph.config.AnalysisConfig`),
``--scheduler`` without the ``distributed`` package.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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


def analysis_request(checkpoint, density, threshold, layers, roles, fits, modularity, block_modularity,
                     model_graph, embeddings, nonfinite, jobs, seed, scheduler=None):
    """``(source, kwargs of analyze_report)`` from the analysis options, every option checked."""
    from ..graph.config import AnalysisConfig, GraphConfig, ModularityConfig
    from ..assets import default_checkpoint

    if density is not None and threshold is not None:
        raise ConfigError(f"--density {density:g} and --threshold {threshold:g} contradict each other: "
                          "--density keeps a share of the entries, --threshold those with |w| >= it; give one")
    graph = GraphConfig(density=0.1 if density is None else density, threshold=threshold)
    config = AnalysisConfig(graph=graph, modularity=ModularityConfig(seed=seed), fits=fits,
                            matrix_modularity=modularity, block_modularity=block_modularity,
                            model_modularity=model_graph,
                            include_embeddings=embeddings, nonfinite=nonfinite, n_jobs=jobs, scheduler=scheduler)
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
