"""Degree statistics, inequality (Gini) and modularity of weight graphs.

Degrees come from :mod:`topoprune.graph.bipartite`; this module only summarises them.
Communities are found with igraph's Leiden algorithm on the modularity objective
(Traag, Waltman & van Eck 2019) and scored with Newman's modularity (Newman 2006):

.. math:: Q = \\frac{1}{2m} \\sum_{ij} \\Big(A_{ij} - \\gamma \\frac{k_i k_j}{2m}\\Big) \\delta(c_i, c_j)
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .config import ModularityConfig
from .edges import igraph_from_edges


def gini(x) -> float:
    r"""Gini coefficient of non-negative values (0: all equal; -> 1: one holds all).

    .. math:: G = \frac{\sum_i (2i - n - 1) x_{(i)}}{n \sum_i x_{(i)}}

    with :math:`x_{(i)}` sorted ascending, :math:`i = 1..n`. Returns 0 for an all-zero
    or empty input.
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def degree_stats(degree, n_possible: int, strength=None, prefix: str = "") -> dict:
    """Summary of a degree sequence.

    Parameters
    ----------
    degree : array of int
        One degree per node.
    n_possible : int
        Largest possible degree (size of the other side); ``conn_*`` columns are
        degrees divided by it, the paper's fractional connectivity.
    strength : array of float, optional
        Weighted degrees (sum of ``|w|``).
    prefix : str
        Prepended to every key (``"in_"``, ``"out_"``).

    Returns
    -------
    dict
        ``n, mean, sd, conn_mean, conn_sd, gini, max, dead`` (share of degree-0 nodes)
        and ``strength_mean, strength_sd, strength_gini``.
    """
    d = np.asarray(degree, dtype=np.float64)
    n = d.size
    conn = d / n_possible if n_possible else np.zeros_like(d)
    out = {
        "n": n,
        "mean": float(d.mean()) if n else np.nan,
        "sd": float(d.std()) if n else np.nan,
        "conn_mean": float(conn.mean()) if n else np.nan,
        "conn_sd": float(conn.std()) if n else np.nan,
        "gini": gini(d),
        "max": int(d.max()) if n else 0,
        "dead": float(np.mean(d == 0)) if n else np.nan,
    }
    if strength is not None:
        s = np.asarray(strength, dtype=np.float64)
        out.update(strength_mean=float(s.mean()) if n else np.nan, strength_sd=float(s.std()) if n else np.nan,
                   strength_gini=gini(s))
    return {prefix + k: v for k, v in out.items()}


@dataclass(frozen=True)
class Communities:
    """A partition and its modularity."""

    modularity: float
    n_communities: int
    membership: np.ndarray


def leiden(graph, config: ModularityConfig | None = None) -> Communities:
    """Leiden communities of an igraph graph, maximising modularity; deterministic.

    igraph draws from the generator installed with ``igraph.set_random_number_generator``;
    a dedicated ``random.Random(seed)`` is installed for the call and the default restored
    afterwards, so results depend on ``config.seed`` only.
    """
    import igraph as ig

    config = config or ModularityConfig()
    if graph.ecount() == 0:
        return Communities(float("nan"), graph.vcount(), np.arange(graph.vcount()))
    weights = "weight" if config.weighted and "weight" in graph.es.attributes() else None
    ig.set_random_number_generator(random.Random(config.seed))
    try:
        part = graph.community_leiden(objective_function="modularity", weights=weights,
                                      resolution=config.resolution, n_iterations=config.n_iterations)
    finally:
        ig.set_random_number_generator(random)
    q = graph.modularity(part.membership, weights=weights, resolution=config.resolution)
    return Communities(float(q), len(part), np.asarray(part.membership))


def edge_modularity(n_nodes: int, edges: np.ndarray, weights=None,
                    config: ModularityConfig | None = None) -> Communities:
    """Leiden modularity of the undirected graph given by an ``[E, 2]`` edge array."""
    return leiden(igraph_from_edges(n_nodes, edges, weights), config)


def modularity(graph_obj, config: ModularityConfig | None = None) -> Communities:
    """Modularity of a :class:`~topoprune.graph.bipartite.BipartiteGraph` or ``LayeredGraph``.

    The graph is treated as undirected and unipartite (Newman's Q), the same quantity
    ``networkx.community.modularity`` computes for the same partition.
    """
    config = config or ModularityConfig()
    return leiden(graph_obj.to_igraph(weighted=config.weighted), config)
