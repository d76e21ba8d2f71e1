"""Training time to a given sparsity: NeuroPrune's paper mode, GMP and iterative magnitude pruning.

Dhurandhar et al. ("NeuroPrune", Findings of ACL 2024, arXiv 2404.01306) claim "up to 10x faster
training for a given level of sparsity": a few epochs of penalised fine-tuning against the many
prune-and-retrain rounds of iterative magnitude pruning. Here, on the 2,000-tweet sentiment task
of ``topoprune train`` (MiniLM, lr 1e-4, batch 32, 2,000 test tweets), for 50, 70 and 90 % of the
MLP weights:

* ``neuroprune``: paper mode (the default proximal penalties, attention term included), its MLP
  sparsity an outcome of :math:`\\alpha`, matched to the target within ``--tolerance`` by
  bracketing :math:`\\alpha` (:func:`analysis.bench_paper_compare.next_alpha`), at 1, 2, 3 and
  6 epochs;
* ``gmp``: target mode at the same budgets (cubic schedule ending at 75 % of the steps);
* ``imp``: iterative magnitude pruning (Han et al. 2015, arXiv 1506.02626): one epoch of dense
  fine-tuning, then rounds of one epoch, each removing the same share of the surviving MLP weights
  (about 20 % per round, as in Frankle & Carbin 2019, arXiv 1803.03635) and retraining with the
  mask fixed (the ``iterative`` schedule), until the target; 4, 6 and 11 rounds for 50, 70 and
  90 %, that is 5, 7 and 12 epochs;
* ``dense`` at every budget: the reference is the best dense accuracy over the budgets.

A method *reaches* a sparsity at the smallest budget whose run has that MLP sparsity and an
accuracy at most ``--within`` (one point) below the dense reference; its epochs and training
seconds are then the cost of that sparsity. Every run records its seconds per optimiser step, so
that the step of paper mode (proximal penalties, c_i counted every step) can be compared with
target mode's. Whether each test tweet is classified correctly is kept, and each run is compared
with the dense reference tweet by tweet (paired standard error). One seed (0): the data split and
the order are the same for every run.

Run: ``make bench-time`` (``--resume`` keeps the runs made by the same code and settings;
``--methods`` / ``--targets`` / ``--budgets`` pick rows). About 160 epochs of 63 steps in all,
2-3 hours on 2 cores. ``--quick`` is a smoke run on 128 tweets into a temporary directory.
Results: ``analysis/results/bench_time_to_sparsity.json`` (after every run); figure
``figures/time_to_sparsity.{png,svg}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from analysis.bracketing import _logit, next_alpha, pooled  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint, provenance  # noqa: E402
from analysis.harness import ROOT, kept, load_results, markdown_table, results_options, save_results  # noqa: E402
from analysis.kept_weights import mlp_connectivity  # noqa: E402
from analysis.paired import paired_accuracy  # noqa: E402
from analysis.tasks import example_correct  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_time_to_sparsity.json"
#: the task: ``topoprune train``'s defaults, evaluated on 2,000 test tweets.
TASK = {"model": "minilm", "data": "tweets", "n_train": 2000, "n_eval": 2000, "lr": 1e-4, "batch_size": 32,
        "max_length": 64}
QUICK = dict(TASK, n_train=128, n_eval=64)
BUDGETS = (1, 2, 3, 6)
TARGETS = (0.5, 0.7, 0.9)
METHODS = ("dense", "imp", "gmp", "neuroprune")
#: share of the surviving weights one IMP round removes, at most (Frankle & Carbin's 20 %).
IMP_RATE = 0.2
#: paper mode's default alpha reaches about half of the MLP weights in 189 steps; for another
#: target and budget the first guess scales with logit(sparsity) / 1.6 in log alpha and with
#: 189 / steps (the sparsity grows with the learning rate summed over the run).
ALPHA_50_189 = 1.5e-4


def steps_per_epoch(task: dict) -> int:
    return math.ceil(task["n_train"] / task["batch_size"])


def imp_rounds(target: float, rate: float = IMP_RATE) -> int:
    """Rounds of at most ``rate`` of the survivors each that reach ``target``: ceil(log(1-t) / log(1-rate))."""
    return math.ceil(math.log(1 - target) / math.log(1 - rate) - 1e-9)


def first_alpha(target: float, steps: int) -> float:
    return float(f"{ALPHA_50_189 * math.exp(_logit(target) / 1.6) * 189 / steps:.4g}")


def run_name(method: str, target: float, epochs: int, alpha: float | None) -> str:
    return f"{method}-t{target:g}-e{epochs}" + (f"-a{alpha:.4g}" if alpha is not None else "")


def neuroprune_config(method: str, target: float, epochs: int, alpha: float | None, task: dict) -> dict:
    """The NeuroPruneConfig fields of one run."""
    if method == "dense":
        return {"method": "dense"}
    if method == "neuroprune":  # paper mode: the default penalties, alpha bracketed
        return {"method": "neuroprune", "mlp_weight": alpha}
    if method == "gmp":
        return {"method": "gmp", "target": target}
    rounds, per = epochs - 1, steps_per_epoch(task)  # imp: a dense epoch, then one round per epoch
    return {"method": "gmp", "target": target, "schedule": "iterative", "start": 0, "end": rounds * per,
            "frequency": per}


def train_run(name: str, npc: dict, epochs: int, task: dict, workdir: Path) -> dict:
    """Train one run: accuracy, per-tweet correctness, MLP sparsity, connectivity sd, step time."""
    from topoprune.train.run import TrainConfig, train

    out = workdir / name
    cfg = TrainConfig(out=str(out), seed=0, epochs=float(epochs), topology_every=0, save_steps=100_000,
                      neuroprune=npc, **task)
    t0 = time.perf_counter()
    rec = train(cfg, overwrite=True, progress=False)
    roles = [r for r in rec["sparsity"] if r["level"] == "role"]
    attn = [r for r in roles if r["role"] in ("q", "k", "v", "o")]
    row = {"neuroprune": npc, "epochs": epochs, "steps": rec["steps"], "accuracy": rec["metrics"].get("eval_accuracy"),
           "train_seconds": rec["train_seconds"], "seconds_per_step": rec["seconds_per_step"],
           "wall_seconds": time.perf_counter() - t0,
           "attention_sparsity": sum(r["pruned"] for r in attn) / max(1, sum(r["numel"] for r in attn)),
           "attachment": rec.get("attachment", {}), **mlp_connectivity(out / "model", 1e-4)}
    correct = example_correct(out / "model", "tweets", 0, config=task)
    if abs(correct.count("1") / len(correct) - row["accuracy"]) <= 1e-3:
        row["correct"] = correct
    else:  # not the trainer's evaluation: no paired comparison rather than a wrong one
        print(f"{name}: the saved model's accuracy is not the trainer's; no per-tweet record kept", file=sys.stderr)
    print(json.dumps({"run": name, **{k: v for k, v in row.items() if k != "correct"}}), flush=True)
    return row


def runs_of(res: dict, method: str, target: float, epochs: int) -> list[dict]:
    """The runs that can stand for ``method`` at ``target`` and ``epochs``: every ``neuroprune`` run
    of the budget, whatever target it was bracketed for (:func:`analysis.bracketing.pooled`)."""
    return pooled(res["runs"].values(), method, target, method == "neuroprune", epochs=epochs)


def chosen(res: dict, method: str, target: float, epochs: int) -> dict | None:
    """The run of ``method`` at ``target`` and ``epochs`` closest to the target sparsity."""
    rs = runs_of(res, method, target, epochs)
    return min(rs, key=lambda r: abs(r["mlp_sparsity"] - target)) if rs else None


def ensure(res: dict, method: str, target: float, epochs: int, args, save) -> dict | None:
    """Make (or find) one point of the grid, bracketing alpha for ``neuroprune``."""
    if method != "neuroprune":
        name = run_name(method, target, epochs, None)
        if name not in res["runs"]:
            npc = neuroprune_config(method, target, epochs, None, args.task)
            res["runs"][name] = dict(train_run(name, npc, epochs, args.task, args.workdir), method=method,
                                     target=target)
            save()
        return res["runs"][name]
    steps = epochs * steps_per_epoch(args.task)
    first = first_alpha(target, steps)
    done = [(e, chosen(res, method, target, e)) for e in BUDGETS if e != epochs]
    near = [(e, r) for e, r in done if r and abs(r["mlp_sparsity"] - target) <= args.tolerance]
    if near:  # another budget's matched alpha, scaled by its steps: the best first guess
        e, r = min(near, key=lambda er: abs(er[0] - epochs))
        first = float(f"{r['neuroprune']['mlp_weight'] * e / epochs:.4g}")
    for _ in range(args.max_tries):
        tries = [(r["neuroprune"]["mlp_weight"], r["mlp_sparsity"]) for r in runs_of(res, method, target, epochs)]
        if any(abs(s - target) <= args.tolerance for _, s in tries):
            break
        alpha = next_alpha(tries, target, first)
        name = run_name(method, target, epochs, alpha)
        if name in res["runs"]:
            print(f"# {method} at {target:.0%}, {epochs} epochs: bracketing repeats alpha {alpha:g}", file=sys.stderr)
            break
        npc = neuroprune_config(method, target, epochs, alpha, args.task)
        res["runs"][name] = dict(train_run(name, npc, epochs, args.task, args.workdir), method=method, target=target)
        save()
    best = chosen(res, method, target, epochs)
    if best and abs(best["mlp_sparsity"] - target) > args.tolerance:
        print(f"# {method} at {target:.0%}, {epochs} epochs: closest {best['mlp_sparsity']:.1%} after "
              f"{args.max_tries} tries", file=sys.stderr)
    return best


def plan(methods: list[str], targets: list[float], budgets: list[int]) -> list[tuple[str, float, int]]:
    """(method, target, epochs) in the order they are made: dense, then per target IMP, GMP, NeuroPrune."""
    out = [("dense", 0.0, e) for e in budgets] if "dense" in methods else []
    for t in targets:
        if "imp" in methods:
            out.append(("imp", t, imp_rounds(t) + 1))
        out += [(m, t, e) for m in ("gmp", "neuroprune") if m in methods for e in budgets]
    return out


def dense_reference(res: dict) -> dict | None:
    """The dense run with the best accuracy over the budgets."""
    rs = [r for r in res["runs"].values() if r["method"] == "dense"]
    return max(rs, key=lambda r: r["accuracy"]) if rs else None


def summary(res: dict) -> dict:
    """Per (method, target): every budget's matched run with its gap to dense, and the first that reaches it."""
    ref, tol, within = dense_reference(res), res["settings"]["tolerance"], res["settings"]["within"]
    rows = []
    for target in TARGETS:
        for method in ("imp", "gmp", "neuroprune"):
            points = []
            for e in sorted({r["epochs"] for r in res["runs"].values() if r["method"] == method and r["target"] == target}):
                r = chosen(res, method, target, e)
                matched = abs(r["mlp_sparsity"] - target) <= tol
                gap = (paired_accuracy(r["correct"], ref["correct"]) if ref and "correct" in r and "correct" in ref
                       else None)
                ok = matched and ref is not None and r["accuracy"] >= ref["accuracy"] - within
                points.append({"epochs": e, "name": r["name"], "accuracy": r["accuracy"], "mlp_sparsity": r["mlp_sparsity"],
                               "matched": matched, "vs_dense": gap, "reaches": ok, "train_seconds": r["train_seconds"],
                               "seconds_per_step": r["seconds_per_step"], "conn_sd_percent": r["conn_sd_percent"],
                               "attention_sparsity": r["attention_sparsity"], "alpha": r["neuroprune"].get("mlp_weight")
                               if method == "neuroprune" else None})
            if points:
                first = next((p for p in points if p["reaches"]), None)
                rows.append({"method": method, "target": target, "points": points, "reached": first})
    return {"dense": ref, "rows": rows}


def table(res: dict) -> list[str]:
    s = summary(res)
    ref = s["dense"]
    lines = []
    if ref:
        lines.append(f"Dense reference: {ref['accuracy']:.4f} at {ref['epochs']} epochs (best over "
                     + ", ".join(f"{r['epochs']}: {r['accuracy']:.4f}" for r in sorted(
                         (r for r in res["runs"].values() if r["method"] == "dense"), key=lambda r: r["epochs"])) + ").")
    points, reached = [], []
    for row in s["rows"]:
        for p in row["points"]:
            gap = f"{p['vs_dense'][0]:+.2f} pt ± {p['vs_dense'][1]:.2f}" if p["vs_dense"] else ""
            mark = " (reaches)" if p is row["reached"] else ("" if p["matched"] else " (unmatched)")
            points.append([f"{row['target']:.0%}", row["method"], f"{p['epochs']}{mark}", f"{p['mlp_sparsity']:.1%}",
                           f"{p['accuracy']:.4f}", gap, f"{p['train_seconds']:.0f}", f"{p['seconds_per_step']:.3f}",
                           f"{p['conn_sd_percent']:.2f}", f"{p['attention_sparsity']:.1%}",
                           f"{p['alpha']:.3g}" if p["alpha"] is not None else "-"])
        r = row["reached"]
        reached.append([f"{row['target']:.0%}", row["method"], *([f"{r['epochs']} epochs", f"{r['train_seconds']:.0f}"]
                        if r else [f"not within {max(p['epochs'] for p in row['points'])} epochs", "-"])])
    return lines + ["", *markdown_table(
        ["target", "method", "epochs", "MLP sparsity", "accuracy", "vs dense, same tweets (± s.e.)", "train s",
         "s / step", "conn. sd (%)", "attention sparsity", "alpha"], points), "", *markdown_table(
        ["target", "method", "first budget within one point of dense", "its training seconds"], reached)]


def plot(res: dict) -> None:
    """Per target: accuracy against training epochs for each method, the dense reference and its one-point band."""
    s = summary(res)
    if not s["rows"]:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(12, 3.6), sharey=True)
    for ax, target in zip(axes, TARGETS):
        if not any(r["target"] == target for r in s["rows"]):
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="0.5")
        for i, method in enumerate(("imp", "gmp", "neuroprune")):
            row = next((r for r in s["rows"] if r["method"] == method and r["target"] == target), None)
            if not row:
                continue
            pts = row["points"]
            ax.plot([p["epochs"] for p in pts], [100 * p["accuracy"] for p in pts], marker="os^"[i], color=f"C{i}",
                    label=method, ls="-" if method != "imp" else "none")
            for p in pts:
                if not p["matched"]:
                    ax.annotate(f"{p['mlp_sparsity']:.0%} (unmatched)", (p["epochs"], 100 * p["accuracy"]),
                                fontsize=6, color=f"C{i}", xytext=(4, -8), textcoords="offset points")
        if s["dense"]:
            d = 100 * s["dense"]["accuracy"]
            ax.axhline(d, color="0.4", ls=":", lw=0.8, label="dense (best budget)")
            ax.axhspan(d - 100 * res["settings"]["within"], d, color="0.85", alpha=0.5, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 3, 6, 12], ["1", "2", "3", "6", "12"])
        ax.set_xlabel("training epochs")
        ax.set_title(f"{target:.0%} of the MLP weights", fontsize=9)
    axes[0].set_ylabel("test accuracy (%), 2,000 tweets")
    axes[0].legend(fontsize=7)
    fig.suptitle("MiniLM, 2,000 sentiment tweets: accuracy at a given MLP sparsity against training budget", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "time_to_sparsity")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"some of {','.join(METHODS)}")
    ap.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS), help="MLP sparsities, some of 0.5,0.7,0.9")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="epochs of dense, GMP and NeuroPrune")
    ap.add_argument("--tolerance", type=float, default=0.01, help="how close NeuroPrune's sparsity must come")
    ap.add_argument("--within", type=float, default=0.01, help="accuracy below the dense reference still reaching")
    ap.add_argument("--max-tries", type=int, default=4, help="runs per bracketed point, at most")
    results_options(ap, RESULTS, workdir="bench-time")
    ap.add_argument("--quick", action="store_true", help="128 tweets, 50 %%, one and two epochs, into a temporary directory")
    ap.add_argument("--plot-only", action="store_true", help="print the tables and redraw the figure")
    args = ap.parse_args()
    try:
        methods = [m for m in args.methods.split(",") if m]
        targets = [float(t) for t in args.targets.split(",") if t]
        budgets = [int(b) for b in args.budgets.split(",") if b]
    except ValueError:
        ap.error("--targets: comma-separated sparsities; --budgets: comma-separated integers")
    if not set(methods) <= set(METHODS) or not set(targets) <= set(TARGETS) or not set(budgets) <= set(BUDGETS):
        ap.error(f"--methods: some of {','.join(METHODS)}; --targets: some of {TARGETS}; --budgets: some of {BUDGETS}")
    if not 0 < args.tolerance < 0.5 or not 0 <= args.within < 1 or args.max_tries < 1:
        ap.error("--tolerance: a share in (0, 0.5); --within: a share in [0, 1); --max-tries: >= 1")
    args.task = QUICK if args.quick else TASK
    tmp = tempfile.TemporaryDirectory(prefix="bench-time-") if args.quick else None
    if tmp:
        args.workdir, args.out = Path(tmp.name), Path(tmp.name) / "results.json"
        targets, budgets = [0.5], [1, 2]
    res = load_results(args.out)
    if not args.plot_only:
        fixed = {"task": args.task, "tolerance": args.tolerance, "within": args.within, "imp_rate": IMP_RATE,
                 "code": code_fingerprint("train", "graph", "models.py", measured=(
                     TASK, QUICK, IMP_RATE, ALPHA_50_189, imp_rounds, first_alpha, next_alpha, neuroprune_config,
                     train_run, example_correct))}
        res = kept(res, {k: res.get("settings", {}).get(k) for k in fixed} == fixed, args,
                   {"settings": {}, "runs": {}}, args.out)
        res["settings"].update(fixed)
        res.update(provenance())
        args.workdir.mkdir(parents=True, exist_ok=True)

        def save():
            for name, r in res["runs"].items():
                r["name"] = name
            save_results(args.out, res)

        for method, target, epochs in plan(methods, targets, budgets):
            if args.quick and method == "imp":
                epochs = 2  # one dense epoch, one round
            ensure(res, method, target, epochs, args, save)
    print("\n".join(table(res)))
    if not args.quick:
        plot(res)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
