"""Edges, degrees and layered graphs on hand-built matrices, with networkx as the oracle."""
import numpy as np
import pytest
import torch

from topoprune.graph.config import GraphConfig
from topoprune.errors import ConfigError, TensorError
from topoprune.graph.bipartite import (attention_graph, bipartite_graph, edge_mask, expand_kv, from_mask, mlp_graph,
                              select_edges, stack)


def test_known_degrees_and_strengths():
    w = torch.tensor([[1.0, 0.0, 2.0],
                      [0.0, 0.0, -3.0]])
    g = bipartite_graph(w)  # 50 % zeros -> already sparse: edges are the nonzeros
    assert g.n_edges == 3
    np.testing.assert_array_equal(g.in_degree(), [2, 1])  # fan-in of the 2 output neurons
    np.testing.assert_array_equal(g.out_degree(), [1, 0, 2])  # fan-out of the 3 inputs
    np.testing.assert_allclose(g.in_strength(), [3.0, 3.0])
    np.testing.assert_allclose(g.out_strength(), [1.0, 0.0, 5.0])
    np.testing.assert_allclose(g.connectivity("in"), [2 / 3, 1 / 3])


def test_density_top_k_exact_and_deterministic_ties():
    w = torch.ones(4, 5)  # all tied: the lowest row-major indices win
    m = edge_mask(w, GraphConfig(density=0.3))
    assert int(m.sum()) == 6
    assert m.reshape(-1)[:6].all() and not m.reshape(-1)[6:].any()
    rng = torch.Generator().manual_seed(1)
    w = torch.randn(50, 40, generator=rng)
    m = edge_mask(w, GraphConfig(density=0.1))
    assert int(m.sum()) == 200
    assert w.abs()[m].min() >= w.abs()[~m].max()
    assert torch.equal(m, edge_mask(w.clone(), GraphConfig(density=0.1)))


def test_threshold_and_nonzero_modes():
    w = torch.tensor([[0.5, -0.05], [0.2, 0.01]])
    sel = select_edges(w, GraphConfig(threshold=0.1))
    assert sel.mode == "threshold" and sel.mask.tolist() == [[True, False], [True, False]]
    pruned = torch.tensor([[0.0, 1e-6], [0.0, 0.0]])
    sel = select_edges(pruned, GraphConfig(density=0.9))
    assert sel.mode == "nonzero" and int(sel.mask.sum()) == 1 and sel.zero_fraction == 0.75


def test_numpy_and_dtype_inputs_agree():
    w = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    a = edge_mask(w)
    b = edge_mask(torch.from_numpy(w).to(torch.bfloat16))
    assert a.shape == (30, 20) and int(a.sum()) == int(b.sum()) == 60


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_named(bad):
    w = torch.zeros(3, 3) + 1.0
    w[1, 2] = bad
    with pytest.raises(TensorError, match="enc.q.weight: contains NaN or Inf"):
        edge_mask(w, name="enc.q.weight")


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_bad_density(density):
    with pytest.raises(ConfigError, match="density must be in"):
        GraphConfig(density=density)


def test_degrees_match_networkx():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(3))
    g = bipartite_graph(w, GraphConfig(density=0.2))
    G = g.to_networkx()
    deg = dict(G.degree())
    assert [deg[i] for i in range(30)] == g.out_degree().tolist()
    assert [deg[30 + i] for i in range(40)] == g.in_degree().tolist()
    strength = dict(G.degree(weight="weight"))
    np.testing.assert_allclose([strength[30 + i] for i in range(40)], g.in_strength(), rtol=1e-5)
    ig = g.to_igraph()
    assert ig.ecount() == G.number_of_edges() and ig.degree() == [deg[i] for i in range(70)]


def test_from_mask_counts_pruning_mask():
    mask = torch.tensor([[True, False], [True, True]])
    g = from_mask(mask, torch.tensor([[2.0, 5.0], [-1.0, 3.0]]))
    assert g.in_degree().tolist() == [1, 2] and g.in_strength().tolist() == [2.0, 4.0]


def test_expand_kv_grouped_query():
    # 4 query heads share 2 kv heads, head_dim 1: query rows 0,1 read kv row 0; rows 2,3 read kv row 1
    b = bipartite_graph(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).biadjacency
    e = expand_kv(b, n_heads=4, n_kv_heads=2, head_dim=1)
    assert e.toarray().tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_layered_attention_and_mlp_graphs_and_stack():
    eye = torch.eye(4)
    q = bipartite_graph(eye)
    k = bipartite_graph(torch.roll(eye, 1, 0))
    o = bipartite_graph(eye)
    lg = attention_graph(q, k, q, o, n_heads=2, n_kv_heads=2, head_dim=2)
    assert [n for _, n in lg.layers] == [4, 4, 4]
    assert lg.n_edges == 8 + 4  # q|v on the diagonal + k shifted, then o
    G = lg.to_networkx()
    assert G.number_of_nodes() == 12 and G.number_of_edges() == 12
    assert dict(G.degree()) == dict(enumerate(lg.degree().tolist()))
    up = bipartite_graph(torch.ones(6, 4))
    down = bipartite_graph(torch.ones(4, 6))
    mg = mlp_graph(up, down)
    whole = stack([lg, mg])
    assert [n for _, n in whole.layers] == [4, 4, 4, 6, 4]
    assert whole.n_edges == lg.n_edges + mg.n_edges
    assert whole.to_igraph().ecount() == whole.n_edges


@pytest.fixture
def small_chunks(monkeypatch):
    """igraph is fed a few edges at a time, so that the chunk boundaries are crossed."""
    import topoprune.graph.edges as edges

    monkeypatch.setattr(edges, "CHUNK", 7)


def test_igraph_gets_the_edges_in_edge_list_order(small_chunks):
    from topoprune.graph.bipartite import igraph_from_edges

    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(5))
    g = bipartite_graph(w, GraphConfig(density=0.2))
    edges = g.edge_list()
    assert g.to_igraph().get_edgelist() == [tuple(e) for e in edges.tolist()]
    assert igraph_from_edges(70, edges).get_edgelist() == [tuple(e) for e in edges.tolist()]
    weighted = g.to_igraph(weighted=True)
    coo = g.biadjacency.tocoo()
    by_edge = {(int(c), int(r) + 30): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}
    assert weighted.es["weight"] == [by_edge[e] for e in weighted.get_edgelist()]
    lg = mlp_graph(g, bipartite_graph(w.T, GraphConfig(density=0.3)), g)
    e, wt = lg.edge_arrays()
    ig = lg.to_igraph(weighted=True)
    assert ig.vcount() == lg.n_nodes and ig.get_edgelist() == [tuple(x) for x in e.tolist()]
    np.testing.assert_array_equal(ig.es["weight"], wt.astype(float))


@pytest.mark.parametrize("shape", [(40, 30), (30, 30), (30, 40)])
def test_edges_of_the_larger_degree_side_are_contiguous(shape):
    # Tall and square blocks (inputs have the larger degree) column by column, wide ones row by row:
    # the layout igraph's Leiden runs fastest on; the set of edges is the same either way.
    from topoprune.graph.edges import block_edges

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    g = bipartite_graph(w, GraphConfig(density=0.2))
    e = g.edge_list()
    n_out, n_in = shape
    src, dst = e[:, 0], e[:, 1] - n_in
    major, minor = (src, dst) if n_out >= n_in else (dst, src)
    assert np.all(np.diff(major) >= 0)  # grouped by the major side ...
    assert np.all((np.diff(major) > 0) | (np.diff(minor) > 0))  # ... sorted within it
    coo = g.biadjacency.tocoo()
    assert sorted(map(tuple, e.tolist())) == sorted(zip(coo.col.tolist(), (coo.row + n_in).tolist()))
    edges, values = block_edges(g.biadjacency, 5, 100)
    np.testing.assert_array_equal(edges, e + np.array([5, 100 - n_in]))
    np.testing.assert_array_equal(values, g.biadjacency.toarray()[dst, src])


@pytest.mark.parametrize("keep", [0.3, 0.01])  # bit-packed mask; CSR indices (fewer bytes when sparse)
@pytest.mark.parametrize("values", [False, True])
def test_packed_edges_round_trip(keep, values):
    from topoprune.graph.edges import PackedEdges

    w = torch.randn(37, 53, generator=torch.Generator().manual_seed(2))
    g = bipartite_graph(w, GraphConfig(density=keep))
    b = g.biadjacency
    for mask in (None, edge_mask(w, GraphConfig(density=keep))):
        p = PackedEdges.of(b, values, mask=mask)
        assert (p.bits is None) == (keep < 0.03) and (p.data is not None) == values
        assert p.nbytes < g.n_edges * 16  # less than the [E, 2] int64 edge array it replaces
        back = p.csr()
        np.testing.assert_array_equal(back.indptr, b.indptr)
        np.testing.assert_array_equal(back.indices, b.indices)
        np.testing.assert_array_equal(back.data, b.data if values else np.ones(b.nnz, np.float32))
