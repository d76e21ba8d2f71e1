"""NeuroPrune controller on tiny random-init BERT / GPT-2 / LLaMA / Phi-3: penalties, masks, targets,
heads, state, baselines and validation."""
import copy

import pandas as pd
import pytest
import torch
from torch import nn

from topoprune.errors import ConfigError
from topoprune.graph.masks import MaskSet
from topoprune.train.neuroprune import MASK_FILE, NeuroPrune, NeuroPruneConfig
from topoprune.train.penalties import (attachment_scores, attention_group_penalty, l1_penalty,
                                 preferential_attachment_penalty)

VOCAB = 50


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add overhead (10x slower steps on a 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0)).eval()


def llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                        max_position_embeddings=16, bos_token_id=0, eos_token_id=0)).eval()


def phi3(seed=0):
    from transformers import Phi3Config, Phi3ForCausalLM
    torch.manual_seed(seed)
    return Phi3ForCausalLM(Phi3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16,
                                      pad_token_id=0, bos_token_id=0, eos_token_id=0)).eval()


MODELS = {"bert": bert, "gpt2": gpt2, "llama": llama}


def loss_of(model, step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, VOCAB, (4, 8), generator=g)
    if "SequenceClassification" in type(model).__name__:
        return model(input_ids=x, labels=torch.randint(0, 2, (4,), generator=g)).loss
    return model(input_ids=x, labels=x).loss


def train(model, np_, opt, steps, check=None):
    """The documented hook order; ``check(stage, step)`` is called after the masking hooks."""
    for step in steps:
        loss = loss_of(model, step) + np_.penalty()
        loss.backward()
        np_.before_optimizer_step(opt)
        if check:
            check("grads", step)
        opt.step()
        np_.after_optimizer_step(opt, step)
        if check:
            check("after", step)
        opt.zero_grad()


CFG = dict(penalty_form="gradient", eps=5e-3, refresh_every=1, mlp_weight=1e-3, attn_weight=1e-3, head_pruning="off")


def w(model, name):
    return model.get_parameter(name)


# ---------------------------------------------------------------- penalty closed forms
def pa(weight):
    return preferential_attachment_penalty(weight, attachment_scores(weight, eps=5e-3))


def test_penalty_equals_closed_forms_bert():
    m = bert()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    expected = 0.0
    for i in range(2):
        pre = f"bert.encoder.layer.{i}."
        expected += 1e-3 * (pa(w(m, pre + "intermediate.dense.weight")) + pa(w(m, pre + "output.dense.weight")))
        q, k, v = (w(m, pre + f"attention.self.{n}.weight") for n in ("query", "key", "value"))
        expected += 1e-3 * attention_group_penalty(q, k, v)
    assert torch.allclose(np_.penalty(), expected, rtol=1e-6)


def test_penalty_equals_closed_forms_gpt2_conv1d_fused_and_reaches_parameters():
    m = gpt2()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    expected = 0.0
    for i in range(2):
        pre = f"transformer.h.{i}."
        expected += 1e-3 * (pa(w(m, pre + "mlp.c_fc.weight").t()) + pa(w(m, pre + "mlp.c_proj.weight").t()))
        qkv = w(m, pre + "attn.c_attn.weight")                         # [in, 3d]: columns are q | k | v
        expected += 1e-3 * attention_group_penalty(qkv[:, :32].t(), qkv[:, 32:64].t(), qkv[:, 64:].t())
    pen = np_.penalty()
    assert torch.allclose(pen, expected, rtol=1e-6)
    pen.backward()
    assert w(m, "transformer.h.0.attn.c_attn.weight").grad.abs().sum() > 0
    assert w(m, "transformer.h.1.mlp.c_fc.weight").grad.abs().sum() > 0
    assert w(m, "transformer.h.0.attn.c_proj.weight").grad is None   # W_O is not penalised


def gated_expected(gate, up, down, q, k, v):
    c = attachment_scores(torch.cat([gate, up], dim=1), eps=5e-3)     # shared score of the hidden neuron
    mlp = preferential_attachment_penalty(gate, c) + preferential_attachment_penalty(up, c) + pa(down)
    return 1e-3 * mlp + 1e-3 * attention_group_penalty(q, k, v)


def test_penalty_gated_mlp_shares_scores_llama():
    m = llama()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    expected = 0.0
    for i in range(2):
        pre = f"model.layers.{i}."
        expected += gated_expected(*(w(m, pre + n + ".weight") for n in (
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj")))
    assert torch.allclose(np_.penalty(), expected, rtol=1e-6)


def test_penalty_fused_gate_up_and_qkv_phi3():
    m = phi3()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    gu, qkv = w(m, "model.layers.0.mlp.gate_up_proj.weight"), w(m, "model.layers.0.self_attn.qkv_proj.weight")
    expected = gated_expected(gu[:48], gu[48:], w(m, "model.layers.0.mlp.down_proj.weight"),
                              qkv[:32], qkv[32:48], qkv[48:])
    assert torch.allclose(np_.penalty(), expected, rtol=1e-6)


def oracle_scores(m, arch, eps=5e-3):
    """c_i of every MLP piece by the graph code (the analysis's degree implementation)."""
    from topoprune.graph.bipartite import bipartite_graph
    from topoprune.graph.config import GraphConfig

    def conn(weight):
        g = bipartite_graph(weight.detach(), GraphConfig(threshold=eps, mode="threshold"))
        return torch.as_tensor(g.connectivity("in"), dtype=torch.float32).clamp_min(1.0 / weight.shape[1])
    out = []
    for i in range(2):
        if arch == "bert":
            out += [conn(w(m, f"bert.encoder.layer.{i}.{n}.dense.weight")) for n in ("intermediate", "output")]
        else:
            pre = f"model.layers.{i}.mlp."
            gate_up = torch.cat([w(m, pre + "gate_proj.weight"), w(m, pre + "up_proj.weight")], dim=1)
            out += [conn(gate_up)] * 2 + [conn(w(m, pre + "down_proj.weight"))]
    return torch.cat(out)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_default_config_keeps_attachment_scores_current_from_the_first_step(arch):
    """With the default period the penalty's c_i are those of the weights after every step,
    equal to the graph code's counts, also in a run shorter than any longer period."""
    m = MODELS[arch]()
    cfg = NeuroPruneConfig(penalty_form="gradient", eps=5e-3, mlp_weight=1e-3, attn_weight=1e-3,
                           head_pruning="off")
    np_ = NeuroPrune(m, cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    dense = oracle_scores(m, arch)
    checked = []

    def check(stage, step):
        if stage != "after":
            return
        with torch.no_grad():  # the penalty is the one a fresh count of these weights gives
            fresh = NeuroPrune(copy.deepcopy(m), cfg).penalty()
            assert float(np_.penalty()) == pytest.approx(float(fresh), rel=1e-6)
        c = oracle_scores(m, arch)
        s = np_.attachment_summary()
        assert s["refreshes"] == step + 1 and s["step"] == step
        assert s["mean"] == pytest.approx(float(c.mean()), abs=1e-6)
        assert s["sd"] == pytest.approx(float(c.std(unbiased=False)), abs=1e-6)
        assert s["min"] == pytest.approx(float(c.min()), abs=1e-6)
        checked.append(float((c - dense).abs().max()))
    train(m, np_, opt, range(1, 6), check)
    assert len(checked) == 5 and checked[-1] > 0.05  # the graph moved, and the scores with it


def test_target_mode_ranks_with_scores_of_the_weights_it_cuts():
    """A long period does not leave the cut ranking |w| c_i with the dense c_i = 1."""
    m = bert()
    cfg = NeuroPruneConfig(**dict(CFG, refresh_every=1000, target=0.6, end=5, frequency=1, method="neuroprune"))
    np_ = NeuroPrune(m, cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    last, cuts, counted = [0.0], [], []

    def check(stage, step):
        if stage != "after":
            return
        mlp = np_.sparsity_report().query("level == 'role' and role in ('mlp_in', 'mlp_out')").sparsity.mean()
        if mlp > last[0]:
            cuts.append(step)
        last[0] = mlp
        counted.append(np_.attachment_summary()["step"])
    train(m, np_, opt, range(1, 7), check)
    assert len(cuts) >= 2 and all(counted[k - 1] == k for k in cuts)  # counted at each cut
    assert counted[-1] == cuts[-1]  # and not in between: the period is 1000


@pytest.mark.parametrize("method", ["neuroprune", "l1", "gmp", "random"])
def test_every_masked_method_masks_the_same_attention_matrices(method):
    m = bert()
    np_ = NeuroPrune(m, NeuroPruneConfig(**dict(CFG, method=method, target=0.5, end=4)))
    qkv = {f"bert.encoder.layer.{i}.attention.self.{n}.weight" for i in range(2) for n in ("query", "key", "value")}
    assert qkv <= set(np_.masks.names())
    off = NeuroPrune(bert(), NeuroPruneConfig(**dict(CFG, method=method, target=0.5, end=4, attention_masks=False)))
    assert not qkv & set(off.masks.names())


# ---------------------------------------------------------------- masks during training
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_masked_entries_stay_zero_and_never_revive(arch):
    m = MODELS[arch]()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01)
    assert len(np_.masks) and sum(int((~mk).sum()) for mk in np_.masks.masks.values()) > 0
    history = [np_.masks.state_dict()]

    def check(stage, step):
        for name, mask in np_.masks.masks.items():
            p = w(m, name)
            if stage == "grads":
                assert p.grad is None or (p.grad[~mask] == 0).all()
                continue
            assert (p[~mask] == 0).all(), (name, step)
            st = opt.state[p]
            assert (st["exp_avg"][~mask] == 0).all() and (st["exp_avg_sq"][~mask] == 0).all()
        if stage == "after":
            prev = history[-1]
            for name, mask in np_.masks.masks.items():
                if name in prev:
                    assert not (mask & ~prev[name]).any(), f"{name} revived at step {step}"
            history.append(np_.masks.state_dict())

    train(m, np_, opt, range(1, 21), check)
    assert sum(int((~a).sum()) for a in history[-1].values()) > sum(int((~a).sum()) for a in history[0].values())


# ---------------------------------------------------------------- target mode
@pytest.mark.parametrize("method", ["neuroprune", "l1", "gmp", "random"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_target_mode_reaches_exact_sparsity(arch, method):
    m = MODELS[arch]()
    cfg = NeuroPruneConfig(**dict(CFG, method=method, target=0.7, end=10, frequency=2))
    np_ = NeuroPrune(m, cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    seen = []
    train(m, np_, opt, range(1, 13),
          lambda stage, step: stage == "after" and seen.append(np_.sparsity_report().query("level == 'matrix'")))
    for df in (seen[9], seen[-1]):                                       # at the schedule end and after
        mlp = df[df.role.str.startswith("mlp")]
        assert len(mlp) >= 4 and (mlp.target == 0.7).all()
        assert ((mlp.pruned - (0.7 * mlp.numel).round()).abs() <= 1).all(), mlp
    mlp_sp = [df[df.role.str.startswith("mlp")].sparsity.to_numpy() for df in seen]
    assert all((b >= a).all() for a, b in zip(mlp_sp, mlp_sp[1:]))      # monotone: masks only shrink
    assert mlp_sp[0].max() < 0.7                                         # cubic ramp, not one-shot


def hubby_bert():
    """MLP rows alternate: hubs (all entries moderate) and sparse rows (half zero, half larger)."""
    m = bert()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "intermediate.dense.weight" in name or "output.dense.weight" in name and "attention" not in name:
                rows, cols = p.shape
                sign = torch.randint(0, 2, p.shape, generator=g) * 2.0 - 1.0
                hub = 0.010 + 0.010 * torch.rand(p.shape, generator=g)
                sparse = (0.015 + 0.015 * torch.rand(p.shape, generator=g)) * (torch.arange(cols) % 2 == 0)
                p.copy_(sign * torch.where((torch.arange(rows) % 2 == 0)[:, None], hub, sparse))
    return m


def test_target_mode_keeps_hub_rows():
    kept = {}
    for method in ("neuroprune", "gmp"):
        m = hubby_bert()
        cfg = NeuroPruneConfig(method=method, target=0.5, schedule="constant", mlp_weight=0.0, attn_weight=0.0,
                               attention_masks=False)
        np_ = NeuroPrune(m, cfg)
        np_.after_optimizer_step(torch.optim.SGD(m.parameters(), lr=0.1), 1)
        name = "bert.encoder.layer.0.intermediate.dense.weight"
        mask = np_.masks.masks[name]
        assert int(mask.sum()) == mask.numel() // 2
        kept[method] = int(mask[0::2].sum())                           # entries kept in hub rows
    assert kept["neuroprune"] > kept["gmp"] + 100, kept


def test_same_seed_gives_identical_masks():
    def masks(seed):
        m = bert()
        np_ = NeuroPrune(m, NeuroPruneConfig(method="random", target=0.6, end=4, seed=seed))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        train(m, np_, opt, range(1, 6))
        return np_.masks.state_dict()

    a, b, c = masks(7), masks(7), masks(8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- heads
def make_heads_identical(model, arch):
    """Copy head 3's Q/K/V parameters onto heads 0-2 of every layer (same layer output)."""
    with torch.no_grad():
        for i in range(2):
            if arch == "bert":
                for n in ("query", "key", "value"):
                    lin = model.get_submodule(f"bert.encoder.layer.{i}.attention.self.{n}")
                    for h in range(3):
                        lin.weight[h * 8:(h + 1) * 8] = lin.weight[24:32]
                        lin.bias[h * 8:(h + 1) * 8] = lin.bias[24:32]
            else:
                conv = model.get_submodule(f"transformer.h.{i}.attn.c_attn")  # [in, 3d]
                for part in range(3):
                    base = part * 32
                    for h in range(3):
                        conv.weight[:, base + h * 8:base + (h + 1) * 8] = conv.weight[:, base + 24:base + 32]
                        conv.bias[base + h * 8:base + (h + 1) * 8] = conv.bias[base + 24:base + 32]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_head_pruning_folds_identical_heads_without_changing_outputs(arch):
    m = MODELS[arch]()
    make_heads_identical(m, arch)
    np_ = NeuroPrune(m, NeuroPruneConfig(theta=0.0, mlp_weight=0.0, attn_weight=0.0, attention_masks=False))
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                 # after construction: entries below eps are already pruned
        before = m(input_ids=x).logits
    out = np_.end_epoch()
    assert [d.replaced_by for d in out] == [{0: 3, 1: 3, 2: 3}] * 2
    assert np_.head_decisions == out
    with torch.no_grad():
        after = m(input_ids=x).logits
    assert torch.allclose(before, after, atol=1e-5)
    if arch == "bert":
        q, o = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense"
        assert not np_.masks.masks[q + ".weight"][:24].any() and np_.masks.masks[q + ".weight"][24:].all()
        assert not np_.masks.masks[q + ".bias"][:24].any()
        assert not np_.masks.masks[o + ".weight"][:, :24].any() and np_.masks.masks[o + ".weight"][:, 24:].all()
        assert (w(m, q + ".weight")[:24] == 0).all() and (w(m, o + ".weight")[:, :24] == 0).all()
    else:
        qkv = np_.masks.masks["transformer.h.0.attn.c_attn.weight"]      # Conv1D [in, 3d]: heads are columns
        for base in (0, 32, 64):
            assert not qkv[:, base:base + 24].any() and qkv[:, base + 24:base + 32].all()
        o = np_.masks.masks["transformer.h.0.attn.c_proj.weight"]         # [in, out]: heads are rows
        assert not o[:24].any() and o[24:].all()
    assert np_.prune_heads() == []                                         # only head 3 left: nothing to do


def test_head_pruning_large_theta_gqa_masks_and_keeps_them_through_training():
    m = llama()
    np_ = NeuroPrune(m, NeuroPruneConfig(**dict(CFG, theta=10.0, head_pruning="steps", head_every_steps=3)))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, np_, opt, range(1, 3))
    assert np_.head_decisions == []
    train(m, np_, opt, range(3, 4))
    assert len(np_.head_decisions) == 2
    d = np_.head_decisions[0]
    assert d.replaced_by == {0: 3, 1: 3, 2: 3} and d.kept == (3,) and d.layer == "decoder.0"
    pre = "model.layers.0.self_attn."
    k = np_.masks.masks[pre + "k_proj.weight"]                           # kv head 0 (q heads 0, 1) gone
    assert not k[:8].any() and (k[8:] | (w(m, pre + "k_proj.weight")[8:] == 0)).all()
    train(m, np_, opt, range(4, 9))
    assert (w(m, pre + "q_proj.weight")[:24] == 0).all() and (w(m, pre + "o_proj.weight")[:, :24] == 0).all()
    assert (w(m, pre + "k_proj.weight")[:8] == 0).all()
    assert all(d.previously_removed == (0, 1, 2) for d in np_.head_decisions[2:])


# ---------------------------------------------------------------- state
def test_save_load_round_trip_and_resume_matches_uninterrupted_run(tmp_path):
    cfg = NeuroPruneConfig(**dict(CFG, refresh_every=3, theta=0.5, head_pruning="epoch"))

    def run(model, np_, opt, steps, epoch_end_at=10):
        for step in steps:
            train(model, np_, opt, [step])
            if step == epoch_end_at:
                np_.end_epoch(opt)

    ref = gpt2()
    ref_np = NeuroPrune(ref, cfg)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    run(ref, ref_np, ref_opt, range(1, 21))
    assert ref_np.head_decisions                                           # heads were pruned at step 10

    a = gpt2()
    a_np = NeuroPrune(a, cfg)
    a_opt = torch.optim.AdamW(a.parameters(), lr=1e-2)
    run(a, a_np, a_opt, range(1, 11))
    path = a_np.save(tmp_path)
    assert path == tmp_path / MASK_FILE and path.is_file()
    meta = MaskSet.load(path).metadata
    assert meta["step"] == 10 and meta["head_decisions"] == [d.to_dict() for d in a_np.head_decisions]
    model_state, opt_state = copy.deepcopy(a.state_dict()), copy.deepcopy(a_opt.state_dict())

    b = gpt2(seed=123)                                                     # different init, then restored
    b.load_state_dict(model_state)
    b_opt = torch.optim.AdamW(b.parameters(), lr=1e-2)
    b_opt.load_state_dict(opt_state)
    b_np = NeuroPrune(b, cfg)
    b_np.load(tmp_path, b_opt)
    assert b_np.step == 10 and b_np.head_decisions == a_np.head_decisions
    sa, sb = a_np.state_dict(), b_np.state_dict()
    assert sa["masks"].keys() == sb["masks"].keys()
    assert all(torch.equal(sa["masks"][k], sb["masks"][k]) for k in sa["masks"])
    assert all(torch.equal(sa["scores"][k], sb["scores"][k]) for k in sa["scores"])

    run(b, b_np, b_opt, range(11, 21))
    ref_masks, b_masks = ref_np.masks.state_dict(), b_np.masks.state_dict()
    assert ref_masks.keys() == b_masks.keys()
    assert all(torch.equal(ref_masks[k], b_masks[k]) for k in ref_masks)
    assert all(torch.equal(p, b.get_parameter(n)) for n, p in ref.named_parameters())


def test_load_rejects_masks_of_another_model(tmp_path):
    np_ = NeuroPrune(bert(), NeuroPruneConfig(**CFG))
    np_.save(tmp_path)
    other = NeuroPrune(gpt2(), NeuroPruneConfig(**CFG))
    with pytest.raises(Exception, match="matches no parameter"):
        other.load(tmp_path)


# ---------------------------------------------------------------- baselines and report
@pytest.mark.parametrize("method, target", [("neuroprune", None), ("dense", None), ("l1", None), ("l1", 0.5),
                                            ("gmp", 0.5), ("random", 0.5), ("neuroprune", 0.5)])
def test_each_method_runs(method, target):
    m = bert()
    cfg = NeuroPruneConfig(**dict(CFG, method=method, target=target, end=4 if target else None))
    np_ = NeuroPrune(m, cfg)
    pen = np_.penalty()
    if method == "l1":
        names = [f"bert.encoder.layer.{i}.{n}.weight" for i in range(2)
                 for n in ("intermediate.dense", "output.dense", "attention.self.query", "attention.self.key",
                           "attention.self.value")]
        assert torch.allclose(pen, 1e-3 * sum(l1_penalty(w(m, n)) for n in names), rtol=1e-6)
    elif method in ("dense", "gmp", "random"):
        assert float(pen) == 0.0 and not pen.requires_grad
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, np_, opt, range(1, 6))
    np_.end_epoch(opt)
    report = np_.sparsity_report()
    total = report.query("level == 'total'").iloc[0]
    if method == "dense":
        assert len(np_.masks) == 0 and total.pruned == 0
    else:
        assert total.sparsity > 0
    if target is not None:
        mlp = report.query("level == 'role' and role in ('mlp_in', 'mlp_out')")
        assert ((mlp.sparsity - target).abs() < 1e-3).all()


def test_sparsity_report_layout():
    m = gpt2()
    np_ = NeuroPrune(m, NeuroPruneConfig(**CFG))
    df = np_.sparsity_report()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["level", "name", "tensor", "role", "block", "side", "numel", "pruned", "sparsity",
                                "below_eps", "target", "method", "step"]
    matrix = df[df.level == "matrix"]
    assert set(matrix.role) == {"q", "k", "v", "o", "mlp_in", "mlp_out"} and len(matrix) == 12
    assert set(df[df.level == "role"].name) == set(matrix.role)
    total = df[df.level == "total"].iloc[0]
    assert total.numel == matrix.numel.sum() and total.pruned == matrix.pruned.sum()
    assert ((matrix.below_eps >= matrix.sparsity - 1e-12)).all()       # pruned entries are zero, so below eps


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=-1e-4), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(theta=-0.1), "theta"), (dict(theta=float("inf")), "theta"),
    (dict(target=1.0, end=10), "target"), (dict(target=-0.1, end=10), "target"),
    (dict(mlp_weight=-1.0), "mlp_weight"), (dict(attn_weight=-1e-6), "attn_weight"),
    (dict(method="magic"), "method"), (dict(method="gmp"), "needs a target"),
    (dict(method="random"), "needs a target"), (dict(method="dense", target=0.5, end=10), "dense"),
    (dict(head_pruning="sometimes"), "head_pruning"), (dict(head_pruning="steps"), "head_every_steps"),
    (dict(refresh_every=0), "refresh_every"), (dict(roles=("embedding",)), "roles"), (dict(roles=()), "roles"),
    (dict(target=0.5), "end step"), (dict(target=0.5, end=10, frequency=20), "frequency"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NeuroPruneConfig(**kwargs)


def test_model_without_transformer_blocks_raises():
    with pytest.raises(ConfigError, match="no recognisable MLP or attention"):
        NeuroPrune(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))


def test_target_roles_absent_from_model_raise():
    with pytest.raises(ConfigError, match="target mode"):
        NeuroPrune(bert(), NeuroPruneConfig(target=0.5, end=10, roles=("mlp_gate",)))
