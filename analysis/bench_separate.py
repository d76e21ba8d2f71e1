"""Sparse fine-tuning methods on settings whose noise is below their differences.

On 2,000 positive/negative tweets and 126 steps every method lies within one standard error of the
others (``bench_neuroprune.py``). Two settings that can rank them:

* ``tweets3``: MiniLM on all the negative/neutral/positive tweets of the corpus (37,197 distinct
  tweets: about 29,800 training and 7,400 test tweets; one standard error about 0.5 points at
  70 % accuracy), one epoch (930 steps of 32; 17 to 24 minutes a run on 2 cores), lr 1e-4, at
  50 % and 70 % MLP sparsity. Whether each test tweet is classified correctly is kept, so that
  two methods are compared tweet by tweet (the standard error of the paired difference counts
  only the tweets on which they disagree);
* ``ptb``: causal-LM sparse fine-tuning of SmolLM2-135M on Penn Treebank, 480 training blocks of
  128 tokens (60 steps of 8 blocks, lr 1e-4; about 10 minutes a run on 2 cores), at 50 % and 70 %
  MLP sparsity. Perplexity on the first 200 blocks of PTB validation, far more sensitive than
  accuracy; the loss of every block is kept, so that two methods are compared block by block
  (the standard error of a paired difference, much smaller than that of either perplexity).

Methods: NeuroPrune in target mode (keep-score |w| * c_i, the preferential-attachment penalty,
dominating-set head pruning; Dhurandhar et al., Findings of ACL 2024, arXiv 2404.01306), GMP (Zhu
& Gupta 2017, arXiv 1710.01878), l1 and random masks, every one with the same data, steps,
learning rate, schedule (cubic, ending at 75 % of training) and seed; plus dense fine-tuning.
``--grid core`` (the default, about 3 hours on 2 cores) or ``extended`` (random masks and a second
seed, about 1.5 hours more) names the runs; ``--settings``, ``--methods``, ``--targets`` and
``--seeds`` choose every combination of theirs instead. A second seed changes the classifier's
initialisation, the data order and the random masks, and for ``tweets3`` the train/test split;
methods are paired within a seed.

Results: ``analysis/results/bench_separate.json`` (rewritten after every run; ``--resume`` keeps
runs made by the same code and settings); figure ``figures/separate.{png,svg}`` (for another
``--out``, ``figures/<its stem>.{png,svg}``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.harness import kept, load_results, markdown_table, results_options, save_results  # noqa: E402
from analysis.kept_weights import mlp_connectivity  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint, provenance  # noqa: E402
from analysis.paired import group_runs, paired_accuracy, paired_change, paired_over_seeds  # noqa: E402
from analysis.tasks import SETTINGS, block_losses, example_correct  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_separate.json"
METHODS = ("neuroprune", "gmp", "l1", "random")


def run_name(setting: str, method: str, target: float | None, seed: int) -> str:
    return f"{setting}-{method}" + (f"-{target:g}" if target else "") + f"-s{seed}"


def train_run(setting: str, method: str, target: float | None, seed: int, args) -> dict:
    from topoprune.train.run import TrainConfig, train

    out = args.workdir / run_name(setting, method, target, seed)
    npc = {"method": method, "seed": seed}
    if target:
        npc["target"] = target
    cfg = TrainConfig(out=str(out), seed=seed, topology_every=0, save_steps=100_000, neuroprune=npc,
                      **SETTINGS[setting])
    t0 = time.perf_counter()
    rec = train(cfg, overwrite=True, progress=False)
    m = rec["metrics"]
    row = {"setting": setting, "method": method, "target": target, "seed": seed, "steps": rec["steps"],
           "accuracy": m.get("eval_accuracy"), "perplexity": m.get("eval_perplexity"), "eval_loss": m.get("eval_loss"),
           "n_eval": int(re.search(r"/ (\d+)", rec["data"]).group(1)) if re.search(r"/ (\d+)", rec["data"]) else None,
           "heads": sum(rec["heads_remaining"].values()), "wall_seconds": time.perf_counter() - t0,
           **mlp_connectivity(out / "model", 1e-4)}
    if SETTINGS[setting]["data"] == "ptb":
        row["block_losses"] = block_losses(out / "model", SETTINGS[setting]["n_eval"], SETTINGS[setting]["max_length"])
    else:
        correct = example_correct(out / "model", setting, seed)
        if abs(correct.count("1") / len(correct) - row["accuracy"]) <= 1e-3:
            row["correct"] = correct
        else:  # not the trainer's evaluation: no paired comparison rather than a wrong one
            print(f"{out.name}: the saved model's accuracy {correct.count('1') / len(correct):.4f} is not the "
                  f"trainer's {row['accuracy']:.4f}; no per-tweet comparison kept", file=sys.stderr)
    print(json.dumps({k: v for k, v in row.items() if k not in ("block_losses", "correct")}), flush=True)
    return row


def table(res: dict) -> list[str]:
    lines = []
    for setting in res["settings"]["settings"]:
        rows = [r for r in res["runs"].values() if r["setting"] == setting]
        if not rows:
            continue
        metric = "accuracy" if setting != "ptb" else "perplexity"
        field, unit, compare = (("block_losses", "blocks", paired_change) if metric == "perplexity"
                                else ("correct", "tweets", paired_accuracy))
        groups, cells_of = group_runs(rows), []
        for (method, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
            vals = [r[metric] for r in rs]
            mean = sum(vals) / len(vals)
            spread = f"{min(vals):.4g}–{max(vals):.4g}" if len(vals) > 1 else "-"
            n = rs[0].get("n_eval")
            se = f" ± {math.sqrt(mean * (1 - mean) / n):.3f}" if metric == "accuracy" and n else ""
            cells = [method, f"{rs[0]['mlp_sparsity']:.1%}", f"{mean:.4g}{se}", str(len(rs)), spread,
                     f"{sum(r['conn_sd_percent'] for r in rs) / len(rs):.2f}"]
            change = paired_over_seeds(groups, method, target, field, compare)
            suffix = " %" if metric == "perplexity" else " pt"
            cells.append(f"{change[0]:+.2f}{suffix} ± {change[1]:.2f}" if change else "")
            if change and len(change[2]) > 1:
                cells[-1] += " (seeds: " + ", ".join(f"{c:+.2f}" for c in change[2]) + ")"
            cells_of.append(cells)
        lines += [f"**{setting}**", "", *markdown_table(
            ["method", "MLP sparsity", f"{metric} (mean over seeds)", "seeds", "spread", "conn. sd (%)",
             f"vs GMP, same {unit} (± s.e.)"], cells_of), ""]
    return lines


def plot(res: dict, stem: str = "separate") -> None:
    """Per setting: the metric of each run (log scale for perplexity), and below it each method's
    paired difference from GMP at the same sparsity with its standard error (random masks, far off
    that scale, are named instead of drawn)."""
    plt = pyplot()

    settings = [s for s in res["settings"]["settings"] if any(r["setting"] == s for r in res["runs"].values())]
    if not settings:
        return
    fig, axes = plt.subplots(2, len(settings), figsize=(4.8 * len(settings), 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, setting in enumerate(settings):
        ax, bx = axes[0][col], axes[1][col]
        metric = "accuracy" if setting != "ptb" else "perplexity"
        field, compare, unit = (("block_losses", paired_change, "%") if metric == "perplexity"
                                else ("correct", paired_accuracy, "points"))
        rows = [r for r in res["runs"].values() if r["setting"] == setting]
        dense = [r[metric] for r in rows if r["method"] == "dense"]
        if dense:
            ax.axhline(sum(dense) / len(dense), color="0.5", ls=":", lw=0.8, label="dense")
        groups = group_runs(rows)
        off_scale = []
        for i, (method, marker) in enumerate(zip(METHODS, "os^x")):
            pts = [(100 * r["target"] + 1.2 * (i - 1.5), r[metric]) for r in rows if r["method"] == method]
            if pts:
                ax.plot(*zip(*pts), marker=marker, ls="none", label=method, color=f"C{i}")
            for target in sorted({t for m, t in groups if m == method and t}):
                change = paired_over_seeds(groups, method, target, field, compare)
                if not change:
                    continue
                if method == "random":
                    off_scale.append(f"random at {target:.0%}: {change[0]:+.0f} {unit}")
                    continue
                bx.errorbar(100 * target + 1.2 * (i - 1.5), change[0], yerr=change[1], marker=marker,
                            color=f"C{i}", capsize=3)
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_ylabel(metric)
        ax.set_title(setting, fontsize=9)
        ax.legend(fontsize=7)
        bx.axhline(0, color="C1", lw=0.8)
        bx.set_ylabel(f"vs GMP, same {'blocks' if metric == 'perplexity' else 'tweets'} ({unit})", fontsize=8)
        bx.set_xlabel("MLP sparsity (%; methods offset)")
        if off_scale:
            bx.text(0.02, 0.04, "; ".join(off_scale), transform=bx.transAxes, fontsize=6, color="C3")
    fig.tight_layout()
    save_figure(fig, stem)


def grid(name: str) -> list[tuple[str, str, float | None, int]]:
    """The runs of a named grid, as ``(setting, method, target, seed)``, in the order they are made.

    ``core`` (about 3 hours on 2 cores): dense fine-tuning, NeuroPrune, GMP and l1 at 50 % and 70 %
    on ``ptb``; on ``tweets3`` the same at 50 % and NeuroPrune and GMP at 70 % (l1 and GMP have
    chosen nearly the same weights in every setting measured). ``extended`` adds random masks (both
    sparsities on ``ptb``, 50 % on ``tweets3``) and a second seed of NeuroPrune and GMP at 50 % on
    ``tweets3``, where their gap is about two standard errors (about 1.5 hours more).
    """
    runs = [("ptb", "dense", None, 0)] + [("ptb", m, t, 0) for t in (0.5, 0.7) for m in ("neuroprune", "gmp", "l1")]
    runs += [("tweets3", "dense", None, 0)] + [("tweets3", m, 0.5, 0) for m in ("neuroprune", "gmp", "l1")]
    runs += [("tweets3", m, 0.7, 0) for m in ("neuroprune", "gmp")]
    if name == "extended":
        runs += [("ptb", "random", t, 0) for t in (0.5, 0.7)] + [("tweets3", "random", 0.5, 0)]
        runs += [("tweets3", m, 0.5, 1) for m in ("neuroprune", "gmp")]
    return runs


GRIDS = ("core", "extended")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="core", choices=GRIDS, help="the runs to make (see grid()); the options "
                    "below choose other runs instead: every combination of them")
    ap.add_argument("--settings", help=f"some of {','.join(SETTINGS)} (default: all)")
    ap.add_argument("--methods", help=f"some of {','.join(METHODS)} (default: all)")
    ap.add_argument("--targets", help="MLP sparsities (default: 0.5,0.7)")
    ap.add_argument("--seeds", help="seeds (default: 0)")
    ap.add_argument("--without-dense", action="store_true",
                    help="with the options above: do not train the dense reference of their settings and seeds")
    results_options(ap, RESULTS, workdir="bench-separate")
    ap.add_argument("--plot-only", action="store_true", help="print the tables and redraw the figure")
    args = ap.parse_args()
    res = load_results(args.out)
    if not args.plot_only:
        custom = any(v is not None for v in (args.settings, args.methods, args.targets, args.seeds))
        settings = [s for s in (args.settings or ",".join(SETTINGS)).split(",") if s]
        methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
        if not set(settings) <= set(SETTINGS) or not set(methods) <= set(METHODS):
            ap.error(f"--settings: some of {','.join(SETTINGS)}; --methods: some of {','.join(METHODS)}")
        try:
            targets = [float(t) for t in (args.targets or "0.5,0.7").split(",")]
            seeds = [int(s) for s in (args.seeds or "0").split(",")]
        except ValueError:
            ap.error("--targets: comma-separated numbers in (0, 1); --seeds: comma-separated integers")
        if not all(0 < t < 1 for t in targets):
            ap.error("--targets: comma-separated numbers in (0, 1)")
        if custom:
            plan = [] if args.without_dense else [(s, "dense", None, seed) for s in settings for seed in seeds]
            plan += [(s, m, t, seed) for s in settings for t in targets for seed in seeds for m in methods]
        else:
            plan = grid(args.grid)
        fixed = {"configs": {s: SETTINGS[s] for s in SETTINGS},
                 "code": code_fingerprint("train", "graph", "models.py",
                                          measured=(SETTINGS, run_name, block_losses, example_correct,
                                                    train_run))}
        res = kept(res, {k: res.get("settings", {}).get(k) for k in fixed} == fixed, args,
                   {"settings": {}, "runs": {}}, args.out)
        used = {s for s, *_ in plan}
        res["settings"].update(fixed, settings=sorted(set(res["settings"].get("settings", [])) | used,
                                                      key=list(SETTINGS).index))
        res.update(provenance())
        args.workdir.mkdir(parents=True, exist_ok=True)
        for setting, method, target, seed in plan:
            name = run_name(setting, method, target, seed)
            if name not in res["runs"]:
                res["runs"][name] = train_run(setting, method, target, seed, args)
                save_results(args.out, res)
    print("\n".join(table(res)))
    plot(res, "separate" if args.out.resolve() == RESULTS.resolve() else args.out.stem)  # another file: its own figure


if __name__ == "__main__":
    main()
