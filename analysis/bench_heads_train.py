"""Dominating-set head pruning inside training: heads removed at epoch ends, then trained on.

``bench_heads.py`` applies ELIM_REDUNDANT (Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 3) once
to a finished model, without retraining. Here it runs where the paper runs it, at the end of every
epoch of fine-tuning, so that the heads removed after the first and second epochs are trained
around before the test. MiniLM on the sentiment tweets, with the same data, steps, learning rate
and seed as the dense run of ``bench_distill.py`` (3 epochs, 2,000 training tweets, lr 1e-4),
and no weight pruning at all (both penalties zero), so that only the heads change:

* ``topoprune train --alpha 0 --beta 0 --theta T`` (heads folded into their replacers, the
  paper) and ``... --no-head-fold`` (only zeroed), at theta = 0.45 and 0.5, where the
  dominating set fires on this model;
* ``topoprune train --method gmp --heads H`` at about the same number of heads: the lowest-norm
  heads, the same number in every layer (2 or 4 of 12, i.e. 12 or 24 of 72), removed on the
  cubic schedule that ends at 75 % of training.

Each run is compacted, so the heads are really gone. Results:
``analysis/results/bench_heads_train.json`` (rewritten after every run; ``--resume`` keeps runs
made by the same code and settings); figure ``figures/heads_train.{png,svg}`` (test accuracy
against heads removed, ±1 standard error); the table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.harness import kept, load_results, markdown_table, results_options, save_results  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_heads_train.json"
#: name -> NeuroPruneConfig fields of the run.
RUNS = {
    "ds-0.45-folded": {"method": "neuroprune", "mlp_weight": 0.0, "attn_weight": 0.0, "theta": 0.45},
    "ds-0.45-zeroed": {"method": "neuroprune", "mlp_weight": 0.0, "attn_weight": 0.0, "theta": 0.45,
                       "head_fold": False},
    "ds-0.5-folded": {"method": "neuroprune", "mlp_weight": 0.0, "attn_weight": 0.0, "theta": 0.5},
    "ds-0.5-zeroed": {"method": "neuroprune", "mlp_weight": 0.0, "attn_weight": 0.0, "theta": 0.5,
                      "head_fold": False},
    "norm-2of12": {"method": "gmp", "head_target": 2 / 12},
    "norm-4of12": {"method": "gmp", "head_target": 4 / 12},
}


def train_run(name: str, npc: dict, args) -> dict:
    from topoprune.compaction.run import run_compact
    from topoprune.train.run import TrainConfig, train

    run_dir, small = args.workdir / name, args.workdir / f"{name}-compact"
    cfg = TrainConfig(model="minilm", data="tweets", out=str(run_dir), epochs=args.epochs, lr=args.lr,
                      n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, topology_every=0, save_steps=10_000,
                      neuroprune=dict(npc, seed=args.seed))
    t0 = time.perf_counter()
    rec = train(cfg, overwrite=True, progress=False)
    comp = run_compact(run_dir, small, overwrite=True)
    left = rec["heads_remaining"]
    decisions = [d for d in rec.get("head_decisions", []) if d.get("replaced_by")]
    row = {"accuracy": rec["metrics"]["eval_accuracy"], "heads_removed": 72 - sum(left.values()),
           "removed_per_layer": [12 - v for v in left.values()], "decisions": decisions,
           "steps": rec["steps"], "parameters": comp["parameters"], "wall_seconds": time.perf_counter() - t0}
    print(json.dumps({"run": name, **row}), flush=True)
    return row


def table(res: dict) -> list[str]:
    runs, n = res.get("runs", {}), res["settings"]["n_eval"]
    dense = res.get("dense_accuracy")
    rows = []
    how = {"ds": "dominating set, theta {t}, {f}", "norm": "lowest weight norm, {k} per layer, on the schedule"}
    for name, r in runs.items():
        parts = name.split("-")
        label = (how["ds"].format(t=parts[1], f="folded into the replacer" if parts[2] == "folded" else "zeroed")
                 if parts[0] == "ds" else how["norm"].format(k=parts[1].split("of")[0]))
        se = math.sqrt((r["accuracy"] * (1 - r["accuracy"]) + dense * (1 - dense)) / n) if dense else float("nan")
        rows.append([name, label, f"{r['heads_removed']} ({' '.join(map(str, r['removed_per_layer']))})",
                     f"{r['accuracy']:.3f}", f"{100 * (r['accuracy'] - dense):+.1f} ± {100 * se:.1f}"])
    return [f"dense fine-tuning: {dense:.3f} on {n} test tweets" if dense else "", "", *markdown_table(
        ["run", "how heads are chosen", "heads removed (per layer)", "test accuracy", "change (± s.e.)"], rows)]


def plot(res: dict) -> None:
    """Accuracy against heads removed: dominating set (folded / zeroed) and lowest weight norm."""
    plt = pyplot()

    runs, n, dense = res.get("runs", {}), res["settings"]["n_eval"], res.get("dense_accuracy")
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(5.4, 3.7))
    groups = (("folded", "dominating set, folded (paper)", "o"), ("zeroed", "dominating set, zeroed", "D"),
              ("norm", "lowest weight norm, on the schedule", "s"))
    for key, label, marker in groups:
        pts = sorted((r["heads_removed"], r["accuracy"]) for name, r in runs.items()
                     if (name.startswith("norm") if key == "norm" else name.endswith(key)))
        if pts:
            x, y = zip(*pts)
            err = [100 * math.sqrt(a * (1 - a) / n) for a in y]
            ax.errorbar(x, [100 * a for a in y], yerr=err, marker=marker, capsize=3, label=label)
    if dense:
        ax.axhline(100 * dense, color="0.5", lw=0.8, ls=":", label="dense fine-tuning")
    ax.set_xlabel("heads removed during training (of 72)")
    ax.set_ylabel(f"test accuracy (%), {n} tweets")
    ax.set_title("MiniLM on sentiment tweets, heads pruned while fine-tuning", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, "heads_train")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"some of {','.join(RUNS)}")
    ap.add_argument("--dense", type=Path, default=Path.home() / ".cache" / "topoprune" / "bench-distill"
                    / "dense-n0.00-h0.00", help="the dense run with the same settings (reference accuracy)")
    results_options(ap, RESULTS, workdir="bench-heads-train")
    ap.add_argument("--plot-only", action="store_true", help="table and figure from the results file")
    args = ap.parse_args()
    res = load_results(args.out)
    if not args.plot_only:
        chosen = [r for r in args.runs.split(",") if r]
        if not set(chosen) <= set(RUNS):
            ap.error(f"--runs: some of {','.join(RUNS)}")
        settings = {k: getattr(args, k) for k in ("epochs", "lr", "n_train", "n_eval", "seed")}
        settings["code"] = code_fingerprint("train", "graph", "compaction", "models.py",
                                            measured=(RUNS, train_run))
        res = kept(res, res.get("settings") == settings, args, {"settings": settings, "runs": {}}, args.out)
        if (args.dense / "topoprune.json").is_file():
            rec = json.loads((args.dense / "topoprune.json").read_text())
            cfg = rec["config"]
            same = all(cfg.get(k) == settings[k] for k in ("epochs", "lr", "n_train", "n_eval", "seed"))
            res["dense_accuracy"] = rec["metrics"]["eval_accuracy"] if same else None
        args.workdir.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            if name not in res["runs"]:
                res["runs"][name] = train_run(name, RUNS[name], args)
                save_results(args.out, res)
    print("\n".join(table(res)))
    plot(res)


if __name__ == "__main__":
    main()
