"""Redundant-head pruning: FIND_DOMINATING, similarity graph, folding, HF attention equivalence."""
import json

import numpy as np
import pytest
import torch

from topoprune.errors import ConfigError, TensorError
from topoprune.train.heads import (HeadPruningDecision, apply_head_mask, find_dominating, fold_heads, head_params,
                             prune_layer_heads, similarity_graph)


def graph(k, edges):
    s = np.eye(k, dtype=bool)
    for a, b in edges:
        s[a, b] = s[b, a] = True
    return s


def literal_find_dominating(S):
    """The paper's ELIM_REDUNDANT pseudo-code, line by line (diff vectors, no precomputation)."""
    S = np.asarray(S, dtype=int)
    k = len(S)
    rep = []
    for h in range(k):
        best = h
        for g in range(k):
            diff = S[best, :] - S[g, :]
            larger = not (diff == 1).any() and (diff == -1).any()
            tie = (diff == 0).all() and best < g
            if larger or tie:
                best = g
        rep.append(best)
    return rep


@pytest.mark.parametrize("k, edges, expected", [
    (3, [], [0, 1, 2]),                                        # no edges -> identity
    (4, [(1, 0), (1, 2), (1, 3)], [1, 1, 1, 1]),               # star -> the hub
    (2, [(0, 1)], [1, 1]),                                     # tie -> the later head
    (3, [(0, 1), (0, 2), (1, 2)], [2, 2, 2]),                  # clique: all tie -> the last head
    (4, [(0, 1), (2, 3)], [1, 1, 3, 3]),                       # two tied pairs
    (4, [(0, 1), (1, 2), (2, 3)], [1, 1, 2, 2]),               # path: 1 and 2 incomparable, both kept
    (4, [(0, 1), (0, 2), (1, 2), (2, 3)], [2, 2, 2, 2]),       # tie 0->1, then 2 strictly larger
    (5, [(0, 4), (1, 4), (2, 3)], [4, 4, 3, 3, 4]),            # star 4 over {0,1}, pair (2,3)
])
def test_find_dominating_hand_graphs(k, edges, expected):
    s = graph(k, edges)
    assert find_dominating(s) == expected
    assert find_dominating(torch.from_numpy(s)) == expected
    assert literal_find_dominating(s) == expected


def test_find_dominating_matches_pseudo_code_and_is_single_hop():
    rng = np.random.default_rng(0)
    for trial in range(200):
        k = int(rng.integers(1, 10))
        upper = np.triu(rng.random((k, k)) < rng.uniform(0.1, 0.8), 1)
        s = upper | upper.T | np.eye(k, dtype=bool)
        rep = find_dominating(s)
        assert rep == literal_find_dominating(s)
        for h, r in enumerate(rep):
            assert rep[r] == r          # every replacer is itself kept: single hop
            assert s[h, r]              # and adjacent to the head it replaces


def test_find_dominating_rejects_non_square():
    with pytest.raises(TensorError, match="square"):
        find_dominating(np.ones((2, 3), dtype=bool))


def test_similarity_graph_known_answer():
    p = torch.tensor([[0.0, 0.0], [0.25, -0.125], [0.5, 0.0], [0.0, 2.0]])
    # l_inf distances: d01 = 0.25, d02 = 0.5, d12 = 0.25, d03 = d13 = 2, d23 = 2
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(similarity_graph(p, theta=0.25), expected)        # distance == theta is an edge
    assert torch.equal(similarity_graph(p, theta=0.2), torch.eye(4, dtype=torch.bool))
    assert similarity_graph(p, theta=10.0).all()


@pytest.mark.parametrize("theta", [-0.1, float("nan"), float("inf")])
def test_negative_theta_raises(theta):
    with pytest.raises(ConfigError, match="theta"):
        similarity_graph(torch.zeros(2, 3), theta=theta)
    q = torch.zeros(4, 3)
    with pytest.raises(ConfigError, match="theta"):
        prune_layer_heads(q, q, q, torch.zeros(3, 4), n_heads=2, head_dim=2, theta=theta)


def test_head_params_layout_and_gqa():
    d, hd = 2, 1
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])  # 4 query heads
    k = torch.tensor([[10.0, 11.0], [12.0, 13.0]])                      # 2 kv heads
    v = -k
    p = head_params(q, k, v, n_heads=4, n_kv_heads=2, head_dim=hd)
    assert p.shape == (4, 3 * hd * d)
    assert p[0].tolist() == [1, 2, 10, 11, -10, -11]
    assert p[1].tolist() == [3, 4, 10, 11, -10, -11]   # same kv group as head 0
    assert p[3].tolist() == [7, 8, 12, 13, -12, -13]
    bq, bk = torch.arange(4.0), torch.tensor([20.0, 30.0])
    pb = head_params(q, k, v, 4, 2, hd, include_bias=True, biases=(bq, bk, None))
    assert pb.shape == (4, 3 * hd * d + 2) and pb[2, -2:].tolist() == [2.0, 30.0]
    with pytest.raises(ConfigError, match="biases"):
        head_params(q, k, v, 4, 2, hd, include_bias=True)
    with pytest.raises(ConfigError, match="multiple"):
        head_params(q, k, v, 4, 3, hd)
    with pytest.raises(TensorError, match="k"):
        head_params(q, k[:1], v, 4, 2, hd)


def test_fold_heads_hand_example():
    o = torch.arange(12.0).reshape(2, 6)  # 3 heads of head_dim 2
    new, mask = fold_heads(o, [0, 2, 2], head_dim=2)
    assert new.tolist() == [[0, 1, 0, 0, 6, 8], [6, 7, 0, 0, 18, 20]]
    assert mask.tolist() == [True, False, True]
    assert o[0, 2] == 2.0  # input untouched
    with pytest.raises(ConfigError, match="single-hop"):
        fold_heads(o, [1, 2, 2], head_dim=2)


def test_decision_to_dict_is_json_and_round_trips():
    q = torch.randn(8, 4)
    q[0:2] = q[2:4]
    dec = prune_layer_heads(q, q, q, torch.randn(4, 8), n_heads=4, head_dim=2, theta=1e-6,
                            layer="layers.3.attn", block=3)
    assert dec.replaced_by == {0: 1} and dec.kept == (1, 2, 3) and dec.removed == (0,)
    d = json.loads(json.dumps(dec.to_dict()))
    assert d["replaced_by"] == {"0": 1} and d["block"] == 3
    assert HeadPruningDecision.from_dict(d) == dec


def test_previously_removed_heads_are_left_out():
    q = torch.randn(8, 4) * 10
    q[0:2] = 0.0
    q[2:4] = 0.0  # heads 0 and 1 were zeroed earlier; identical, but must not merge again
    dec = prune_layer_heads(q, q, q, torch.randn(4, 8), n_heads=4, head_dim=2, theta=0.1, removed=[0, 1])
    assert dec.replaced_by == {} and dec.kept == (2, 3) and dec.previously_removed == (0, 1)
    assert dec.head_mask().tolist() == [False, False, True, True]


def _identical_heads(linears, hd, src, dst):
    with torch.no_grad():
        for lin in linears:
            lin.weight[dst * hd:(dst + 1) * hd] = lin.weight[src * hd:(src + 1) * hd]
            if lin.bias is not None:
                lin.bias[dst * hd:(dst + 1) * hd] = lin.bias[src * hd:(src + 1) * hd]


def test_folding_identical_bert_heads_keeps_output():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertAttention

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=16, num_attention_heads=4, intermediate_size=32, attn_implementation="eager")
    attn = BertAttention(cfg).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    sa, hd = attn.self, 4
    _identical_heads((sa.query, sa.key, sa.value), hd, src=1, dst=0)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = attn(x)[0]
    biases = (sa.query.bias, sa.key.bias, sa.value.bias)
    dec = prune_layer_heads(sa.query.weight, sa.key.weight, sa.value.weight, attn.output.dense.weight,
                            n_heads=4, head_dim=hd, theta=1e-6, include_bias=True, biases=biases)
    assert dec.replaced_by == {0: 1}  # tie -> the later head
    mask = apply_head_mask(sa.query.weight, sa.key.weight, sa.value.weight, attn.output.dense.weight, dec,
                           head_dim=hd, biases=biases)
    assert mask.tolist() == [False, True, True, True]
    assert (sa.query.weight[:hd] == 0).all() and (sa.value.bias[:hd] == 0).all()
    assert (attn.output.dense.weight[:, :hd] == 0).all()
    with torch.no_grad():
        after = attn(x)[0]
    assert torch.allclose(before, after, atol=1e-5)


def test_without_folding_the_removed_heads_are_only_zeroed():
    torch.manual_seed(1)
    hd, d = 4, 16
    q, k, v, o = (torch.randn(16, d) for _ in range(4))
    o_before = o.clone()
    dec = HeadPruningDecision("l", 0, 4, kept=(1, 2, 3), replaced_by={0: 1})
    mask = apply_head_mask(q, k, v, o, dec, head_dim=hd, fold=False)
    assert mask.tolist() == [False, True, True, True]
    assert (o[:, :hd] == 0).all() and torch.equal(o[:, hd:], o_before[:, hd:])  # the replacer's slice unchanged
    assert (q[:hd] == 0).all() and (k[:hd] == 0).all() and (v[:hd] == 0).all()
    q2, k2, v2, o2 = (t.clone() for t in (q, k, v, o_before))
    apply_head_mask(q2, k2, v2, o2, dec, head_dim=hd)  # folded: the replacer's slice gains head 0's
    assert torch.allclose(o2[:, hd:2 * hd], o_before[:, :hd] + o_before[:, hd:2 * hd])


def test_folding_identical_llama_gqa_heads_keeps_output():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                      intermediate_size=32, attn_implementation="eager")
    attn = LlamaAttention(cfg, layer_idx=0).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    hd = 4
    _identical_heads((attn.q_proj,), hd, src=3, dst=2)  # heads 2, 3 share kv head 1: identical P
    x = torch.randn(1, 6, 16)
    cos_sin = LlamaRotaryEmbedding(cfg)(x, torch.arange(6)[None])
    with torch.no_grad():
        before = attn(x, position_embeddings=cos_sin, attention_mask=None)[0]
    w = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight)
    dec = prune_layer_heads(*w, n_heads=4, n_kv_heads=2, head_dim=hd, theta=1e-6)
    assert dec.replaced_by == {2: 3}
    apply_head_mask(*w, dec, head_dim=hd, n_kv_heads=2)
    assert (attn.q_proj.weight[2 * hd:3 * hd] == 0).all()
    assert (attn.k_proj.weight[hd:] != 0).all()  # kv head 1 still read by head 3
    with torch.no_grad():
        after = attn(x, position_embeddings=cos_sin, attention_mask=None)[0]
    assert torch.allclose(before, after, atol=1e-5)


def test_gqa_kv_rows_zeroed_only_when_whole_group_removed():
    hd, d = 2, 3
    q, k, v, o = torch.ones(4 * hd, d), torch.ones(2 * hd, d), torch.ones(2 * hd, d), torch.ones(d, 4 * hd)
    dec = HeadPruningDecision("l", 0, 4, kept=(2, 3), replaced_by={0: 2, 1: 3})
    mask = apply_head_mask(q, k, v, o, dec, head_dim=hd, n_kv_heads=2)
    assert mask.tolist() == [False, False, True, True]
    assert (k[:hd] == 0).all() and (v[:hd] == 0).all() and (k[hd:] == 1).all()
    assert (q[:2 * hd] == 0).all() and (q[2 * hd:] == 1).all()
    assert (o[:, :2 * hd] == 0).all() and (o[:, 2 * hd:] == 2).all()


def test_apply_head_mask_through_transposed_view():
    """GPT-2 Conv1D stores [in, out]: edits through weight.t() views reach the parameter."""
    hd, d, n = 2, 3, 2
    c_attn = torch.randn(d, 3 * n * hd)      # [in, 3 * out]
    c_proj = torch.randn(n * hd, d)          # [in = heads, out]
    qkv, o = c_attn.t(), c_proj.t()
    q, k, v = qkv[:n * hd], qkv[n * hd:2 * n * hd], qkv[2 * n * hd:]
    expected = c_proj[:hd] + c_proj[hd:]
    dec = HeadPruningDecision("h.0.attn", 0, n, kept=(1,), replaced_by={0: 1})
    apply_head_mask(q, k, v, o, dec, head_dim=hd)
    assert (c_attn[:, :hd] == 0).all() and (c_attn[:, n * hd:n * hd + hd] == 0).all()
    assert torch.equal(c_proj[hd:], expected) and (c_proj[:hd] == 0).all()
