"""Save, load and compare analysis reports; every file is written atomically.

A report directory holds:

=====================  ==========================================================
``report.csv``         one row per matrix (:data:`topoprune.graph.analysis.COLUMNS`)
``summary.csv``        :func:`topoprune.summarize` (per role, per block, whole model)
``layered.csv``        block (layered) graphs, when ``block_modularity`` was set
``report.json``        all of the above plus ``config``, ``version``, ``source``
``degrees.safetensors``  ``<name>::in`` / ``<name>::out`` int32 degree sequences
``patterns.safetensors`` ``<name>`` float32 edge-density maps (sparsity patterns)
=====================  ==========================================================

Each file goes to a temporary name in the same directory and is renamed into place
(``os.replace``), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .analysis import COLUMNS, ID_COLUMNS, Report, summarize
from ..errors import CheckpointError
from ..io import atomic_path, short

REPORT_FILES = ("report.csv", "summary.csv", "report.json", "degrees.safetensors", "patterns.safetensors")
#: Columns every matrix row of a saved report must have (they key comparisons and figures).
REQUIRED_COLUMNS = ("name", "role", "block", "side")


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _records(df: pd.DataFrame) -> list[dict]:
    return _json_safe(df.to_dict(orient="records"))


def save_report(report: Report, out_dir, *, summary: pd.DataFrame | None = None) -> Path:
    """Write ``report`` to ``out_dir`` (created if missing); return the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    summary = summarize(report) if summary is None else summary
    files = {"report.csv": report.matrices, "summary.csv": summary}
    if len(report.layered):
        files["layered.csv"] = report.layered
    for name, table in files.items():
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    doc = dict(report.meta, matrices=_records(report.matrices), summary=_records(summary),
               layered=_records(report.layered))
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(_json_safe(doc), indent=1, allow_nan=False))
    deg = {}
    for name, (din, dout) in report.degrees.items():
        deg[f"{name}::in"] = torch.from_numpy(np.ascontiguousarray(din, dtype=np.int32))
        deg[f"{name}::out"] = torch.from_numpy(np.ascontiguousarray(dout, dtype=np.int32))
    meta = {"topoprune_version": str(report.meta.get("version", ""))}
    for name, tensors in (("degrees.safetensors", deg), ("patterns.safetensors", {
            k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in report.patterns.items()})):
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    return out


def load_report(path) -> Report:
    """Read a report directory (or its ``report.json``) written by :func:`save_report`."""
    from safetensors.torch import load_file

    path = Path(path)
    directory = path.parent if path.is_file() else path
    js = directory / "report.json"
    if not js.is_file():
        raise CheckpointError(f"{directory}: not a topoprune report (no report.json)")
    try:
        doc = json.loads(js.read_text())
        rows = doc["matrices"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("'matrices' is not a list of rows")
        matrices = pd.DataFrame(rows)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{js}: not a valid report ({short(exc, 150)})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in matrices.columns or matrices[c].isna().any()]
    if missing:
        raise CheckpointError(f"{js}: not a valid report (matrix rows without {missing[0]!r})")
    matrices = matrices.reindex(columns=[c for c in COLUMNS if c in matrices.columns or c in ID_COLUMNS])
    layered = pd.DataFrame(doc.get("layered") or [])
    meta = {k: v for k, v in doc.items() if k not in ("matrices", "summary", "layered")}
    degrees, patterns = {}, {}
    dfile, pfile = directory / "degrees.safetensors", directory / "patterns.safetensors"
    try:
        if dfile.is_file():
            raw = load_file(str(dfile))
            for key, val in raw.items():
                name, side = key.rsplit("::", 1)
                degrees.setdefault(name, [None, None])[0 if side == "in" else 1] = val.numpy()
            degrees = {k: tuple(v) for k, v in degrees.items()}
        if pfile.is_file():
            patterns = {k: v.numpy() for k, v in load_file(str(pfile)).items()}
    except Exception as exc:
        raise CheckpointError(f"{directory}: damaged report data ({short(exc, 150)})") from None
    matrices.attrs.update(meta)
    return Report(matrices, layered, degrees, patterns, meta)


#: Columns compared by :func:`compare` (numeric metrics a user tracks across checkpoints).
COMPARE_COLUMNS = ["n_edges", "edge_density", "zero_fraction", "in_mean", "in_sd", "in_conn_sd", "in_gini",
                   "in_dead", "out_mean", "out_sd", "out_conn_sd", "out_gini", "out_dead", "in_alpha",
                   "out_alpha", "in_ks_d", "out_ks_d", "modularity", "n_communities"]


def compare(a: pd.DataFrame, b: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Side-by-side metrics of two :func:`~topoprune.analyze` tables, matched by matrix name.

    Returns
    -------
    DataFrame
        ``name, role, block`` then, for each column ``c``, ``c_a``, ``c_b`` and
        ``c_delta = c_b - c_a``; plus the verdicts of both. Matrices present in only one
        table are kept with NaNs (``present`` says where).
    """
    columns = [c for c in (columns or COMPARE_COLUMNS) if c in a.columns and c in b.columns]
    keys = ["name", "role", "block", "side"]
    verdicts = [c for c in ("in_verdict", "out_verdict") if c in a.columns and c in b.columns]
    left = a[keys + columns + verdicts]
    right = b[["name"] + columns + verdicts]
    merged = left.merge(right, on="name", how="outer", suffixes=("_a", "_b"), indicator="present")
    merged["present"] = merged["present"].map({"both": "both", "left_only": "a", "right_only": "b"})
    for c in columns:
        merged[f"{c}_delta"] = pd.to_numeric(merged[f"{c}_b"], errors="coerce") - pd.to_numeric(
            merged[f"{c}_a"], errors="coerce")
    order = keys + [x for c in columns for x in (f"{c}_a", f"{c}_b", f"{c}_delta")]
    order += [f"{v}_{s}" for v in verdicts for s in ("a", "b")] + ["present"]
    return merged[order]
