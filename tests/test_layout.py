"""The package's shape: imports flow one way, modules stay readable, the public API is where the README says."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "topoprune"
#: What each part of the package may import (besides itself, and the root package's ``__version__``).
ALLOWED = {
    "errors": set(),
    "io": {"errors"},
    "graph": {"errors", "io"},
    "assets": {"errors", "io"},
    "models": {"errors", "io", "assets", "graph"},
    "plotting": {"errors", "io", "graph"},
    "train": {"errors", "io", "graph", "assets", "models", "plotting"},
    "oneshot": {"errors", "io", "graph", "assets", "models", "plotting"},
    "compaction": {"errors", "io", "graph", "assets", "models", "plotting"},
    "cli": {"errors", "io", "graph", "assets", "models", "plotting", "train", "oneshot", "compaction"},
}
MAX_LINES = 450


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        yield path, parts


def _imports(path: Path, parts: list[str]):
    """``(target module parts, names)`` of every import in the file, relative ones resolved."""
    package = parts[:-1]  # the package a relative import starts from (also for an __init__)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split("."), []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = node.module.split(".")
            yield target, [a.name for a in node.names]


def _part(parts: list[str]) -> str | None:
    """The part of the package a module belongs to (``graph``, ``train``, ...); None for the root."""
    if len(parts) < 2 or parts[0] != "topoprune":
        return None
    return parts[1].removesuffix(".py")


def test_imports_flow_one_way():
    bad = []
    for path, parts in _modules():
        me = _part(parts)
        if me is None or me == "__init__":
            continue  # the root package re-exports the public API
        for target, names in _imports(path, parts):
            if not target or target[0] != "topoprune":
                continue
            if target == ["topoprune"]:
                # the root package: only its version (importing the API from below would be circular)
                names = [n for n in names if n != "__version__"]
                if names and not all(_part(["topoprune", n]) in ALLOWED[me] | {me} for n in names):
                    bad.append(f"{path.relative_to(PKG.parent)} imports {names} from topoprune")
                continue
            other = _part(target)
            if other != me and other not in ALLOWED[me]:
                bad.append(f"{path.relative_to(PKG.parent)} ({me}) imports {'.'.join(target)} ({other})")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    """The rule above is not vacuous: a graph module importing the trainer is caught."""
    fake = tmp_path / "topoprune" / "graph"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from ..train.neuroprune import NeuroPrune\n")
    parts = ["topoprune", "graph", "bad"]
    found = [t for t, _ in _imports(fake / "bad.py", parts)]
    assert ["topoprune", "train", "neuroprune"] in found and _part(found[0]) not in ALLOWED["graph"]


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(PKG.parent)))
def test_modules_are_short_enough_to_read(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_public_api_where_the_readme_shows_it():
    import topoprune
    from topoprune.graph import Report, analyze, analyze_report, summarize  # noqa: F401
    from topoprune.models import load_causal_lm, load_model  # noqa: F401
    from topoprune.oneshot import OneShotConfig, prune, run_oneshot  # noqa: F401
    from topoprune.train import NeuroPrune, NeuroPruneCallback, NeuroPruneConfig, NeuroPruneTrainer, TrainConfig, train

    assert topoprune.analyze is analyze and topoprune.summarize is summarize
    assert topoprune.NeuroPrune is NeuroPrune and topoprune.NeuroPruneConfig is NeuroPruneConfig
    assert topoprune.NeuroPruneTrainer is NeuroPruneTrainer and topoprune.run_oneshot is run_oneshot
    assert callable(train) and TrainConfig().model == "minilm" and NeuroPruneCallback
    from topoprune.compaction import compact, load_compact, save_compact  # noqa: F401

    assert topoprune.compact is compact and topoprune.load_compact is load_compact
