"""Role detection names every weight of many real architectures, in both sources.

Each tiny random-init transformers model is checked as an in-memory module and as a saved
Hugging Face directory: every block has exactly its q/k/v/o (+ cross-attention) and MLP
matrices, with the config's head geometry and ``[out, in]`` shapes, and each matrix cut out
by :func:`topoprune.graph.analysis._matrix` equals the projection the model really applies
(measured by running the module on an identity input). Fused projections (GPT-2 ``c_attn``,
GPT-NeoX/BLOOM/Falcon ``query_key_value``, Phi-3 ``qkv_proj``/``gate_up_proj``) are compared
with the q/k/v (gate/up) the model's own forward code produces.
"""
import copy
import logging
from collections import Counter
from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from transformers.utils import logging as hf_logging

from topoprune.graph.analysis import _matrix
from topoprune.graph.loading import open_checkpoint
from topoprune.graph.roles import ATTENTION_ROLES, CROSS_ROLES, ROLES, describe

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

HIDDEN, VOCAB = 32, 100
ATTN = ("q", "k", "v", "o")
PLAIN_MLP = ("mlp_in", "mlp_out")
GATED_MLP = ("mlp_gate", "mlp_up", "mlp_out")


@dataclass(frozen=True)
class Side:
    """What one stack of blocks must look like."""

    blocks: int
    heads: int
    kv: int
    head_dim: int
    ffn: int
    cross: bool = False


@dataclass(frozen=True)
class Case:
    config: type
    model: type
    kwargs: dict
    sides: dict
    gated: bool = False
    #: Tensors outside blocks that are neither embeddings nor LM heads (role ``other``).
    others: tuple = ()


def _dec(blocks=2, heads=4, kv=4, head_dim=8, ffn=64, cross=False):
    return {"decoder": Side(blocks, heads, kv, head_dim, ffn, cross)}


_LLAMA_LIKE = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64)
_FALCON = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB, ffn_hidden_size=64)

CASES = {
    "bert": Case(tf.BertConfig, tf.BertModel,
                 dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      vocab_size=VOCAB, max_position_embeddings=64),
                 {"encoder": Side(2, 4, 4, 8, 64)}, others=("pooler.dense.weight",)),
    "roberta": Case(tf.RobertaConfig, tf.RobertaForMaskedLM,
                    dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                         vocab_size=VOCAB, max_position_embeddings=64),
                    {"encoder": Side(2, 4, 4, 8, 96)}, others=("lm_head.dense.weight",)),
    "distilbert": Case(tf.DistilBertConfig, tf.DistilBertForMaskedLM,
                       dict(dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=VOCAB,
                            max_position_embeddings=64),
                       {"encoder": Side(2, 4, 4, 8, 64)}, others=("vocab_transform.weight",)),
    "gpt2": Case(tf.GPT2Config, tf.GPT2LMHeadModel,
                 dict(n_embd=HIDDEN, n_layer=2, n_head=4, n_inner=64, vocab_size=VOCAB, n_positions=64),
                 _dec()),
    "gpt2-cross": Case(tf.GPT2Config, tf.GPT2LMHeadModel,
                       dict(n_embd=HIDDEN, n_layer=2, n_head=4, n_inner=64, vocab_size=VOCAB, n_positions=64,
                            add_cross_attention=True),
                       _dec(cross=True)),
    "gpt-neox": Case(tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                     dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          vocab_size=VOCAB, max_position_embeddings=64),
                     _dec()),
    "bloom": Case(tf.BloomConfig, tf.BloomForCausalLM,
                  dict(hidden_size=HIDDEN, n_layer=2, n_head=4, vocab_size=VOCAB), _dec(ffn=4 * HIDDEN)),
    "opt": Case(tf.OPTConfig, tf.OPTForCausalLM,
                dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                     word_embed_proj_dim=HIDDEN, vocab_size=VOCAB, max_position_embeddings=64),
                _dec()),
    # d_kv=16: heads * head_dim (64) differs from d_model (32).
    "t5-relu": Case(tf.T5Config, tf.T5ForConditionalGeneration,
                    dict(d_model=HIDDEN, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=16, d_ff=64,
                         vocab_size=VOCAB, feed_forward_proj="relu"),
                    {"encoder": Side(2, 4, 4, 16, 64), "decoder": Side(3, 4, 4, 16, 64, cross=True)}),
    "t5-gated": Case(tf.T5Config, tf.T5ForConditionalGeneration,
                     dict(d_model=HIDDEN, num_layers=2, num_heads=4, d_kv=8, d_ff=64, vocab_size=VOCAB,
                          feed_forward_proj="gated-gelu"),
                     {"encoder": Side(2, 4, 4, 8, 64), "decoder": Side(2, 4, 4, 8, 64, cross=True)}, gated=True),
    # Encoder and decoder differ in heads and FFN width.
    "bart": Case(tf.BartConfig, tf.BartForConditionalGeneration,
                 dict(d_model=HIDDEN, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=96, vocab_size=VOCAB,
                      max_position_embeddings=64),
                 {"encoder": Side(2, 4, 4, 8, 64), "decoder": Side(2, 2, 2, 16, 96, cross=True)}),
    "llama": Case(tf.LlamaConfig, tf.LlamaForCausalLM, _LLAMA_LIKE, _dec(kv=2), gated=True),
    # head_dim=16: heads * head_dim (64) differs from hidden (32).
    "mistral": Case(tf.MistralConfig, tf.MistralForCausalLM, dict(_LLAMA_LIKE, head_dim=16),
                    _dec(kv=2, head_dim=16), gated=True),
    "qwen2": Case(tf.Qwen2Config, tf.Qwen2ForCausalLM, _LLAMA_LIKE, _dec(kv=2), gated=True),
    "phi": Case(tf.PhiConfig, tf.PhiForCausalLM,
                dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=64),
                _dec()),
    "phi3": Case(tf.Phi3Config, tf.Phi3ForCausalLM, dict(_LLAMA_LIKE, pad_token_id=0), _dec(kv=2), gated=True),
    "falcon-multi-query": Case(tf.FalconConfig, tf.FalconForCausalLM,
                               dict(_FALCON, multi_query=True, new_decoder_architecture=False), _dec(kv=1)),
    "falcon-new-arch": Case(tf.FalconConfig, tf.FalconForCausalLM,
                            dict(_FALCON, new_decoder_architecture=True, num_kv_heads=2), _dec(kv=2)),
    "falcon-mha": Case(tf.FalconConfig, tf.FalconForCausalLM,
                       dict(_FALCON, multi_query=False, new_decoder_architecture=False), _dec()),
}
SOURCES = ("module", "directory")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every case's model, built once, and the directory it was saved to."""
    root = tmp_path_factory.mktemp("role_models")
    out = {}
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = case.model(case.config(**case.kwargs)).eval()
        path = root / name
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _open(models, name, source):
    model, path = models[name]
    return model, open_checkpoint(model if source == "module" else path)


def _piece(ckpt, spec):
    return _matrix(ckpt.load(spec.tensor), spec)


def _expected_shape(role, side: Side):
    q, kv, ffn = side.heads * side.head_dim, side.kv * side.head_dim, side.ffn
    return {"q": (q, HIDDEN), "k": (kv, HIDDEN), "v": (kv, HIDDEN), "o": (HIDDEN, q),
            "mlp_in": (ffn, HIDDEN), "mlp_gate": (ffn, HIDDEN), "mlp_up": (ffn, HIDDEN),
            "mlp_out": (HIDDEN, ffn)}[role.removeprefix("cross_")]


def _block_specs(layout):
    """Block matrices, leaving out T5's per-block relative position embedding table."""
    return [s for s in layout.specs if s.block >= 0 and s.role != "embedding"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(CASES))
def test_every_block_has_exactly_its_roles(models, name, source, caplog):
    case = CASES[name]
    _, ckpt = _open(models, name, source)
    with caplog.at_level(logging.WARNING, logger="topoprune"):
        layout = describe(ckpt)
    assert layout.known
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert {s.role for s in layout.specs} <= set(ROLES) - {"linear"}
    mlp = GATED_MLP if case.gated else PLAIN_MLP
    found: dict = {}
    for s in _block_specs(layout):
        found.setdefault((s.side, s.block), Counter())[s.role] += 1
    expected = {}
    for side_name, side in case.sides.items():
        roles = ATTN + (CROSS_ROLES if side.cross else ()) + mlp
        expected.update({(side_name, b): Counter(roles) for b in range(side.blocks)})
    assert found == expected


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(CASES))
def test_geometry_and_shapes_follow_the_config(models, name, source):
    case = CASES[name]
    _, ckpt = _open(models, name, source)
    for s in _block_specs(describe(ckpt)):
        side = case.sides[s.side]
        if s.role in ATTENTION_ROLES + CROSS_ROLES:
            assert (s.n_heads, s.n_kv_heads, s.head_dim) == (side.heads, side.kv, side.head_dim), s.name
        assert s.shape == _expected_shape(s.role, side), s.name
        assert tuple(_piece(ckpt, s).shape) == s.shape, s.name


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(CASES))
def test_embeddings_heads_and_the_rest(models, name, source):
    """nn.Embedding weights are ``embedding``, the output layer ``lm_head``, a pooler ``other``."""
    case = CASES[name]
    model, ckpt = _open(models, name, source)
    layout = describe(ckpt)
    roles = {s.tensor: s.role for s in layout.specs}
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    present = embeddings & set(roles)
    assert present, "no embedding table found"
    assert {roles[t] for t in present} == {"embedding"}
    outside = {s.tensor: s.role for s in layout.specs if s.block < 0}
    assert {t for t, r in outside.items() if r == "other"} == set(case.others)
    assert set(outside.values()) <= {"embedding", "lm_head", "other"}
    head = model.get_output_embeddings()
    if head is not None and source == "module":
        head_name = next(n for n, m in model.named_modules() if m is head)
        assert roles[f"{head_name}.weight"] == "lm_head"
    if len(case.sides) == 1:  # encoder-only or decoder-only: everything, LM head included, is on that side
        assert {s.side for s in layout.specs} == set(case.sides)
    in_blocks = [s for s in layout.specs if s.block >= 0 and s.role == "embedding"]
    assert all(s.tensor.endswith("relative_attention_bias.weight") for s in in_blocks)


def _true_weight(module: torch.nn.Module, n_in: int) -> torch.Tensor:
    """The ``[out, in]`` matrix ``module`` applies, measured on an identity input (bias removed)."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
        return module(torch.eye(n_in)).t()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(CASES))
def test_unfused_matrices_equal_what_the_module_applies(models, name, source):
    """Orientation check: Linear ([out, in]) and GPT-2 Conv1D ([in, out]) both come out [out, in]."""
    model, ckpt = _open(models, name, source)
    for s in _block_specs(describe(ckpt)):
        if s.rows is None:
            module = model.get_submodule(s.tensor.removesuffix(".weight"))
            assert torch.equal(_piece(ckpt, s), _true_weight(module, s.shape[1])), s.name


# --- fused projections, compared with what the model's own code computes -------------------

def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[1, heads, in, head_dim]`` projections of an identity input -> ``[heads*head_dim, in]``."""
    return t[0].permute(1, 0, 2).reshape(t.shape[2], -1).t()


def _zero_biases(module):
    module = copy.deepcopy(module)
    with torch.no_grad():
        for p_name, p in module.named_parameters():
            if p_name.endswith("bias"):
                p.zero_()
    return module


def _captured(monkeypatch, modeling, attn, **kwargs) -> dict:
    """q, k, v weights as ``attn`` hands them to its attention function, for an identity input."""
    seen = {}

    def capture(module, query, key, value, attention_mask, **_):
        seen.update(q=_rows(query), k=_rows(key), v=_rows(value))
        return torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    monkeypatch.setattr(modeling, "eager_attention_forward", capture)
    monkeypatch.setattr(attn.config, "_attn_implementation", "eager")
    x = torch.eye(HIDDEN)[None]
    with torch.no_grad():
        _zero_biases(attn)(x, **kwargs)
    return seen


def _at_position_zero(rotary):
    """Rotary (cos, sin) for all tokens at position 0: the identity rotation."""
    x = torch.zeros(1, HIDDEN, HIDDEN)
    return rotary(x, position_ids=torch.zeros(1, HIDDEN, dtype=torch.long))


def _gpt2_qkv(model, block, monkeypatch):
    attn = model.transformer.h[block].attn
    return _captured(monkeypatch, tf.models.gpt2.modeling_gpt2, attn)


def _gpt2_cross_qkv(model, block, monkeypatch):
    attn = model.transformer.h[block].crossattention
    seen = _captured(monkeypatch, tf.models.gpt2.modeling_gpt2, attn, encoder_hidden_states=torch.eye(HIDDEN)[None])
    return {f"cross_{c}": w for c, w in seen.items()}


def _neox_qkv(model, block, monkeypatch):
    attn = model.gpt_neox.layers[block].attention
    return _captured(monkeypatch, tf.models.gpt_neox.modeling_gpt_neox, attn, attention_mask=None,
                     position_embeddings=_at_position_zero(model.gpt_neox.rotary_emb))


def _phi3_qkv(model, block, monkeypatch):
    attn = model.model.layers[block].self_attn
    return _captured(monkeypatch, tf.models.phi3.modeling_phi3, attn, attention_mask=None,
                     position_embeddings=_at_position_zero(model.model.rotary_emb))


def _falcon_qkv(model, block, monkeypatch):
    """Through FalconAttention._split_heads; k, v de-duplicated from their broadcast copies."""
    attn = model.transformer.h[block].self_attention
    with torch.no_grad():
        fused = _zero_biases(attn.query_key_value)(torch.eye(HIDDEN))[None]
    q, k, v = attn._split_heads(fused)  # [1, in, heads, head_dim]
    if attn.new_decoder_architecture:
        group = attn.num_heads // attn.num_kv_heads
        k, v = k[:, :, ::group], v[:, :, ::group]
    return {c: _rows(t.transpose(1, 2)) for c, t in zip("qkv", (q, k, v))}


def _bloom_qkv(model, block, monkeypatch):
    attn = model.transformer.h[block].self_attention
    with torch.no_grad():
        fused = _zero_biases(attn.query_key_value)(torch.eye(HIDDEN))[None]
    return {c: _rows(t) for c, t in zip("qkv", attn._reshape(fused))}


def _phi3_gate_up(model, block, monkeypatch):
    """Through Phi3MLP.forward: the activation records the gate, down_proj receives ``up``."""
    mlp = _zero_biases(model.model.layers[block].mlp)
    seen = {}

    def act(mod, args, out):  # record the gate, pass ``up`` through unchanged
        seen["mlp_gate"] = args[0].t()
        return torch.ones_like(out)

    mlp.activation_fn.register_forward_hook(act)
    mlp.down_proj.register_forward_pre_hook(lambda mod, args: seen.update(mlp_up=args[0].t()))
    with torch.no_grad():
        mlp(torch.eye(HIDDEN))
    return seen


FUSED = {
    "gpt2": _gpt2_qkv,
    "gpt2-cross": _gpt2_cross_qkv,
    "gpt-neox": _neox_qkv,
    "bloom": _bloom_qkv,
    "falcon-multi-query": _falcon_qkv,
    "falcon-new-arch": _falcon_qkv,
    "falcon-mha": _falcon_qkv,
    "phi3": _phi3_qkv,
    "phi3-gate-up": _phi3_gate_up,
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fused", list(FUSED))
def test_fused_pieces_equal_the_models_projections(models, fused, source, monkeypatch):
    name = fused.removesuffix("-gate-up")
    model, ckpt = _open(models, name, source)
    layout = describe(ckpt)
    for block in range(CASES[name].sides["decoder"].blocks):
        expected = FUSED[fused](model, block, monkeypatch)
        assert expected
        for role, weight in expected.items():
            (spec,) = [s for s in layout.specs if s.block == block and s.role == role]
            assert spec.rows is not None or spec.role == "cross_q", spec.name  # GPT-2 q_attn is separate
            piece = _piece(ckpt, spec)
            assert piece.shape == weight.shape, spec.name
            assert torch.equal(piece, weight), spec.name


# --- layouts that are not transformers ------------------------------------------------------

def _check_unknown(layout, caplog, matrices):
    assert layout.known is False
    assert sorted(s.tensor for s in layout.specs) == sorted(matrices)
    assert {s.role for s in layout.specs} == {"linear"}
    assert any("unknown layout" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_unknown_state_dict_is_generic_linear(caplog):
    g = torch.Generator().manual_seed(0)
    state = {"net.0.weight": torch.randn(8, 4, generator=g), "net.0.bias": torch.randn(8, generator=g),
             "net.2.weight": torch.randn(3, 8, generator=g), "net.2.bias": torch.randn(3, generator=g),
             "net.steps": torch.zeros(2, 2, dtype=torch.long), "net.mask": torch.ones(2, 2, dtype=torch.bool)}
    ckpt = open_checkpoint(state)
    with caplog.at_level(logging.WARNING, logger="topoprune"):
        layout = describe(ckpt)
    _check_unknown(layout, caplog, ["net.0.weight", "net.2.weight"])
    assert set(layout.skipped) == {"net.0.bias", "net.2.bias", "net.steps", "net.mask"}
    for s in layout.specs:
        assert torch.equal(_piece(ckpt, s), state[s.tensor])
        assert s.shape == tuple(state[s.tensor].shape)


def test_plain_sequential_is_generic_linear(caplog):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net.register_buffer("counts", torch.zeros(2, 2, dtype=torch.int64))
    with caplog.at_level(logging.WARNING, logger="topoprune"):
        layout = describe(open_checkpoint(net))
    _check_unknown(layout, caplog, ["0.weight", "2.weight"])
    assert "counts" in layout.skipped


def test_no_matrices_at_all_is_empty_not_an_error(caplog):
    with caplog.at_level(logging.WARNING, logger="topoprune"):
        layout = describe(open_checkpoint({"scale": torch.ones(4), "step": torch.tensor(3)}))
    assert layout.specs == () and layout.known is False
    assert set(layout.skipped) == {"scale", "step"}
