"""How much do OWL's two hyperparameters matter on SmolLM2-135M?

OWL (Yin et al., ICML 2024, arXiv 2310.05175) spreads a model's sparsity over its blocks by their
outlier ratios, with two settings that its authors tuned for LLaMA: the outlier threshold M = 5
and the band half-width λ = 0.08 (block sparsities lie in [s - λ, s + λ]). ``bench_oneshot.py``
uses those values. This sweep measures how much they matter here: Wanda at one sparsity, OWL
over a λ grid at M = 5 and over an M grid at the best λ, with the uniform run (λ = 0) as the
baseline. Same model, calibration windows and perplexity protocol as ``bench_oneshot.py`` (the
functions of ``topoprune.oneshot.calibration``), so the numbers line up with its table. Picking
λ and M on the test perplexity is tuning on the test set: the sweep measures sensitivity, it is not a fair score
for OWL.

Run: ``make bench-owl`` (``.venv/bin/python -m analysis.owl_sweep --resume``; 9 runs, about
13 min on 2 CPU cores); writes ``analysis/results/owl_sweep.json`` and ``figures/owl_sweep.{png,svg}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from analysis.figsave import save_figure  # noqa: E402
from analysis.harness import ROOT, fresh_option, load_done, machine, save_results  # noqa: E402

from topoprune.oneshot.calibration import perplexity, sample_windows, text_ids  # noqa: E402
from topoprune.oneshot.config import OneShotConfig  # noqa: E402
from topoprune.oneshot.prune import prune  # noqa: E402
from topoprune.models import load_causal_lm  # noqa: E402


def key(args, lam: float, m: float) -> dict:
    return {"model": args.model, "method": args.method, "sparsity": args.sparsity, "n_calibration": args.n_calibration,
            "seq_len": args.seq_len, "eval_tokens": args.eval_tokens, "window": args.window,
            "owl_lambda": lam, "owl_m": m}


def run(dense, windows, test_ids, args, lam: float, m: float) -> dict:
    t0 = time.perf_counter()
    model = copy.deepcopy(dense)
    # the setting the sweep was measured in: magnitude within the layer, clipped OWL blocks rebalanced
    cfg = OneShotConfig.preset("topoprune", method=args.method, sparsity=args.sparsity,
                               allocation="owl" if lam > 0 else "uniform", owl_lambda=lam, owl_m=m, n_calibration=args.n_calibration, seq_len=args.seq_len, seed=0)
    res = prune(model, windows, cfg, progress=False)
    ppl = perplexity(model, test_ids, window=args.window, max_tokens=args.eval_tokens or None)
    return {"key": key(args, lam, m), "owl_lambda": lam, "owl_m": m, "ppl": float(ppl),
            "sparsity": float(res.sparsity), "block_sparsity": res.block_sparsity,
            "outlier_ratios": res.outlier_ratios, "wall_seconds": time.perf_counter() - t0}


def plot(rows: list[dict], args, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax_l, ax_m = fig.subplots(1, 2)
    uniform = [r["ppl"] for r in rows if r["owl_lambda"] == 0]
    for ax in (ax_l, ax_m):
        if uniform:
            ax.axhline(uniform[0], color="tab:blue", ls="--", label="uniform")
        ax.set_ylabel("PTB perplexity")
    pts = sorted((r["owl_lambda"], r["ppl"]) for r in rows if r["owl_m"] == args.m_fixed and r["owl_lambda"] > 0)
    if pts:
        ax_l.plot(*zip(*pts), marker="^", color="tab:orange", label=f"OWL, M = {args.m_fixed:g}")
    ax_l.set_xlabel("OWL λ")
    lam_best = best_lambda(rows, args)
    pts = sorted((r["owl_m"], r["ppl"]) for r in rows if r["owl_lambda"] == lam_best and lam_best > 0)
    if pts:
        ax_m.plot(*zip(*pts), marker="^", color="tab:orange", label=f"OWL, λ = {lam_best:g}")
    ax_m.set_xlabel("OWL outlier threshold M")
    for ax in (ax_l, ax_m):
        ax.legend(frameon=False, fontsize=8)
    name = "SmolLM2-135M" if args.model == "smollm2" else args.model
    fig.suptitle(f"{name}, {args.method} at {args.sparsity:.0%}: OWL's sensitivity to λ and M", fontsize=10)
    save_figure(fig, path.stem, dpi=120, directory=path.parent)


def best_lambda(rows: list[dict], args) -> float:
    cands = [r for r in rows if r["owl_m"] == args.m_fixed and r["owl_lambda"] > 0]
    return min(cands, key=lambda r: r["ppl"])["owl_lambda"] if cands else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--lambdas", default="0.02,0.04,0.08,0.12,0.16", help="λ grid at M = --m-fixed")
    ap.add_argument("--ms", default="3,7,10", help="M grid at the best λ")
    ap.add_argument("--m-fixed", type=float, default=5.0)
    ap.add_argument("--n-calibration", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--resume", action="store_true", help="skip runs the results file holds with identical settings")
    fresh_option(ap)
    ap.add_argument("--figures", default=str(ROOT / "figures"), help="figure directory")
    ap.add_argument("--out", default=str(ROOT / "analysis" / "results" / "owl_sweep.json"))
    args = ap.parse_args()
    out = Path(args.out)
    done = {json.dumps(r["key"], sort_keys=True): r for r in load_done(out, args)}
    dense, tok, _ = load_causal_lm(args.model, seed=0)
    dense.eval()
    windows = sample_windows(text_ids(tok, "ptb", "train"), args.n_calibration, args.seq_len, seed=0)
    test_ids = text_ids(tok, "ptb", "test")
    rows: list[dict] = []

    def do(lam: float, m: float) -> None:
        k = json.dumps(key(args, lam, m), sort_keys=True)
        row = done.get(k) or run(dense, windows, test_ids, args, lam, m)
        rows.append(row)
        print(f"λ {lam:.2f}  M {m:g}: ppl {row['ppl']:.2f}  ({row['wall_seconds']:.0f} s)", flush=True)
        save_results(out, {"settings": vars(args), "machine": machine(), "rows": rows})

    do(0.0, args.m_fixed)  # uniform
    for lam in (float(x) for x in args.lambdas.split(",")):
        do(lam, args.m_fixed)
    lam = best_lambda(rows, args)
    for m in (float(x) for x in args.ms.split(",")):
        do(lam, m)
    plot(rows, args, Path(args.figures) / "owl_sweep")
    best = min((r for r in rows if r["owl_lambda"] > 0), key=lambda r: r["ppl"])
    uni = rows[0]["ppl"]
    print(f"# uniform {uni:.2f}; lowest OWL perplexity {best['ppl']:.2f} at λ {best['owl_lambda']:g}, "
          f"M {best['owl_m']:g} ({'below' if best['ppl'] < uni else 'not below'} uniform; chosen on the test set)")


if __name__ == "__main__":
    sys.exit(main())
