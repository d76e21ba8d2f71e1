"""Distillation during structured pruning: does a dense teacher recover the accuracy of the fastest widths?

The fastest compacted MiniLMs of the compaction benchmark (``bench_compact.py``: 75 % of the MLP
neurons removed, with and without a third of the heads) lose 1.5-1.8 points on the sentiment
tweets when trained on the labels alone. Here each of those settings is trained twice with the
same steps, learning rate and seed -- on the labels (``topoprune train --neurons S --heads H``)
and distilled from the dense fine-tuned model (``... --teacher DENSE_RUN``, loss
:math:`0.1\\,\\mathcal{L}_\\text{CE} + 0.9\\,T^2\\,\\mathrm{KL}` at :math:`T = 2`, Hinton et al.
2015, arXiv 1503.02531; the weights of Sanh et al. 2020, "Movement Pruning", arXiv 2005.07683) --
then compacted and timed against the dense model in one process, pass by pass.

Results: ``analysis/results/bench_distill.json`` (rewritten after every run; ``--resume`` keeps
the runs made by the same code and settings); figure ``figures/distill.{png,svg}``. A longer
budget for the distilled students: ``--epochs 6 --variants distilled --dense DENSE_RUN --out
analysis/results/bench_distill_long.json`` (the teacher and the dense reference stay the
3-epoch dense run).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.compaction_runs import TRAIN_KEYS, key, measure_all, throughput_speedup, train_one  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import kept, load_results, machine, markdown_table, results_options, save_results  # noqa: E402
from topoprune.compaction import load_compact  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_distill.json"
#: (method, share of neurons, share of heads): the fastest widths of the compaction benchmark.
WIDTHS = [("neuroprune", 0.75, 0.0), ("neuroprune", 0.75, 1 / 3)]
#: How each width is trained: on the labels, or distilled from the dense run.
VARIANTS = ("labels", "distilled")


def se_diff(p: float, q: float, n: int) -> float:
    """Standard error of the difference of two accuracies on ``n`` test examples (independent errors)."""
    return math.sqrt((p * (1 - p) + q * (1 - q)) / n)


def widths(results: dict) -> list[tuple]:
    return [tuple(w) for w in results.get("settings", {}).get("widths", WIDTHS)]


def variants(results: dict) -> tuple:
    return tuple(results.get("settings", {}).get("variants", VARIANTS))


def table(results: dict) -> list[str]:
    runs, lat = results.get("runs", {}), results.get("latency", {})
    dense = runs.get("dense")
    if not dense:
        return ["(no results yet)"]
    n = results["settings"]["n_eval"]
    base = {seq: lat.get("dense", {}).get(str(seq)) for seq in (64, 128)}
    rows = []
    for method, nn, h in widths(results):
        for variant in variants(results):
            name = f"{key(method, nn, h)}-{variant}"
            r = runs.get(name)
            if not r:
                continue
            d = r["accuracy"] - dense["accuracy"]
            speed = [throughput_speedup(lat[name][str(seq)], base[seq])
                     for seq in (64, 128) if name in lat and base[seq]]
            rows.append([f"{nn:.0%}", f"{round(h * 12)} of 12", variant, f"{r['accuracy']:.3f}",
                         f"{100 * d:+.1f} ± {100 * se_diff(r['accuracy'], dense['accuracy'], n):.1f}",
                         " / ".join(f"{s:.2f}×" for s in speed) or "–"])
    return [f"dense MiniLM: accuracy {dense['accuracy']:.3f} on {n} test tweets", "", *markdown_table(
        ["neurons removed", "heads removed", "training", "accuracy", "change (± s.e.)",
         "throughput speed-up, batch 32, seq 64 / 128"], rows)]


def plot(results: dict, stem: str = "distill") -> None:
    plt = pyplot()

    runs, lat = results.get("runs", {}), results.get("latency", {})
    if "dense" not in runs or "dense" not in lat:
        return
    dense, n = runs["dense"]["accuracy"], results["settings"]["n_eval"]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for variant, marker in zip(variants(results), ("o", "s")):
        xs, ys, es = [], [], []
        for method, nn, h in widths(results):
            name = f"{key(method, nn, h)}-{variant}"
            if name in runs and name in lat:
                xs.append(throughput_speedup(lat[name]["64"], lat["dense"]["64"]))
                ys.append(100 * (runs[name]["accuracy"] - dense))
                es.append(100 * se_diff(runs[name]["accuracy"], dense, n))
        ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=3, label=f"trained on {variant}" if variant == "labels"
                    else "distilled from the dense model")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axhline(-1, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("throughput speed-up over dense (batch 32, seq 64, CPU)")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title("MiniLM, sentiment tweets: compacted at 75 % neurons (± 1/3 heads)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, stem)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads while timing")
    ap.add_argument("--repeats", type=int, default=16, help="timed forward passes at batch 1 (over all rounds)")
    ap.add_argument("--rounds", type=int, default=4, help="timing rounds (each pass paired with one of the dense model)")
    results_options(ap, RESULTS, workdir="bench-distill")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--widths", default=",".join(f"{n:g}:{h:.4f}" for _, n, h in WIDTHS),
                    help="NEURONS:HEADS shares, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {','.join(VARIANTS)}")
    ap.add_argument("--dense", type=Path, default=None,
                    help="a finished dense run (and its DIR-compact) to use as teacher and reference "
                         "[trained in --workdir]")
    args = ap.parse_args()
    results = load_results(args.out)
    if not args.plot_only:
        chosen = [("neuroprune", float(n), float(h)) for n, h in (w.split(":") for w in args.widths.split(","))]
        kinds = tuple(v for v in args.variants.split(",") if v)
        if not set(kinds) <= set(VARIANTS):
            ap.error(f"--variants: some of {VARIANTS}")
        settings = {k: getattr(args, k) for k in TRAIN_KEYS}
        settings.update(widths=chosen, variants=list(kinds), dense=str(args.dense) if args.dense else None,
                        code=code_fingerprint("train", "graph", "compaction", "models.py",
                                              measured=(train_one, key)))
        settings = json.loads(json.dumps(settings))  # as the results file holds it (lists, not tuples)
        results = kept(results, results.get("settings") == settings, args,
                       {"settings": settings, "runs": {}, "latency": {}}, args.out)
        args.workdir.mkdir(parents=True, exist_ok=True)
        if args.dense is not None:
            rec = json.loads((args.dense / "topoprune.json").read_text())
            results["runs"]["dense"] = {"method": "dense", "neurons": 0.0, "heads": 0.0,
                                        "accuracy": rec["metrics"]["eval_accuracy"],
                                        "model": str(args.dense.parent / f"{args.dense.name}-compact")}
        elif "dense" not in results["runs"]:
            results["runs"]["dense"] = train_one("dense", 0.0, 0.0, args, args.workdir)
            save_results(args.out, results)
        teacher = str(args.dense or args.workdir / key("dense", 0.0, 0.0))
        tag = "" if args.epochs == 3.0 else f"-e{args.epochs:g}"
        for method, nn, h in chosen:
            for variant in kinds:
                name = f"{key(method, nn, h)}-{variant}"
                if name not in results["runs"]:
                    results["runs"][name] = train_one(method, nn, h, args, args.workdir, suffix=f"-{variant}{tag}",
                                                      distill={"teacher": teacher} if variant == "distilled" else None)
                    save_results(args.out, results)
        order = ["dense"] + [n for n in results["runs"] if n != "dense"]  # the reference first
        models = {name: load_compact(Path(results["runs"][name]["model"])).eval() for name in order}
        results["latency"] = measure_all(models, args, args.threads)
        results["machine"] = dict(machine(), torch_threads=args.threads, rounds=args.rounds, repeats=args.repeats)
        save_results(args.out, results)
    print("\n".join(table(results)))
    plot(results, "distill" if args.out == RESULTS else args.out.stem)


if __name__ == "__main__":
    main()
