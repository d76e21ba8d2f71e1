"""Shared fixtures: offline settings, the embedded checkpoint, small hand-made checkpoints."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def minilm_path():
    from topoprune.assets import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer random-init BERT saved as a Hugging Face directory (safetensors)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture
def mlp_state():
    """A two-block state dict with recognisable MLP names."""
    g = torch.Generator().manual_seed(0)
    return {f"layers.{i}.mlp.{n}.weight": torch.randn(s, generator=g)
            for i in range(2) for n, s in (("fc1", (96, 48)), ("fc2", (48, 96)))}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: more threads only cost time on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ToyClassification(torch.utils.data.Dataset):
    """48 seeded random token sequences (length 12) with alternating labels, for Trainer runs."""

    def __len__(self):
        return 48

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(1, 500, (12,), generator=g), "labels": i % 2}


@pytest.fixture
def toy_classification():
    return ToyClassification()
