"""The report of an analysis: its columns, the :class:`Report`, summaries, and save, load and compare.

Every file is written atomically. A report directory holds:

=====================  ==========================================================
``report.csv``         one row per matrix (:data:`COLUMNS`)
``summary.csv``        :func:`topoprune.summarize` (per role, per block, whole model)
``layered.csv``        block (layered) graphs, when ``block_modularity`` was set
``report.json``        all of the above plus ``config``, ``version``, ``source``, ``timing``
``degrees.safetensors``  ``<name>::in`` / ``<name>::out`` int32 degree sequences
``patterns.safetensors`` ``<name>`` float32 edge-density maps (sparsity patterns)
=====================  ==========================================================

Each file goes to a temporary name in the same directory and is renamed into place
(``os.replace``), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import CheckpointError
from ..io import atomic_path, short

#: Columns every matrix row of a saved report must have (they key comparisons and figures).
REQUIRED_COLUMNS = ("name", "role", "block", "side")
#: Identity of a matrix: where it is, what it is, its shape and heads, and its analysis status.
ID_COLUMNS = ["name", "tensor", "role", "component", "block", "side", "n_out", "n_in",
              "n_heads", "n_kv_heads", "head_dim", "status"]
_STATS = ["n", "mean", "sd", "conn_mean", "conn_sd", "gini", "max", "dead", "strength_mean", "strength_sd",
          "strength_gini"]
_FIT = ["alpha", "xmin", "sigma", "ks_d", "n_tail", "R_lognormal", "p_lognormal", "R_exponential",
        "p_exponential", "R_truncated_power_law", "p_truncated_power_law", "verdict"]
#: Column schema of :func:`analyze`, declared once. ``in_*`` describe output neurons'
#: fan-in (rows of W), ``out_*`` input neurons' fan-out (columns of W).
COLUMNS = (ID_COLUMNS + ["edge_mode", "n_edges", "edge_density", "zero_fraction", "max_abs"]
           + [f"{side}_{c}" for side in ("in", "out") for c in _STATS + _FIT]
           + ["modularity", "n_communities"])


@dataclass
class Report:
    """Everything an analysis produced; what ``topoprune analyze --out`` saves.

    Attributes
    ----------
    matrices : DataFrame
        One row per matrix (:data:`COLUMNS`); the table :func:`analyze` returns.
    layered : DataFrame
        One row per block graph (attention / MLP layered graphs) when
        ``block_modularity`` is set, else empty.
    degrees : dict
        ``name -> (in_degree [out], out_degree [in])`` int arrays, for CCDF plots.
    patterns : dict
        ``name -> [h, w]`` float32 edge-density maps (share of entries that are edges per
        cell, at most ``pattern_size`` a side) for sparsity-pattern images.
    meta : dict
        ``config``, ``version``, ``source``, ``model_type``, ``known_layout`` and ``timing`` (the
        seconds of each matrix's stages, :mod:`topoprune.graph.timing`).
    """

    matrices: pd.DataFrame
    layered: pd.DataFrame = field(default_factory=pd.DataFrame)
    degrees: dict = field(default_factory=dict)
    patterns: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def summarize(df, layered: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-role, per-block and whole-model summaries of an :func:`analyze` table.

    Parameters
    ----------
    df : DataFrame or Report
        The per-matrix table (or a :class:`Report`, whose layered graphs are then used).
    layered : DataFrame, optional
        Layered-graph rows; their modularity joins the block rows.

    Returns
    -------
    pandas.DataFrame
        Rows with ``level`` in ``{"role", "block", "model"}`` and the group key in
        ``key``; numeric columns are means over the group's matrices (WeightWatcher-style),
        plus ``n_matrices``, ``n_edges_total`` and the share of ``power_law`` verdicts.
    """
    if isinstance(df, Report):
        df, layered = df.matrices, df.layered if layered is None else layered
    ok = df[df["status"] == "ok"]
    numeric = [c for c in df.columns if c not in ID_COLUMNS and c not in ("edge_mode",)
               and pd.api.types.is_numeric_dtype(df[c])]
    parts = []
    groupings = [("role", ok["role"]), ("block", ok["side"].astype(str) + ":" + ok["block"].astype(str)),
                 ("model", pd.Series("model", index=ok.index))]
    for level, key in groupings:
        if ok.empty:
            break
        grp = ok.groupby(key, sort=True)
        summ = grp[numeric].mean()
        summ.insert(0, "n_matrices", grp.size())
        summ.insert(1, "n_edges_total", grp["n_edges"].sum())
        for side in ("in", "out"):
            summ[f"{side}_power_law_share"] = grp[f"{side}_verdict"].apply(lambda v: float((v == "power_law").mean()))
        summ = summ.reset_index(names="key")
        summ.insert(0, "level", level)
        parts.append(summ)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["level", "key"])
    if layered is not None and len(layered):
        whole = layered[layered["component"] == "model"]
        if len(whole):
            out.loc[out["level"] == "model", "layered_modularity_model"] = float(whole["modularity"].mean())
        lay = layered[layered["component"] != "model"]
        out = out.merge(
            lay.pivot_table(index=lay["side"].astype(str) + ":" + lay["block"].astype(str), columns="component",
                            values="modularity").add_prefix("layered_modularity_").reset_index(names="key")
            .assign(level="block"), on=["level", "key"], how="left")
    return out


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


def records(df: pd.DataFrame) -> list[dict]:
    """The rows of ``df`` as JSON-ready dicts (NaN and infinities become ``None``)."""
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
    doc = dict(report.meta, matrices=records(report.matrices), summary=records(summary),
               layered=records(report.layered))
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
