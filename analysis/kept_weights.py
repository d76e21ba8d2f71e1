"""Which MLP weights a pruned model keeps, recorded small enough to store with every run.

Two runs pruned to the same sparsity can keep different weights; the share they have in common
(the Jaccard index of their kept sets) says whether a pruning criterion changes *which* weights
survive, not only how many. Checkpoints are not kept once a benchmark run is measured, so each run
records its kept set on a fixed uniform sample of MLP weight positions (:func:`kept_sample`, 16 KiB
of bits for 131,072 positions) and any two runs of the same architecture can be compared later
(:func:`kept_overlap`). How evenly the surviving weights are spread over the MLP's neurons is
their connectivity sd (:func:`mlp_connectivity`; Dhurandhar et al., "NeuroPrune", arXiv 2404.01306,
report 12.12 % of a row at 50 % sparsity, 4.16 % at 90 % and 0.13 % dense).
"""
from __future__ import annotations

import base64
from pathlib import Path

import topoprune
from topoprune.graph.config import AnalysisConfig, GraphConfig

def mlp_connectivity(model_dir: Path, eps: float) -> dict:
    """Connectivity sd of MLP neurons (rows of the expand/contract matrices), in entries and as a fraction."""
    cfg = AnalysisConfig(graph=GraphConfig(threshold=eps, mode="threshold"), fits=False, matrix_modularity=False,
                         roles=("mlp_in", "mlp_out"), n_jobs=1, pattern_size=0)
    df = topoprune.analyze(model_dir, config=cfg)
    return {"conn_sd_count": float(df["in_sd"].mean()), "conn_sd_fraction": float(df["in_conn_sd"].mean()),
            "conn_sd_percent": float(100 * df["in_conn_sd"].mean()),
            "mlp_sparsity": float(1 - df["n_edges"].sum() / (df["n_out"] * df["n_in"]).sum())}


#: how many MLP weight positions :func:`kept_sample` records per run (a fixed uniform sample).
KEPT_SAMPLE = 1 << 17


def kept_sample(model_dir: Path, eps: float = 1e-4, n: int = KEPT_SAMPLE) -> str:
    """Which of a fixed uniform sample of MLP weight positions survive (|w| >= eps): packed bits, base64.

    The MLP matrices (``intermediate.dense`` and the layer's ``output.dense``) are taken in key
    order and flattened; the ``n`` positions are drawn once from a generator seeded 0, so every
    model of the same architecture is sampled at the same positions and two runs' records can be
    compared long after their checkpoints are gone (:func:`kept_overlap`). Where the model has
    ``n`` MLP weights or fewer, every position is recorded and the overlap is exact.
    """
    import numpy as np
    from safetensors.torch import load_file

    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    keys = sorted(k for k in weights if k.endswith(".weight") and "attention" not in k
                  and ("intermediate.dense" in k or "output.dense" in k))
    kept = np.concatenate([(weights[k].abs() >= eps).numpy().ravel() for k in keys])  # (total MLP weights,)
    pos = np.arange(kept.size) if kept.size <= n else np.sort(
        np.random.default_rng(0).choice(kept.size, size=n, replace=False))
    return base64.b64encode(np.packbits(kept[pos]).tobytes()).decode("ascii") + f":{pos.size}"


def kept_overlap(a: str | None, b: str | None) -> float | None:
    """Share of the surviving MLP weights two runs have in common (Jaccard), from their :func:`kept_sample`.

    On a uniform sample of ``m`` positions the estimate's standard error is about
    :math:`\\sqrt{J(1-J)/u}`, ``u`` the sampled positions kept by either run (for two runs at 50 %
    sparsity ``u`` is at least half of the 131,072, and the error under 0.002). None where a record is
    missing or the two were drawn from different models.
    """
    import numpy as np

    if not a or not b or a.rsplit(":", 1)[1] != b.rsplit(":", 1)[1]:
        return None
    m = int(a.rsplit(":", 1)[1])
    ka, kb = (np.unpackbits(np.frombuffer(base64.b64decode(x.rsplit(":", 1)[0]), dtype=np.uint8))[:m].astype(bool)
              for x in (a, b))
    either = int((ka | kb).sum())
    return int((ka & kb).sum()) / either if either else None
