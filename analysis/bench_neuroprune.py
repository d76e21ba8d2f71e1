"""NeuroPrune against dense fine-tuning, GMP, l1 and random masks on MiniLM / sentiment tweets.

NeuroPrune: Dhurandhar et al., Findings of ACL 2024, arXiv 2404.01306; GMP: Zhu & Gupta 2017,
arXiv 1710.01878. Every method gets the same data (fixed split of positive/negative tweets),
steps, learning rate and seed; each sparsity (``--targets``) applies to the MLP matrices, reached
by a cubic schedule that ends at 75 % of training. Measured: test accuracy, wall time, seconds
per step (relative to dense), achieved MLP sparsity and the connectivity sd of MLP neurons
(Dhurandhar et al. report 12.12 at 50 % and 4.16 at 90 % sparsity, against 0.13 for dense
fine-tuning).

Run: ``make bench-train`` (``.venv/bin/python -m analysis.bench_neuroprune --resume``); writes
``analysis/results/bench_neuroprune.json`` (after every run, so a killed benchmark keeps its finished
runs; ``--resume`` skips runs the file already holds with identical settings and code fingerprint) and
``figures/neuroprune_accuracy.{png,svg}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.figsave import save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint, provenance  # noqa: E402
from analysis.harness import fresh_option, kept, machine, markdown_table  # noqa: E402
from analysis.kept_weights import mlp_connectivity  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402
from topoprune.train.run import TrainConfig, train  # noqa: E402


def run(method: str, target: float | None, args, workdir: Path) -> dict:
    out = workdir / f"{method}-{target}"
    npc = {"method": method, "target": target, "seed": 0, "head_pruning": "epoch"}
    cfg = TrainConfig(model="minilm", data="tweets", out=str(out), epochs=args.epochs, batch_size=32, lr=args.lr,
                      max_length=64, n_train=args.n_train, n_eval=args.n_eval, seed=0,
                      topology_every=args.topology_every, save_steps=10_000, neuroprune=npc)
    t0 = time.perf_counter()
    rec = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    conn = mlp_connectivity(out / "model", 1e-4)
    row = {"method": method, "target": target, "accuracy": rec["metrics"].get("eval_accuracy"),
           "train_seconds": rec["train_seconds"], "wall_seconds": wall, "seconds_per_step": rec["seconds_per_step"],
           "steps": rec["steps"], "heads_remaining": sum(rec["heads_remaining"].values()),
           "attachment": rec.get("attachment", {}), **conn}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="500 training tweets, one sparsity (70 %%)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=2000, help="test tweets (one s.e. ~0.8 points at 2,000)")
    ap.add_argument("--topology-every", type=int, default=0)
    ap.add_argument("--targets", default="0.5,0.7,0.9")
    ap.add_argument("--methods", default="neuroprune,gmp,l1,random")
    ap.add_argument("--out", default=str(ROOT / "analysis" / "results" / "bench_neuroprune.json"))
    ap.add_argument("--resume", action="store_true", help="skip runs the results file holds with identical settings")
    fresh_option(ap)
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the results file")
    args = ap.parse_args()
    if args.plot_only:
        old = json.loads(Path(args.out).read_text())
        return plot(old["rows"], old["settings"]["n_eval"])
    if args.quick:
        args.n_train, args.n_eval, args.targets = 500, 200, "0.7"
    targets = [float(t) for t in args.targets.split(",")]
    out = Path(args.out)
    same = ("epochs", "lr", "n_train", "n_eval", "topology_every", "code")
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "fresh", "out")}
    settings["code"] = code_fingerprint("train", "graph", "models.py", measured=(run, mlp_connectivity))
    old = json.loads(out.read_text()) if out.is_file() else {}
    old = kept(old, all(old.get("settings", {}).get(k) == settings[k] for k in same), args, {}, out)
    done = {(r["method"], r["target"]): r for r in old.get("rows", [])}
    plan = [("dense", None)] + [(m, t) for t in targets for m in args.methods.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="topoprune-bench-np-") as tmp:
        for method, target in plan:
            rows.append(done.get((method, target)) or run(method, target, args, Path(tmp)))
            dense = rows[0]
            for r in rows:
                r["step_time_vs_dense"] = r["seconds_per_step"] / dense["seconds_per_step"]
            with atomic_path(out) as tmp_out:
                tmp_out.write_text(json.dumps({"settings": settings, **provenance(),
                                               "machine": machine(), "rows": rows}, indent=1))
    if done:
        print(f"# resumed: {sum(1 for k in plan if k in done)} of {len(plan)} runs taken from {out}", flush=True)
    print("\n".join(markdown_table(
        ["method", "sparsity", "accuracy", "measured MLP sparsity", "conn. sd (entries)", "conn. sd (%)", "s/step",
         "vs dense", "wall s"],
        [[r["method"], f"{r['target'] or 0:.0%}", f"{r['accuracy']:.4f}", f"{r['mlp_sparsity']:.3f}",
          f"{r['conn_sd_count']:.2f}", f"{r['conn_sd_percent']:.2f}", f"{r['seconds_per_step']:.3f}",
          f"{r['step_time_vs_dense']:.2f}x", f"{r['wall_seconds']:.0f}"] for r in rows])))
    plot(rows, args.n_eval)


def plot(rows, n_eval: int):
    """Accuracy against MLP sparsity, with ±1 binomial standard error sqrt(p(1-p)/n) as error bars."""
    from matplotlib.figure import Figure

    se = lambda p: math.sqrt(p * (1 - p) / n_eval)  # noqa: E731

    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    dense = [r for r in rows if r["method"] == "dense"][0]
    ax.axhline(dense["accuracy"], color="grey", ls="--", label="dense fine-tuning")
    ax.axhspan(dense["accuracy"] - se(dense["accuracy"]), dense["accuracy"] + se(dense["accuracy"]), color="grey",
               alpha=0.15, lw=0)
    for method, marker, dx in (("neuroprune", "o", -1.2), ("gmp", "s", -0.4), ("l1", "^", 0.4), ("random", "x", 1.2)):
        pts = sorted((r["target"], r["accuracy"]) for r in rows if r["method"] == method)
        if pts:
            ax.errorbar([100 * p[0] + dx for p in pts], [p[1] for p in pts], yerr=[se(p[1]) for p in pts], marker=marker,
                        capsize=3, label=method)
    ax.set_xlabel("MLP sparsity (%; methods offset for legibility)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MiniLM, positive vs negative tweets (n = {n_eval:,}, ±1 s.e.)", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    save_figure(fig, "neuroprune_accuracy", dpi=120)


if __name__ == "__main__":
    main()
