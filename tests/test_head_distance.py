"""Distances between attention heads, and the head-similarity threshold read relative to a layer's scale."""
import copy
import math

import pytest
import torch

from topoprune.errors import ConfigError, TensorError
from topoprune.graph.binding import Binding
from topoprune.train.head_distance import distance_summary, head_distances, layer_scale, layer_theta
from topoprune.train.heads import similarity_graph
from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig


def bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def test_head_distances_are_the_pairwise_linf_distances():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 7, generator=g, dtype=torch.float64)
    d = head_distances(p)
    brute = torch.tensor([[max(abs(a - b) for a, b in zip(p[i].tolist(), p[j].tolist())) for j in range(5)]
                          for i in range(5)], dtype=torch.float64)
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(d, brute)
    theta = float(d[0, 1])  # the similarity graph is the distance matrix thresholded
    assert torch.equal(similarity_graph(p, theta), d <= theta)
    with pytest.raises(TensorError):
        head_distances(torch.ones(3))


def test_layer_scale_and_theta():
    p = torch.tensor([[1.0, -3.0], [0.5, 0.2], [-2.0, 0.0]])  # row l-inf norms 3, 0.5, 2: median 2
    assert layer_scale(p) == 2.0
    assert layer_theta(0.15, "absolute", p) == 0.15
    assert layer_theta(0.15, "layer", p) == pytest.approx(0.3)
    assert layer_theta(0.15, "layer", 10 * p) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="theta scale"):
        layer_theta(0.15, "global", p)
    with pytest.raises(ConfigError, match="theta_scale"):
        NeuroPruneConfig(theta_scale="global")


def test_distance_summary_finds_identical_heads_and_leaves_removed_ones_out():
    m = bert()
    with torch.no_grad():  # head 0 of layer 0 a copy of head 1 (Q, K, V rows and biases)
        for n in ("query", "key", "value"):
            lin = m.get_submodule(f"bert.encoder.layer.0.attention.self.{n}")
            lin.weight[0:8] = lin.weight[8:16]
            lin.bias[0:8] = lin.bias[8:16]
    b = Binding(m)
    layers = b.attention
    rows = distance_summary(b, layers, include_bias=True)
    assert [r["heads"] for r in rows] == [4, 4]
    assert rows[0]["min"] == 0.0 and rows[1]["min"] > 0
    assert rows[0]["median"] > 0 and math.isclose(rows[1]["median_rel"], rows[1]["median"] / rows[1]["scale"])
    gone = distance_summary(b, layers, removed={layers[0].key: (0,)}, include_bias=True)
    assert gone[0]["heads"] == 3 and gone[0]["min"] > 0


def _scaled(model, factor):
    """A copy of ``model`` with every Q/K/V weight and bias multiplied by ``factor``."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i in range(2):
            for n in ("query", "key", "value"):
                lin = out.get_submodule(f"bert.encoder.layer.{i}.attention.self.{n}")
                lin.weight.mul_(factor)
                lin.bias.mul_(factor)
    return out


def _removed(model, theta, scale_mode):
    np_ = NeuroPrune(model, NeuroPruneConfig(theta=theta, theta_scale=scale_mode, mlp_weight=0.0, attn_weight=0.0,
                                             attention_masks=False, head_fold=False))
    return [(d.layer, d.removed, d.theta) for d in np_.end_epoch()]


def test_a_layer_relative_theta_removes_the_same_heads_at_any_weight_scale():
    """Scaling every Q/K/V weight by 10 scales every head distance by 10: a relative theta removes
    the same heads, the same absolute theta none of them."""
    m = bert()
    rows = distance_summary(Binding(m), Binding(m).attention)
    rel = 0.5 * (rows[0]["min_rel"] + rows[0]["median_rel"])  # removes some heads of layer 0, not all
    small_rel, big_rel = _removed(_scaled(m, 1), rel, "layer"), _removed(_scaled(m, 10), rel, "layer")
    assert small_rel and [(la, r) for la, r, _ in small_rel] == [(la, r) for la, r, _ in big_rel]
    for (_, _, t_small), (_, _, t_big) in zip(small_rel, big_rel):  # each decision records the theta it used
        assert t_big == pytest.approx(10 * t_small, rel=1e-5)
    absolute = rel * rows[0]["scale"] * 1.0001
    assert _removed(_scaled(m, 1), absolute, "absolute")  # at scale 1 the absolute theta removes heads too
    assert _removed(_scaled(m, 10), absolute, "absolute") == []
