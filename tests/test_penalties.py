"""NeuroPrune regularisers: closed forms on hand matrices, gradients, GQA shapes, attachment scores."""
import math

import pytest
import torch

from topoprune.graph.config import GraphConfig
from topoprune.errors import ConfigError, TensorError
from topoprune.graph.bipartite import bipartite_graph
from topoprune.graph.degrees import threshold_in_degree
from topoprune.train.penalties import (attachment_scores, attention_group_penalty, l1_penalty,
                                 preferential_attachment_penalty)

# 3 rows x 4 inputs; |w| >= 1e-4 counts: row 0 -> 4, row 1 -> 2, row 2 -> 0 (dead row)
W = torch.tensor([[1.0, -2.0, 0.5, -0.5],
                  [0.0, 3.0, 5e-5, -1.0],
                  [0.0, 0.0, -5e-5, 0.0]], dtype=torch.float64)


def test_attachment_scores_equal_counts_over_in_and_respect_floor():
    c = attachment_scores(W)
    assert c.dtype == W.dtype and c.shape == (3,)
    # dead row clamped to the default floor 1/in = 1/4
    assert torch.equal(c, torch.tensor([4 / 4, 2 / 4, 1 / 4], dtype=torch.float64))
    c = attachment_scores(W, floor=0.6)
    assert torch.equal(c, torch.tensor([1.0, 0.6, 0.6], dtype=torch.float64))
    # a smaller eps turns the 5e-5 entries into connections
    c = attachment_scores(W, eps=1e-5, floor=0.01)
    assert torch.equal(c, torch.tensor([1.0, 0.75, 0.25], dtype=torch.float64))


def test_attachment_scores_match_graphs_and_have_no_grad():
    w = torch.randn(16, 24, requires_grad=True)
    with torch.no_grad():
        w[w.abs() < 0.5] = 0
    c = attachment_scores(w, floor=1e-9)
    g = bipartite_graph(w, GraphConfig(threshold=1e-4, mode="threshold"))
    assert torch.allclose(c, torch.as_tensor(g.connectivity("in"), dtype=torch.float32))
    assert not c.requires_grad and c.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_threshold_in_degree_equals_the_graphs_in_degree(dtype):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(37, 53, generator=g) * 1e-3).to(dtype)  # many entries either side of 1e-3
    w[0] = 0
    w[1, :5] = -1e-3  # on the threshold: an edge
    for t in (0.0, 1e-4, 1e-3):
        graph = bipartite_graph(w.float() if dtype == torch.bfloat16 else w, GraphConfig(threshold=t, mode="threshold"))
        got = threshold_in_degree(w, t)
        assert got.dtype == torch.int32 and got.device == w.device
        assert torch.equal(got.long(), torch.as_tensor(graph.in_degree()).long())


def test_attachment_scores_of_a_gate_up_pair_equal_those_of_their_concatenation():
    g = torch.Generator().manual_seed(4)
    gate, up = torch.randn(12, 20, generator=g) * 1e-4, torch.randn(12, 30, generator=g) * 1e-4
    cat = torch.cat([gate, up], dim=1)
    assert torch.equal(attachment_scores([gate, up]), attachment_scores(cat))
    graph = bipartite_graph(cat, GraphConfig(threshold=1e-4, mode="threshold"))
    assert torch.allclose(attachment_scores((gate, up), floor=1e-9),
                          torch.as_tensor(graph.connectivity("in"), dtype=torch.float32))
    with pytest.raises(TensorError, match="rows differ"):
        attachment_scores([gate, up[:5]])


@pytest.mark.parametrize("floor", [0.0, -0.1, 1.5])
def test_attachment_scores_bad_floor(floor):
    with pytest.raises(ConfigError, match="floor"):
        attachment_scores(W, floor=floor)


def test_attachment_scores_bad_input():
    with pytest.raises(ConfigError):
        attachment_scores(W, eps=-1.0)
    with pytest.raises(TensorError):
        attachment_scores(torch.ones(3))
    with pytest.raises(TensorError, match="NaN"):
        attachment_scores(torch.tensor([[1.0, float("nan")]]))


def test_preferential_attachment_closed_form():
    # row l1: 4.0, 4.00005, 5e-5 ; c = 1, 1/2, 1/4
    expected = 4.0 / 1.0 + 4.00005 / 0.5 + 5e-5 / 0.25
    val = preferential_attachment_penalty(W, attachment_scores(W))
    assert val.ndim == 0
    assert math.isclose(val.item(), expected, rel_tol=1e-12)


def test_preferential_attachment_gradient_is_sign_over_c():
    torch.manual_seed(0)
    w = torch.randn(5, 7, dtype=torch.float64)
    w[w.abs() < 0.6] = 0.0
    w.requires_grad_(True)
    c = attachment_scores(w)
    preferential_attachment_penalty(w, c).backward()
    assert torch.allclose(w.grad, torch.sign(w.detach()) / c[:, None])


def test_preferential_attachment_no_grad_through_scores():
    w = torch.randn(4, 3, requires_grad=True)
    c = torch.full((4,), 0.5, requires_grad=True)
    preferential_attachment_penalty(w, c).backward()
    assert c.grad is None
    with pytest.raises(TensorError, match="scores"):
        preferential_attachment_penalty(w, torch.ones(3))


def test_attention_group_penalty_closed_form():
    q = torch.tensor([[1.0, -2.0], [0.0, 1.0]], dtype=torch.float64)
    k = torch.tensor([[3.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 0.0], [4.0, -5.0]], dtype=torch.float64)
    # column sums of |cat([q, k, v])|: col 0 = 1+0+3+1+0+4 = 9, col 1 = 2+1+0+0+0+5 = 8
    assert math.isclose(attention_group_penalty(q, k, v, delta=0).item(), 3.0 + math.sqrt(8.0), rel_tol=1e-12)
    d = 1e-8
    assert math.isclose(attention_group_penalty(q, k, v, delta=d).item(),
                        math.sqrt(9 + d) + math.sqrt(8 + d), rel_tol=1e-12)


def test_attention_group_penalty_grouped_query_shapes_and_gradient():
    torch.manual_seed(0)
    d, hd = 6, 2
    q = torch.randn(4 * hd, d, dtype=torch.float64, requires_grad=True)  # 4 query heads
    k = torch.randn(2 * hd, d, dtype=torch.float64, requires_grad=True)  # 2 kv heads
    v = torch.randn(2 * hd, d, dtype=torch.float64, requires_grad=True)
    val = attention_group_penalty(q, k, v, delta=0)
    s = torch.cat([q, k, v], 0).abs().sum(0)
    assert torch.allclose(val, s.sqrt().sum())
    val.backward()
    # d/dA_rj = sign(A_rj) / (2 sqrt(s_j))
    assert torch.allclose(k.grad, torch.sign(k.detach()) / (2 * s.detach().sqrt()))


def test_attention_group_penalty_finite_gradient_on_zero_group():
    q = torch.zeros(2, 3, requires_grad=True)
    k = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    v = torch.zeros(1, 3, requires_grad=True)
    attention_group_penalty(q, k, v).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    with pytest.raises(TensorError, match="widths"):
        attention_group_penalty(q, torch.zeros(1, 4), v)
    with pytest.raises(ConfigError):
        attention_group_penalty(q, k, v, delta=-1.0)


def test_l1_penalty_and_half_precision():
    assert l1_penalty(W).item() == pytest.approx(4.0 + 4.00005 + 5e-5)
    w = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    val = l1_penalty(w)
    assert val.dtype == torch.float32 and val.item() == 3.5
    val.backward()
    assert w.grad.dtype == torch.bfloat16
