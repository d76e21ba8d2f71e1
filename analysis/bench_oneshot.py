"""One-shot pruning of SmolLM2-135M: magnitude / Wanda with uniform, OWL and NeuroAL allocation.

Wanda: Sun et al., ICLR 2024, arXiv 2306.11695; OWL: Yin et al., ICML 2024, arXiv 2310.05175;
NeuroAL: Cunegatti, Custode & Iacca, TMLR 2025, arXiv 2411.07066.

Every run starts from the same dense model (SmolLM2-135M-Instruct, the fp32 copy that
:func:`topoprune.assets.smollm2_dir` caches) and uses the same calibration windows (Penn
Treebank train, drawn once with seed 0); perplexity is measured on the start of the Penn
Treebank test set (``--eval-tokens``, non-overlapping ``--window``-token windows). Grid:
sparsity 50 / 60 / 70 % x {magnitude, Wanda} x {uniform, OWL, NeuroAL}, plus the dense model.
Measured per run: achieved sparsity, PTB perplexity, chosen λ (block and row step), prune
time split into OWL / NeuroAL block step / row step / final pass, evaluation and wall time.

The summary after the table gives, for each base method, the three allocations' perplexities at
70 % side by side, and the longest NeuroAL λ search (block step + row step) with the number of
parameters it pruned.

A JSON line is printed as each run finishes, and the results file is rewritten (atomically)
after every run, so a killed benchmark keeps its finished runs; ``--resume`` skips runs the
file already holds with identical settings.

Run: ``make bench-oneshot`` (``.venv/bin/python analysis/bench_oneshot.py --resume``); writes
``analysis/results/bench_oneshot.json`` and ``figures/oneshot_perplexity.{png,svg}``.
``--quick`` (random tiny-llama, 70 % only, a few short windows) is a smoke test: it writes
its results and figure into a temporary directory, never into the repository.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import topoprune  # noqa: E402
from topoprune.oneshot.calibration import perplexity, sample_windows, text_ids  # noqa: E402
from topoprune.oneshot.prune import OneShotConfig, prune  # noqa: E402
from topoprune.models import load_causal_lm  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

QUICK_DIR = Path(tempfile.gettempdir()) / "topoprune-bench-oneshot-quick"
ALLOCATION_STYLE = {"uniform": ("s", "tab:blue"), "owl": ("^", "tab:orange"), "neuroal": ("o", "tab:green")}


# ----------------------------------------------------------------------------- bookkeeping
def run_key(args, sparsity: float, method: str, allocation: str) -> dict:
    """Everything that decides a run's numbers: two runs with equal keys are the same run."""
    return {"model": args.model, "n_calibration": args.n_calibration, "n_search": args.n_search,
            "seq_len": args.seq_len, "seed": 0, "eval_tokens": args.eval_tokens, "window": args.window,
            "sparsity": float(sparsity), "method": method, "allocation": allocation}


def machine() -> dict:
    import transformers

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "topoprune": topoprune.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}


def write_results(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` atomically (never half-written)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def load_done(path: Path, resume: bool) -> list[dict]:
    """Finished rows of an earlier run (only with ``--resume``; rows that failed are run again)."""
    if not resume or not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"# cannot resume from {path} ({exc}); starting afresh", file=sys.stderr, flush=True)
        return []
    return [r for r in old.get("rows", []) if "key" in r and not r.get("error")]


# ----------------------------------------------------------------------------- runs
def run_dense(model, test_ids, args) -> dict:
    t0 = time.perf_counter()
    ppl = perplexity(model, test_ids, window=args.window, max_tokens=args.eval_tokens or None)
    sec = time.perf_counter() - t0
    return {"key": run_key(args, 0.0, "dense", "dense"), "sparsity_target": 0.0, "sparsity": 0.0,
            "method": "dense", "allocation": "dense", "ppl": ppl, "lambda_block": None, "lambda_row": None,
            "prune_seconds": 0.0, "seconds": {}, "search_seconds": None, "eval_seconds": sec, "wall_seconds": sec}


def run_one(dense, windows, test_ids, args, sparsity: float, method: str, allocation: str) -> dict:
    t0 = time.perf_counter()
    row = {"key": run_key(args, sparsity, method, allocation), "sparsity_target": sparsity, "method": method,
           "allocation": allocation}
    try:
        model = copy.deepcopy(dense)  # a fresh dense copy: prune() works in place
        cfg = OneShotConfig(method=method, sparsity=sparsity, allocation=allocation, n_calibration=args.n_calibration,
                            n_search=args.n_search, seq_len=args.seq_len, seed=0)
        res = prune(model, windows, cfg, progress=False)
        t1 = time.perf_counter()
        ppl = perplexity(model, test_ids, window=args.window, max_tokens=args.eval_tokens or None)
        eval_s = time.perf_counter() - t1
        s = {k: float(v) for k, v in res.seconds.items()}
        search = s.get("block_step", 0.0) + s.get("row_step", 0.0) if allocation == "neuroal" else None
        row.update({"sparsity": float(res.sparsity), "ppl": float(ppl), "lambda_block": res.lambda_block,
                    "lambda_row": res.lambda_row, "prune_seconds": s["total"], "seconds": s,
                    "search_seconds": search, "eval_seconds": eval_s,
                    "pruned_params": int(sum(r["numel"] for r in res.layers)),
                    "block_sparsity": res.block_sparsity,
                    "search": {k: [list(p) for p in v] for k, v in res.search.items()},
                    "n_fallbacks": len(res.fallbacks)})
        del model
    except Exception as exc:  # one failed run must not lose the rest of a long benchmark
        row.update({"error": f"{type(exc).__name__}: {exc}", "ppl": None})
    row["wall_seconds"] = time.perf_counter() - t0
    return row


# ----------------------------------------------------------------------------- checks
def checks(rows: list[dict]) -> dict:
    """The 70 % perplexities per base method and the longest NeuroAL λ search, from whatever rows exist.

    Stored in the results file under ``checks``; ``summary`` prints the numbers."""
    ok = [r for r in rows if not r.get("error") and r.get("ppl") is not None]
    order = {}
    for method in sorted({r["method"] for r in ok} - {"dense"}):
        ppl = {r["allocation"]: r["ppl"] for r in ok
               if r["method"] == method and abs(r["sparsity_target"] - 0.7) < 1e-9}
        entry = {a: ppl.get(a) for a in ("neuroal", "owl", "uniform")}
        if all(v is not None for v in entry.values()):
            entry["neuroal_le_owl"] = entry["neuroal"] <= entry["owl"]
            entry["owl_le_uniform"] = entry["owl"] <= entry["uniform"]
        order[method] = entry
    neuro = [r for r in ok if r["allocation"] == "neuroal" and r.get("search_seconds") is not None]
    worst = max(neuro, key=lambda r: r["search_seconds"], default=None)
    topup = {"max_seconds": worst and worst["search_seconds"],
             "max_run": worst and f"{worst['method']} {worst['sparsity_target']:.0%}",
             "pruned_params": worst and worst.get("pruned_params")}
    return {"ppl_order_at_70": order, "neuroal_topup": topup}


def fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def summary(rows: list[dict], chk: dict) -> None:
    print("| sparsity | method | allocation | measured sparsity | PTB ppl | λ_block | λ_row | prune s | λ search s "
          "| wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['sparsity_target']:.0%} | {r['method']} | {r['allocation']} | failed: {r['error'][:80]} "
                  "| | | | | | |")
            continue
        print(f"| {r['sparsity_target']:.0%} | {r['method']} | {r['allocation']} | {r['sparsity']:.4f} | "
              f"{r['ppl']:.2f} | {fmt(r['lambda_block'], '.2f')} | {fmt(r['lambda_row'], '.2f')} | "
              f"{r['prune_seconds']:.1f} | {fmt(r['search_seconds'], '.1f')} | {r['wall_seconds']:.1f} |")
    print()
    for method, e in chk["ppl_order_at_70"].items():
        nums = ", ".join(f"{a} {fmt(e[a], '.2f')}" for a in ("neuroal", "owl", "uniform"))
        print(f"- PTB perplexity at 70 %, {method}: {nums}")
    t = chk["neuroal_topup"]
    print(f"- longest NeuroAL λ search (block + row step): {fmt(t['max_seconds'], '.1f')} s "
          f"({t['max_run'] or 'no NeuroAL run'}, {fmt(t['pruned_params'], ',')} pruned parameters)")


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny-llama, 70 %% only, 4 x 64-token windows; output into a temp dir")
    ap.add_argument("--resume", action="store_true", help="skip runs the results file holds with identical settings")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7")
    ap.add_argument("--methods", default="magnitude,wanda")
    ap.add_argument("--allocations", default="uniform,owl,neuroal")
    ap.add_argument("--n-calibration", type=int, default=32)
    ap.add_argument("--n-search", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="PTB-test tokens for perplexity (0: all)")
    ap.add_argument("--window", type=int, default=512, help="perplexity window (non-overlapping)")
    ap.add_argument("--out", default=None, help="results JSON (default analysis/results/bench_oneshot.json)")
    ap.add_argument("--figures", default=None, help="figure directory (default figures/)")
    args = ap.parse_args()
    if args.quick:
        args.model, args.sparsities = "tiny-llama", "0.7"
        args.n_calibration, args.n_search, args.seq_len, args.eval_tokens, args.window = 4, 2, 64, 1024, 128
        args.out = args.out or str(QUICK_DIR / "bench_oneshot_quick.json")
        args.figures = args.figures or str(QUICK_DIR)
    args.out = args.out or str(ROOT / "analysis" / "results" / "bench_oneshot.json")
    args.figures = args.figures or str(ROOT / "figures")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods, allocations = args.methods.split(","), args.allocations.split(",")
    out = Path(args.out)

    t0 = time.perf_counter()
    dense, tok, source = load_causal_lm(args.model, seed=0)
    dense.eval()
    train_ids, test_ids = text_ids(tok, "ptb", "train"), text_ids(tok, "ptb", "test")
    windows = sample_windows(train_ids, args.n_calibration, args.seq_len, seed=0)
    setup = {"load_and_tokenise_seconds": time.perf_counter() - t0, "source": source,
             "train_tokens": int(train_ids.numel()), "test_tokens": int(test_ids.numel()),
             "eval_tokens_used": int(min(test_ids.numel(), args.eval_tokens or test_ids.numel())),
             "windows": list(windows.shape)}
    print(f"# {source}: PTB train {setup['train_tokens']} tokens, test {setup['test_tokens']} "
          f"(evaluating {setup['eval_tokens_used']}); calibration {tuple(windows.shape)}; "
          f"{os.cpu_count()} cpus, {torch.get_num_threads()} torch threads", flush=True)

    done = {json.dumps(r["key"], sort_keys=True): r for r in load_done(out, args.resume)}
    rows: list[dict] = []
    settings = {k: v for k, v in vars(args).items()}

    def save():
        write_results(out, {"settings": settings, "machine": machine(), "setup": setup, "rows": rows,
                            "checks": checks(rows), "seconds_total": time.perf_counter() - t0})

    plan = [(0.0, "dense", "dense")] + [(s, m, a) for s in sparsities for m in methods for a in allocations]
    skipped = 0
    for sparsity, method, allocation in plan:
        key = json.dumps(run_key(args, sparsity, method, allocation), sort_keys=True)
        if key in done:
            rows.append(done[key])
            skipped += 1
            continue
        if method == "dense":
            row = run_dense(dense, test_ids, args)
        else:
            row = run_one(dense, windows, test_ids, args, sparsity, method, allocation)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("key", "block_sparsity", "search")}), flush=True)
        save()
    if skipped:
        print(f"# resumed: {skipped} of {len(plan)} runs taken from {out}", flush=True)
    save()
    print(f"# results: {out}")
    print()
    chk = checks(rows)
    summary(rows, chk)
    try:
        paths = plot(rows, Path(args.figures), "oneshot_perplexity_quick" if args.quick else "oneshot_perplexity",
                     title=f"{'SmolLM2-135M' if args.model == 'smollm2' else args.model}, PTB test")
        print(f"# figure: {', '.join(map(str, paths))}")
    except Exception as exc:  # the figure is a convenience: never lose the table over it
        print(f"# figure not written: {exc}", file=sys.stderr)


def plot(rows: list[dict], directory: Path, stem: str, title: str) -> list[Path]:
    from matplotlib.figure import Figure

    ok = [r for r in rows if not r.get("error") and r.get("ppl") is not None and math.isfinite(r["ppl"])]
    dense = next((r for r in ok if r["method"] == "dense"), None)
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, method, name in zip(axes, ("magnitude", "wanda"), ("magnitude", "Wanda")):
        if dense is not None:
            ax.axhline(dense["ppl"], color="grey", ls="--", label=f"dense ({dense['ppl']:.1f})")
        for allocation, (marker, colour) in ALLOCATION_STYLE.items():
            pts = sorted((r["sparsity_target"], r["ppl"]) for r in ok
                         if r["method"] == method and r["allocation"] == allocation)
            if pts:
                ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                        label={"owl": "OWL", "neuroal": "NeuroAL"}.get(allocation, allocation))
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_title(f"{name}, {title}", fontsize=10)
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("perplexity (log scale)")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        paths.append(directory / f"{stem}.{ext}")
        fig.savefig(paths[-1], format=ext, dpi=120)
    return paths


if __name__ == "__main__":
    main()
