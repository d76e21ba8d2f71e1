"""Helpers of the tests that compare whole analyses: a tiny LLaMA checkpoint, and report equality."""
import numpy as np
import pandas as pd
import torch


def save_tiny_llama(path, layers: int, hidden: int, ffn: int):
    """A random-init LLaMA (4 query, 2 key/value heads) with ``layers`` blocks, saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    LlamaModel(cfg).save_pretrained(path)
    return path


def assert_same_report(a, b):
    """Equal matrices and layered tables (exactly), degree sequences and patterns (values and dtypes)."""
    pd.testing.assert_frame_equal(a.matrices, b.matrices, check_exact=True)
    pd.testing.assert_frame_equal(a.layered, b.layered, check_exact=True)
    assert list(a.degrees) == list(b.degrees) and list(a.patterns) == list(b.patterns)
    for name, (din, dout) in a.degrees.items():
        assert np.array_equal(din, b.degrees[name][0]) and np.array_equal(dout, b.degrees[name][1])
        assert din.dtype == b.degrees[name][0].dtype
    for name, pattern in a.patterns.items():
        assert np.array_equal(pattern, b.patterns[name]) and pattern.dtype == b.patterns[name].dtype
