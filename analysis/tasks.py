"""The training benchmarks' tasks, and each held-out example's outcome as a record.

Two settings are shared by the benchmarks that compare sparse-training methods
(:data:`SETTINGS`): ``tweets3`` (MiniLM, all-MiniLM-L6-v2, one epoch of about 29,800
negative/neutral/positive tweets, 7,439 test tweets) and ``ptb`` (SmolLM2-135M on Penn Treebank
blocks). Recording each held-out example's outcome -- whether a tweet is classified correctly
(:func:`example_correct`), each block's loss (:func:`block_losses`) -- lets two methods be compared
example by example (:mod:`analysis.paired`), the split being drawn with the run's seed.
"""
from __future__ import annotations

from pathlib import Path

#: setting -> TrainConfig fields.
SETTINGS = {
    "tweets3": {"model": "minilm", "data": "tweets3", "n_train": None, "n_eval": None, "epochs": 1.0, "lr": 1e-4,
                "batch_size": 32, "max_length": 64},
    "ptb": {"model": "smollm2", "data": "ptb", "n_train": 480, "n_eval": 200, "epochs": 1.0, "lr": 1e-4,
            "batch_size": 8, "max_length": 128},
}


def block_losses(model_dir: Path, n_blocks: int, block_size: int, batch: int = 8) -> list[float]:
    """Mean next-token cross-entropy of each held-out PTB block (the evaluation blocks of the run), so
    that two methods can be compared block by block (a paired standard error of their difference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from topoprune.train.data import penn_treebank

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([ex["input_ids"] for ex in penn_treebank(tok, block_size=block_size,
                                                                 n_train_blocks=1, n_eval_blocks=n_blocks).eval])
    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            x = ids[i:i + batch]  # [B, T]
            logits = model(input_ids=x).logits[:, :-1]  # [B, T-1, V]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [B, T-1]
            out += nll.mean(dim=1).tolist()
    return out


def example_correct(model_dir: Path, setting: str, seed: int, batch: int = 64, config: dict | None = None) -> str:
    """Whether the model classifies each held-out tweet of the run correctly, as a string of 0/1 in
    the order of the evaluation split, so that two methods can be compared tweet by tweet.
    ``config``: the setting's TrainConfig fields, when ``setting`` is not one of :data:`SETTINGS`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from topoprune.train.data import load_task

    cfg = config or SETTINGS[setting]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = load_task(cfg["data"], tok, max_length=cfg["max_length"], n_train=cfg["n_train"], n_eval=cfg["n_eval"],
                     seed=seed)
    items = [data.eval[j] for j in range(len(data.eval))]
    order = sorted(range(len(items)), key=lambda j: len(items[j]["input_ids"]))  # batches of like length
    correct = [False] * len(items)
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            x = data.collator([items[j] for j in order[i:i + batch]])
            labels = x.pop("labels")  # [B]
            hits = (model(**x).logits.argmax(-1) == labels).tolist()  # logits [B, classes]
            for j, hit in zip(order[i:i + batch], hits):
                correct[j] = hit
    return "".join("1" if c else "0" for c in correct)
