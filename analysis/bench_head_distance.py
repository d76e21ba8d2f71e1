"""Do attention heads grow more alike as sparse training prunes Q, K and V?

Dhurandhar et al. ("NeuroPrune", Findings of ACL 2024, arXiv 2404.01306, Sec. 3) remove redundant
heads by dominating sets on the graph "l∞ distance of two heads' [Q, K, V] parameters at most
θ", and report that the heads so removed lie mostly in the first and last layers. Paper-mode
NeuroPrune runs of MiniLM (the default ``topoprune train``: 3 epochs of 2,000 tweets, lr 1e-4,
α = 1.5e-4) at increasing attention penalty β -- and so increasing Q/K/V sparsity -- log, every
``--every`` steps and for every layer, the minimum and median distance between its heads
(:func:`topoprune.train.head_distance.distance_summary`, absolute and relative to the layer's
scale) and how many heads ELIM_REDUNDANT would remove there at each threshold of :data:`THETAS`:
the paper's absolute θ = 0.15 and the scale-free θ (``theta_scale="layer"``). The runs themselves
prune heads as the paper does (absolute θ = 0.15 at epoch ends).

Run: ``make bench-head-distance`` (``.venv/bin/python -m analysis.bench_head_distance --resume``;
8 runs, about 30 minutes on 2 cores). ``--quick`` is a smoke run on 256 tweets into a temporary
directory. Results: ``analysis/results/bench_head_distance.json``; figure
``figures/head_distance.{png,svg}``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.harness import kept, load_results, markdown_table, results_options, save_results  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint, provenance  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_head_distance.json"
BETAS = (0.0, 2e-3, 5e-3, 1e-2)
SEEDS = (0, 1)
#: (theta_scale, theta) of the hypothetical removals logged at every point.
THETAS = (("absolute", 0.15), ("layer", 0.15), ("layer", 0.3), ("layer", 0.5))


def measure(model, removed: dict) -> dict:
    """Distances between heads, Q/K/V sparsity and the removals each of :data:`THETAS` would make, per layer."""
    from topoprune.graph.binding import Binding
    from topoprune.train.head_distance import distance_summary, layer_theta, live_head_params
    from topoprune.train.heads import layer_tensors, prune_layer_heads

    b = Binding(model)
    layers = [la for la in b.attention if la.has_heads]
    rows = distance_summary(b, layers, removed)
    for la, row in zip(layers, rows):
        (q, k, v, o), _ = layer_tensors(b, la)
        row["qkv_sparsity"] = float(sum(int((t == 0).sum()) for t in (q, k, v)) / sum(t.numel() for t in (q, k, v)))
        params = live_head_params(b, la, removed)
        row["would_remove"] = {f"{mode}:{theta:g}": len(prune_layer_heads(
            q, k, v, o, n_heads=la.n_heads, head_dim=la.head_dim, n_kv_heads=la.n_kv_heads,
            theta=layer_theta(theta, mode, params), removed=removed.get(la.key, ())).replaced_by)
            for mode, theta in THETAS}
    return {"layers": rows}


def run_one(beta: float, seed: int, args, workdir: Path) -> dict:
    """One paper-mode run at attention penalty ``beta``; the measurements every ``args.every`` steps."""
    from transformers import TrainerCallback

    from topoprune.train.run import TrainConfig, train

    points: list[dict] = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kw):
            points.append({"step": 0, **measure(model, {})})

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.every == 0 or state.global_step == state.max_steps:
                points.append({"step": state.global_step, **measure(model, {})})

    cfg = TrainConfig(out=str(workdir / f"b{beta:g}-s{seed}"), seed=seed, topology_every=0, save_steps=100_000,
                      neuroprune={"method": "neuroprune", "attn_weight": beta, "seed": seed}, **args.task)
    rec = train(cfg, overwrite=True, progress=False, callbacks=[Recorder()])
    row = {"beta": beta, "seed": seed, "steps": rec["steps"], "accuracy": rec["metrics"].get("eval_accuracy"),
           "heads_remaining": rec["heads_remaining"], "points": points}
    last = points[-1]["layers"]
    print(json.dumps({"beta": beta, "seed": seed, "accuracy": row["accuracy"],
                      "qkv_sparsity": [round(r["qkv_sparsity"], 3) for r in last],
                      "median_rel": [round(r["median_rel"], 3) for r in last]}), flush=True)
    return row


def table(res: dict) -> list[str]:
    """Per beta (means over seeds): Q/K/V sparsity, distances, the run's removals and the hypothetical ones.

    A layer whose scale is zero (more than half of its heads all zero) has no relative distance; it
    shows as ``–``.
    """
    def num(x: float) -> str:
        return "–" if x != x else f"{x:.2f}"

    rows = []
    for beta in sorted({r["beta"] for r in res["runs"].values()}):
        rs = [r for r in res["runs"].values() if r["beta"] == beta]
        n_layers = len(rs[0]["points"][-1]["layers"])

        def mean(f, point=-1):
            return [sum(f(r["points"][point]["layers"][i]) for r in rs) / len(rs) for i in range(n_layers)]
        sp = mean(lambda x: x["qkv_sparsity"])
        dist = [f"{num(a)}/{num(b)} → {num(c)}/{num(d)}" for a, b, c, d in zip(
            mean(lambda x: x["min_rel"], 0), mean(lambda x: x["median_rel"], 0), mean(lambda x: x["min_rel"]),
            mean(lambda x: x["median_rel"]))]
        keys = [x["layer"] for x in rs[0]["points"][-1]["layers"]]
        gone = [sum(x["heads"] - r["heads_remaining"][k] for r in rs) / len(rs)
                for k, x in zip(keys, rs[0]["points"][-1]["layers"])]
        removed = [" ".join(f"{v:g}" for v in mean(lambda x, k=f"{m}:{t:g}": x["would_remove"][k])) for m, t in THETAS]
        acc = sum(r["accuracy"] for r in rs) / len(rs)
        rows.append([f"{beta:g}", len(rs), f"{acc:.3f}", " ".join(f"{s:.0%}" for s in sp), "; ".join(dist),
                     " ".join(f"{g:g}" for g in gone), " · ".join(removed)])
    return markdown_table(["β", "seeds", "accuracy", "Q/K/V sparsity by layer",
                           "min / median distance ÷ scale by layer, start → end", "heads the run removed, by layer",
                           "heads removed by layer at the end: " + ", ".join(f"{m} θ={t:g}" for m, t in THETAS)], rows)


def plot(res: dict) -> None:
    """Median (solid) and minimum (dotted) head distance ÷ layer scale over training, per layer and beta.

    Grey dashed lines are the scale-free thresholds of :data:`THETAS`: a pair of heads below one
    of them is joined in the head graph at that θ.
    """
    plt = pyplot()
    runs = [r for r in res["runs"].values() if r["seed"] == min(x["seed"] for x in res["runs"].values())]
    if not runs:
        return
    n_layers = len(runs[0]["points"][-1]["layers"])
    fig, axes = plt.subplots(1, n_layers, figsize=(2.6 * n_layers, 3.4), sharey=True, squeeze=False)
    for i, ax in enumerate(axes[0]):
        for theta in sorted({t for m, t in THETAS if m == "layer"}):
            ax.axhline(theta, color="0.6", ls="--", lw=0.7)
            if i == 0:
                ax.text(0, theta, f" θ = {theta:g}·scale", fontsize=6, color="0.4", va="bottom")
    for j, r in enumerate(sorted(runs, key=lambda r: r["beta"])):
        steps = [p["step"] for p in r["points"]]
        end = r["points"][-1]["layers"]
        mean_sp = sum(x["qkv_sparsity"] for x in end) / len(end)
        for i, ax in enumerate(axes[0]):
            ax.plot(steps, [p["layers"][i]["median_rel"] for p in r["points"]], color=f"C{j}",
                    label=f"β = {r['beta']:g} (Q/K/V {mean_sp:.0%})")
            ax.plot(steps, [p["layers"][i]["min_rel"] for p in r["points"]], color=f"C{j}", ls=":")
            gone = end[i]["heads"] - r["heads_remaining"][end[i]["layer"]]
            title = f"layer {i}" + (f" ({gone} heads removed at β = {r['beta']:g})" if gone else "")
            if gone or j == 0:
                ax.set_title(title, fontsize=8)
            ax.set_xlabel("step")
    axes[0][0].set_ylabel("head distance ÷ layer scale")
    axes[0][-1].legend(fontsize=6, title="seed 0; Q/K/V sparsity at the end", title_fontsize=6)
    fig.suptitle("MiniLM paper mode: median (solid) and minimum (dotted) l∞ distance between heads, "
                 "÷ the layer's median head l∞ norm", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "head_distance")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--betas", type=lambda s: tuple(float(x) for x in s.split(",")), default=BETAS)
    ap.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=SEEDS)
    ap.add_argument("--every", type=int, default=21, help="steps between measurements")
    results_options(ap, RESULTS, workdir="bench-head-distance")
    ap.add_argument("--quick", action="store_true", help="256 tweets, two betas, into a temporary directory")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.every < 1:
        ap.error("--every: an integer >= 1")
    args.task = {"n_train": 256, "n_eval": 64, "epochs": 1.0} if args.quick else {}
    tmp = tempfile.TemporaryDirectory(prefix="bench-heads-") if args.quick else None
    if tmp:
        args.workdir, args.out, args.betas, args.seeds, args.every = Path(tmp.name), Path(tmp.name) / "r.json", \
            (0.0, 1e-2), (0,), 2
    res = load_results(args.out)
    if not args.plot_only:
        fixed = {"task": args.task, "every": args.every,
                 "code": code_fingerprint("train", "graph", "models.py", measured=(THETAS, measure, run_one))}
        res = kept(res, {k: res.get("settings", {}).get(k) for k in fixed} == fixed, args,
                   {"settings": {}, "runs": {}}, args.out)
        res["settings"].update(fixed)
        res.update(provenance())
        args.workdir.mkdir(parents=True, exist_ok=True)
        for beta in args.betas:
            for seed in args.seeds:
                name = f"b{beta:g}-s{seed}"
                if name not in res["runs"]:
                    res["runs"][name] = run_one(beta, seed, args, args.workdir)
                    save_results(args.out, res)
    print("\n".join(table(res)))
    if not args.quick and res["runs"]:
        plot(res)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
