"""Benchmark of ``topoprune.analyze``: speed, agreement with networkx, peak memory.

Run with ``make bench`` (``.venv/bin/python -m analysis.bench_analysis``); ``--quick`` runs the
networkx comparison on the first two blocks only and extrapolates its time to 72 matrices.

What is measured, on whatever machine runs it:

1. A BERT-base-size checkpoint (``BertModel(BertConfig())``, random init, ``torch.manual_seed(0)``,
   12 blocks, hidden 768, FFN 3072) saved as safetensors: 72 block matrices.
2. ``topoprune.analyze(path, density=0.1, blocks_only=True, matrix_modularity=False)`` (degrees
   + power-law fits) and the full report (``matrix_modularity=True``, the default), each with
   ``n_jobs=-1`` and ``n_jobs=1``: median of 3 timed runs after one warm-up run.
3. A straightforward networkx + powerlaw pipeline on the same matrices and the same edges
   (``topoprune.graph.bipartite.edge_mask``): ``networkx.Graph`` weighted by ``|w|``, ``G.degree()``,
   ``louvain_communities(seed=0)`` + ``modularity``, ``powerlaw.Fit(discrete=True)`` with its full
   xmin search and ``distribution_compare`` against lognormal, exponential and
   truncated_power_law, for the in- and out-degree sequences. Timed once. Checks: degree
   sequences, means and sds identical; max |Q_topoprune - Q_networkx| (Leiden vs Louvain).
   Louvain and ``modularity`` use ``weight=None``: topoprune's default modularity is that of
   the binary graph (``ModularityConfig.weighted=False``), so that is the quantity compared.
4. Peak RSS while a separate Python process analyses a generated >= 2 GB LLaMA-like sharded
   safetensors checkpoint: degrees + fits (``matrix_modularity=False``) and the full report
   (``matrix_modularity=True``, Leiden modularity of every matrix, ~1e6 edges each: minutes), each
   with ``n_jobs=1`` and ``n_jobs=-1`` (``ru_maxrss`` of ``RUSAGE_SELF`` -- the main process -- and
   of ``RUSAGE_CHILDREN`` -- the largest worker -- inside that process, plus the split into
   anonymous and file-backed pages sampled from ``/proc/self/status``), against the bound
   3 x the largest analysed tensor + 0.6 GB. ``--memory-only`` runs just this part. A second
   measurement rewrites one shard's header so that its length starts with byte 0x80, the mark
   that begins a pickle (see ``topoprune.graph.loading._sniff``): such a shard must still be
   streamed as safetensors, with the same peak memory.

Results go to ``analysis/results/bench_analysis.json`` (``--memory-only``:
``bench_analysis_memory.json``); a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from analysis.harness import machine, markdown_table, offline_env  # noqa: E402
from analysis.llama_checkpoint import LLAMA, generate_llama, rss_child, set_header_length, sniff_shards  # noqa: E402
from analysis.memory import GB, RSS_SLACK, CpuMeter, run_rss_child  # noqa: E402

# Everything heavy is imported inside functions: the --rss-child process (``llama_checkpoint.rss_child``)
# must import only topoprune, so that its peak RSS is topoprune's.

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "analysis" / "results" / "bench_analysis.json"
MEMORY_OUT = ROOT / "analysis" / "results" / "bench_analysis_memory.json"


# ---------------------------------------------------------------------------------------------
# 1. BERT-base checkpoint
# ---------------------------------------------------------------------------------------------

def build_bert(directory: Path) -> Path:
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = BertModel(BertConfig())
    model.save_pretrained(directory, safe_serialization=True)
    assert (directory / "model.safetensors").is_file(), sorted(p.name for p in directory.iterdir())
    return directory


# ---------------------------------------------------------------------------------------------
# 2. topoprune timings
# ---------------------------------------------------------------------------------------------

def time_topoprune(path: Path, repeats: int = 3) -> tuple[dict, dict]:
    import topoprune

    runs = {
        "fits": dict(density=0.1, blocks_only=True, matrix_modularity=False),
        "report": dict(density=0.1, blocks_only=True),
    }
    timings, tables = {}, {}
    for n_jobs in (-1, 1):
        for label, kw in runs.items():
            key = f"{label}_njobs{n_jobs}"
            topoprune.analyze(path, n_jobs=n_jobs, **kw)  # warm-up
            ts = []
            with CpuMeter() as meter:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    df = topoprune.analyze(path, n_jobs=n_jobs, **kw)
                    ts.append(time.perf_counter() - t0)
            timings[key] = dict(median_s=statistics.median(ts), runs_s=ts, n_matrices=len(df), n_jobs=n_jobs,
                                options=kw, foreign_cpus=float(meter))
            tables[key] = df
            print(f"  topoprune {key:<16} median {statistics.median(ts):6.2f} s  runs "
                  + ", ".join(f"{t:.2f}" for t in ts) + f"  (other processes: {float(meter):.2f} CPUs busy)",
                  flush=True)
    return timings, tables


def same_tables(a, b) -> bool:
    """Reports from n_jobs=-1 and n_jobs=1 hold the same values (NaN == NaN)."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    return bool(a.equals(b))


# ---------------------------------------------------------------------------------------------
# 3. networkx + powerlaw pipeline
# ---------------------------------------------------------------------------------------------

from analysis.nx_baseline import compare_with_networkx, networkx_pipeline  # noqa: E402


# ---------------------------------------------------------------------------------------------
# 4. Peak RSS on a generated >= 2 GB checkpoint
# ---------------------------------------------------------------------------------------------


def rss_benchmark(bug_demo: bool = True, blocks: int | None = None) -> dict:
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="topoprune-bench-llama-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        info = generate_llama(tmp, dict(LLAMA, layers=blocks or LLAMA["layers"]))
        info["generate_s"] = time.perf_counter() - t0
        print(f"  generated {info['total_bytes'] / GB:.2f} GB in {info['n_shards']} shards "
              f"({info['generate_s']:.1f} s)", flush=True)
        # The main measurement uses shards whose header length does not start with byte 0x80 (a
        # pickle's first byte); that case is measured on its own below.
        info["reheadered_for_main"] = [p.name for p in sorted(tmp.glob("*.safetensors"))
                                       if set_header_length(p, pickle_like=False)]
        info["sniff_main"] = sniff_shards(tmp)
        target = 3 * info["largest_analysed_bytes"] + RSS_SLACK
        info["target_bytes"] = target
        runs = {}
        for modularity in (False, True):
            for n_jobs in (1, -1):
                r = run_rss_child(tmp, n_jobs, modularity)
                runs[f"{'report' if modularity else 'fits'}_njobs{n_jobs}"] = r
                print(f"  RSS {'full report' if modularity else 'degrees + fits'}, n_jobs={n_jobs:2d}: main "
                      f"{r['maxrss_self'] / GB:.2f} GB (anon {r['sampled_peak_anon'] / GB:.2f} + file "
                      f"{r['sampled_peak_file'] / GB:.2f} at peak), largest worker {r['maxrss_children'] / GB:.2f}"
                      f" GB, {r['wall_s']:.1f} s", flush=True)
        info["runs"] = runs
        if bug_demo:
            # Rewrite the last (smallest) shard's header so that its length starts with byte 0x80,
            # a pickle's first byte: the loader must still stream it as safetensors.
            last = sorted(tmp.glob("*.safetensors"))[-1]
            set_header_length(last, pickle_like=True)
            demo = dict(shard=last.name, sniff=sniff_shards(tmp))
            r = run_rss_child(tmp, 1)
            demo["run_njobs1"] = r
            print(f"  RSS with {last.name}'s header length starting with byte 0x80 (read as "
                  f"{demo['sniff']['checkpoint_class']}): self "
                  f"{r['maxrss_self'] / GB:.2f} GB (anon {r['sampled_peak_anon'] / GB:.2f} + file "
                  f"{r['sampled_peak_file'] / GB:.2f}), {r['wall_s']:.1f} s", flush=True)
            info["misdetected_shard_demo"] = demo
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["total_s"] = time.perf_counter() - t_start
    return info


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def make_rows(res: dict) -> list[tuple[str, str]]:
    """``(measurement, measured)`` rows of the results."""
    rows = []
    t = res.get("topoprune")
    if t:
        n = t["fits_njobs-1"]["n_matrices"]
        for label in ("fits", "report"):
            what = "degrees + power-law fits" if label == "fits" else "full report (+ Leiden modularity)"
            for nj in (-1, 1):
                m = t[f"{label}_njobs{nj}"]["median_s"]
                rows.append((f"{what}, {n} BERT-base matrices, n_jobs={nj} (median of 3)", f"{m:.2f} s"))
    nxr = res.get("networkx")
    if nxr:
        extra = "" if nxr["n_matrices"] == nxr["n_total"] else (
            f" ({nxr['n_matrices']} matrices measured, ×{nxr['n_total'] / nxr['n_matrices']:g} extrapolated)")
        rows.append((f"networkx + powerlaw pipeline, {nxr['n_total']} matrices (run once){extra}",
                     f"{nxr['seconds_total_equiv']:.1f} s"))
        for nj in (-1, 1):
            rows.append((f"speed-up over networkx, full report n_jobs={nj}",
                         f"{nxr[f'speedup_vs_report_njobs{nj}']:.1f}×"))
        c = nxr["check"]
        same = c["degree_sequences_identical"] and c["mean_sd_identical"]
        rows.append((f"degree sequences, in/out mean and sd vs networkx ({c['n_matrices']} matrices)",
                     "identical" if same else f"differ (max |Δ| {c['max_abs_mean_sd_diff']:.3g})"))
        rows.append((f"max |Q_topoprune − Q_networkx| (Leiden vs Louvain, {c['n_matrices']} matrices)",
                     f"{c['max_abs_dq']:.4f}"))
    rss = res.get("rss")
    if rss:
        bound = f"3 × largest tensor + 0.6 GB = {rss['target_bytes'] / GB:.2f} GB"
        for label, nj, main, worker, within in memory_rows(rss):
            rows.append((f"peak RSS, {rss['total_bytes'] / GB:.2f} GB checkpoint, {label}, n_jobs={nj}",
                         f"main {main}, largest worker {worker} ({within} {bound})"))
        demo = rss.get("misdetected_shard_demo")
        if demo:
            r = demo["run_njobs1"]
            rows.append(("peak RSS, same checkpoint, one shard's header length starting with byte 0x80, n_jobs=1",
                         f"{r['maxrss_self'] / GB:.2f} GB"))
    return rows


def memory_rows(rss: dict) -> list[tuple]:
    """``(analysis, n_jobs, main process, largest worker, "within"/"above" the bound)`` per memory run."""
    out = []
    for key, label in (("fits", "degrees + power-law fits"), ("report", "full report (+ Leiden modularity)")):
        for nj in (1, -1):
            r = rss["runs"][f"{key}_njobs{nj}"]
            kids = r["maxrss_children"]
            out.append((label, nj, f"{r['maxrss_self'] / GB:.2f} GB", f"{kids / GB:.2f} GB" if kids else "-",
                        "within" if max(r["maxrss_self"], kids) <= rss["target_bytes"] else "above"))
    return out


def memory_table(rss: dict) -> str:
    return "\n".join(markdown_table(
        [f"{rss['total_bytes'] / GB:.2f} GB checkpoint", "n_jobs", "main process", "largest worker",
         f"≤ 3 × {rss['largest_analysed_bytes'] / 1e6:.1f} MB + 0.6 GB = {rss['target_bytes'] / GB:.2f} GB"],
        memory_rows(rss)))


def measurements_table(rows) -> str:
    """The measurements as a markdown table (the first two fields of each row)."""
    return "\n".join(markdown_table(["Measurement", "Measured"],
                                     [[str(c).replace("|", "\\|") for c in row[:2]] for row in rows]))


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="networkx pipeline on the first 2 blocks only (time extrapolated to all matrices)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--skip-networkx", action="store_true", help="leave out the networkx comparison")
    ap.add_argument("--skip-rss", action="store_true", help="leave out the >= 2 GB peak-RSS measurement")
    ap.add_argument("--no-bug-demo", action="store_true",
                    help="leave out the peak-RSS run with a shard whose header length starts with byte 0x80")
    ap.add_argument("--memory-only", action="store_true",
                    help=f"only the peak-RSS measurement (results to {MEMORY_OUT.name} unless --out is given)")
    ap.add_argument("--blocks", type=int, default=None, help="blocks of the generated LLaMA-like checkpoint (10)")
    ap.add_argument("--rss-child", nargs=3, metavar=("PATH", "N_JOBS", "MODULARITY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    offline_env()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), bool(int(args.rss_child[2])))
        return 0
    if args.memory_only:
        return memory_main(args)

    t_all = time.perf_counter()
    res: dict = {"quick": args.quick, "machine": machine(), "loadavg_start": os.getloadavg()}
    m = res["machine"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), GPU: {m['gpu']}, Python {m['python']}, torch {m['torch']}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="topoprune-bench-bert-", dir="/tmp") as d:
        path = build_bert(Path(d))
        print("BERT-base checkpoint written; timing topoprune.analyze ...", flush=True)
        timings, tables = time_topoprune(path)
        res["topoprune"] = timings
        res["njobs_results_identical"] = dict(
            fits=same_tables(tables["fits_njobs-1"], tables["fits_njobs1"]),
            report=same_tables(tables["report_njobs-1"], tables["report_njobs1"]))
        if not args.skip_networkx:
            report = tables["report_njobs-1"]
            blocks = sorted(report["block"].unique())
            use = blocks[:2] if args.quick else blocks
            sel = report[report["block"].isin(use)].sort_values(["block", "name"])
            assert (sel["name"] == sel["tensor"]).all(), "BERT matrices are stored [out, in], unsplit"
            print(f"networkx pipeline on {len(sel)} matrices ...", flush=True)
            with CpuMeter() as meter:
                seconds, nx_results = networkx_pipeline(path, sel["name"].tolist())
            n_total = len(report)
            equiv = seconds * n_total / len(sel)
            check = compare_with_networkx(path, report, nx_results)
            res["networkx"] = dict(
                n_matrices=len(sel), n_total=n_total, seconds=seconds, seconds_total_equiv=equiv,
                extrapolated=len(sel) != n_total, foreign_cpus=float(meter),
                speedup_vs_report_njobs1=equiv / timings["report_njobs1"]["median_s"],
                **{"speedup_vs_report_njobs-1": equiv / timings["report_njobs-1"]["median_s"]},
                check=check,
                per_matrix={k: dict(seconds=v["seconds"], modularity=v["modularity"],
                                    n_communities=v["n_communities"], n_edges=v["n_edges"], fits=v["fits"])
                            for k, v in nx_results.items()},
            )
    if not args.skip_rss:
        print("peak-RSS benchmark on a generated LLaMA-like checkpoint ...", flush=True)
        res["rss"] = rss_benchmark(bug_demo=not args.no_bug_demo, blocks=args.blocks)
    res["total_s"] = time.perf_counter() - t_all
    res["loadavg_end"] = os.getloadavg()
    rows = make_rows(res)
    res["table"] = [dict(measurement=a, measured=b) for a, b in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_jsonable(res), indent=2) + "\n")
    print()
    print(measurements_table(rows))
    print(f"\nn_jobs=-1 and n_jobs=1 give identical tables: {res['njobs_results_identical']}")
    busy = {k: round(v["foreign_cpus"], 2) for k, v in res["topoprune"].items()}
    if "networkx" in res:
        busy["networkx"] = round(res["networkx"]["foreign_cpus"], 2)
    print(f"CPUs kept busy by other processes during each timed block (of {m['nproc']}): {busy}")
    if "rss" in res:
        print("\n" + memory_table(res["rss"]))
    print(f"total {res['total_s']:.0f} s; results in {args.out}")
    return 0


def memory_main(args) -> int:
    """``--memory-only``: the peak-RSS part alone, its own results file."""
    out = MEMORY_OUT if args.out == DEFAULT_OUT else args.out
    res: dict = {"machine": machine(), "loadavg_start": os.getloadavg()}
    print("peak-RSS benchmark on a generated LLaMA-like checkpoint ...", flush=True)
    res["rss"] = rss_benchmark(bug_demo=not args.no_bug_demo, blocks=args.blocks)
    res["loadavg_end"] = os.getloadavg()
    res["table"] = [dict(measurement=a, measured=b) for a, b in make_rows(res)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(res), indent=2) + "\n")
    print("\n" + memory_table(res["rss"]))
    print(f"\n{measurements_table(make_rows(res))}\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
