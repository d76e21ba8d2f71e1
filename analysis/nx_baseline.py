"""The straightforward networkx + powerlaw pipeline that bench_analysis.py compares topoprune with."""
from __future__ import annotations

import time
from pathlib import Path


def networkx_pipeline(path: Path, names: list[str]) -> tuple[float, dict]:
    """The straightforward pipeline on ``names`` (tensor names of ``[out, in]`` matrices)."""
    import warnings

    import networkx as nx
    import numpy as np
    import powerlaw
    from safetensors import safe_open

    from topoprune.graph.config import GraphConfig
    from topoprune.graph.bipartite import edge_mask

    alternatives = ("lognormal", "exponential", "truncated_power_law")
    graph_config = GraphConfig(density=0.1)
    results = {}
    t_start = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
            for i, name in enumerate(names):
                t0 = time.perf_counter()
                w = fh.get_tensor(name).float()
                mask = edge_mask(w, graph_config, name=name).numpy()
                n_out, n_in = mask.shape
                rows, cols = np.nonzero(mask)
                weights = np.abs(w.numpy()[rows, cols])
                g = nx.Graph()
                g.add_nodes_from(range(n_in), bipartite=0)  # input neurons
                g.add_nodes_from(range(n_in, n_in + n_out), bipartite=1)  # output neurons
                g.add_weighted_edges_from(zip(cols.tolist(), (rows + n_in).tolist(), weights.tolist()))
                deg = dict(g.degree())
                in_deg = np.array([deg[n_in + r] for r in range(n_out)], dtype=np.int64)  # fan-in of outputs
                out_deg = np.array([deg[c] for c in range(n_in)], dtype=np.int64)  # fan-out of inputs
                communities = nx.community.louvain_communities(g, weight=None, seed=0)
                q = nx.community.modularity(g, communities, weight=None)
                fits = {}
                for side, seq in (("in", in_deg), ("out", out_deg)):
                    fit = powerlaw.Fit(seq, discrete=True, verbose=False)
                    row = dict(alpha=float(fit.power_law.alpha), xmin=float(fit.xmin))
                    for alt in alternatives:
                        r, p = fit.distribution_compare("power_law", alt, normalized_ratio=True)
                        row[f"R_{alt}"], row[f"p_{alt}"] = float(r), float(p)
                    fits[side] = row
                dt = time.perf_counter() - t0
                results[name] = dict(in_degree=in_deg, out_degree=out_deg, modularity=float(q),
                                     n_communities=len(communities), n_edges=int(g.number_of_edges()), fits=fits,
                                     seconds=dt)
                print(f"  networkx [{i + 1:2d}/{len(names)}] {name:<52} {dt:5.1f} s  Q={q:.4f}", flush=True)
    return time.perf_counter() - t_start, results


def compare_with_networkx(path: Path, report_df, nx_results: dict) -> dict:
    """Degree sequences / mean / sd identical? max |Q difference|?"""
    import numpy as np

    import topoprune

    degrees = topoprune.analyze_report(path, density=0.1, blocks_only=True, fits=False,
                                       matrix_modularity=False, n_jobs=1).degrees
    by_name = report_df.set_index("name")
    seq_equal, stats_equal, max_stat_diff, dq = [], [], 0.0, {}
    for name, res in nx_results.items():
        tp_in, tp_out = degrees[name]
        seq_equal.append(np.array_equal(tp_in, res["in_degree"]) and np.array_equal(tp_out, res["out_degree"]))
        row = by_name.loc[name]
        for side, seq in (("in", res["in_degree"]), ("out", res["out_degree"])):
            d = np.asarray(seq, dtype=np.float64)
            for stat, val in (("mean", float(d.mean())), ("sd", float(d.std()))):
                ref = float(row[f"{side}_{stat}"])
                stats_equal.append(ref == val)
                max_stat_diff = max(max_stat_diff, abs(ref - val))
        dq[name] = float(row["modularity"]) - res["modularity"]
    worst = max(dq, key=lambda k: abs(dq[k]))
    q_tp = [float(by_name.loc[n, "modularity"]) for n in nx_results]
    q_nx = [r["modularity"] for r in nx_results.values()]
    return dict(
        n_matrices=len(nx_results), degree_sequences_identical=all(seq_equal),
        mean_sd_identical=all(stats_equal), max_abs_mean_sd_diff=max_stat_diff,
        max_abs_dq=abs(dq[worst]), worst_matrix=worst, mean_dq=float(np.mean(list(dq.values()))),
        mean_q_topoprune=float(np.mean(q_tp)), mean_q_networkx=float(np.mean(q_nx)),
        per_matrix_dq=dq,
    )
