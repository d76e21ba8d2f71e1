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
batch 1 and throughput at batch 32 (sequence lengths 64 and 128, torch threads fixed, median of
repeats, every model timed in the same process one after the other), the speed-up over the dense
model and its ratio to the ideal speed-up from the removed multiply-adds. The same widths are also
timed on random-init BERT-base-sized and LLaMA-style (grouped-query attention) models.

Phases (results in ``analysis/results/bench_compact.json``, rewritten after every step):

* ``--phase train``: the training runs and their compaction (models kept in ``--workdir``);
  ``--resume`` skips the settings already in the results file with the same training settings;
* ``--phase latency``: timing of everything compacted so far (run it on a quiet machine);
* ``--plot-only``: ``figures/compact_speed.{png,svg}`` from the results file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from topoprune.compaction import compact, load_compact  # noqa: E402
from topoprune.compaction.run import run_compact  # noqa: E402
from topoprune.graph.binding import Binding  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_compact.json"
#: (method, share of neurons, share of heads) of every training run; "dense" first.
SETTINGS = [("dense", 0.0, 0.0)] + [(m, n, h) for m in ("neuroprune", "gmp")
                                    for n, h in ((0.25, 0.0), (0.5, 0.0), (0.75, 0.0), (0.5, 1 / 3), (0.75, 1 / 3))]
TRAIN_KEYS = ("epochs", "lr", "n_train", "n_eval", "seed")


def key(method: str, neurons: float, heads: float) -> str:
    return f"{method}-n{neurons:.2f}-h{heads:.2f}"


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"settings": {}, "runs": {}, "latency": {}}


def save_results(path: Path, results: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))


# ----------------------------------------------------------------------------- training
def train_one(method, neurons, heads, args, workdir: Path) -> dict:
    from topoprune.train.run import TrainConfig, train

    name = key(method, neurons, heads)
    run_dir, small = workdir / name, workdir / f"{name}-compact"
    npc = {"method": method, "seed": args.seed}
    if method != "dense":
        npc.update(neuron_target=neurons or None, head_target=heads or None)
    cfg = TrainConfig(model="minilm", data="tweets", out=str(run_dir), epochs=args.epochs, lr=args.lr,
                      n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, topology_every=0, save_steps=10_000,
                      neuroprune=npc)
    t0 = time.perf_counter()
    rec = train(cfg, overwrite=True, progress=False)
    comp = run_compact(run_dir, small, overwrite=True)
    row = {"method": method, "neurons": neurons, "heads": heads, "accuracy": rec["metrics"]["eval_accuracy"],
           "steps": rec["steps"], "train_seconds": rec["train_seconds"], "wall_seconds": time.perf_counter() - t0,
           "heads_remaining": sum(rec["heads_remaining"].values()), "parameters": comp["parameters"],
           "bytes": comp["bytes"], "plain_from_pretrained": comp["plain"], "blocks": comp["blocks"],
           "model": str(small)}
    print(json.dumps({k: v for k, v in row.items() if k != "blocks"}), flush=True)
    return row


# ----------------------------------------------------------------------------- timing
def encoder_macs(model, seq: int) -> float:
    """Multiply-adds per sequence of the attention and MLP blocks (projections, scores, mixing, MLP)."""
    b = Binding(model)
    total = 0.0
    for la in b.attention:
        for spec in (la.q, la.k, la.v, la.o):
            total += seq * spec.shape[0] * spec.shape[1]
        total += 2 * seq * seq * la.q.shape[0]  # Q K^T and softmax(.) V over the kept heads
    for mlp in b.mlp:
        total += seq * sum(s.shape[0] * s.shape[1] for s in (*mlp.inputs, mlp.out))
    return total


def time_model(model, vocab: int, seq: int, batch: int, repeats: int) -> float:
    """Median seconds of one forward pass on random token ids (after two warm-up passes)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab - 1, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model, vocab: int, args) -> dict:
    out = {}
    for seq in (64, 128):
        lat = time_model(model, vocab, seq, 1, args.repeats)
        thr = time_model(model, vocab, seq, 32, max(3, args.repeats // 4))
        out[str(seq)] = {"latency_ms": 1000 * lat, "throughput": 32 / thr, "macs": encoder_macs(model, seq)}
    return out


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
    torch.set_num_threads(args.threads)
    rows = results.setdefault("latency", {})
    results["machine"] = {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__}
    for name, run in results["runs"].items():
        path = Path(run["model"])
        if not path.is_dir():
            print(f"# {name}: {path} is gone; run --phase train again", file=sys.stderr)
            continue
        model = load_compact(path)
        rows[f"minilm/{name}"] = measure(model, model.config.vocab_size, args)
        save_results(args.out, results)
        print(name, json.dumps(rows[f"minilm/{name}"]), flush=True)
    for kind in ("bert-base", "llama-gqa"):
        for _, n, h in [s for s in SETTINGS if s[0] in ("dense", "gmp")]:
            model = synthetic(kind, n, h)
            rows[f"{kind}/{key('widths', n, h)}"] = measure(model, model.config.vocab_size, args)
            save_results(args.out, results)
            print(kind, n, h, json.dumps(rows[f"{kind}/{key('widths', n, h)}"]), flush=True)


# ----------------------------------------------------------------------------- report
def table(results: dict) -> list[str]:
    lat = results.get("latency", {})
    lines = ["| model | neurons removed | heads removed | accuracy | parameters | file MiB | batch-1 ms (64) | "
             "batch-32 seq/s (128) | speed-up (128) | ideal | share of ideal |", "|---" * 11 + "|"]

    def speed(prefix, name, dense_name):
        row, dense = lat.get(f"{prefix}/{name}"), lat.get(f"{prefix}/{dense_name}")
        if not row or not dense:
            return None
        s = row["128"]["throughput"] / dense["128"]["throughput"]
        ideal = dense["128"]["macs"] / row["128"]["macs"]
        return row, s, ideal

    for name, run in results.get("runs", {}).items():
        got = speed("minilm", name, key("dense", 0.0, 0.0))
        cells = [f"MiniLM {run['method']}", f"{run['neurons']:.0%}", f"{run['heads']:.0%}", f"{run['accuracy']:.4f}",
                 f"{run['parameters']['after'] / 1e6:.2f} M", f"{run['bytes']['after'] / 2**20:.1f}"]
        if got:
            row, s, ideal = got
            cells += [f"{row['64']['latency_ms']:.1f}", f"{row['128']['throughput']:.0f}", f"{s:.2f}x",
                      f"{ideal:.2f}x", f"{(s - 1) / (ideal - 1):.0%}" if ideal > 1 else "-"]
        else:
            cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    for kind in ("bert-base", "llama-gqa"):
        for _, n, h in [s for s in SETTINGS if s[0] in ("dense", "gmp")]:
            got = speed(kind, key("widths", n, h), key("widths", 0.0, 0.0))
            if got:
                row, s, ideal = got
                lines.append(f"| {kind} (random init) | {n:.0%} | {h:.0%} | - | - | - | {row['64']['latency_ms']:.1f} "
                             f"| {row['128']['throughput']:.0f} | {s:.2f}x | {ideal:.2f}x | "
                             + (f"{(s - 1) / (ideal - 1):.0%} |" if ideal > 1 else "- |"))
    return lines


def plot(results: dict) -> None:
    from matplotlib.figure import Figure

    lat, runs = results.get("latency", {}), results.get("runs", {})
    dense = lat.get(f"minilm/{key('dense', 0.0, 0.0)}")
    if not dense:
        return
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    n_eval = results["settings"].get("n_eval", 2000)
    for method, marker in (("neuroprune", "o"), ("gmp", "s")):
        pts = [(lat[f"minilm/{k}"]["128"]["throughput"] / dense["128"]["throughput"], r["accuracy"],
                dense["128"]["macs"] / lat[f"minilm/{k}"]["128"]["macs"])
               for k, r in runs.items() if r["method"] == method and f"minilm/{k}" in lat]
        if pts:
            ax1.errorbar([p[0] for p in pts], [p[1] for p in pts],
                         yerr=[math.sqrt(p[1] * (1 - p[1]) / n_eval) for p in pts], marker=marker, ls="none",
                         capsize=3, label=method)
            ax2.plot([p[2] for p in pts], [p[0] for p in pts], marker, label=method)
    base = runs.get(key("dense", 0.0, 0.0))
    if base:
        ax1.axhline(base["accuracy"], color="grey", ls="--", label="dense")
    ax1.set_xlabel("throughput speed-up over dense (batch 32, 128 tokens)")
    ax1.set_ylabel("test accuracy (±1 s.e.)")
    ax1.legend(frameon=False, fontsize=8)
    hi = max([2.0] + [p.get_xdata().max() for p in ax2.lines if len(p.get_xdata())])
    ax2.plot([1, hi], [1, hi], color="grey", ls="--", lw=1, label="ideal")
    ax2.set_xlabel("ideal speed-up (removed multiply-adds)")
    ax2.set_ylabel("measured speed-up")
    ax2.legend(frameon=False, fontsize=8)
    fig.suptitle("MiniLM, structured pruning then compaction, CPU", fontsize=10)
    for fmt in ("png", "svg"):
        fig.savefig(ROOT / "figures" / f"compact_speed.{fmt}", format=fmt, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=("train", "latency", "all"), default="all")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=2000, help="test tweets (one s.e. ~0.8 points at 2,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads while timing")
    ap.add_argument("--repeats", type=int, default=30, help="timed forward passes at batch 1")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "topoprune" / "bench-compact")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    results = load_results(args.out)
    if args.plot_only:
        plot(results)
        print("\n".join(table(results)))
        return
    settings = {k: getattr(args, k) for k in TRAIN_KEYS}
    if args.phase in ("train", "all"):
        if not (args.resume and results.get("settings") == settings):
            results = {"settings": settings, "runs": {}, "latency": {}}
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
