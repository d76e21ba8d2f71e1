"""Many checkpoints in one analysis: the checkpoints of a training run, or a list of models.

:func:`find_checkpoints` turns the paths a user gives into the checkpoints to analyse (a
directory of ``checkpoint-<step>`` model directories is expanded and ordered by step);
:func:`analyze_zoo` analyses each with :func:`~topoprune.graph.analysis.analyze_report` and saves
its sub-report into a :class:`~topoprune.graph.zoodir.ZooDir`, skipping those a resumed analysis
has already finished (and, inside an interrupted checkpoint, the tensors it had finished:
:mod:`~topoprune.graph.journal`); :func:`combine` stacks the sub-reports into one table with a leading
``checkpoint`` (and ``step``) column, and :func:`trajectory` reduces it to the metrics over
checkpoints that :mod:`topoprune.plotting.trajectory` draws.

Bad input in one checkpoint stops the analysis with an error naming the checkpoint; with
``keep_going`` the checkpoint is recorded as failed (label and one-line reason) and the rest
are analysed.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import CheckpointError, ConfigError, TopopruneError
from ..io import atomic_path, os_error_line, short
from .journal import settle
from .zoodir import SUBREPORTS, ZooDir

log = logging.getLogger(__name__)

#: File names that make a directory a model directory (one checkpoint), besides weight files.
MODEL_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
#: Suffixes of weight files.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: A name a step can be read from (``checkpoint-400``, as the Trainer and ``topoprune train`` write).
STEP_NAME = re.compile(r"^checkpoint[-_](\d+)$")
_TRAILING = re.compile(r"(\d+)$")
#: Metrics of :func:`trajectory`: column -> title.
TRAJECTORY_METRICS = {"in_alpha": "power-law alpha (in)", "in_conn_sd": "connectivity sd (fraction)",
                      "modularity": "modularity"}
#: Above this many roles :func:`trajectory` draws one line per component (attention, MLP) instead.
MAX_ROLE_LINES = 8


@dataclass(frozen=True)
class Member:
    """One checkpoint of a many-checkpoint analysis.

    Attributes
    ----------
    label : str
        Its name in tables and under ``OUT/checkpoints/`` (the directory or file name).
    path : Path
        Where it is.
    step : int or None
        The training step, when the name is ``checkpoint-<step>``.
    """

    label: str
    path: Path
    step: int | None = None

    def record(self) -> dict:
        return {"checkpoint": self.label, "path": os.path.abspath(self.path), "step": self.step}


def step_of(name: str) -> int | None:
    """The step in a ``checkpoint-<step>`` name, else ``None``."""
    m = STEP_NAME.match(name)
    return int(m.group(1)) if m else None


def is_model_dir(path) -> bool:
    """True when ``path`` is a directory holding one model (a config or weight files at its top)."""
    path = Path(path)
    try:
        return path.is_dir() and any(p.name in MODEL_FILES or (p.suffix in WEIGHT_SUFFIXES and p.is_file())
                                     for p in path.iterdir())
    except OSError:
        return False


def _members(directory: Path) -> list[Path]:
    """Subdirectories of ``directory`` that hold a model (or are named ``checkpoint-<step>``)."""
    try:
        subs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return [p for p in subs if step_of(p.name) is not None or is_model_dir(p)]


def _order(path: Path):
    m = _TRAILING.search(path.name)
    return (m is None, int(m.group(1)) if m else 0, path.name)


def find_checkpoints(paths) -> list[Member] | None:
    """The checkpoints named by ``paths``, or ``None`` when they are one checkpoint.

    Parameters
    ----------
    paths : sequence of path
        Several paths are one checkpoint each, in the order given. One path is a *zoo* when it
        is a directory that is not itself a model directory (no ``config.json``, no weight files)
        and holds model directories; they are ordered by their trailing number (the step of
        ``checkpoint-<step>``), then by name.

    Returns
    -------
    list of Member or None
        ``None`` for a single checkpoint (analysed as a single report).

    Raises
    ------
    ConfigError
        When two checkpoints would get the same label, or one of several paths is a directory
        of checkpoints.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        one = paths[0].expanduser()
        if not one.is_dir() or is_model_dir(one):
            return None
        found = sorted(_members(one), key=_order)
        if not found:
            return None  # a directory without models: reported as a checkpoint that holds no weights
    else:
        found = [p.expanduser() for p in paths]
        for p in found:
            if p.is_dir() and not is_model_dir(p) and _members(p):
                raise ConfigError(f"{p}: is a directory of checkpoints; give it alone, or name its checkpoints "
                                  "one by one")
    labels = [p.name.lstrip(".") or "checkpoint" for p in (Path(os.path.abspath(p)) for p in found)]
    twice = {label for label in labels if labels.count(label) > 1}
    labels = [f"{Path(os.path.abspath(path)).parent.name}-{label}" if label in twice else label
              for label, path in zip(labels, found)]  # the same name in different places: the parent tells them apart
    seen: dict[str, Path] = {}
    for label, path in zip(labels, found):
        if label in seen:
            raise ConfigError(f"{seen[label]} and {path}: both would be labelled {label!r}; "
                              "analyse them separately or rename one")
        seen[label] = path
    return [Member(label, path, step_of(Path(os.path.abspath(path)).name)) for label, path in zip(labels, found)]


def settings(config, layers=None, roles=None, **extra) -> dict:
    """The settings that decide an analysis' results, as stored for ``--resume``: not where the work
    runs (``n_jobs``, ``scheduler``, ``connect_timeout``, ``device``), which gives the same results."""
    config = dataclasses.replace(config, layers=tuple(layers) if layers is not None else config.layers,
                                 roles=tuple(roles) if roles is not None else config.roles)
    return _plain(dict(config.results_settings(), **extra))


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def user_error_line(exc: BaseException) -> str | None:
    """One line for an error caused by a checkpoint's content (bad input), else ``None`` (a bug)."""
    if isinstance(exc, TopopruneError):
        return " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError):
        return "refused: loading this pickle would execute code"
    if isinstance(exc, OSError):
        return os_error_line(exc)
    return None


@dataclass
class ZooResult:
    """What :func:`analyze_zoo` did: the checkpoints analysed now, reused, and failed (with the reason)."""

    members: list[Member]
    analysed: list[Member] = dataclasses.field(default_factory=list)
    reused: list[Member] = dataclasses.field(default_factory=list)
    failed: list[tuple[Member, str]] = dataclasses.field(default_factory=list)

    @property
    def succeeded(self) -> list[Member]:
        """The checkpoints with a sub-report, in the analysis order."""
        ok = {m.label for m in self.analysed + self.reused}
        return [m for m in self.members if m.label in ok]


def analyze_zoo(members: list[Member], zoo: ZooDir, *, keep_going: bool = False, progress: bool = False,
                write=None, **analysis) -> ZooResult:
    """Analyse every checkpoint not yet finished in ``zoo`` and save its sub-report there.

    Parameters
    ----------
    members : list of Member
        The checkpoints, in order (:func:`find_checkpoints`).
    zoo : ZooDir
        The opened output directory (:meth:`ZooDir.open`).
    keep_going : bool
        Record a checkpoint with bad input as failed (and log a warning) instead of stopping.
    progress : bool
        A progress bar over the checkpoints (and each analysis' own bar) on stderr.
    write : callable, optional
        ``write(report, directory)`` saves a report (default:
        :func:`~topoprune.graph.report.save_report`); the command line adds the figures.
    **analysis
        Keyword arguments of :func:`~topoprune.graph.analysis.analyze_report`.

    Returns
    -------
    ZooResult

    Raises
    ------
    TopopruneError
        Without ``keep_going``: the first checkpoint with bad input, as one line starting with
        its label (and saying how many finished sub-reports are kept for ``--resume``).
    """
    from tqdm.auto import tqdm

    from . import analysis as _analysis
    from .report import save_report

    write = write or (lambda report, directory: save_report(report, directory))
    result = ZooResult(list(members))
    bar = tqdm(total=len(members), disable=not progress, desc="checkpoints", unit="checkpoint", dynamic_ncols=True)
    try:
        for m in members:
            bar.set_postfix_str(m.label[-30:], refresh=False)
            if zoo.finished(m.label):
                log.info("%s: finished earlier; reused", m.label)
                result.reused.append(m)
                bar.update(1)
                continue
            journal = zoo.journal(m.label)  # its finished tensors, kept through an interrupt
            try:
                report = _analysis.analyze_report(m.path, progress=progress, journal=journal, **analysis)
            except Exception as exc:
                settle(journal, exc)
                line = user_error_line(exc)
                if line is None:
                    raise
                if not keep_going:
                    kept = zoo.n_finished()
                    where = (f" ({kept} finished checkpoint{'' if kept == 1 else 's'} kept in {zoo.staging}; "
                             "fix it and continue with --resume)") if kept else ""
                    cls = type(exc) if isinstance(exc, TopopruneError) else CheckpointError
                    raise cls(f"{m.label}: {line}{where}") from exc
                log.warning("%s: %s (skipped)", m.label, line)
                result.failed.append((m, line))
            else:
                zoo.save(m.label, m.record()["path"], lambda directory, report=report: write(report, directory))
                settle(journal)
                result.analysed.append(m)
                del report
            bar.update(1)
    finally:
        bar.close()
    return result


def _with_ids(table: pd.DataFrame, member: Member, steps: bool) -> pd.DataFrame:
    table = table.copy()
    if steps:
        table.insert(0, "step", pd.array([member.step] * len(table), dtype="Int64"))
    table.insert(0, "checkpoint", member.label)
    return table


def read_table(path) -> pd.DataFrame:
    """A CSV table of a (sub-)report; empty when the file is empty."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged report table ({short(exc, 150)})") from None


def combine(result: ZooResult, zoo: ZooDir) -> dict[str, pd.DataFrame]:
    """The combined tables of the sub-reports in ``zoo``: ``report``, ``summary`` and ``failed``.

    Each table is the concatenation of the sub-reports' ``report.csv`` / ``summary.csv`` in
    checkpoint order, with a leading ``checkpoint`` column and, when some checkpoint has a step,
    a ``step`` column; ``failed`` lists the failed checkpoints with the reason.
    """
    steps = any(m.step is not None for m in result.members)
    tables: dict[str, pd.DataFrame] = {}
    for name in ("report", "summary"):
        parts = [_with_ids(read_table(zoo.subreport(m.label) / f"{name}.csv"), m, steps) for m in result.succeeded]
        tables[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    rows = [dict(m.record(), reason=why) for m, why in result.failed]
    failed = pd.DataFrame(rows, columns=["checkpoint", "step", "path", "reason"])
    failed["step"] = failed["step"].astype("Int64")
    tables["failed"] = failed if steps else failed.drop(columns="step")
    return tables


def write_tables(tables: dict[str, pd.DataFrame], directory) -> list[Path]:
    """Write ``report.csv``, ``summary.csv`` and (when a checkpoint failed) ``failed.csv``, atomically."""
    directory, paths = Path(directory), []
    for name, table in tables.items():
        if name == "failed" and table.empty:
            (directory / "failed.csv").unlink(missing_ok=True)
            continue
        with atomic_path(directory / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
        paths.append(directory / f"{name}.csv")
    return paths


def finish(result: ZooResult, zoo: ZooDir) -> dict[str, pd.DataFrame]:
    """Write the combined tables and the final record into ``zoo``; return the tables.

    Raises
    ------
    CheckpointError
        When no checkpoint could be analysed.
    """
    if not result.succeeded:
        first = result.failed[0] if result.failed else None
        raise CheckpointError("no checkpoint could be analysed"
                              + (f" ({len(result.failed)} failed; first: {first[0].label}: {first[1]})"
                                 if first else ""))
    tables = combine(result, zoo)
    write_tables(tables, zoo.staging)
    done = {m.label for m in result.succeeded}
    reasons = {m.label: why for m, why in result.failed}
    zoo.write_record([dict(m.record(), status="ok" if m.label in done else "failed",
                           **({"reason": reasons[m.label]} if m.label in reasons else {}),
                           report=f"{SUBREPORTS}/{m.label}" if m.label in done else None)
                      for m in result.members])
    return tables


def trajectory(report: pd.DataFrame, *, by: str = "auto") -> pd.DataFrame:
    """The main metrics per checkpoint and role (or component): what the trajectory figure shows.

    Parameters
    ----------
    report : DataFrame
        The combined per-matrix table of :func:`combine` (``checkpoint`` first, ``step`` when known).
    by : {"auto", "role", "component"}
        Group matrices by role, by component (attention, MLP, ...), or by role unless there are
        more than :data:`MAX_ROLE_LINES` roles.

    Returns
    -------
    DataFrame
        ``checkpoint``, ``x`` (the step when every checkpoint has one, else the position of the
        checkpoint), ``group`` and the means of :data:`TRAJECTORY_METRICS` over the group's
        matrices with status ``ok``; ``attrs["x"]`` is ``"step"`` or ``"checkpoint"``,
        ``attrs["by"]`` the grouping and ``attrs["labels"]`` the checkpoints in order.
    """
    labels = list(dict.fromkeys(report["checkpoint"])) if "checkpoint" in report else []
    ok = report[report["status"] == "ok"] if "status" in report else report.iloc[:0]
    if by == "auto":
        by = "role" if ok["role"].nunique() <= MAX_ROLE_LINES else "component"
    if by not in ("role", "component"):
        raise ConfigError(f"trajectory: by must be 'auto', 'role' or 'component', got {by!r}")
    metrics = [c for c in TRAJECTORY_METRICS if c in ok.columns]
    steps = "step" in report and report["step"].notna().all() and len(report)
    first = report.drop_duplicates("checkpoint").set_index("checkpoint") if labels else pd.DataFrame()
    xs = {lb: int(first.loc[lb, "step"]) if steps else i for i, lb in enumerate(labels)}
    values = ok[metrics].apply(pd.to_numeric, errors="coerce")
    out = values.groupby([ok["checkpoint"], ok[by]], sort=False).mean().reset_index()
    out = out.rename(columns={by: "group"})
    out.insert(1, "x", out["checkpoint"].map(xs))
    out = out.sort_values(["group", "x"], kind="stable").reset_index(drop=True)
    out.attrs.update(x="step" if steps else "checkpoint", by=by, labels=labels)
    return out


__all__ = ["Member", "ZooResult", "find_checkpoints", "analyze_zoo", "combine", "finish", "write_tables",
           "trajectory", "read_table", "settings", "step_of", "is_model_dir", "TRAJECTORY_METRICS"]
