"""Does gathering the live input dimensions of Q/K/V pay on CPU?

NeuroPrune's attention penalty (Dhurandhar et al. 2024, arXiv 2404.01306, Eq. 2) is the
:math:`l_{1,0.5}` norm over the input dimensions (columns) of :math:`\\operatorname{cat}(Q, K, V)`.
A column that is zero in all three projections is an input dimension the attention never reads;
a compacted model could then compute ``x[..., live] @ W[:, live].T`` instead of ``x @ W.T``. This
script answers whether that is worth building, in two parts:

1. **How many whole columns die.** Paper-mode runs of ``topoprune train`` (MiniLM, sentiment
   tweets, one epoch at lr 5e-5) at alpha = 6e-4, beta = 5e-3 (proximal form; about 58 % of the
   MLP and 36 % of the attention weights pruned) and at a ten times stronger attention weight: per layer, the columns of ``cat(Q, K, V)`` that are entirely below epsilon, next to
   the share of entries that are.
2. **What a gather costs.** The three projections of one MiniLM layer (384 -> 384 each) timed as
   dense ``nn.Linear`` against one shared ``index_select`` of the live inputs followed by three
   smaller ``nn.Linear`` (the cheapest form a compacted model could take), at shares of dead
   columns from 0 to 75 %, batch 1 x 64 tokens and batch 32 x 128 tokens, torch threads fixed,
   alternating the two forms so that a slow phase of the machine hits both.

Results: ``analysis/results/bench_gather.json``; ``--resume`` keeps runs made by the same code.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import kept, machine, markdown_table, results_options, save_results  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_gather.json"
#: Paper-mode penalty weights (alpha, beta) of the runs whose dead columns are counted.
RUNS = {"default": (6e-4, 5e-3), "beta x10": (6e-4, 5e-2)}
#: Shares of dead input columns timed, and the (batch, tokens) shapes.
SHARES = (0.0, 0.1, 0.25, 0.5, 0.75)
SHAPES = ((1, 64), (32, 128))


def dead_columns(run_dir: Path, eps: float) -> dict:
    """Per layer: whole dead columns of cat(Q, K, V) and the share of dead entries."""
    from topoprune.graph.binding import Binding
    from topoprune.models import build_model, load_tokenizer

    model = build_model(str(run_dir / "model"), "classification", load_tokenizer(str(run_dir / "model")),
                        num_labels=2)
    b = Binding(model)
    out = {"columns": [], "entries": [], "width": None}
    for la in b.attention:
        a = torch.cat([b.weight(s).detach() for s in (la.q, la.k, la.v)])  # [3 d, d_in]
        dead = a.abs() < eps
        out["columns"].append(int(dead.all(0).sum()))
        out["entries"].append(float(dead.float().mean()))
        out["width"] = int(a.shape[1])
    return out


def train_runs(args, results: dict) -> None:
    from topoprune.train.run import TrainConfig, train

    for name, (alpha, beta) in RUNS.items():
        if name in results["runs"]:
            continue
        out = args.workdir / name.replace(" ", "")
        npc = {"mlp_weight": alpha, "attn_weight": beta, "penalty_form": "proximal"}
        cfg = TrainConfig(out=str(out), epochs=1.0, lr=5e-5, topology_every=0, save_steps=10_000, seed=args.seed,
                          neuroprune=npc)
        rec = train(cfg, overwrite=True, progress=False)
        npc_used = rec["config"]["neuroprune"]
        row = {"alpha": npc_used["mlp_weight"], "beta": npc_used["attn_weight"],
               "accuracy": rec["metrics"]["eval_accuracy"], **dead_columns(out, npc_used["eps"])}
        results["runs"][name] = row
        print(json.dumps({"run": name, **row}), flush=True)
        save_results(args.out, results)


def time_gather(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = 384
    rows = []
    with torch.inference_mode():
        for batch, tokens in SHAPES:
            x = torch.randn(batch, tokens, d)
            full = [torch.nn.Linear(d, d) for _ in range(3)]
            for share in SHARES:
                g = torch.Generator().manual_seed(0)
                live = torch.randperm(d, generator=g)[: int(round(d * (1 - share)))].sort().values  # [live]
                small = [torch.nn.Linear(len(live), d) for _ in range(3)]

                def dense():
                    return [f(x) for f in full]

                def gathered():
                    xs = x.index_select(-1, live)  # [batch, tokens, live]: read once, shared by Q, K, V
                    return [f(xs) for f in small]

                times = {"dense": [], "gathered": []}
                for _ in range(2):  # warm-up
                    dense(), gathered()
                for _ in range(args.repeats):
                    for name, fn in (("dense", dense), ("gathered", gathered)):
                        t = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t)
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append({"batch": batch, "tokens": tokens, "dead_share": share,
                             "dense_ms": 1000 * med["dense"], "gathered_ms": 1000 * med["gathered"],
                             "speedup": med["dense"] / med["gathered"], "ideal": 1 / max(1e-9, 1 - share)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: dict) -> list[str]:
    runs = [[f"{name} ({r['alpha']:g}, {r['beta']:g})", f"{r['accuracy']:.3f}",
             " ".join(f"{e:.0%}" for e in r["entries"]), " ".join(str(c) for c in r["columns"]) + f" of {r['width']}"]
            for name, r in results.get("runs", {}).items()]
    timing = [[f"{r['batch']} x {r['tokens']}", f"{r['dead_share']:.0%}", f"{r['dense_ms']:.3f} ms",
               f"{r['gathered_ms']:.3f} ms", f"{r['speedup']:.2f}×", f"{r['ideal']:.2f}×"]
              for r in results.get("timing", [])]
    return [*markdown_table(["run (alpha, beta)", "accuracy", "dead entries of cat(Q,K,V), per layer",
                             "whole dead input columns, per layer"], runs), "",
            *markdown_table(["batch x tokens", "dead columns", "dense Q,K,V", "gathered", "speed-up", "ideal"], timing)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=200, help="timed calls of each form per share and shape")
    results_options(ap, RESULTS, workdir="bench-gather")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not args.table_only:
        code = code_fingerprint("train", "graph", "models.py")
        results = kept(results, results.get("code") == code and results.get("seed") == args.seed, args,
                       {"code": code, "seed": args.seed, "runs": {}}, args.out)
        args.workdir.mkdir(parents=True, exist_ok=True)
        train_runs(args, results)
        results["timing"] = time_gather(args)
        results["machine"] = dict(machine(), torch_threads=args.threads)
        save_results(args.out, results)
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
