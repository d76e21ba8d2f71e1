"""How preferential attachment reshapes the MLP degree distribution over training: NeuroPrune vs GMP.

Two runs of MiniLM (all-MiniLM-L6-v2) on the sentiment tweets, identical except for how weights
are chosen for removal, both reaching the same sparsity (``--target``, every MLP matrix) on the
same cubic schedule: NeuroPrune (Dhurandhar et al., Findings of ACL 2024, arXiv
2404.01306: keep-score :math:`|w_{ij}| \\cdot c_i` and the preferential-attachment penalty) and
gradual magnitude pruning (GMP, Zhu & Gupta 2017, arXiv 1710.01878: keep-score :math:`|w_{ij}|`).
At a few points of each run the in-degrees of every MLP matrix (edges :math:`|w| \\geq \\varepsilon`)
are recorded; the figure shows their complementary CDF per role, one curve per point of training.

Outputs: ``figures/ccdf_training.{png,svg}`` and the degree sequences in
``analysis/results/ccdf_training.npz`` (``--plot-only`` redraws from them).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.figsave import save_figure  # noqa: E402
from analysis.fingerprint import provenance  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "ccdf_training.npz"
METHODS = ("neuroprune", "gmp")
ROLES = ("mlp_in", "mlp_out")
#: Points of training recorded, as shares of the run's steps (0: before the first step).
POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def record(method: str, args, work: Path) -> dict:
    """Train one run; return ``{(role, step): in_degrees}`` at the recorded points and the final record."""
    from transformers import TrainerCallback

    from topoprune.train.run import TrainConfig, train
    from topoprune.train.tracker import TopologyTracker

    out: dict = {}

    class Recorder(TrainerCallback):
        def _take(self, model, step):
            tracker = TopologyTracker(model, eps=args.eps, fits=False, modularity=False)
            tracker.snapshot(step)
            for role in ROLES:
                if role in tracker.degrees:
                    out[(role, step)] = tracker.degrees[role][0]

        def on_train_begin(self, a, state, control, model=None, **kw):
            self.steps = sorted({round(p * state.max_steps) for p in POINTS})
            if 0 in self.steps:
                self._take(model, 0)

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step in self.steps:
                self._take(model, state.global_step)

    cfg = TrainConfig(model="minilm", data="tweets", out=str(work / method), epochs=args.epochs, lr=args.lr,
                      n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, topology_every=0, save_steps=10_000,
                      neuroprune={"method": method, "target": args.target, "eps": args.eps})
    rec = train(cfg, overwrite=True, progress=False, callbacks=[Recorder()])
    return {"degrees": out, "accuracy": rec["metrics"].get("eval_accuracy"), "steps": rec["steps"],
            "attachment": rec.get("attachment", {})}


def plot(data: dict, meta: dict) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from topoprune.plotting.ccdf import ccdf
    from topoprune.plotting.common import log_axes

    fig = Figure(figsize=(9, 6.4), layout="constrained")
    axes = fig.subplots(len(ROLES), len(METHODS), sharex="row", sharey="row", squeeze=False)
    cmap = colormaps["viridis"]
    for j, method in enumerate(METHODS):
        steps = sorted({int(k.split("/")[2]) for k in data if k.startswith(f"{method}/")})
        for i, role in enumerate(ROLES):
            ax = axes[i, j]
            for n, step in enumerate(steps):
                key = f"{method}/{role}/{step}"
                if key not in data:
                    continue
                x = data[key][data[key] > 0]
                if x.size:
                    xs, ps = ccdf(x)
                    ax.plot(xs, ps, "o-", ms=2.5, lw=0.8, mfc="none", color=cmap(n / max(1, len(steps) - 1)),
                            label=f"step {step}")
            log_axes(ax)
            acc = meta.get(method, {}).get("accuracy")
            ax.set_title(f"{method}, {role} (accuracy {acc:.3f})" if acc is not None else f"{method}, {role}",
                         fontsize="medium")
            ax.set_xlabel("in-degree $k$")
            if j == 0:
                ax.set_ylabel(r"$P(K \geq k)$")
            ax.legend(fontsize="x-small", frameon=False, loc="lower left")
    fig.suptitle(f"MiniLM MLP in-degree CCDF over training, {meta.get('target', 0):.0%} sparsity at the end",
                 fontsize="medium")
    save_figure(fig, "ccdf_training", dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=0.7, help="sparsity of every MLP matrix (attention stays dense)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if not args.plot_only:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        arrays, meta = {}, {"target": args.target, **provenance()}
        with tempfile.TemporaryDirectory(prefix="ccdf-training-") as tmp:
            for method in METHODS:
                got = record(method, args, Path(tmp))
                meta[method] = {"accuracy": got["accuracy"], "steps": got["steps"], "attachment": got["attachment"]}
                for (role, step), deg in got["degrees"].items():
                    arrays[f"{method}/{role}/{step}"] = deg
                print(method, json.dumps(meta[method]), flush=True)
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)
    with np.load(args.out) as f:
        meta = json.loads(str(f["meta"]))
        data = {k: f[k] for k in f.files if k != "meta"}
    plot(data, meta)
    print(f"figures/ccdf_training.png from {len(data)} degree sequences")


if __name__ == "__main__":
    main()
