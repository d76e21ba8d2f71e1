"""Every checkpoint format reads back the same tensors; unsafe or broken files are refused by name."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from topoprune.assets import default_checkpoint
from topoprune.errors import CheckpointError
from topoprune.graph.loading import iter_tensors, open_checkpoint


@pytest.fixture
def state():
    g = torch.Generator().manual_seed(0)
    return {"layers.0.mlp.fc1.weight": torch.randn(8, 4, generator=g),
            "layers.0.mlp.fc1.bias": torch.randn(8, generator=g),
            "layers.0.mlp.fc2.weight": torch.randn(4, 8, generator=g).half()}


def _same(ckpt, state):
    names = {t.name: t for t in ckpt.tensors()}
    assert set(names) == set(state)
    for name, tensor in state.items():
        assert names[name].shape == tuple(tensor.shape)
        assert torch.equal(ckpt.load(name), tensor)


def test_single_safetensors_file(tmp_path, state):
    save_file(state, tmp_path / "w.safetensors")
    with open_checkpoint(tmp_path / "w.safetensors") as ckpt:
        _same(ckpt, state)


def test_sharded_safetensors_with_index(tmp_path, state):
    names = sorted(state)
    save_file({names[0]: state[names[0]]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({n: state[n] for n in names[1:]}, tmp_path / "model-00002-of-00002.safetensors")
    wmap = {names[0]: "model-00001-of-00002.safetensors"}
    wmap.update({n: "model-00002-of-00002.safetensors" for n in names[1:]})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom", "num_attention_heads": 2}))
    ckpt = open_checkpoint(tmp_path)
    _same(ckpt, state)
    assert ckpt.config["num_attention_heads"] == 2
    assert [i.name for i, _ in iter_tensors(ckpt)][0] == names[0]  # shard by shard


def test_missing_shard_named(tmp_path, state):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors.*missing"):
        open_checkpoint(tmp_path)


def test_pytorch_bin_and_nested_pt(tmp_path, state):
    torch.save(state, tmp_path / "pytorch_model.bin")
    _same(open_checkpoint(tmp_path), state)
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    _same(open_checkpoint(tmp_path / "ckpt.pt"), state)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    _same(open_checkpoint(tmp_path / "legacy.pt"), state)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_executing_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2, 2), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: loading this pickle would execute code"):
        open_checkpoint(path)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(CheckpointError, match="raw.bin"):
        open_checkpoint(raw)
    assert "pwned" not in capsys.readouterr().out


def test_in_memory_module_and_state_dict(state):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    ckpt = open_checkpoint(model)
    assert {t.name for t in ckpt.tensors()} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    _same(open_checkpoint(state), state)


def test_hf_directory_with_config(tiny_bert_dir):
    ckpt = open_checkpoint(tiny_bert_dir)
    assert ckpt.config["model_type"] == "bert"
    assert any(t.name.endswith("attention.self.query.weight") for t in ckpt.tensors())


def test_default_checkpoint_is_real_minilm():
    path = default_checkpoint()
    ckpt = open_checkpoint(path)
    assert ckpt.config["hidden_size"] == 384 and ckpt.config["num_hidden_layers"] == 6
    w = ckpt.load("encoder.layer.0.intermediate.dense.weight")
    assert tuple(w.shape) == (1536, 384) and float(w.std()) > 0.01  # trained, not zeros


@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b'{"a": 1}', "is a JSON file, not weights"),
    (b"hello world\nthis is text\n", "is a text file, not weights"),
    (b"\x07\x00\xff\xfe\x00garbage\x00\x01" * 10, "not a recognised weights format"),
])
def test_non_weight_files(tmp_path, content, message):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_and_corrupt_safetensors(tmp_path, state):
    good = tmp_path / "good.safetensors"
    save_file(state, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError, match="trunc.safetensors: not a valid safetensors file"):
        open_checkpoint(trunc).tensors()
    bad_header = tmp_path / "hdr.safetensors"
    bad_header.write_bytes(data[:8] + b"{" + b"x" * (len(data) - 9))
    with pytest.raises(CheckpointError, match="hdr.safetensors"):
        open_checkpoint(bad_header)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="directory holds no weights"):
        open_checkpoint(tmp_path)


def test_corrupt_config_json_named(tmp_path, state):
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        open_checkpoint(tmp_path)


def _write_tiny_llama_gguf(path):
    """A 2-layer LLaMA GGUF (fp32) written with the gguf package's writer."""
    import numpy as np

    gguf = pytest.importorskip("gguf")  # gguf is a dev dependency: this only skips for a bare install
    w = gguf.GGUFWriter(str(path), arch="llama")
    hidden, ffn, layers, heads, kv, vocab = 32, 64, 2, 4, 2, 50
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    rng = np.random.default_rng(0)

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w.add_tensor("token_embd.weight", t(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", t(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv * 8, hidden)), ("attn_v", (kv * 8, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            w.add_tensor(p + name + ".weight", t(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_through_transformers(tmp_path, capfd):
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama_gguf(path)
    ckpt = open_checkpoint(path)
    assert ckpt.source == str(path) and ckpt.config["model_type"] == "llama"
    names = {t.name: t.shape for t in ckpt.tensors()}
    assert names["model.layers.1.self_attn.k_proj.weight"] == (16, 32)
    assert names["model.layers.0.mlp.down_proj.weight"] == (32, 64)
    assert "de-quantizing" not in capfd.readouterr().err


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path):
    """A header of 128 + 256k bytes starts with byte 0x80, the pickle protocol mark."""
    import struct

    from topoprune.graph.loading import _sniff

    save_file({"w": torch.ones(2, 2)}, tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].rstrip(b" ")
    pad = (0x80 - len(header)) % 256 or 256
    new = struct.pack("<Q", len(header) + pad) + header + b" " * pad + data[8 + n:]
    assert new[0] == 0x80
    path = tmp_path / "weights.bin"
    path.write_bytes(new)
    assert _sniff(path) == "safetensors"
    assert torch.equal(open_checkpoint(path).load("w"), torch.ones(2, 2))


def test_smollm2_dir_builds_once_and_reuses_the_cache(tmp_path, monkeypatch):
    """The GGUF is dequantised once into a safetensors directory keyed by the file; later calls reuse it."""
    import transformers as tf

    from topoprune import assets as loading

    gguf = tmp_path / "pkg" / "Tiny.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []

    def fake_load(path):
        calls.append(path)
        cfg = tf.LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             vocab_size=64)
        return tf.LlamaForCausalLM(cfg), tf.PreTrainedTokenizerFast(
            tokenizer_object=__import__("tokenizers").Tokenizer(
                __import__("tokenizers").models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))

    monkeypatch.setattr(loading, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(loading, "load_gguf_causal_lm", fake_load)
    monkeypatch.setenv("TOPOPRUNE_CACHE", str(tmp_path / "cache"))
    first = loading.smollm2_dir()
    assert first.parent == tmp_path / "cache" and "Tiny.Q4_1" in first.name
    assert (first / "model.safetensors").is_file() and (first / "config.json").is_file()
    assert loading.smollm2_dir() == first and len(calls) == 1  # second call: no dequantisation
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    model = tf.AutoModelForCausalLM.from_pretrained(first)
    assert model.config.num_hidden_layers == 1
