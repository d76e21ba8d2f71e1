"""Compaction: dead heads and neurons removed, outputs unchanged, saved and reloaded with one call.

Every architecture family the analysis recognises gets a tiny random-init model with random head and
neuron masks; the compacted model's outputs must equal the masked model's (fp32, <= 1e-5).
"""
import copy
import json

import pytest
import torch
import transformers as tf
from click.testing import CliRunner

from topoprune.cli import main
from topoprune.compaction import compact, load_compact, save_compact
from topoprune.graph.binding import Binding

V = 97
COMMON = dict(vocab_size=V, pad_token_id=0)


def _families():
    g = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    return {
        "bert": (tf.BertForSequenceClassification, tf.BertConfig(**g, num_labels=3, **COMMON), "enc"),
        "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig(**g, max_position_embeddings=40, **COMMON), "enc"),
        "distilbert": (tf.DistilBertForMaskedLM, tf.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96,
                                                                     **COMMON), "enc"),
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=96, **COMMON), "dec"),
        "gpt_neox": (tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(**g, **COMMON), "dec"),
        "opt": (tf.OPTForCausalLM, tf.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                ffn_dim=96, word_embed_proj_dim=64, **COMMON), "dec"),
        "t5": (tf.T5ForConditionalGeneration, tf.T5Config(d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                                           decoder_start_token_id=0, **COMMON), "s2s"),
        "bart": (tf.BartForConditionalGeneration, tf.BartConfig(d_model=64, encoder_layers=2, decoder_layers=2,
                                                                encoder_attention_heads=4, decoder_attention_heads=4,
                                                                encoder_ffn_dim=96, decoder_ffn_dim=96,
                                                                max_position_embeddings=40, **COMMON), "s2s"),
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(**g, num_key_value_heads=2, **COMMON), "dec"),
        "mistral": (tf.MistralForCausalLM, tf.MistralConfig(**g, num_key_value_heads=2, **COMMON), "dec"),
        "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(**g, num_key_value_heads=2, **COMMON), "dec"),
        "phi": (tf.PhiForCausalLM, tf.PhiConfig(**g, **COMMON), "dec"),
        "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config(**g, num_key_value_heads=2, **COMMON), "dec"),
        "falcon": (tf.FalconForCausalLM, tf.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         new_decoder_architecture=True, num_kv_heads=2, **COMMON),
                   "dec"),
        "falcon-mq": (tf.FalconForCausalLM, tf.FalconConfig(hidden_size=64, num_hidden_layers=2,
                                                            num_attention_heads=4, multi_query=True, **COMMON), "dec"),
    }


FAMILIES = _families()
#: Families whose heads cannot be removed one layer at a time, and the reason the record gives.
HEADS_KEPT = {"t5": "relative position bias", "phi3": "reads its head counts from the configuration"}


def _model(name, seed=0):
    cls, cfg, kind = FAMILIES[name]
    torch.manual_seed(seed)
    model = cls(copy.deepcopy(cfg)).eval()  # a model keeps its config object: compaction records go into it
    with torch.no_grad():  # non-zero biases everywhere, so that bias handling is exercised
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    return model, kind


def _inputs(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, 11), generator=g)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "s2s":
        kw["decoder_input_ids"] = torch.randint(1, V, (2, 5), generator=g)
    return kw


def _out(model, kind):
    with torch.no_grad():
        return model(**_inputs(kind)).logits


def mask_randomly(model, seed=0):
    """Kill random heads (W_O columns) and neurons: zero output columns, zero input rows (with biases)."""
    b = Binding(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for la in b.attention:
            n, kv, hd = la.n_heads, la.n_kv_heads or la.n_heads, la.head_dim
            o = b.weight(la.o).clone()
            dead = set(torch.randperm(n, generator=g)[: n // 2].tolist())
            if kv < n:  # a whole key/value group, and one query of another group
                dead = set(range(0, n // kv)) | {n - 1}
            for h in dead:
                o[:, h * hd:(h + 1) * hd] = 0
            b.write(la.o, o)
        for mlp in b.mlp:
            order = torch.randperm(mlp.width, generator=g)
            out_dead, in_dead = order[: mlp.width // 3], order[mlp.width // 3: mlp.width // 2]
            w = b.weight(mlp.out).clone()
            w[:, out_dead] = 0
            b.write(mlp.out, w)
            first = b.weight(mlp.inputs[0]).clone()
            first[in_dead] = 0  # fan-in gone: constant act(b) (folded), or zero (gated, no bias)
            b.write(mlp.inputs[0], first)
            if mlp.gated:
                last = b.weight(mlp.inputs[1]).clone()
                last[in_dead] = 0
                b.write(mlp.inputs[1], last)
    return model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_compacted_outputs_equal_masked_outputs(name, tmp_path):
    model, kind = _model(name)
    mask_randomly(model)
    before = _out(model, kind)
    n_before = sum(p.numel() for p in model.parameters())
    compact(model)
    after = _out(model, kind)
    assert (before - after).abs().max().item() <= 1e-5
    n_after = sum(p.numel() for p in model.parameters())
    blocks = model.config.topoprune_compact["blocks"]
    assert n_after < n_before and all(v["kept"] < v["of"] for v in blocks["mlp"].values())
    if name not in HEADS_KEPT:
        assert all(v["kept"] < v["of"] for v in blocks["heads"].values())
    else:  # heads stay, and the record says why
        assert all(v["kept"] == v["of"] for v in blocks["heads"].values())
        assert HEADS_KEPT[name] in " ".join(blocks["notes"])
    # saved and loaded with one call: the same outputs
    save_compact(model, tmp_path / "c")
    again = load_compact(tmp_path / "c")
    assert (_out(again, kind) - after).abs().max().item() <= 1e-6
    assert sum(p.numel() for p in again.parameters()) == n_after


def test_tied_embeddings_stay_tied(tmp_path):
    model, kind = _model("gpt2")
    mask_randomly(model)
    compact(model)
    save_compact(model, tmp_path / "c")
    again = load_compact(tmp_path / "c")
    assert again.lm_head.weight.data_ptr() == again.transformer.wte.weight.data_ptr()


def test_uniform_widths_load_with_plain_from_pretrained(tmp_path):
    """LLaMA with the same heads and width in every layer: transformers alone rebuilds it."""
    model, kind = _model("llama")
    b = Binding(model)
    with torch.no_grad():
        for la in b.attention:  # the second key/value group of every layer
            o = b.weight(la.o).clone()
            o[:, 2 * la.head_dim:] = 0
            b.write(la.o, o)
        for mlp in b.mlp:
            w = b.weight(mlp.out).clone()
            w[:, 48:] = 0
            b.write(mlp.out, w)
    before = _out(model, kind)
    compact(model)
    info = save_compact(model, tmp_path / "c")
    assert info["plain"] is True
    plain = tf.LlamaForCausalLM.from_pretrained(tmp_path / "c").eval()
    assert plain.config.intermediate_size == 48 and plain.config.num_attention_heads == 2
    assert (_out(plain, kind) - before).abs().max().item() <= 1e-5


def test_dtype_and_cli_on_a_training_run(tmp_path):
    """`topoprune compact RUN --dtype bf16`: smaller file, a record, analysable, reloadable."""
    run = CliRunner().invoke(main, ["train", "--model", "tiny-bert", "--max-steps", "2", "--n-train", "64",
                                    "--n-eval", "16", "--batch-size", "16", "--target", "0.5",
                                    "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    model = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    b = Binding(model)
    with torch.no_grad():  # whole neurons dead, as a structured run leaves them
        for mlp in b.mlp:
            w = b.weight(mlp.out).clone()
            w[:, ::2] = 0
            b.write(mlp.out, w)
    model.save_pretrained(tmp_path / "run" / "model")
    r = CliRunner().invoke(main, ["compact", str(tmp_path / "run"), "--dtype", "bf16", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "c" / "topoprune.json").read_text())
    assert rec["parameters"]["after"] < rec["parameters"]["before"] and rec["dtype"] == "bfloat16"
    assert rec["bytes"]["after"] < 0.6 * rec["bytes"]["before"]  # bf16 and fewer parameters
    again = load_compact(tmp_path / "c")
    assert next(again.parameters()).dtype == torch.bfloat16
    r = CliRunner().invoke(main, ["analyze", str(tmp_path / "c"), "-j", "1", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case, message", [("nothing", "neither a topoprune run"), ("masks", "mask"),
                                           ("dtype", "--dtype")])
def test_bad_input_one_line_exit_2_no_output(tmp_path, case, message):
    src = tmp_path / "src"
    src.mkdir()
    extra = []
    if case in ("masks", "dtype"):
        model, _ = _model("bert")
        (src / "model").mkdir()
        model.save_pretrained(src / "model")
        if case == "masks":
            from topoprune.graph.masks import MaskSet

            MaskSet({"nope.weight": torch.ones(2, 2, dtype=torch.bool)}).save(src / "masks.safetensors")
        else:
            extra = ["--dtype", "fp8"]
    r = CliRunner().invoke(main, ["compact", str(src), "--out", str(tmp_path / "out"), *extra])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_a_family_the_surgery_would_get_wrong_is_refused(monkeypatch):
    """Phi-3 splits its fused qkv by the shared config's head counts: pretending otherwise is caught."""
    import topoprune.compaction.plan as plan
    from topoprune.errors import ConfigError

    monkeypatch.setattr(plan, "_head_blocker", lambda *a: None)
    model, _ = _model("phi3")
    mask_randomly(model)
    with pytest.raises(ConfigError, match="cannot be compacted yet"):
        compact(model)


def test_analysis_of_a_compacted_model_sees_its_heads(tmp_path):
    """Per-layer head counts come from the record: the layered attention graphs fit the smaller tensors."""
    import topoprune

    model, _ = _model("bert")
    mask_randomly(model)
    compact(model)
    save_compact(model, tmp_path / "c")
    rep = topoprune.analyze_report(tmp_path / "c", n_jobs=1, fits=False, block_modularity=True)
    q = rep.matrices[rep.matrices["role"] == "q"]
    assert (q["n_heads"] == 2).all() and (q["n_out"] == 2 * 16).all()
    assert set(rep.layered["component"]) >= {"attention", "mlp"}
