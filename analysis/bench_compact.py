"""Compaction: structured NeuroPrune on MiniLM / sentiment tweets, compacted -- size, accuracy, CPU speed.

Every setting trains MiniLM (all-MiniLM-L6-v2) on the same positive/negative tweets with the same
steps, learning rate and seed, pruning a share of every MLP's hidden neurons (and, in some
settings, of every layer's heads) whole on a cubic schedule (``topoprune train --neurons S
--heads H``), then removes them (``topoprune compact``). Two ways of choosing what goes:
``neuroprune`` (graph strength: weighted fan-in x weighted fan-out, from the same graph code as
``topoprune analyze``; NeuroPrune's dominating-set head pruning runs at epoch ends as well) and
``gmp`` (weight norm, the usual structured magnitude baseline, Zhu & Gupta 2017, arXiv 1710.01878,
applied to neurons and heads). NeuroPrune: Dhurandhar et al., Findings of ACL 2024, arXiv 2404.01306.

Measured per setting: parameters and file size of the compacted model, test accuracy, CPU latency at
batch 1 and throughput at batch 32 (sequence lengths 64 and 128, torch threads fixed, medians,
every model timed in the same process over several rounds), the speed-up over the dense model and
its ratio to the ideal speed-up from the removed multiply-adds. Speed-ups are paired: every pass of a
pruned model is timed right next to a pass of the dense model (alternating which goes first), and
the speed-up is the median over pairs of the two times' ratio, so that a slow phase of a shared
machine, which slows both passes of a pair alike, cancels. The MiniLM models are timed at every
thread count of ``--threads``. The same widths are also
timed on random-init BERT-base-sized and LLaMA-style (grouped-query attention) models.

Phases (results in ``analysis/results/bench_compact.json``, rewritten after every step):

* ``--phase train``: the training runs and their compaction (models kept in ``--workdir``);
  ``--resume`` skips the settings already in the results file with the same training settings;
* ``--phase latency``: timing of everything compacted so far (run it on a quiet machine);
* ``--plot-only``: ``figures/compact_speed.{png,svg}`` from the results file.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from analysis.compaction_runs import TRAIN_KEYS, key, measure_all, train_one  # noqa: E402
from analysis.figsave import save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import kept, load_results, machine, markdown_table, results_options, save_results  # noqa: E402
from topoprune.compaction import compact, load_compact  # noqa: E402
from topoprune.graph.binding import Binding  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_compact.json"
#: (method, share of neurons, share of heads) of every training run; "dense" first.
SETTINGS = [("dense", 0.0, 0.0)] + [(m, n, h) for m in ("neuroprune", "gmp")
                                    for n, h in ((0.25, 0.0), (0.5, 0.0), (0.75, 0.0), (0.5, 1 / 3), (0.75, 1 / 3))]


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- timing


def synthetic(kind: str, neurons: float, heads: float):
    """A random-init BERT-base-sized or LLaMA-style (GQA) model, structurally pruned and compacted."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bert-base":
        model = tf.BertModel(tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                           intermediate_size=3072))
    else:
        model = tf.LlamaModel(tf.LlamaConfig(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                                             num_key_value_heads=4, intermediate_size=2816, vocab_size=32000))
    model.eval()
    if neurons or heads:
        b = Binding(model)
        with torch.no_grad():
            for mlp in b.mlp:
                w = b.weight(mlp.out).clone()
                w[:, : int(round(neurons * mlp.width))] = 0
                b.write(mlp.out, w)
            for la in b.attention:
                n, kv = la.n_heads, la.n_kv_heads or la.n_heads
                group = n // kv
                per = int(round(heads * group)) if group > 1 else int(round(heads * n))
                dead = [g * group + r for g in range(kv) for r in range(per)] if group > 1 else list(range(per))
                o = b.weight(la.o).clone()
                for h in dead:
                    o[:, h * la.head_dim:(h + 1) * la.head_dim] = 0
                b.write(la.o, o)
        compact(model)
    return model


def latency(args, results: dict) -> None:
    """Time the compacted MiniLM runs and the random-init models at the first of ``--threads``; the
    MiniLM runs again at each further thread count (``results["latency_threads"]``)."""
    threads = [int(t) for t in str(args.threads).split(",")]
    results["machine"] = dict(machine(), torch_threads=threads, rounds=args.rounds, repeats=args.repeats,
                              timing="paired")
    models = {}
    for name, run in results["runs"].items():
        path = Path(run["model"])
        if not path.is_dir():
            print(f"# {name}: {path} is gone; run --phase train again", file=sys.stderr)
            continue
        models[f"minilm/{name}"] = load_compact(path).eval()
    results["latency"] = measure_all(models, args, threads[0])
    results["latency_threads"] = {}
    save_results(args.out, results)
    for t in threads[1:]:
        results["latency_threads"][str(t)] = measure_all(models, args, t)
        save_results(args.out, results)
    del models
    for kind in ("bert-base", "llama-gqa"):
        models = {f"{kind}/{key('widths', n, h)}": synthetic(kind, n, h)
                  for _, n, h in [s for s in SETTINGS if s[0] in ("dense", "gmp")]}
        results["latency"].update(measure_all(models, args, threads[0]))
        save_results(args.out, results)
        del models


# ----------------------------------------------------------------------------- report
def pooled(lat: dict, names: list[str], seq: int) -> dict | None:
    """Timings of models with the same widths pooled (they run the same computation): medians, and
    the quartiles of the paired speed-ups over the reference at batch 32."""
    rows = [lat[n][str(seq)] for n in names if n in lat and "batch1_s" in lat[n][str(seq)]]
    if not rows:
        return None
    out = {"latency_ms": 1000 * statistics.median([t for r in rows for t in r["batch1_s"]]),
           "throughput": 32 / statistics.median([t for r in rows for t in r["batch32_s"]]),
           "macs": rows[0]["macs"]}
    ratios = sorted(x for r in rows for x in r.get("pairs_batch32", []))
    if len(ratios) >= 3:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        out["speedup"] = (statistics.median(ratios), q1, q3)
    return out


def speedup(row: dict, base: dict) -> float:
    """Batch-32 speed-up at 128 tokens of a pooled row: median of paired ratios, else the ratio of medians."""
    return row[128]["speedup"][0] if "speedup" in row[128] else row[128]["throughput"] / base[128]["throughput"]


def widths_rows(results: dict) -> list[dict]:
    """One row per (neurons, heads) setting: accuracies per method and the pooled timings."""
    lat, runs, out = results.get("latency", {}), results.get("runs", {}), []
    for _, n, h in [s for s in SETTINGS if s[0] in ("dense", "gmp")]:
        same = {k: r for k, r in runs.items() if r["neurons"] == n and r["heads"] == h}
        if not same:
            continue
        first = next(iter(same.values()))
        row = {"neurons": n, "heads": h, "accuracy": {r["method"]: r["accuracy"] for r in same.values()},
               "parameters": first["parameters"]["after"], "bytes": first["bytes"]["after"]}
        for seq in (64, 128):
            row[seq] = pooled(lat, [f"minilm/{k}" for k in same], seq)
        row["threads"] = {t: pooled(other, [f"minilm/{k}" for k in same], 128)
                          for t, other in results.get("latency_threads", {}).items()}
        out.append(row)
    return out


def table(results: dict) -> list[str]:
    lat = results.get("latency", {})
    n_eval = results.get("settings", {}).get("n_eval", 2000)
    rows, widths = widths_rows(results), []
    dense = rows[0] if rows and rows[0]["neurons"] == 0 and rows[0]["heads"] == 0 else None

    def speed(row, base):
        if not row.get(128) or not base or not base.get(128):
            return ["-"] * 3
        s, ideal = speedup(row, base), base[128]["macs"] / row[128]["macs"]
        iqr = f" ({row[128]['speedup'][1]:.2f}-{row[128]['speedup'][2]:.2f})" if "speedup" in row[128] else ""
        return [f"{s:.2f}x{iqr}", f"{ideal:.2f}x", f"{(s - 1) / (ideal - 1):.0%}" if ideal > 1.001 else "-"]

    for row in rows:
        acc = row["accuracy"]
        se = lambda a: f"{a:.3f} ± {math.sqrt(a * (1 - a) / n_eval):.3f}"  # noqa: E731
        np_acc = se(acc["neuroprune"]) if "neuroprune" in acc else (se(acc["dense"]) if "dense" in acc else "-")
        gmp_acc = se(acc["gmp"]) if "gmp" in acc else ("(dense)" if "dense" in acc else "-")
        cells = [f"{row['neurons']:.0%}", f"{row['heads']:.0%}", f"{row['parameters'] / 1e6:.2f} M",
                 f"{row['bytes'] / 2**20:.1f}", np_acc, gmp_acc]
        cells += [f"{row[64]['latency_ms']:.1f}", f"{row[128]['latency_ms']:.1f}", f"{row[128]['throughput']:.0f}"] \
            if row.get(128) else ["-"] * 3
        cells += speed(row, dense)
        widths.append(cells)
    lines = markdown_table(["MLP neurons removed", "heads removed", "parameters", "file MiB", "accuracy NeuroPrune",
                            "accuracy GMP", "batch-1 ms (64)", "batch-1 ms (128)", "batch-32 seq/s (128)",
                            "speed-up (128)", "ideal", "share of ideal"], widths)
    extra = sorted({t for r in rows for t in r["threads"]})
    main = results.get("machine", {}).get("torch_threads", ["?"])
    main = main[0] if isinstance(main, list) else main
    if extra and dense:
        threads = []
        for row in rows[1:]:
            cells = [f"{row['neurons']:.0%}", f"{row['heads']:.0%}"]
            if row.get(128):
                s_main = speed(row, dense)
                cells += [s_main[1], s_main[0], s_main[2]]
                for t in extra:
                    r_t = {128: row["threads"].get(t)}
                    cells += speed(r_t, {128: dense["threads"].get(t)})[::2] if r_t[128] else ["-", "-"]
                threads.append(cells)
        lines += ["", *markdown_table(["MLP neurons removed", "heads removed", "ideal", f"speed-up, {main} threads",
                                       "share of ideal"] + [c for t in extra for c in (
                                           f"speed-up, {t} thread{'s' * (t != '1')}", "share of ideal")], threads)]
    synthetic_rows = []
    for kind in ("bert-base", "llama-gqa"):
        base = {128: pooled(lat, [f"{kind}/{key('widths', 0.0, 0.0)}"], 128)}
        for _, n, h in [s for s in SETTINGS if s[0] in ("dense", "gmp")]:
            row = {seq: pooled(lat, [f"{kind}/{key('widths', n, h)}"], seq) for seq in (64, 128)}
            if row[128]:
                synthetic_rows.append([kind, f"{n:.0%}", f"{h:.0%}", f"{row[64]['latency_ms']:.1f}",
                                       f"{row[128]['latency_ms']:.1f}", f"{row[128]['throughput']:.1f}",
                                       *speed(row, base)])
    return lines + ["", *markdown_table(["random-init model", "MLP neurons removed", "heads removed", "batch-1 ms (64)",
                                         "batch-1 ms (128)", "batch-32 seq/s (128)", "speed-up (128)", "ideal",
                                         "share of ideal"], synthetic_rows)]


def plot(results: dict) -> None:
    from matplotlib.figure import Figure

    rows = widths_rows(results)
    if not rows or not rows[0].get(128):
        return
    dense = rows[0]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    n_eval = results["settings"].get("n_eval", 2000)
    for method, marker, dx in (("neuroprune", "o", -0.012), ("gmp", "s", 0.012)):  # dx: side by side
        pts = [(speedup(r, dense) + dx, r["accuracy"][method]) for r in rows[1:]
               if method in r["accuracy"] and r.get(128)]
        if pts:
            ax1.errorbar([p[0] for p in pts], [p[1] for p in pts],
                         yerr=[math.sqrt(p[1] * (1 - p[1]) / n_eval) for p in pts], marker=marker, ls="none",
                         capsize=3, label=method)
    ax1.axhline(dense["accuracy"].get("dense", float("nan")), color="grey", ls="--", label="dense")
    ax1.set_xlabel("throughput speed-up over dense (batch 32, 128 tokens)")
    ax1.set_ylabel("test accuracy (±1 s.e.)")
    ax1.legend(frameon=False, fontsize=8)
    for kind, label, marker in ((None, "MiniLM", "o"), ("bert-base", "BERT-base size", "^"),
                                ("llama-gqa", "LLaMA-style GQA", "v")):
        if kind is None:
            pts = [(dense[128]["macs"] / r[128]["macs"], speedup(r, dense)) for r in rows[1:] if r.get(128)]
        else:
            lat = results.get("latency", {})
            base = pooled(lat, [f"{kind}/{key('widths', 0.0, 0.0)}"], 128)
            pts = []
            for _, n, h in [s for s in SETTINGS if s[0] == "gmp"]:
                r = pooled(lat, [f"{kind}/{key('widths', n, h)}"], 128)
                if base and r:
                    pts.append((base["macs"] / r["macs"], speedup({128: r}, {128: base})))
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker, ls="none", label=label)
    hi = max([2.0] + [max(line.get_xdata()) for line in ax2.lines if len(line.get_xdata())])
    ax2.plot([1, hi], [1, hi], color="grey", ls="--", lw=1, label="ideal")
    ax2.set_xlabel("ideal speed-up (removed multiply-adds)")
    ax2.set_ylabel("measured speed-up (batch 32, 128 tokens)")
    ax2.legend(frameon=False, fontsize=8)
    fig.suptitle("Structured pruning then compaction, CPU", fontsize=10)
    save_figure(fig, "compact_speed", dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=("train", "latency", "all"), default="all")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=2000, help="test tweets (one s.e. ~0.8 points at 2,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default=f"{os.cpu_count() or 1},1",
                    help="torch threads while timing, comma-separated: every model at the first, the MiniLM "
                    "runs again at the others")
    ap.add_argument("--repeats", type=int, default=40, help="timed forward passes at batch 1 (over all rounds)")
    ap.add_argument("--rounds", type=int, default=8, help="round-robin rounds over the models (batch 32: one "
                    "pass per round)")
    results_options(ap, RESULTS, workdir="bench-compact")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    results = load_results(args.out)
    if args.plot_only:
        plot(results)
        print("\n".join(table(results)))
        return
    settings = {k: getattr(args, k) for k in TRAIN_KEYS}
    settings["code"] = code_fingerprint("train", "graph", "compaction", "models.py",
                                        measured=(SETTINGS, TRAIN_KEYS, key, train_one))
    if args.phase in ("train", "all"):
        results = kept(results, results.get("settings") == settings, args,
                       {"settings": settings, "runs": {}, "latency": {}}, args.out)
        args.workdir.mkdir(parents=True, exist_ok=True)
        for method, n, h in SETTINGS:
            name = key(method, n, h)
            if name not in results["runs"]:
                results["runs"][name] = train_one(method, n, h, args, args.workdir)
                save_results(args.out, results)
    if args.phase in ("latency", "all"):
        latency(args, results)
    save_results(args.out, results)
    print("\n".join(table(results)))
    plot(results)


if __name__ == "__main__":
    main()
