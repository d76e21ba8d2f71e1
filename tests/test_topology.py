"""Topology snapshots during training come from the analysis code and track sparsity."""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from topoprune.train.topology import TopologyHistory, topology_snapshot


@pytest.fixture
def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_snapshot_tracks_sparsity_and_dead_neurons(tiny_bert):
    snap = topology_snapshot(tiny_bert, eps=1e-4)
    assert snap["mlp/sparsity"] == pytest.approx(0.0, abs=0.01)  # random init: almost all |w| >= 1e-4
    assert 0 <= snap["attention/in_gini"] < 1 and snap["mlp/modularity"] is not None
    with torch.no_grad():
        for layer in tiny_bert.bert.encoder.layer:
            layer.intermediate.dense.weight[: 32] = 0  # half of the hidden neurons die
    snap = topology_snapshot(tiny_bert, eps=1e-4, heads_remaining={0: 4, 1: 3})
    ffn_in, ffn_out = 64 * 32, 32 * 64
    assert snap["mlp/sparsity"] == pytest.approx((32 * 32) / (ffn_in + ffn_out), abs=0.01)  # + init below eps
    assert snap["mlp/in_dead"] == pytest.approx(0.25)  # mean over mlp_in (0.5) and mlp_out (0)
    assert snap["heads/remaining"] == 7


def test_history_csv(tmp_path, tiny_bert):
    hist = TopologyHistory()
    hist.add(0, 0.0, topology_snapshot(tiny_bert, fits=False, modularity=False))
    hist.add(10, 0.5, {"mlp/sparsity": 0.5})
    path = hist.save(tmp_path / "topology_history.csv")
    text = path.read_text().splitlines()
    assert text[0].startswith("step,epoch,") and len(text) == 3
    assert np.isclose(hist.frame()["mlp/sparsity"].iloc[1], 0.5)
