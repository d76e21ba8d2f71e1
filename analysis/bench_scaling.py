"""How ``topoprune analyze`` scales with model size, and what a Dask cluster buys.

Run with ``make bench-scaling`` (``.venv/bin/python -m analysis.bench_scaling --resume``).

**Checkpoints.** Random N(0, 0.02) LLaMA-architecture checkpoints in bf16, sharded safetensors
(``llama_checkpoint.generate_llama``), with the widths of published models of about 0.1, 0.5, 1, 3
and 7 B parameters (:data:`SHAPES`). They are generated once into
``~/.cache/topoprune/bench-scaling/`` (``$TOPOPRUNE_CACHE`` moves it; never into the repository),
reused by later runs, and removed with ``--clean`` (about 24 GB for all five).

**Runs.** For every size, in a fresh child process (``llama_checkpoint.rss_child``; nothing heavy
imported but topoprune), ``topoprune.analyze`` at density 0.1 of every block matrix (embeddings and
the LM head are skipped, as by default) twice: the full report (degrees, power-law fits, Leiden
modularity of every matrix) and the report without modularity (degrees and fits), with ``--n-jobs``
worker processes (-1: one per CPU, at most 8). Recorded: wall time of the analysis, peak RSS of
the main process (``ru_maxrss``) and of the largest worker (``RUSAGE_CHILDREN`` and the largest
descendant sampled with psutil), the largest analysed tensor and the memory bound 3 x its float32
size + 0.6 GB (the analysis works in float32), the CPUs other processes kept busy, and the
per-stage seconds and edges per second per core (``topoprune.graph.timing``). The growth exponent is
the least-squares slope of log wall time against log parameters (of the whole model, and of the
analysed block matrices).

**Cluster comparison** (``--compare-cluster``). On one checkpoint (``--cluster-size``, 0.1 B), the
full report with the local process pool (``n_jobs=2``) and with a local Dask cluster of two worker
processes (``scheduler="local:2"``, started and closed inside the timed call), alternated and
repeated (``--repeats``), each in a fresh child process: both wall times, their medians and ratio.
``make bench-scaling`` compares on the 0.1 B checkpoint and, into
``analysis/results/bench_scaling_cluster_0.5b.json``, on the 0.5 B one.
From the Dask runs' per-matrix stage seconds, an estimate for a LLaMA-2-70B-shaped model (hidden
8192, FFN 28672, 80 layers, 64 heads, 8 key-value heads) on N = 1, 8, 32, 64 workers. Assumption:
a matrix's cost in each stage grows with its edge count at the edges per second per core measured
for the matrix of the same kind (q, k, v, o, gate, up, down); the N workers share the total cost
evenly, but no run is shorter than its most costly single matrix. The table also gives the same
estimate from the per-matrix costs of the largest full report measured (7 B, process pool), whose
matrices are the closest in size to a 70B model's. The fits see degree sequences
whose length grows with the widths, not with the edges, so their part is a pessimistic estimate.

Results: ``analysis/results/bench_scaling.json``, rewritten atomically after every run;
``--resume`` keeps the runs made with the same code fingerprint (and ``--n-jobs``); ``--fresh``
measures the part being run (the sizes, or the cluster comparison) afresh and keeps the other part;
without either, stored runs of that part are refused rather than replaced. Figures:
``figures/scaling.{png,svg}`` (``--plot-only`` redraws them). A markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from analysis.harness import fresh_option, machine, markdown_table, offline_env, refuse  # noqa: E402
from analysis.llama_checkpoint import generate_llama, llama_tensors, rss_child  # noqa: E402
from analysis.memory import GB, RSS_SLACK, run_rss_child  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_scaling.json"
FIGURES = ROOT / "figures"
DTYPE = "bfloat16"
DENSITY = 0.1  # what ``rss_child`` analyses at
#: Size label (billions of parameters) -> the published model whose widths are used.
SHAPES = {
    "0.1": dict(model="SmolLM2-135M", hidden=576, ffn=1536, layers=30, heads=9, kv_heads=3, vocab=49152, tie=True),
    "0.5": dict(model="Qwen2.5-0.5B", hidden=896, ffn=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tie=True),
    "1": dict(model="TinyLlama-1.1B", hidden=2048, ffn=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "3": dict(model="OpenLLaMA-3B", hidden=3200, ffn=8640, layers=26, heads=32, kv_heads=32, vocab=32000),
    "7": dict(model="LLaMA-7B", hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
}
SHAPE_70B = dict(model="LLaMA-2-70B", hidden=8192, ffn=28672, layers=80, heads=64, kv_heads=8, vocab=32000)
#: The two analyses measured per size: name -> Leiden modularity of every matrix or not.
KINDS = {"full": True, "no_modularity": False}
WORKERS_70B = (1, 8, 32, 64)


def cache_root() -> Path:
    from topoprune.assets import cache_dir

    return cache_dir() / "bench-scaling"


def checkpoint(size: str) -> tuple[Path, dict]:
    """The cached checkpoint of ``size`` (generated first when missing) and its description."""
    geometry = SHAPES[size]
    path = cache_root() / f"llama-{size}b-{DTYPE}"
    record = path / "generated.json"
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("geometry") == geometry and info.get("dtype") == DTYPE:
            return path, info
    need = sum(math.prod(s) for _, s in llama_tensors(geometry)) * 2  # bf16
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    free = shutil.disk_usage(staging).free
    if free < need + 1 * GB:
        shutil.rmtree(staging, ignore_errors=True)
        sys.exit(f"error: {size} B checkpoint needs {need / GB:.1f} GB in {staging.parent}, {free / GB:.1f} GB free")
    print(f"  generating the {size} B checkpoint ({geometry['model']} widths, {need / GB:.1f} GB bf16) ...",
          flush=True)
    t0 = time.perf_counter()
    info = generate_llama(staging, geometry, dtype=DTYPE)
    info["generate_s"] = time.perf_counter() - t0
    (staging / "generated.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)
    return path, info


def bound(info: dict) -> float:
    """3 x the largest analysed tensor in float32 + 0.6 GB."""
    return 3 * info["largest_analysed_bytes"] * 4 / _itemsize(info) + RSS_SLACK


def _itemsize(info: dict) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[info.get("dtype", "float32")]


def measure(path: Path, n_jobs: int, modularity: bool, scheduler: str | None = None) -> dict:
    """One analysis in a fresh child process; its per-matrix seconds summed per kind of matrix."""
    from topoprune.graph.timing import TIME_COLUMNS

    r = run_rss_child(path, n_jobs, modularity, module="analysis.bench_scaling", extra=(scheduler or "-",))
    r["worker_peak"] = max(r["maxrss_children"], r.get("sampled_peak_descendant") or 0)
    kinds: dict = {}
    for m in r["timing"].pop("matrices"):
        k = kinds.setdefault(m["name"].split(".", 3)[-1], dict.fromkeys(("n_matrices", "n_edges", *TIME_COLUMNS), 0))
        k["n_matrices"] += 1
        for c in ("n_edges", *TIME_COLUMNS):
            k[c] += m[c]
    r["timing"]["by_kind"] = kinds  # model.layers.N.<kind>: self_attn.q_proj.weight, mlp.up_proj.weight, ...
    return r


def save(out: Path, results: dict) -> None:
    from topoprune.io import atomic_path

    results["table"] = table(results)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")


def growth(results: dict) -> dict:
    """Per analysis: the slope of log wall time against log parameters (whole model, block matrices)."""
    import numpy as np

    out = {}
    for kind in KINDS:
        pts = [(c["parameters"], c["block_parameters"], results["runs"][f"{s}/{kind}"]["wall_s"])
               for s, c in sorted(results["checkpoints"].items(), key=lambda x: float(x[0]))
               if f"{s}/{kind}" in results["runs"]]
        if len({p for p, _, _ in pts}) < 2:
            out[kind] = None
            continue
        p, b, t = (np.log([x[i] for x in pts]) for i in range(3))
        done = [s for s in sorted(results["checkpoints"], key=float) if f"{s}/{kind}" in results["runs"]]
        out[kind] = dict(exponent=float(np.polyfit(p, t, 1)[0]), exponent_blocks=float(np.polyfit(b, t, 1)[0]),
                         sizes=done)
    return out


def stage_rates(runs: list[dict]) -> dict:
    """``{kind of matrix: {stage: edges per second per core}}`` over ``runs`` (see :func:`measure`)."""
    from topoprune.graph.timing import STAGES

    edges, seconds = {}, {}
    for run in runs:
        for kind, k in run["timing"]["by_kind"].items():
            edges[kind] = edges.get(kind, 0) + k["n_edges"]
            for st in STAGES:
                seconds.setdefault(kind, dict.fromkeys(STAGES, 0.0))[st] += k[f"t_{st}"]
    return {k: {st: edges[k] / s if s > 0 else None for st, s in secs.items()} for k, secs in seconds.items()}


def estimate_70b(rates: dict) -> dict:
    """Core seconds of a LLaMA-2-70B-shaped analysis at the measured rates, and wall time on N workers."""
    costs = []
    for name, shape in llama_tensors(SHAPE_70B):
        if len(shape) != 2 or "layers." not in name:
            continue
        edges = round(DENSITY * shape[0] * shape[1])
        rate = rates[name.split(".", 3)[-1]]
        costs.append(sum(edges / r for r in rate.values() if r))
    total, largest = sum(costs), max(costs)
    fp32 = max(math.prod(s) for n, s in llama_tensors(SHAPE_70B) if len(s) == 2 and "layers." in n) * 4
    return dict(model=SHAPE_70B, n_matrices=len(costs), core_seconds=total, largest_matrix_s=largest,
                worker_memory_bound_gb=(3 * fp32 + RSS_SLACK) / GB,
                wall_s={str(n): max(total / n, largest) for n in WORKERS_70B})


def compare_cluster(args, results: dict) -> None:
    path, info = checkpoint(args.cluster_size)
    cl = results.setdefault("cluster", {"size": args.cluster_size, "runs": []})
    if cl["size"] != args.cluster_size:
        cl.clear()
        cl.update(size=args.cluster_size, runs=[])
    cl["checkpoint"] = info
    modes = (("pool", None), ("dask", "local:2"))
    while len(cl["runs"]) < 2 * args.repeats:
        i = len(cl["runs"])
        mode, scheduler = modes[(i + i // 2) % 2]  # pool, dask, dask, pool, pool, dask, ...: alternated
        r = measure(path, 2, True, scheduler)
        cl["runs"].append(dict(mode=mode, wall_s=r["wall_s"], foreign_cpus=r["foreign_cpus"],
                               maxrss_self=r["maxrss_self"], worker_peak=r["worker_peak"], timing=r["timing"]))
        print(f"  cluster comparison, {args.cluster_size} B, {mode:>4}: {r['wall_s']:.1f} s "
              f"(other processes: {r['foreign_cpus']:.2f} CPUs busy)", flush=True)
        summarise_cluster(cl)
        save(args.out, results)


def summarise_cluster(cl: dict) -> None:
    walls = {m: [r["wall_s"] for r in cl["runs"] if r["mode"] == m] for m in ("pool", "dask")}
    if not all(walls.values()):
        return
    cl["median_s"] = {m: statistics.median(v) for m, v in walls.items()}
    cl["ratio_dask_over_pool"] = cl["median_s"]["dask"] / cl["median_s"]["pool"]
    cl["estimate_70b"] = estimate_70b(stage_rates([r for r in cl["runs"] if r["mode"] == "dask"]))


def table(results: dict) -> list[str]:
    rows = []
    for size, c in sorted(results.get("checkpoints", {}).items(), key=lambda x: float(x[0])):
        for kind in KINDS:
            r = results["runs"].get(f"{size}/{kind}")
            if r is None:
                continue
            top = max(r["maxrss_self"], r["worker_peak"])
            rates = " / ".join("-" if s["edges_per_s_per_core"] is None else f"{s['edges_per_s_per_core'] / 1e6:.3g}M"
                               for s in r["timing"]["stages"])
            rows.append([f"{size} B", c["geometry"]["model"],
                         f"{c['parameters'] / 1e9:.3f} B ({c['block_parameters'] / 1e9:.3f} B)", c["n_block_matrices"],
                         f"{kind.replace('_', ' ')}, {r['timing']['workers']} workers", f"{r['wall_s']:.1f} s",
                         f"{r['maxrss_self'] / GB:.2f} GB", f"{r['worker_peak'] / GB:.2f} GB",
                         f"{bound(c) / GB:.2f} GB ({'within' if top <= bound(c) else 'above'})", rates])
    lines = markdown_table(["size", "widths of", "parameters (blocks)", "matrices", "analysis", "wall", "main RSS",
                            "largest worker", "bound 3 × largest + 0.6 GB",
                            "read / edges / degrees / fits / modularity, edges/s per core"], rows)
    for kind, g in (results.get("growth") or {}).items():
        if g:
            lines.append(f"\ngrowth exponent, {kind.replace('_', ' ')} ({', '.join(g['sizes'])} B): wall ∝ "
                         f"parameters^{g['exponent']:.2f} (block parameters^{g['exponent_blocks']:.2f})")
    cl = results.get("cluster")
    if cl and "median_s" in cl:
        n = len(cl["runs"]) // 2
        runs = {m: ", ".join(f"{r['wall_s']:.1f}" for r in cl["runs"] if r["mode"] == m) for m in ("pool", "dask")}
        lines += ["", *markdown_table([f"{cl['size']} B, full report", "process pool, n_jobs=2", "Dask local:2",
                                       "Dask / pool"],
                                      [[f"median of {n} (runs)", f"{cl['median_s']['pool']:.1f} s ({runs['pool']})",
                                        f"{cl['median_s']['dask']:.1f} s ({runs['dask']})",
                                        f"{cl['ratio_dask_over_pool']:.2f}"]])]
        lines += _estimate_lines(cl["estimate_70b"], f"the {cl['size']} B Dask runs'")
    full = [s for s in results.get("checkpoints", {}) if f"{s}/full" in results.get("runs", {})]
    if full:  # the largest matrices measured: the closest per-edge costs to a 70B model's
        big = max(full, key=float)
        lines += _estimate_lines(estimate_70b(stage_rates([results["runs"][f"{big}/full"]])),
                                 f"the {big} B full report's (process pool)")
    return lines


def _estimate_lines(e: dict, source: str) -> list[str]:
    return ["", f"LLaMA-2-70B shape, estimated from {source} per-matrix stage costs ({e['n_matrices']} "
            f"matrices, {e['core_seconds'] / 3600:.1f} core-hours; the most costly matrix "
            f"{e['largest_matrix_s']:.0f} s; per-worker memory bound {e['worker_memory_bound_gb']:.1f} GB):",
            "", *markdown_table(["workers", *e["wall_s"]], [["wall time", *map(_duration, e["wall_s"].values())]])]


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def plot(results: dict) -> None:
    from analysis.figsave import pyplot, save_figure

    plt = pyplot()
    sizes = sorted(results.get("checkpoints", {}), key=float)
    if not results.get("runs"):
        print("no scaling runs to plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for kind, (label, marker) in {"full": ("full report", "o"), "no_modularity": ("without modularity", "s")}.items():
        done = [s for s in sizes if f"{s}/{kind}" in results["runs"]]
        if not done:
            continue
        x = [results["checkpoints"][s]["parameters"] for s in done]
        runs = [results["runs"][f"{s}/{kind}"] for s in done]
        g = (results.get("growth") or {}).get(kind)
        ax_t.plot(x, [r["wall_s"] for r in runs], marker=marker,
                  label=label + (f" (∝ N^{g['exponent']:.2f})" if g else ""))
        ax_m.plot(x, [r["maxrss_self"] / GB for r in runs], marker=marker, label=f"main process, {label}")
        ax_m.plot(x, [r["worker_peak"] / GB for r in runs], marker=marker, ls="--", label=f"largest worker, {label}")
    x = [results["checkpoints"][s]["parameters"] for s in sizes]
    ax_m.plot(x, [bound(results["checkpoints"][s]) / GB for s in sizes], color="0.5", ls=":", marker="_",
              label="3 × largest tensor (fp32) + 0.6 GB")
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    for ax, ylabel in ((ax_t, "wall time (s)"), (ax_m, "peak RSS (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(x))  # one tick per measured size, labelled "7 B"
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v / 1e9:.2g} B")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("parameters (bf16 LLaMA-shaped checkpoint)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax_m.yaxis.set_major_formatter(ScalarFormatter())  # plain GB, not powers of ten
    ax_m.yaxis.set_minor_formatter(NullFormatter())
    ax_m.yaxis.set_major_locator(FixedLocator([0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0]))
    workers = {results["runs"][k]["timing"]["workers"] for k in results["runs"]}
    fig.suptitle(f"topoprune analyze, density {DENSITY}, {'/'.join(map(str, sorted(workers)))} workers, "
                 f"{results['machine']['nproc']} CPUs", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "scaling", directory=FIGURES)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SHAPES), help=f"sizes in B parameters, of {', '.join(SHAPES)}")
    ap.add_argument("--n-jobs", type=int, default=-1, help="worker processes of each analysis (-1: one per CPU)")
    ap.add_argument("--no-modularity-only", action="store_true", help="only the report without modularity")
    ap.add_argument("--compare-cluster", action="store_true",
                    help="process pool (n_jobs=2) against a local Dask cluster (local:2), and the 70B estimate")
    ap.add_argument("--cluster-size", default="0.1", choices=list(SHAPES), help="checkpoint of the comparison")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each mode in the comparison")
    ap.add_argument("--resume", action="store_true", help="keep the runs made by the same code and settings")
    fresh_option(ap)
    ap.add_argument("--plot-only", action="store_true", help="redraw the figures and print the table")
    ap.add_argument("--clean", action="store_true", help="delete the cached checkpoints and exit")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rss-child", nargs=4, metavar=("PATH", "N_JOBS", "MODULARITY", "SCHEDULER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    offline_env()
    if args.rss_child:
        p, n, m, sched = args.rss_child
        rss_child(p, int(n), bool(int(m)), None if sched == "-" else sched)
        return 0
    if args.clean:
        shutil.rmtree(cache_root(), ignore_errors=True)
        print(f"removed {cache_root()}")
        return 0
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not args.plot_only:
        from analysis.fingerprint import code_fingerprint

        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        if bad := [s for s in sizes if s not in SHAPES]:
            ap.error(f"--sizes: unknown size(s) {bad}; choose from {', '.join(SHAPES)}")
        settings = dict(density=DENSITY, dtype=DTYPE)
        code = code_fingerprint("graph", measured=(SHAPES, DENSITY, DTYPE, KINDS, checkpoint, measure, rss_child,
                                                   compare_cluster))
        stored = bool(results.get("runs") or results.get("cluster"))
        if results.get("code") != code or results.get("settings") != settings:
            if stored and not args.fresh:
                refuse(f"{args.out}: its stored runs were made with other settings or code; pass --fresh to "
                       "measure afresh (git keeps the old file)")
            results = dict(code=code, settings=settings, runs={}, checkpoints={})  # other code: nothing kept
        elif not args.resume:  # measure this part afresh, keep the other
            part = results.get("cluster") if args.compare_cluster else results.get("runs")
            if part and not args.fresh:
                refuse(f"{args.out}: holds stored runs of this part; pass --resume to continue them or --fresh "
                       "to measure it afresh")
            if args.compare_cluster:
                results.pop("cluster", None)
            else:
                results.update(runs={}, checkpoints={}, growth={})
        results["machine"] = machine()
        if args.compare_cluster:
            compare_cluster(args, results)
        else:
            for size in sizes:
                path, info = checkpoint(size)
                results["checkpoints"][size] = info
                for kind, modularity in KINDS.items():
                    key = f"{size}/{kind}"
                    done = results["runs"].get(key)
                    if (done and done["n_jobs"] == args.n_jobs) or (args.no_modularity_only and modularity):
                        continue
                    r = measure(path, args.n_jobs, modularity)
                    results["runs"][key] = r
                    results["growth"] = growth(results)
                    print(f"  {size} B, {kind}: {r['wall_s']:.1f} s, main {r['maxrss_self'] / GB:.2f} GB, "
                          f"largest worker {r['worker_peak'] / GB:.2f} GB (other processes: "
                          f"{r['foreign_cpus']:.2f} CPUs busy)", flush=True)
                    save(args.out, results)
        save(args.out, results)
    if not results:
        print(f"no results in {args.out}")
        return 0
    print("\n".join(table(results)))
    plot(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
