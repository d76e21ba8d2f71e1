"""Which stored benchmark results were measured on code that has changed since.

Every results file under ``analysis/results/`` comes from one benchmark script, which measures
some parts of the package. A result is *stale* when the code of a file of those parts, or the
script's measuring code (the definitions it fingerprints for ``--resume``; the whole script where
it names none), differs between the commit the result was measured at and the working tree (docstrings
and comments aside: files are compared as Python syntax trees without them): it must be
re-measured, or its text in BENCHMARKS.md must say why it still applies.

The measured commit is the ``"commit"`` a results file records
(:func:`analysis.fingerprint.provenance`; in an ``.npz`` file, in its ``meta`` JSON); a file without one is dated by the last commit that
wrote it (results are committed with the code that produced them, so this is the latest the
measurement can be).

Run: ``make stale`` (``.venv/bin/python -m analysis.stale``): one line per results file --
current, or stale with the changed files; ``--strict`` exits 1 when any result is stale.
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: results file (under analysis/results) -> (the script that writes it, the package parts it measures).
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bench_analysis.json": ("bench_analysis.py", ("graph", "models.py", "io.py", "assets.py")),
    "bench_analysis_memory.json": ("bench_analysis.py", ("graph", "models.py", "io.py", "assets.py")),
    "bench_compact.json": ("bench_compact.py", ("train", "graph", "compaction", "models.py")),
    "bench_distill.json": ("bench_distill.py", ("train", "graph", "compaction", "models.py")),
    "bench_distill_large.json": ("bench_distill.py", ("train", "graph", "compaction", "models.py")),
    "bench_distill_large_neurons.json": ("bench_distill.py", ("train", "graph", "compaction", "models.py")),
    "bench_distill_long.json": ("bench_distill.py", ("train", "graph", "compaction", "models.py")),
    "bench_gather.json": ("bench_gather.py", ("train", "graph", "models.py")),
    "bench_head_distance.json": ("bench_head_distance.py", ("train", "graph", "models.py")),
    "bench_heads.json": ("bench_heads.py", ("train", "graph", "models.py")),
    "bench_heads_train.json": ("bench_heads_train.py", ("train", "graph", "compaction", "models.py")),
    "bench_neuroprune.json": ("bench_neuroprune.py", ("train", "graph", "models.py")),
    "bench_oneshot.json": ("bench_oneshot.py", ("oneshot", "graph", "models.py")),
    "bench_paper_compare.json": ("bench_paper_compare.py", ("train", "graph", "models.py")),
    "bench_scaling.json": ("bench_scaling.py", ("graph",)),
    "bench_scaling_cluster_0.5b.json": ("bench_scaling.py", ("graph",)),
    "bench_separate.json": ("bench_separate.py", ("train", "graph", "models.py")),
    "bench_separate_ptb.json": ("bench_separate.py", ("train", "graph", "models.py")),
    "bench_time_to_sparsity.json": ("bench_time_to_sparsity.py", ("train", "graph", "models.py")),
    "bench_topology.json": ("bench_topology.py", ("train", "graph", "models.py")),
    "ccdf_training.npz": ("fig_ccdf_training.py", ("train", "graph", "models.py")),
    "frontier.json": ("frontier_paper_mode.py", ("train", "graph", "models.py")),
    "owl_sweep.json": ("owl_sweep.py", ("oneshot", "graph", "models.py")),
    "paper_mode.json": ("sweep_paper_mode.py", ("train", "graph", "models.py")),
}


@dataclass(frozen=True)
class Status:
    """One results file: the commit it was measured at and the measured files changed since."""

    results: str
    commit: str | None
    changed: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return self.commit is None or bool(self.changed)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def measured_commit(path: Path, root: Path = ROOT) -> str | None:
    """The commit ``path`` was measured at: its ``"commit"`` field, else the last commit that wrote it."""
    recorded = None
    try:
        if path.suffix == ".json":
            recorded = json.loads(path.read_text()).get("commit")
        elif path.suffix == ".npz":  # the figures' degree sequences keep their settings as JSON in "meta"
            import numpy as np
            with np.load(path) as f:
                recorded = json.loads(str(f["meta"])).get("commit") if "meta" in f.files else None
    except (ValueError, AttributeError, OSError):
        recorded = None
    if recorded:
        return str(recorded)
    return _git(root, "log", "-1", "--format=%H", "--", str(path.relative_to(root))) or None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _code(source: str) -> str | None:
    """``source``'s syntax tree without docstrings (comments are not in it); None if it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return ast.dump(_strip_docstrings(tree))


def _measured_names(tree: ast.Module) -> set[str] | None:
    """The names a script passes as ``measured=`` to ``code_fingerprint``; None where it fingerprints
    its whole text (a call without ``measured``, or one naming something other than a plain name)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if not isinstance(node, ast.Call) or getattr(func, "id", getattr(func, "attr", None)) != "code_fingerprint":
            continue
        given = [kw.value for kw in node.keywords if kw.arg == "measured"]
        if not given or not isinstance(given[0], (ast.Tuple, ast.List)) \
                or not all(isinstance(e, ast.Name) for e in given[0].elts):
            return None
        names |= {e.id for e in given[0].elts}
    return names or None


def _definitions(tree: ast.Module, names: set[str]) -> dict[str, str]:
    """The top-level definitions (functions, classes, assignments) of ``names`` in ``tree``, dumped."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined = [t.id for t in targets if isinstance(t, ast.Name)]
        else:
            continue
        for name in set(defined) & names:
            found[name] = ast.dump(node)
    return found


def _script_code(source: str | None, read=None) -> str | None:
    """The code of a benchmark script that its results depend on: the definitions it names as its
    measuring code (``code_fingerprint(..., measured=...)``, the same code ``--resume`` checks), so
    that edits of its tables, figures and help texts keep it current. A name the script imports
    from a helper module (``from analysis.tasks import example_correct``) is looked up there, its
    source given by ``read(path)`` (a repository-relative path; None where the file is missing).
    The whole script (:func:`_code`) where it names none, or names one defined neither in it nor
    in such a module; None where it is missing or does not parse."""
    if source is None:
        return None
    try:
        tree = _strip_docstrings(ast.parse(source))
    except SyntaxError:
        return None
    names = _measured_names(tree)
    if names is None:
        return ast.dump(tree)
    found = _definitions(tree, names)
    for node in tree.body:  # measured names imported from the helper modules of analysis/
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("analysis.") and read:
            wanted = {a.name for a in node.names if (a.asname or a.name) in names - set(found)}
            helper = read(f"analysis/{node.module.split('.', 1)[1]}.py") if wanted else None
            if helper is not None:
                try:
                    found.update(_definitions(_strip_docstrings(ast.parse(helper)), wanted))
                except SyntaxError:
                    pass
    if set(found) != names:
        return ast.dump(tree)
    return "\n".join(found[n] for n in sorted(names))


def changed_since(commit: str, paths: list[str], root: Path = ROOT, script: str | None = None) -> tuple[str, ...]:
    """Files under ``paths`` (relative to ``root``) whose code differs between ``commit`` and the
    working tree: added, removed, or changed in more than docstrings and comments. The benchmark
    ``script`` among them counts as changed only where its measuring code did, wherever that code
    lives (:func:`_script_code`)."""
    def then(name: str) -> str | None:
        try:
            return _git(root, "show", f"{commit}:{name}")
        except subprocess.CalledProcessError:  # added since
            return None

    def now(name: str) -> str | None:
        return (root / name).read_text() if (root / name).is_file() else None

    diff = _git(root, "diff", "--name-only", commit, "--", *paths).splitlines()
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *paths).splitlines()
    changed = set(untracked)
    for name in diff:
        if name == script:
            continue
        before, after = then(name), now(name)
        if before is None or after is None or not name.endswith(".py") or _code(before) is None \
                or _code(before) != _code(after):
            changed.add(name)
    if script in paths:  # its measuring code may live in a helper module that changed on its own
        before = _script_code(then(script), then)
        if before is None or before != _script_code(now(script), now):
            changed.add(script)
    return tuple(sorted(changed - {""}))


def status(results_dir: Path = ROOT / "analysis" / "results", root: Path = ROOT,
           sources: dict = SOURCES) -> list[Status]:
    """The :class:`Status` of every results file in ``results_dir`` that ``sources`` knows."""
    rows = []
    for path in sorted(results_dir.iterdir()):
        if path.name not in sources:
            continue
        script, parts = sources[path.name]
        commit = measured_commit(path, root)
        measured = [f"analysis/{script}"] + [f"topoprune/{p}" for p in parts]
        rows.append(Status(path.name, commit,
                           changed_since(commit, measured, root, script=measured[0]) if commit else ()))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strict", action="store_true", help="exit 1 when any result is stale")
    args = ap.parse_args(argv)
    known = set(SOURCES)
    unknown = sorted(p.name for p in (ROOT / "analysis" / "results").iterdir() if p.name not in known)
    rows = status()
    for r in rows:
        if r.commit is None:
            print(f"stale    {r.results}: never committed, so its code is unknown")
        elif r.changed:
            shown = ", ".join(r.changed[:6]) + (f" and {len(r.changed) - 6} more" if len(r.changed) > 6 else "")
            print(f"stale    {r.results} (measured at {r.commit[:7]}): {shown}")
        else:
            print(f"current  {r.results} (measured at {r.commit[:7]})")
    for name in unknown:
        print(f"unknown  {name}: no entry in analysis/stale.py SOURCES")
    n = sum(r.stale for r in rows)
    print(f"{n} of {len(rows)} results measured on code that changed since", file=sys.stderr)
    return 1 if args.strict and (n or unknown) else 0


if __name__ == "__main__":
    sys.exit(main())
