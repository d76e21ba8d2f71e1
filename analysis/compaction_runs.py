"""Training a structured-pruning run and compacting it, and timing models against a dense reference.

Shared by the compaction and distillation benchmarks (``analysis/bench_compact.py``,
``analysis/bench_distill.py``): :func:`train_one` trains MiniLM on the sentiment tweets with a
share of MLP neurons (and heads) pruned whole, then removes them (``topoprune compact``);
:func:`measure_all` times every model pass by pass against the dense one.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from topoprune.compaction.run import run_compact
from topoprune.graph.binding import Binding

TRAIN_KEYS = ("epochs", "lr", "n_train", "n_eval", "seed")


def key(method: str, neurons: float, heads: float) -> str:
    return f"{method}-n{neurons:.2f}-h{heads:.2f}"


def train_one(method, neurons, heads, args, workdir: Path, distill: dict | None = None, suffix: str = "") -> dict:
    """Train one setting in ``workdir`` (optionally distilled from a teacher) and compact it."""
    from topoprune.train.run import TrainConfig, train

    name = key(method, neurons, heads) + suffix
    run_dir, small = workdir / name, workdir / f"{name}-compact"
    npc = {"method": method, "seed": args.seed}
    if method != "dense":
        npc.update(neuron_target=neurons or None, head_target=heads or None)
    cfg = TrainConfig(model="minilm", data="tweets", out=str(run_dir), epochs=args.epochs, lr=args.lr,
                      n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, topology_every=0, save_steps=10_000,
                      neuroprune=npc, distill=distill)
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


def time_model(model, vocab: int, seq: int, batch: int, repeats: int, warmup: bool = True) -> list[float]:
    """Seconds of ``repeats`` forward passes on random token ids (after one warm-up pass if ``warmup``)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab - 1, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(repeats + int(warmup)):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= int(warmup):
                times.append(time.perf_counter() - t)
    return times


#: (sequence length, batch) of every timing: batch-1 latency and batch-32 throughput.
SHAPES = [(64, 1), (128, 1), (64, 32), (128, 32)]


def measure_all(models: dict, args, threads: int) -> dict:
    """Time every model of ``models`` against the first one (the dense reference), pass by pass.

    ``--rounds`` rounds; in each, every pruned model and shape gets a few passes, each paired with a
    pass of the reference right before or after it (the order alternates). The speed-up is the
    median over pairs of (reference time / model time): a slow phase of a shared machine slows both
    passes of a pair alike, so it cancels in the ratio, where the ratio of two medians taken at
    different moments keeps it. Absolute figures are medians of all passes."""
    torch.set_num_threads(threads)
    names = list(models)
    ref, others = names[0], names[1:]
    times = {name: {shape: [] for shape in SHAPES} for name in names}
    pairs = {name: {shape: [] for shape in SHAPES} for name in others}
    for name in names:  # one warm-up pass per model and shape
        for seq, batch in SHAPES:
            time_model(models[name], models[name].config.vocab_size, seq, batch, 0)
    for r in range(args.rounds):
        for name in others or [ref]:
            for seq, batch in SHAPES:
                n = max(1, args.repeats // args.rounds) if batch == 1 else 1
                for i in range(n):
                    order = [ref, name] if (r + i) % 2 == 0 else [name, ref]
                    t = {m: time_model(models[m], models[m].config.vocab_size, seq, batch, 1, warmup=False)[0]
                         for m in dict.fromkeys(order)}
                    for m, v in t.items():
                        times[m][(seq, batch)].append(v)
                    if name != ref:
                        pairs[name][(seq, batch)].append(t[ref] / t[name])
        print(f"# timing round {r + 1}/{args.rounds} ({threads} threads)", file=sys.stderr, flush=True)
    out = {}
    for name, model in models.items():
        row = {}
        for seq in (64, 128):
            row[str(seq)] = {"latency_ms": 1000 * statistics.median(times[name][(seq, 1)]),
                             "throughput": 32 / statistics.median(times[name][(seq, 32)]),
                             "macs": encoder_macs(model, seq), "batch1_s": times[name][(seq, 1)],
                             "batch32_s": times[name][(seq, 32)], "reference": ref,
                             "pairs_batch1": pairs.get(name, {}).get((seq, 1), []),
                             "pairs_batch32": pairs.get(name, {}).get((seq, 32), [])}
        out[name] = row
    return out


def throughput_speedup(timing: dict, base: dict) -> float:
    """Batch-32 speed-up of one model's timing (one sequence length of ``measure_all``'s output) over
    ``base``'s: the median of its paired ratios when it was timed in pairs, else the ratio of medians."""
    pairs = timing.get("pairs_batch32")
    return statistics.median(pairs) if pairs else timing["throughput"] / base["throughput"]
