"""Gini and modularity known answers; Leiden's Q equals networkx's modularity of the same partition."""
import networkx as nx
import numpy as np
import pytest
import torch

from topoprune.graph.config import ModularityConfig
from topoprune.graph.bipartite import bipartite_graph
from topoprune.graph.metrics import degree_stats, gini, modularity


def test_gini_known_answers():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0


def test_degree_stats_known():
    s = degree_stats([0, 2, 4, 6], n_possible=8, strength=[0.0, 1.0, 1.0, 2.0], prefix="in_")
    assert s["in_mean"] == 3 and s["in_sd"] == pytest.approx(np.std([0, 2, 4, 6]))
    assert s["in_conn_sd"] == pytest.approx(np.std([0, 2, 4, 6]) / 8)
    assert s["in_dead"] == 0.25 and s["in_max"] == 6
    assert s["in_strength_mean"] == 1.0


def _block_diagonal(blocks=4, size=8):
    return torch.block_diag(*[torch.ones(size, size)] * blocks)


def test_block_diagonal_modularity_equals_networkx():
    g = bipartite_graph(_block_diagonal())  # 75 % zeros: edges are the nonzeros
    com = modularity(g)
    assert com.n_communities == 4
    G = g.to_networkx(weighted=False)
    parts = [set(np.flatnonzero(com.membership == c).tolist()) for c in range(com.n_communities)]
    assert com.modularity == pytest.approx(nx.community.modularity(G, parts))
    assert com.modularity == pytest.approx(0.75)  # 4 equal disconnected blocks: 1 - 1/4


def test_leiden_is_deterministic_and_close_to_louvain():
    w = torch.randn(60, 40, generator=torch.Generator().manual_seed(0))
    g = bipartite_graph(w, None)
    a, b = modularity(g, ModularityConfig(seed=3)), modularity(g, ModularityConfig(seed=3))
    assert a.modularity == b.modularity and (a.membership == b.membership).all()
    G = g.to_networkx(weighted=False)
    louvain = nx.community.modularity(G, nx.community.louvain_communities(G, seed=0))
    assert abs(a.modularity - louvain) < 0.05


def test_empty_graph_modularity_is_nan():
    com = modularity(bipartite_graph(torch.zeros(3, 3)))
    assert np.isnan(com.modularity)
