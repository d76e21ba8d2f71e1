"""NeuroPrune measured as its paper measures it: paper mode against l1-penalised training at the same sparsity.

Dhurandhar et al. ("NeuroPrune", Findings of ACL 2024, arXiv 2404.01306) compare NeuroPrune with
l1-penalised training for the same epochs, sparsity being an outcome of each penalty's weight.
Here, on the ``tweets3`` setting (MiniLM, one epoch of about 29,800 negative/neutral/positive
tweets, 7,439 test tweets; :data:`analysis.bench_separate.SETTINGS`), in paper mode:

* ``neuroprune``: the attachment-weighted MLP penalty :math:`\\alpha \\sum_i \\lVert W_{i,:}\\rVert_1 / c_i`
  in its proximal form, :math:`\\beta = 0` (MLP matrices only);
* ``neuroprune-beta``: the same with the default attention penalty :math:`\\beta`;
* ``l1`` and ``l1-gradient``: the paper's baseline, the same penalty without :math:`1/c_i`, in the
  proximal form and as a term of the loss;
* ``gmp`` and ``random``: target mode at exactly the MLP sparsity the ``neuroprune`` run of the
  same seed reached (cubic schedule), the magnitude criterion and the floor.

Every method masks Q, K and V entries below :math:`\\varepsilon` alike. A penalised method's MLP
sparsity is matched to the target within ``--tolerance`` (one point) by bracketing
:math:`\\alpha` (:func:`next_alpha`: secant steps in log alpha against logit sparsity; every try is
kept); ``l1`` and ``l1-gradient`` are matched to the sparsity ``neuroprune`` reached, so that the
two differ only in the :math:`1/c_i` weights. Whether each test tweet is classified correctly is
kept, and methods are compared tweet by tweet within a seed (the seed also draws the split).
Per pair of matched runs the share of surviving MLP weights they have in common is measured, to
say whether the attachment term changes *which* weights survive (on a fixed uniform sample of
131,072 MLP weight positions that every run records, :func:`kept_sample`).

Run: ``make bench-paper`` (``--resume``; the core grid -- ``neuroprune``, ``l1``, ``gmp`` at 50, 70
and 90 % with seeds 0 and 1, then the dense reference -- then ``--grid full`` adds the other rows and a third seed where a
paired gap is under two standard errors). Each ``tweets3`` run takes 17-26 minutes on 2 cores.
``--quick`` is a smoke run on 256 tweets into a temporary directory. Results:
``analysis/results/bench_paper_compare.json`` (after every run; ``--resume`` keeps the runs made by
the same code); figure ``figures/paper_compare.{png,svg}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from analysis.bracketing import next_alpha, pooled  # noqa: E402
from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint, provenance  # noqa: E402
from analysis.harness import ROOT, kept, load_results, markdown_table, results_options, save_results  # noqa: E402
from analysis.kept_weights import kept_overlap, kept_sample, mlp_connectivity  # noqa: E402
from analysis.paired import paired_accuracy, paired_over_seeds  # noqa: E402
from analysis.tasks import SETTINGS, example_correct  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_paper_compare.json"
QUICK = {"model": "minilm", "data": "tweets3", "n_train": 256, "n_eval": 128, "epochs": 1.0, "lr": 1e-4,
         "batch_size": 32, "max_length": 64}
#: method -> (NeuroPruneConfig fields; ``alpha`` marks a bracketed penalty weight, ``matched`` the
#: method whose reached sparsity it matches (None: the target itself).
METHODS = {
    "dense": ({"method": "dense"}, None),
    "neuroprune": ({"method": "neuroprune", "penalty_form": "proximal", "attn_weight": 0.0}, None),
    "neuroprune-beta": ({"method": "neuroprune", "penalty_form": "proximal", "attn_weight": "default"}, None),
    "l1": ({"method": "l1", "penalty_form": "proximal", "attn_weight": 0.0}, "neuroprune"),
    "l1-gradient": ({"method": "l1", "penalty_form": "gradient", "attn_weight": 0.0}, "neuroprune"),
    "gmp": ({"method": "gmp"}, "neuroprune"),
    "random": ({"method": "random"}, "neuroprune"),
}
PENALISED = ("neuroprune", "neuroprune-beta", "l1", "l1-gradient")
#: first alpha tried per method, for a 930-step run (scaled by 930 / steps): a guess, refined by bracketing.
FIRST_ALPHA = {"neuroprune": 3e-5, "neuroprune-beta": 3e-5, "l1": 3e-5, "l1-gradient": 3e-3}
TARGETS = (0.5, 0.7, 0.9)


def run_name(method: str, target: float, seed: int, alpha: float | None) -> str:
    return f"{method}-t{target:g}" + (f"-a{alpha:.4g}" if alpha is not None else "") + f"-s{seed}"


def neuroprune_config(method: str, alpha: float | None, matched: float | None, seed: int) -> dict:
    from topoprune.train.config import PAPER_PENALTIES

    npc = dict(METHODS[method][0], seed=seed)
    if npc.get("attn_weight") == "default":
        npc["attn_weight"] = PAPER_PENALTIES["attn_weight"]
    if alpha is not None:
        npc["mlp_weight"] = alpha
    if method in ("gmp", "random"):
        npc["target"] = round(matched, 4)
    return npc


def train_run(name: str, npc: dict, seed: int, config: dict, workdir: Path) -> dict:
    """Train one run; its accuracy, per-tweet correctness, sparsities, connectivity sd and c_i summary."""
    from topoprune.train.run import TrainConfig, train

    out = workdir / name
    cfg = TrainConfig(out=str(out), seed=seed, topology_every=0, save_steps=100_000, neuroprune=npc, **config)
    t0 = time.perf_counter()
    rec = train(cfg, overwrite=True, progress=False)
    roles = [r for r in rec["sparsity"] if r["level"] == "role"]
    qkv = [r for r in roles if r["role"] in ("q", "k", "v")]
    row = {"neuroprune": npc, "seed": seed, "steps": rec["steps"], "accuracy": rec["metrics"].get("eval_accuracy"),
           "qkv_sparsity": sum(r["pruned"] for r in qkv) / max(1, sum(r["numel"] for r in qkv)),
           "heads": sum(rec["heads_remaining"].values()), "attachment": rec.get("attachment", {}),
           "wall_seconds": time.perf_counter() - t0, **mlp_connectivity(out / "model", 1e-4),
           "kept_sample": kept_sample(out / "model")}
    correct = example_correct(out / "model", "paper", seed, config=config)
    if abs(correct.count("1") / len(correct) - row["accuracy"]) <= 1e-3:
        row["correct"] = correct
    else:  # not the trainer's evaluation: no paired comparison rather than a wrong one
        print(f"{name}: the saved model's accuracy is not the trainer's; no per-tweet record kept", file=sys.stderr)
    print(json.dumps({"run": name, **{k: v for k, v in row.items() if k not in ("correct", "kept_sample")}}),
          flush=True)
    return row


def candidates(res: dict, method: str, target: float, seed: int) -> list[dict]:
    """The runs that can stand for ``method`` at ``target`` and ``seed``: every run of a penalised
    method and seed, whatever target it was bracketed for (:func:`analysis.bracketing.pooled`)."""
    return pooled(res["runs"].values(), method, target, method in PENALISED, seed=seed)


def chosen(res: dict, method: str, target: float, seed: int) -> dict | None:
    """The run of ``method`` at ``target`` and ``seed`` closest to the sparsity it is matched to."""
    runs = candidates(res, method, target, seed)
    if not runs:
        return None
    goal = matched_sparsity(res, method, target, seed)
    return min(runs, key=lambda r: abs(r["mlp_sparsity"] - (goal if goal is not None else target)))


def matched_sparsity(res: dict, method: str, target: float, seed: int) -> float | None:
    """The sparsity ``method`` is matched to at ``target``: the target itself, or what the run that
    stands for its reference method there reached (None while there is none)."""
    ref = METHODS[method][1]
    if ref is None:
        return target if method != "dense" else 0.0
    r = stands(res, ref, target, seed)
    return r["mlp_sparsity"] if r else None


def stands(res: dict, method: str, target: float, seed: int) -> dict | None:
    """The run reported for ``method`` at ``target`` and ``seed``, or None.

    Dense stands at 0 % only and the other methods at the targets only. Because penalised runs
    are pooled across targets (:func:`candidates`), the closest run can belong to another target's
    bracketing: it is reported only when it is matched (within the stored tolerance) or when some
    run was made for this target -- then the table marks it unmatched.
    """
    if (method == "dense") != (target == 0.0):
        return None
    r = chosen(res, method, target, seed)
    if r is None or method == "dense":
        return r
    if is_matched(res, r, target):
        return r
    return r if any(c["target"] == target for c in candidates(res, method, target, seed)) else None


def is_matched(res: dict, r: dict, target: float) -> bool:
    """Whether run ``r`` is within the stored tolerance of the sparsity it is matched to at ``target``."""
    goal = matched_sparsity(res, r["method"], target, r["seed"])
    return goal is not None and abs(r["mlp_sparsity"] - goal) <= res.get("settings", {}).get("tolerance", 0.01)


def first_alpha(res: dict, method: str, target: float, seed: int, args) -> float:
    """The first alpha to try for ``method`` at ``target`` and ``seed`` when it has no try of its own.

    Another seed's matched alpha where there is one. Else, for proximal ``l1``, the alpha of the
    ``neuroprune`` run it is matched to, times the ratio of the two methods' matched alphas at
    another target of the same seed; without one, divided by that run's mean c_i at the end
    (NeuroPrune shrinks row i by alpha / c_i, so a plain penalty needs more than alpha for as
    many weights; 1 / mean(c) overshoots: at 50 % it gave 62.5 % for a 50.0 % NeuroPrune run).
    Else :data:`FIRST_ALPHA` scaled to the run's steps.
    """
    for other in (s for s in args.seeds if s != seed):
        prev = chosen(res, method, target, other)
        if prev and abs(prev["mlp_sparsity"] - (matched_sparsity(res, method, target, other) or target)) <= args.tolerance:
            return prev["neuroprune"]["mlp_weight"]
    ref = stands(res, "neuroprune", target, seed) if method == "l1" else None
    if ref:
        for other in (t for t in TARGETS if t != target):
            pair = [stands(res, m, other, seed) for m in ("neuroprune", "l1")]
            if all(pair) and all(is_matched(res, r, other) for r in pair):
                ratio = pair[1]["neuroprune"]["mlp_weight"] / pair[0]["neuroprune"]["mlp_weight"]
                return float(f"{ref['neuroprune']['mlp_weight'] * ratio:.4g}")
    c_mean = (ref or {}).get("attachment", {}).get("mean")
    if ref and c_mean:
        return float(f"{ref['neuroprune']['mlp_weight'] / c_mean:.4g}")
    return FIRST_ALPHA[method] * 930 / max(1, args.steps_hint)


def ensure(res: dict, method: str, target: float, seed: int, args, config: dict, save) -> dict | None:
    """Make (or find) the run of ``method`` at ``target`` and ``seed``, bracketing alpha if penalised."""
    goal = matched_sparsity(res, method, target, seed)
    if goal is None:
        print(f"# {method} at {target:.0%}, seed {seed}: its reference run is missing", file=sys.stderr)
        return None
    if method not in PENALISED:
        name = run_name(method, target, seed, None)
        if name not in res["runs"]:
            row = train_run(name, neuroprune_config(method, None, goal, seed), seed, config, args.workdir)
            res["runs"][name] = dict(row, method=method, target=target)
            save()
        return res["runs"][name]
    first = first_alpha(res, method, target, seed, args)
    for _ in range(args.max_tries):
        tries = [(r["neuroprune"]["mlp_weight"], r["mlp_sparsity"]) for r in candidates(res, method, target, seed)]
        if any(abs(s - goal) <= args.tolerance for _, s in tries):
            break
        alpha = next_alpha(tries, goal, first)
        name = run_name(method, target, seed, alpha)
        if name in res["runs"]:
            print(f"# {method} at {target:.0%}, seed {seed}: bracketing repeats alpha {alpha:g}", file=sys.stderr)
            break
        row = train_run(name, neuroprune_config(method, alpha, None, seed), seed, config, args.workdir)
        res["runs"][name] = dict(row, method=method, target=target)
        save()
    best = chosen(res, method, target, seed)
    if best and abs(best["mlp_sparsity"] - goal) > args.tolerance:
        print(f"# {method} at {target:.0%}, seed {seed}: closest {best['mlp_sparsity']:.1%} after "
              f"{args.max_tries} tries (goal {goal:.1%})", file=sys.stderr)
    return best


def grid(name: str, seeds: list[int]) -> list[tuple[str, float, int]]:
    """(method, target, seed) in the order they are made: ``core`` then, for ``full``, the other rows."""
    core = [(m, t, s) for t in TARGETS for s in seeds for m in ("neuroprune", "l1", "gmp")] + [
        ("dense", 0.0, s) for s in seeds]
    if name == "core":
        return core
    return core + [(m, t, s) for t in TARGETS for s in seeds for m in ("neuroprune-beta", "l1-gradient", "random")]


def undecided(res: dict, seeds: list[int]) -> list[float]:
    """Targets where a paired gap of ``neuroprune`` against ``l1`` or ``gmp`` is under two standard errors."""
    out = []
    for target in TARGETS:
        groups = {(m, target): [r for s in seeds if (r := stands(res, m, target, s))] for m in METHODS}
        for ref in ("l1", "gmp"):
            gap = paired_over_seeds(groups, "neuroprune", target, "correct", paired_accuracy, reference=ref)
            if gap and abs(gap[0]) < 2 * gap[1] and target not in out:
                out.append(target)
    return out


def summary(res: dict) -> list[dict]:
    """One row per (method, target): the matched runs of every seed, their paired gaps and overlaps."""
    seeds = sorted({r["seed"] for r in res["runs"].values()})
    rows = []
    for target in (0.0,) + TARGETS:
        groups = {(m, target): [r for s in seeds if (r := stands(res, m, target, s))] for m in METHODS}
        for method in METHODS:
            rs = groups[(method, target)]
            if not rs:
                continue
            row = {"method": method, "target": target, "seeds": [r["seed"] for r in rs],
                   "mlp_sparsity": [r["mlp_sparsity"] for r in rs], "matched": [is_matched(res, r, target) for r in rs],
                   "accuracy": [r["accuracy"] for r in rs],
                   "alpha": [r["neuroprune"].get("mlp_weight") for r in rs],
                   "conn_sd_percent": [r["conn_sd_percent"] for r in rs], "qkv_sparsity": [r["qkv_sparsity"] for r in rs],
                   "c_sd": [r.get("attachment", {}).get("sd") for r in rs],
                   "n_eval": len(rs[0].get("correct", "")) or None}
            for ref in ("l1", "gmp"):
                row[f"vs_{ref}"] = paired_over_seeds(groups, method, target, "correct", paired_accuracy, reference=ref)
            row["overlap"] = {ref: [res.get("overlap", {}).get(f"{r['name']}|{o['name']}") for r in rs
                                    for o in groups.get((ref, target), []) if o["seed"] == r["seed"]]
                              for ref in ("l1", "gmp") if method != ref}
            rows.append(row)
    return rows


def table(res: dict) -> list[str]:
    def gap(g):
        if not g:
            return ""
        return f"{g[0]:+.2f} pt ± {g[1]:.2f}" + (" (" + ", ".join(f"{c:+.2f}" for c in g[2]) + ")" if len(g[2]) > 1 else "")

    rows = []
    for r in summary(res):
        acc = sum(r["accuracy"]) / len(r["accuracy"])
        se = f" ± {math.sqrt(acc * (1 - acc) / r['n_eval']):.3f}" if r["n_eval"] else ""
        alpha = ", ".join(f"{a:.3g}" for a in r["alpha"] if a is not None) or "-"
        share = " / ".join(", ".join(f"{x:.3f}" for x in r["overlap"].get(ref, []) if x is not None) or "-"
                           for ref in ("l1", "gmp"))
        rows.append([r["method"], f"{r['target']:.0%}", ", ".join(
            f"{s:.1%}" + ("" if ok else " (unmatched)") for s, ok in zip(r["mlp_sparsity"], r["matched"])), alpha,
            f"{acc:.4f}{se} (" + ", ".join(f"{a:.4f}" for a in r["accuracy"]) + ")", gap(r["vs_l1"]), gap(r["vs_gmp"]),
            f"{sum(r['conn_sd_percent']) / len(r['conn_sd_percent']):.2f}", share])
    return markdown_table(["method", "target", "MLP sparsity (per seed)", "alpha", "accuracy (mean; per seed)",
                           "vs l1, same tweets (± s.e.; per seed)", "vs GMP, same tweets", "conn. sd (%)",
                           "kept weights shared with l1 / GMP"], rows)


def plot(res: dict) -> None:
    """Accuracy, the paired gaps of every method against l1, and the connectivity sd, against MLP sparsity."""
    plt = pyplot()
    rows = summary(res)
    if not rows:
        return
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    markers = dict(zip(METHODS, ".osDv^x"))
    for i, method in enumerate(m for m in METHODS if m != "dense"):
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        x = [100 * sum(r["mlp_sparsity"]) / len(r["mlp_sparsity"]) for r in rs]
        ax.plot(x, [100 * sum(r["accuracy"]) / len(r["accuracy"]) for r in rs], marker=markers[method],
                label=method, color=f"C{i}")
        cx.plot(x, [sum(r["conn_sd_percent"]) / len(r["conn_sd_percent"]) for r in rs], marker=markers[method],
                label=method, color=f"C{i}")
        gaps = [(xx + 0.6 * (i - 2), r["vs_l1"]) for xx, r in zip(x, rs) if r["vs_l1"]]
        if gaps:
            bx.errorbar([g[0] for g in gaps], [g[1][0] for g in gaps], yerr=[g[1][1] for g in gaps],
                        marker=markers[method], ls="none", capsize=3, color=f"C{i}", label=method)
    dense = [r for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(100 * sum(dense[0]["accuracy"]) / len(dense[0]["accuracy"]), color="0.5", ls=":", lw=0.8,
                   label="dense")
        cx.axhline(sum(dense[0]["conn_sd_percent"]) / len(dense[0]["conn_sd_percent"]), color="0.5", ls=":", lw=0.8)
    bx.axhline(0, color="0.3", lw=0.8)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    bx.set_ylabel("vs l1 on the same tweets (points, ± s.e.)")
    cx.set_ylabel("connectivity sd of MLP neurons (% of row)")
    for a in (ax, bx, cx):
        a.set_xlabel("MLP sparsity (%)")
    ax.legend(fontsize=7)
    fig.suptitle("MiniLM, tweets3, one epoch, paper mode: NeuroPrune against l1, GMP and random at matched sparsity",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, "paper_compare")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="core", choices=("core", "full"))
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="how close a matched sparsity must come")
    ap.add_argument("--max-tries", type=int, default=4, help="runs per bracketed point, at most")
    results_options(ap, RESULTS, workdir="bench-paper")
    ap.add_argument("--quick", action="store_true", help="256 tweets, one target, into a temporary directory")
    ap.add_argument("--plot-only", action="store_true", help="print the table and redraw the figure")
    args = ap.parse_args()
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        ap.error("--seeds: comma-separated integers")
    if not 0 < args.tolerance < 0.5 or args.max_tries < 1:
        ap.error("--tolerance: a share in (0, 0.5); --max-tries: >= 1")
    config = QUICK if args.quick else SETTINGS["tweets3"]
    args.steps_hint = 8 if args.quick else 930
    tmp = tempfile.TemporaryDirectory(prefix="bench-paper-") if args.quick else None
    if tmp:
        args.workdir, args.out = Path(tmp.name), Path(tmp.name) / "results.json"
    res = load_results(args.out)
    if not args.plot_only:
        fixed = {"config": config, "tolerance": args.tolerance,
                 "code": code_fingerprint("train", "graph", "models.py", measured=(
                     METHODS, QUICK, SETTINGS, FIRST_ALPHA, next_alpha, neuroprune_config, train_run,
                     example_correct, kept_sample, kept_overlap))}
        res = kept(res, {k: res.get("settings", {}).get(k) for k in fixed} == fixed, args,
                   {"settings": {}, "runs": {}, "overlap": {}}, args.out)
        res["settings"].update(fixed)
        res.update(provenance())
        res.setdefault("overlap", {})
        args.workdir.mkdir(parents=True, exist_ok=True)

        def save():
            for name, r in res["runs"].items():
                r["name"] = name
            save_results(args.out, res)

        plan = grid(args.grid, args.seeds) if not args.quick else [("dense", 0.0, 0), ("neuroprune", 0.5, 0),
                                                                    ("l1", 0.5, 0), ("gmp", 0.5, 0)]
        for method, target, seed in plan:
            ensure(res, method, target, seed, args, config, save)
        if args.grid == "full" and not args.quick:
            third = max(args.seeds) + 1
            for target in undecided(res, args.seeds):
                for method in ("neuroprune", "l1", "gmp"):
                    ensure(res, method, target, third, args, config, save)
        for target in TARGETS:  # which weights survive: the matched pairs' shared surviving MLP weights
            for seed in sorted({r["seed"] for r in res["runs"].values()}):
                for a, b in (("neuroprune", "l1"), ("neuroprune", "gmp"), ("l1", "gmp"), ("neuroprune-beta", "l1"),
                             ("l1-gradient", "l1")):
                    ra, rb = stands(res, a, target, seed), stands(res, b, target, seed)
                    if ra and rb and f"{ra['name']}|{rb['name']}" not in res["overlap"]:
                        share = kept_overlap(ra.get("kept_sample"), rb.get("kept_sample"))
                        if share is not None:
                            res["overlap"][f"{ra['name']}|{rb['name']}"] = share
                            res["overlap"][f"{rb['name']}|{ra['name']}"] = share
        save()
    print("\n".join(table(res)))
    if not args.quick:
        plot(res)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
