"""One-shot pruning of SmolLM2-135M: magnitude / Wanda with uniform, OWL and NeuroAL allocation, in two settings.

Wanda: Sun et al., ICLR 2024, arXiv 2306.11695; OWL: Yin et al., ICML 2024, arXiv 2310.05175;
NeuroAL: Cunegatti, Custode & Iacca, TMLR 2025, arXiv 2411.07066.

Every run starts from the same dense model (SmolLM2-135M-Instruct, the fp32 copy that
:func:`topoprune.assets.smollm2_dir` caches) and uses the same calibration windows (Penn
Treebank train, drawn once with seed 0). Perplexity is measured on two texts, in non-overlapping
``--window``-token windows:

* **PTB test**: the start of the Penn Treebank test set (``--eval-tokens``), the reported number;
* **held-out**: the start of the Penn Treebank *validation* set (``--heldout-tokens``; -1: not
  measured). It shares no text with the calibration windows (train) or the test set, so a default
  can be chosen on it without looking at the test set.

Grid: sparsity 50 / 60 / 70 % x {magnitude, Wanda} x {uniform, OWL, NeuroAL} x ``--settings``,
plus the dense model. Settings (:data:`topoprune.oneshot.config.SETTINGS`): ``topoprune`` (ours)
and ``authors``, NeuroAL as its authors' code runs it: the MLP output rows are credited with the
next block's input (``down_rows="next_input"``), every pruner compares within rows in the λ search
and the final pass (``group="row"``), no rebalancing after clipping. The authors' setting is run
only where it changes the run: NeuroAL always; uniform and OWL only for magnitude, whose
comparison group becomes the row. Wanda compares within rows anyway, and OWL's block sparsities
stay within s ± 2λ, far from the clip bounds at these sparsities, so rebalancing changes nothing:
the authors' Wanda uniform and OWL runs *are* our runs and are not repeated.
Measured per run: achieved sparsity, both perplexities, chosen λ (block and row step), prune
time split into OWL / NeuroAL block step / row step / final pass, evaluation and wall time.

After the table come the two settings side by side (PTB test and held-out perplexity, λ, search
seconds, and which setting is better on held-out text), then for each base method the three
allocations' perplexities at 70 % (our setting), and the longest NeuroAL λ search.

A JSON line is printed as each run finishes, and the results file is rewritten (atomically)
after every run, so a killed benchmark keeps its finished runs; ``--resume`` skips runs the
file already holds with identical settings, and keeps the stored runs outside the current grid.
A run's key names its setting only when it is not ours, so runs stored before the settings axis
existed resume as ours. ``--fill-heldout`` reruns the stored runs of the grid that lack the
held-out perplexity (the rerun's PTB-test perplexity is printed next to the stored one).

Run: ``make bench-oneshot`` (``.venv/bin/python -m analysis.bench_oneshot --resume``); writes
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
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from analysis.figsave import save_figure  # noqa: E402
from analysis.harness import fresh_option, load_done, machine, markdown_table, save_results  # noqa: E402
from topoprune.oneshot.calibration import perplexity, sample_windows, text_ids  # noqa: E402
from topoprune.oneshot.config import SETTINGS, OneShotConfig  # noqa: E402
from topoprune.oneshot.prune import prune  # noqa: E402
from topoprune.models import load_causal_lm  # noqa: E402

QUICK_DIR = Path(tempfile.gettempdir()) / "topoprune-bench-oneshot-quick"
ALLOCATION_STYLE = {"uniform": ("s", "tab:blue"), "owl": ("^", "tab:orange"), "neuroal": ("o", "tab:green")}
ALLOCATION_NAME = {"uniform": "uniform", "owl": "OWL", "neuroal": "NeuroAL"}
#: Our setting: the one a run key does not name (keys stored before the settings axis existed are ours).
OURS = "topoprune"
HELDOUT_TEXT = "Penn Treebank valid"


# ----------------------------------------------------------------------------- bookkeeping
def run_key(args, sparsity: float, method: str, allocation: str, setting: str = OURS) -> dict:
    """Everything that decides a run's numbers: two runs with equal keys are the same run.

    The setting enters the key only when it is not ours, so earlier results of ours still match.
    """
    key = {"model": args.model, "n_calibration": args.n_calibration, "n_search": args.n_search,
           "seq_len": args.seq_len, "seed": 0, "eval_tokens": args.eval_tokens, "window": args.window,
           "sparsity": float(sparsity), "method": method, "allocation": allocation}
    return key if setting == OURS else {**key, "setting": setting}


def setting_of(row: dict) -> str:
    return row.get("setting") or row.get("key", {}).get("setting", OURS)


def effective_setting(setting: str, method: str, allocation: str, sparsity: float) -> str:
    """``setting``, or ours where that setting's knobs would not change this run (it is then our run)."""
    if setting == OURS or method == "dense":
        return OURS
    if allocation == "neuroal":
        return setting
    ours, theirs = (OneShotConfig.preset(name, method=method, sparsity=sparsity, allocation=allocation)
                    for name in (OURS, setting))
    if ours.comparison != theirs.comparison:
        return setting
    lo, hi = ours.clip  # OWL's block sparsities lie within s ± 2λ: rebalancing matters only if that is clipped
    clipped = not lo <= sparsity - 2 * ours.owl_lambda <= sparsity + 2 * ours.owl_lambda <= hi
    return setting if allocation == "owl" and ours.rebalance != theirs.rebalance and clipped else OURS


def heldout_spec(args) -> dict | None:
    """What the held-out perplexity measures (``None``: not measured)."""
    if args.heldout_tokens < 0:
        return None
    return {"text": HELDOUT_TEXT, "tokens": args.heldout_tokens, "window": args.window}


# ----------------------------------------------------------------------------- runs
def evaluate(model, texts: dict, args) -> tuple[dict, float]:
    """PTB-test perplexity (``ppl``) and, when asked for, the held-out one; and the seconds both took."""
    t0 = time.perf_counter()
    res = {"ppl": float(perplexity(model, texts["test"], window=args.window, max_tokens=args.eval_tokens or None))}
    if texts.get("heldout") is not None:
        res["heldout_ppl"] = float(perplexity(model, texts["heldout"], window=args.window,
                                              max_tokens=args.heldout_tokens or None))
        res["heldout"] = heldout_spec(args)
    return res, time.perf_counter() - t0


def run_dense(model, texts, args) -> dict:
    ppl, sec = evaluate(model, texts, args)
    return {"key": run_key(args, 0.0, "dense", "dense"), "sparsity_target": 0.0, "sparsity": 0.0,
            "method": "dense", "allocation": "dense", "setting": OURS, **ppl, "lambda_block": None,
            "lambda_row": None, "prune_seconds": 0.0, "seconds": {}, "search_seconds": None, "eval_seconds": sec,
            "wall_seconds": sec}


def run_one(dense, windows, texts, args, sparsity: float, method: str, allocation: str, setting: str = OURS) -> dict:
    t0 = time.perf_counter()
    row = {"key": run_key(args, sparsity, method, allocation, setting), "sparsity_target": sparsity,
           "method": method, "allocation": allocation, "setting": setting}
    try:
        model = copy.deepcopy(dense)  # a fresh dense copy: prune() works in place
        cfg = OneShotConfig.preset(setting, method=method, sparsity=sparsity, allocation=allocation,
                                   n_calibration=args.n_calibration, n_search=args.n_search, seq_len=args.seq_len,
                                   seed=0)
        res = prune(model, windows, cfg, progress=False)
        ppl, eval_s = evaluate(model, texts, args)
        s = {k: float(v) for k, v in res.seconds.items()}
        search = s.get("block_step", 0.0) + s.get("row_step", 0.0) if allocation == "neuroal" else None
        row.update({"sparsity": float(res.sparsity), **ppl, "lambda_block": res.lambda_block,
                    "lambda_row": res.lambda_row, "prune_seconds": s["total"], "seconds": s,
                    "search_seconds": search, "eval_seconds": eval_s,
                    "knobs": {"group": cfg.comparison, "down_rows": cfg.down_rows, "rebalance": cfg.rebalance},
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
def _ok(rows):
    return [r for r in rows if not r.get("error") and r.get("ppl") is not None]


def side_by_side(rows: list[dict]) -> list[tuple[dict, dict]]:
    """``(ours, theirs)`` row pairs of every run that the other settings change, in table order."""
    ok = _ok(rows)
    ours = {(r["sparsity_target"], r["method"], r["allocation"]): r for r in ok if setting_of(r) == OURS}
    return [(ours[k], r) for r in sorted(ok, key=order)
            if setting_of(r) != OURS and (k := (r["sparsity_target"], r["method"], r["allocation"])) in ours]


def better_on_heldout(a: dict, b: dict) -> str | None:
    """The setting with the lower held-out perplexity (``None``: not measured on both, or equal)."""
    x, y = a.get("heldout_ppl"), b.get("heldout_ppl")
    if x is None or y is None or x == y:
        return None
    return setting_of(a) if x < y else setting_of(b)


def checks(rows: list[dict]) -> dict:
    """The 70 % perplexities per base method (our setting), the settings side by side and the longest
    NeuroAL λ search, from whatever rows exist.

    Stored in the results file under ``checks``; ``summary`` prints the numbers."""
    ok = _ok(rows)
    order_70 = {}
    for method in sorted({r["method"] for r in ok} - {"dense"}):
        ppl = {r["allocation"]: r["ppl"] for r in ok if r["method"] == method and setting_of(r) == OURS
               and abs(r["sparsity_target"] - 0.7) < 1e-9}
        entry = {a: ppl.get(a) for a in ("neuroal", "owl", "uniform")}
        if all(v is not None for v in entry.values()):
            entry["neuroal_le_owl"] = entry["neuroal"] <= entry["owl"]
            entry["owl_le_uniform"] = entry["owl"] <= entry["uniform"]
        order_70[method] = entry
    neuro = [r for r in ok if r["allocation"] == "neuroal" and r.get("search_seconds") is not None]
    worst = max(neuro, key=lambda r: r["search_seconds"], default=None)
    topup = {"max_seconds": worst and worst["search_seconds"],
             "max_run": worst and f"{worst['method']} {worst['sparsity_target']:.0%} ({setting_of(worst)} setting)",
             "pruned_params": worst and worst.get("pruned_params")}
    settings = [{"sparsity": a["sparsity_target"], "method": a["method"], "allocation": a["allocation"],
                 "setting": setting_of(b), **{f"{k}_{name}": r.get(k) for name, r in (("ours", a), ("theirs", b))
                                              for k in ("ppl", "heldout_ppl", "lambda_block", "lambda_row")},
                 "better_on_heldout": better_on_heldout(a, b)} for a, b in side_by_side(rows)]
    return {"ppl_order_at_70": order_70, "neuroal_topup": topup, "settings": settings}


def order(r: dict):
    """Table order: dense first, then by sparsity, method, allocation and setting (ours first)."""
    alloc = list(ALLOCATION_STYLE)
    return (r["method"] != "dense", r["sparsity_target"], r["method"],
            alloc.index(r["allocation"]) if r["allocation"] in alloc else -1, setting_of(r) != OURS, setting_of(r))


def fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def summary(rows: list[dict], chk: dict) -> None:
    cells = []
    for r in sorted(rows, key=order):
        head = [f"{r['sparsity_target']:.0%}", r["method"], r["allocation"], setting_of(r)]
        if r.get("error"):
            cells.append(head + [f"failed: {r['error'][:80]}"] + [""] * 7)
            continue
        cells.append(head + [f"{r['sparsity']:.4f}", f"{r['ppl']:.2f}", fmt(r.get("heldout_ppl"), ".2f"),
                             fmt(r["lambda_block"], ".2f"), fmt(r["lambda_row"], ".2f"), f"{r['prune_seconds']:.1f}",
                             fmt(r["search_seconds"], ".1f"), f"{r['wall_seconds']:.1f}"])
    print("\n".join(markdown_table(["sparsity", "method", "allocation", "setting", "measured sparsity", "PTB test ppl",
                                    "held-out ppl", "λ_block", "λ_row", "prune s", "λ search s", "wall s"], cells)))
    pairs = side_by_side(rows)
    if pairs:
        print(f"\nSettings side by side ({OURS} / authors' code); better = lower held-out ({HELDOUT_TEXT}) "
              "perplexity:\n")
        side = []
        for a, b in pairs:
            lam = " / ".join(f"{fmt(r['lambda_block'], '.2f')}, {fmt(r['lambda_row'], '.2f')}" for r in (a, b)) \
                if a["allocation"] == "neuroal" else "–"
            side.append([f"{a['sparsity_target']:.0%}", a["method"], a["allocation"], f"{a['ppl']:.2f} / {b['ppl']:.2f}",
                         f"{fmt(a.get('heldout_ppl'), '.2f')} / {fmt(b.get('heldout_ppl'), '.2f')}", lam,
                         f"{fmt(a['search_seconds'], '.0f')} / {fmt(b['search_seconds'], '.0f')}",
                         better_on_heldout(a, b) or "–"])
        print("\n".join(markdown_table(["sparsity", "method", "allocation", "PTB test ppl", "held-out ppl",
                                        "λ_block / λ_row", "λ search s", "better on held-out"], side)))
    print()
    for method, e in chk["ppl_order_at_70"].items():
        nums = ", ".join(f"{a} {fmt(e[a], '.2f')}" for a in ("neuroal", "owl", "uniform"))
        print(f"- PTB perplexity at 70 %, {method} ({OURS} setting): {nums}")
    t = chk["neuroal_topup"]
    print(f"- longest NeuroAL λ search (block + row step): {fmt(t['max_seconds'], '.1f')} s "
          f"({t['max_run'] or 'no NeuroAL run'}, {fmt(t['pruned_params'], ',')} pruned parameters)")


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny-llama, 70 %% only, 4 x 64-token windows; output into a temp dir")
    ap.add_argument("--resume", action="store_true", help="skip runs the results file holds with identical settings")
    fresh_option(ap)
    ap.add_argument("--fill-heldout", action="store_true",
                    help="with --resume: rerun the stored runs of the grid that lack the held-out perplexity")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7")
    ap.add_argument("--methods", default="magnitude,wanda")
    ap.add_argument("--allocations", default="uniform,owl,neuroal")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"NeuroAL settings, from {', '.join(SETTINGS)} (authors: as the NeuroAL authors' code "
                         "runs it)")
    ap.add_argument("--n-calibration", type=int, default=32)
    ap.add_argument("--n-search", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="PTB-test tokens for perplexity (0: all)")
    ap.add_argument("--heldout-tokens", type=int, default=16384,
                    help="PTB-validation tokens for the held-out perplexity (0: all; -1: not measured)")
    ap.add_argument("--window", type=int, default=512, help="perplexity window (non-overlapping)")
    ap.add_argument("--out", default=None, help="results JSON (default analysis/results/bench_oneshot.json)")
    ap.add_argument("--figures", default=None, help="figure directory (default figures/)")
    args = ap.parse_args()
    if args.quick:
        args.model, args.sparsities = "tiny-llama", "0.7"
        args.n_calibration, args.n_search, args.seq_len, args.window = 4, 2, 64, 128
        args.eval_tokens, args.heldout_tokens = 1024, min(args.heldout_tokens, 1024)
        args.out = args.out or str(QUICK_DIR / "bench_oneshot_quick.json")
        args.figures = args.figures or str(QUICK_DIR)
    args.out = args.out or str(ROOT / "analysis" / "results" / "bench_oneshot.json")
    args.figures = args.figures or str(ROOT / "figures")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        ap.error(f"--settings: {', '.join(bad) or 'none given'}; choose from {', '.join(SETTINGS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods, allocations = args.methods.split(","), args.allocations.split(",")
    out = Path(args.out)

    t0 = time.perf_counter()
    dense, tok, source = load_causal_lm(args.model, seed=0)
    dense.eval()
    train_ids = text_ids(tok, "ptb", "train")
    texts = {"test": text_ids(tok, "ptb", "test"),
             "heldout": text_ids(tok, "ptb", "valid") if heldout_spec(args) else None}
    windows = sample_windows(train_ids, args.n_calibration, args.seq_len, seed=0)
    n_test, n_held = texts["test"].numel(), 0 if texts["heldout"] is None else texts["heldout"].numel()
    setup = {"load_and_tokenise_seconds": time.perf_counter() - t0, "source": source,
             "train_tokens": int(train_ids.numel()), "test_tokens": int(n_test),
             "eval_tokens_used": int(min(n_test, args.eval_tokens or n_test)),
             "heldout_text": HELDOUT_TEXT, "heldout_tokens": int(n_held),
             "heldout_tokens_used": int(min(n_held, args.heldout_tokens or n_held)) if n_held else 0,
             "windows": list(windows.shape)}
    print(f"# {source}: PTB train {setup['train_tokens']} tokens, test {n_test} (evaluating "
          f"{setup['eval_tokens_used']}), held-out {HELDOUT_TEXT} {n_held} (evaluating {setup['heldout_tokens_used']});"
          f" calibration {tuple(windows.shape)}; {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads",
          flush=True)

    done = {json.dumps(r["key"], sort_keys=True): r for r in load_done(out, args)}
    plan = [(0.0, "dense", "dense", OURS)]
    for sparsity in sparsities:
        for method in methods:
            for setting in settings:
                for allocation in allocations:
                    item = (sparsity, method, allocation, effective_setting(setting, method, allocation, sparsity))
                    if item not in plan:
                        plan.append(item)
    keys = [json.dumps(run_key(args, *item), sort_keys=True) for item in plan]
    extra = [r for k, r in done.items() if k not in set(keys)]  # stored runs outside this grid are kept
    rows: list[dict] = []
    settings_used = {k: v for k, v in vars(args).items()}

    def save():
        save_results(out, {"settings": settings_used, "machine": machine(), "setup": setup, "rows": rows + extra,
                            "checks": checks(rows + extra), "seconds_total": time.perf_counter() - t0})

    skipped = 0
    for (sparsity, method, allocation, setting), key in zip(plan, keys):
        old = done.get(key)
        refill = args.fill_heldout and heldout_spec(args) is not None and old is not None \
            and old.get("heldout") != heldout_spec(args)
        if old is not None and not refill:
            rows.append(old)
            skipped += 1
            continue
        if method == "dense":
            row = run_dense(dense, texts, args)
        else:
            row = run_one(dense, windows, texts, args, sparsity, method, allocation, setting)
        if old is not None and row.get("ppl") is not None:
            row["previous_ppl"] = old["ppl"]
            print(f"# rerun for the held-out perplexity: PTB test {row['ppl']:.4f}, stored {old['ppl']:.4f}",
                  flush=True)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("key", "block_sparsity", "search")}), flush=True)
        save()
    if skipped or extra:
        print(f"# resumed: {skipped} of {len(plan)} runs taken from {out}; {len(extra)} stored runs outside this "
              "grid kept", flush=True)
    save()
    print(f"# results: {out}")
    print()
    everything = rows + extra
    chk = checks(everything)
    summary(everything, chk)
    try:
        paths = plot(everything, Path(args.figures), "oneshot_perplexity_quick" if args.quick else "oneshot_perplexity",
                     title="SmolLM2-135M" if args.model == "smollm2" else args.model)
        print(f"# figure: {', '.join(map(str, paths))}")
    except Exception as exc:  # the figure is a convenience: never lose the table over it
        print(f"# figure not written: {exc}", file=sys.stderr)


def plot(rows: list[dict], directory: Path, stem: str, title: str) -> list[Path]:
    """Perplexity against sparsity, one column per base pruner; PTB test above, held-out below (when
    measured). Our setting: filled markers, solid lines; the authors': hollow markers, dotted lines."""
    from matplotlib.figure import Figure

    ok = [r for r in _ok(rows) if math.isfinite(r["ppl"])]
    dense = next((r for r in ok if r["method"] == "dense"), None)
    panels = [("ppl", "PTB test")] + ([("heldout_ppl", "held-out PTB valid")] if any(r.get("heldout_ppl") for r in ok)
                                      else [])
    fig = Figure(figsize=(8, 3.5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, sharey="row", squeeze=False)
    for (field, text), ax_row in zip(panels, axes):
        for ax, method, name in zip(ax_row, ("magnitude", "wanda"), ("magnitude", "Wanda")):
            if dense is not None and dense.get(field) is not None:
                ax.axhline(dense[field], color="grey", ls="--", lw=0.8, label=f"dense ({dense[field]:.1f})")
            drawn = False
            for allocation, (marker, colour) in ALLOCATION_STYLE.items():
                for setting in sorted({setting_of(r) for r in ok}, key=lambda s: s != OURS):
                    pts = sorted((r["sparsity_target"], r[field]) for r in ok if r["method"] == method
                                 and r["allocation"] == allocation and setting_of(r) == setting
                                 and r.get(field) is not None and math.isfinite(r[field]))
                    if pts:
                        label = ALLOCATION_NAME[allocation] + ("" if setting == OURS else f" ({setting})")
                        ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                                ls="-" if setting == OURS else ":", mfc=colour if setting == OURS else "none",
                                label=label)
                        drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="grey")
                ax.set_xlim(48, 72)
            ax.set_yscale("log")
            ax.set_xlabel("sparsity (%)")
            ax.set_title(f"{name}, {title}, {text}", fontsize=10)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=7)
        ax_row[0].set_ylabel("perplexity (log scale)")
    return save_figure(fig, stem, dpi=120, directory=directory)


if __name__ == "__main__":
    main()
