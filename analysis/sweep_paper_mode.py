"""Paper-mode NeuroPrune on MiniLM / sentiment tweets: sparsity and accuracy over the penalty weights.

Paper mode is NeuroPrune as Dhurandhar et al. describe it (Findings of ACL 2024, arXiv
2404.01306): no target sparsity; the MLP preferential-attachment penalty (weight alpha) and the
attention row-group penalty (weight beta) drive weights towards zero, and weights with
``|w| < eps`` are pruned. all-MiniLM-L6-v2 on 2,000 training tweets, seed 0, the penalties in the
proximal form (:mod:`topoprune.train.proximal`) at the weights of the grid, plus dense
fine-tuning and the gradient form at the paper-scale weights for reference, on two budgets:

* ``short``: one epoch (63 steps), AdamW lr 5e-5, 500 test tweets (the runs without a prefix);
* ``default``: the default ``topoprune train`` budget, three epochs (189 steps), lr 1e-4, tested
  on 2,000 tweets (the ``b3-`` runs).

This grid chose the paper-mode defaults (``topoprune.train.config.PAPER_PENALTIES``): the
smallest weights of the default budget with at least 50 % MLP and 30 % attention sparsity.

Results: ``analysis/results/paper_mode.json``, with a fingerprint of the code that produced them;
runs in ``--workdir`` (while the fingerprint matches, a run directory that already holds a finished
run with the same settings is read, not trained again; otherwise every run is trained afresh).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import markdown_table  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "paper_mode.json"
#: Training budgets (TrainConfig fields); a run's name starts with ``b3-`` for the default one.
BUDGETS = {"short": {"epochs": 1.0, "lr": 5e-5, "n_eval": 500}, "default": {"epochs": 3.0, "lr": 1e-4, "n_eval": 2000}}
#: name -> NeuroPrune settings of the run (its budget: ``budget_of(name)``).
GRID = {
    "dense": {"method": "dense"},
    "gradient-1e-4-1e-4": {"penalty_form": "gradient", "mlp_weight": 1e-4, "attn_weight": 1e-4},
    **{f"p-{a}-{b}": {"penalty_form": "proximal", "mlp_weight": float(a), "attn_weight": float(b)}
       for a, b in (("1e-3", "1e-3"), ("3e-3", "3e-3"), ("5e-4", "1e-2"), ("5e-4", "3e-3"), ("6e-4", "5e-3"),
                    ("7e-4", "6e-3"))},
    **{f"e75-{a}-{b}": {"penalty_form": "proximal", "mlp_weight": float(a), "attn_weight": float(b),
                        "end_fraction": 0.75} for a, b in (("6e-4", "5e-3"), ("8e-4", "7e-3"))},
    "b3-dense": {"method": "dense"},
    **{f"b3-p-{a}-{b}": {"penalty_form": "proximal", "mlp_weight": float(a), "attn_weight": float(b)}
       for a, b in (("1e-4", "8e-4"), ("1.5e-4", "2e-3"), ("2e-4", "2e-3"))},
}


def budget_of(name: str) -> dict:
    return BUDGETS["default" if name.startswith("b3-") else "short"]


def summarize(rec: dict) -> dict:
    roles = [r for r in rec["sparsity"] if r["level"] == "role"]

    def share(pick):
        rows = [r for r in roles if pick(r["role"])]
        return sum(r["pruned"] for r in rows) / max(1, sum(r["numel"] for r in rows))

    acc = rec["metrics"]["eval_accuracy"]
    n = int(rec["config"]["n_eval"])
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n), "mlp_sparsity": share(lambda r: r.startswith("mlp")),
            "attention_sparsity": share(lambda r: r in ("q", "k", "v", "o")),
            "qkv_sparsity": share(lambda r: r in ("q", "k", "v")),
            "heads": sum(rec["heads_remaining"].values()), "config": rec["config"]["neuroprune"]}


def run(name: str, opts: dict, workdir: Path, reuse: bool = True) -> dict:
    from topoprune.train.run import TrainConfig, run_config, train

    cfg = TrainConfig(out=str(workdir / name), topology_every=0, neuroprune=dict(opts), **budget_of(name))
    done = workdir / name / "topoprune.json"
    if reuse and done.is_file():
        rec = json.loads(done.read_text())
        have, want = rec["config"]["neuroprune"], run_config(cfg)["neuroprune"]
        if want["method"] == "dense":  # dense fine-tuning ignores every penalty setting
            have, want = have["method"], want["method"]
        if have == want and all(rec["config"][k] == run_config(cfg)[k] for k in ("n_eval", "epochs", "lr")):
            return summarize(rec)
    return summarize(train(cfg, overwrite=True, progress=False))


def table(results: dict) -> list[str]:
    rows = []
    for name, r in results.items():
        b = budget_of(name)
        budget = f"{b['epochs']:g} ep, lr {b['lr']:g}, {b['n_eval']} test"
        c = r["config"]
        dense = c["method"] == "dense"
        form = "-" if dense else c["penalty_form"]
        alpha = "-" if dense else format(c["mlp_weight"], "g")
        beta = "-" if dense else format(c["attn_weight"], "g")
        stop = "at " + format(c["end_fraction"], ".0%") if c.get("end_fraction") else "-"
        rows.append([name, budget, form, alpha, beta, stop, f"{r['mlp_sparsity']:.1%}", f"{r['attention_sparsity']:.1%}",
                     f"{r['accuracy']:.3f} ± {r['se']:.3f}"])
    return markdown_table(["run", "budget", "form", "alpha", "beta", "penalties stop", "MLP sparsity",
                           "attention sparsity (Q,K,V,O)", "test accuracy"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "topoprune" / "paper-mode")
    ap.add_argument("--runs", nargs="+", choices=sorted(GRID), default=list(GRID))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot-only", action="store_true", help="print the table from the results file")
    args = ap.parse_args()
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    code = code_fingerprint("train", "graph", "models.py")
    results = stored.get("runs", {}) if "runs" in stored else stored  # (files without a fingerprint: no "runs")
    fresh = stored.get("code") != code
    if not args.plot_only and fresh:
        results = {}  # produced by other code (or unknown code): measured afresh, run directories too
    if not args.plot_only:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for name in args.runs:
            results[name] = run(name, GRID[name], args.workdir, reuse=not fresh)
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "config"}), flush=True)
            with atomic_path(args.out) as tmp:
                tmp.write_text(json.dumps({"code": code, "runs": results}, indent=1))
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
