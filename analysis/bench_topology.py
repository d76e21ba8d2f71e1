"""Cost of topology snapshots during training: off, in a background process, and in the training loop.

The same short NeuroPrune run (target mode, 50 % of the MLP weights by the end of
its schedule) is trained three ways, side by side in one process, the three modes interleaved
and repeated:

* ``off``: no snapshot during training (``--topology-every 0``; the run's final snapshot only);
* ``background``: a snapshot every ``--every`` steps; degree statistics in the training loop,
  power-law fits and modularity in a low-priority background process (the default,
  :class:`topoprune.train.tracker.TopologyTracker`); the run waits for outstanding snapshots
  at its end, and that wait is included;
* ``sync``: the same snapshots computed entirely in the training loop (``--topology-sync``).

Reported per model: the training wall time of each mode (median over repeats; ``trainer.train``
from the first step to the end of training, the final snapshot included), the overhead of each
snapshot mode over ``off``, and the snapshots' own numbers (how many, and whether the background
ones were completed or skipped because the background process was behind). MiniLM (all-MiniLM-L6-v2) classifies sentiment tweets; SmolLM2-135M is fine-tuned
as a causal LM on Penn Treebank. Results: ``analysis/results/bench_topology.json`` (``--resume``
keeps the runs already measured with the same settings; ``--plot-only`` redraws).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import fresh_option, kept, machine, markdown_table  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_topology.json"
MODES = ("off", "background", "sync")
#: model -> training settings of its run (the same in every mode).
MODELS = {
    "minilm": dict(data="tweets", max_steps=60, batch_size=32, max_length=64, n_train=1920, n_eval=64),
    "smollm2": dict(data="ptb", max_steps=30, batch_size=8, max_length=128, n_train=240, n_eval=16),
}


def run_one(model: str, mode: str, every: int, work: Path) -> dict:
    from topoprune.train.run import TrainConfig, train

    settings = MODELS[model]
    cfg = TrainConfig(model=model, out=str(work / f"{model}-{mode}"), lr=5e-5, seed=0,
                      topology_every=0 if mode == "off" else every, topology_background=mode != "sync",
                      save_steps=10_000, neuroprune={"target": 0.5}, **settings)
    rec = train(cfg, overwrite=True, progress=False)
    import pandas as pd

    snaps = pd.read_csv(Path(cfg.out) / "topology_history.csv")
    return {"train_seconds": rec["train_seconds"], "steps": rec["steps"], "snapshots": len(snaps),
            "completed": int(snaps["mlp/modularity"].notna().sum()) if "mlp/modularity" in snaps else 0,
            "skipped": rec.get("topology_skipped", []),
            "final_mlp_sparsity": float(snaps["mlp/sparsity"].iloc[-1]), "metrics": rec.get("metrics", {})}


def summarize(results: dict) -> list[str]:
    rows = []
    for model, runs in results.get("runs", {}).items():
        med = {m: statistics.median(r["train_seconds"] for r in runs.get(m, [])) for m in MODES if runs.get(m)}
        if "off" not in med:
            continue
        steps = runs["off"][0]["steps"]
        bg = runs.get("background", [{}])[0]
        snaps = f"{bg.get('snapshots', '-')} ({bg.get('completed', '-')})"
        cells = [model, str(steps), str(snaps), f"{med['off']:.1f}"]
        for m in ("background", "sync"):
            cells += [f"{med[m]:.1f}", f"{med[m] / med['off'] - 1:+.1%}"] if m in med else ["-", "-"]
        rows.append(cells)
    return markdown_table(["model", "steps", "snapshots (with fits)", "off: s", "background: s", "overhead", "sync: s",
                           "overhead"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--every", type=int, default=10, help="steps between snapshots")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode (interleaved)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true")
    fresh_option(ap)
    ap.add_argument("--plot-only", action="store_true", help="print the table from the results file")
    args = ap.parse_args()
    settings = {"every": args.every, "models": MODELS, "cpus": os.cpu_count(),
                "code": code_fingerprint("train", "graph", "models.py", measured=(MODES, MODELS, run_one))}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.plot_only:
        print("\n".join(summarize(results)))
        return
    results = kept(results, results.get("settings") == json.loads(json.dumps(settings)), args,
                   {"settings": settings, "runs": {}}, args.out)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="bench-topology-") as tmp:
        for model in args.models:
            runs = results["runs"].setdefault(model, {})
            for rep in range(args.repeats):
                for mode in MODES:
                    if len(runs.get(mode, [])) > rep:
                        continue
                    row = run_one(model, mode, args.every, Path(tmp))
                    runs.setdefault(mode, []).append(row)
                    print(model, mode, rep, json.dumps({k: v for k, v in row.items() if k != "metrics"}), flush=True)
                    with atomic_path(args.out) as out:
                        out.write_text(json.dumps(results, indent=1))
    print("\n".join(summarize(results)))


if __name__ == "__main__":
    main()
