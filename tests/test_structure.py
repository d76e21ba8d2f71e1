"""Structured target mode: exact shares of whole neurons and heads, chosen by graph strength, then compacted."""
import json

import pytest
import torch
from click.testing import CliRunner

from topoprune.cli import main
from topoprune.compaction import compact, load_compact
from topoprune.graph.binding import Binding
from topoprune.models import build_model, load_tokenizer
from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _train(model, np_, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(1, steps + 1):
        ids = torch.randint(1, 500, (4, 12), generator=g)
        out = model(input_ids=ids, labels=ids if "CausalLM" in type(model).__name__ else torch.zeros(4, dtype=torch.long))
        (out.loss + np_.penalty()).backward()
        np_.before_optimizer_step(opt)
        opt.step()
        np_.after_optimizer_step(opt, step)
        opt.zero_grad()


def _pruned_counts(np_):
    st = np_._structure
    neurons = {m.key: int((~st.neuron_alive(m)).sum()) for m in st.mlps}
    heads = {la.key: int((~st.head_alive(la)).sum()) for la in st.layers}
    return neurons, heads


@pytest.mark.parametrize("method", ["neuroprune", "gmp", "random"])
def test_exact_shares_on_the_schedule_then_compacted(tok, method):
    torch.manual_seed(0)
    model = build_model("tiny-bert", "classification", tok, 2)
    cfg = NeuroPruneConfig(method=method, neuron_target=0.5, head_target=0.5, end=4, frequency=2,
                           mlp_weight=0.0, attn_weight=0.0)
    np_ = NeuroPrune(model, cfg)
    _train(model, np_, 2)
    mid_neurons, mid_heads = _pruned_counts(np_)
    assert all(0 < n < 128 for n in mid_neurons.values())  # half way along the cubic ramp
    first = {k: v.clone() for k, v in np_.masks.masks.items()}
    _train(model, np_, 4)
    neurons, heads = _pruned_counts(np_)
    assert set(neurons.values()) == {128} and set(heads.values()) == {2}  # 256 neurons, 4 heads per layer
    for k, m in np_.masks.masks.items():  # nested: nothing revives
        assert not bool((m & ~first[k]).any()), k
    assert np_.heads_remaining() == {la.key: 2 for la in np_._layers}
    model.eval()
    ids = torch.randint(1, 500, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    compact(model)
    blocks = model.config.topoprune_compact["blocks"]
    assert {v["kept"] for v in blocks["mlp"].values()} == {128} and {v["kept"] for v in blocks["heads"].values()} == {2}
    with torch.no_grad():
        assert (model(input_ids=ids).logits - before).abs().max() <= 1e-5


def test_neuroprune_keeps_the_strongest_neurons(tok):
    """One cut (constant schedule): the neurons that go have the lowest in-strength x out-strength."""
    from topoprune.train.penalties import strengths

    torch.manual_seed(1)
    model = build_model("tiny-bert", "classification", tok, 2)
    b = Binding(model)
    mlp = b.mlp[0]
    s_in = strengths(b.weight(mlp.inputs[0]).detach(), 1e-4)[0]
    s_out = strengths(b.weight(mlp.out).detach(), 1e-4)[1]
    np_ = NeuroPrune(model, NeuroPruneConfig(neuron_target=0.25, schedule="constant", mlp_weight=0.0,
                                             attn_weight=0.0))
    np_._structure.apply(1)
    gone = ~np_._structure.neuron_alive(mlp)
    expected = torch.argsort(s_in * s_out, stable=True)[:64]
    assert set(torch.nonzero(gone).flatten().tolist()) == set(expected.tolist())


def test_grouped_query_attention_loses_the_same_number_per_group(tok):
    torch.manual_seed(0)
    model = build_model("tiny-llama", "causal_lm", tok)  # 4 heads, 2 key/value heads
    np_ = NeuroPrune(model, NeuroPruneConfig(head_target=0.5, end=2, mlp_weight=0.0, attn_weight=0.0))
    _train(model, np_, 2)
    for la in np_._structure.layers:
        alive = np_._structure.head_alive(la).reshape(2, 2)
        assert alive.sum(1).tolist() == [1, 1]
    compact(model.eval())
    heads = model.config.topoprune_compact["blocks"]["heads"]
    assert all(v["kept"] == 2 and v["kv_kept"] == 2 for v in heads.values())


def test_resumed_controller_knows_the_pruned_heads(tok, tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-bert", "classification", tok, 2)
    cfg = NeuroPruneConfig(head_target=0.5, neuron_target=0.25, end=2, mlp_weight=0.0, attn_weight=0.0)
    np_ = NeuroPrune(model, cfg)
    _train(model, np_, 2)
    np_.save(tmp_path)
    again = NeuroPrune(model, cfg)
    again.load(tmp_path)
    assert again.heads_remaining() == np_.heads_remaining() == {la.key: 2 for la in np_._layers}


def test_bad_structured_settings():
    from topoprune.errors import ConfigError

    for kw, msg in ((dict(neuron_target=1.0, end=4), "neuron_target"), (dict(head_target=-0.1, end=4), "head_target"),
                    (dict(method="dense", neuron_target=0.5, end=4), "dense")):
        with pytest.raises(ConfigError, match=msg):
            NeuroPruneConfig(**kw)


def test_minilm_structured_run_compacts_to_the_same_logits(tmp_path):
    """The real MiniLM after a short structured NeuroPrune run: compacted logits equal the masked model's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--model", "minilm", "--max-steps", "3", "--neurons", "0.5", "--heads",
                                  "0.25", "--n-train", "48", "--n-eval", "16", "--batch-size", "16",
                                  "--topology-every", "0", "--out", str(run)])
    assert r.exit_code == 0, r.output
    masked = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    r = CliRunner().invoke(main, ["compact", str(run), "--out", str(tmp_path / "small")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "small" / "topoprune.json").read_text())
    assert {v["kept"] for v in rec["blocks"]["mlp"].values()} == {768}  # 1536 -> 768 in every block
    assert {v["kept"] for v in rec["blocks"]["heads"].values()} == {9}  # 12 -> 9 heads
    assert rec["parameters"]["after"] < 0.85 * rec["parameters"]["before"]
    small = load_compact(tmp_path / "small")
    tok = AutoTokenizer.from_pretrained(run / "model")
    batch = tok(["a happy little test", "what a terrible, awful day it was"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert (small(**batch).logits - masked(**batch).logits).abs().max() <= 1e-5
