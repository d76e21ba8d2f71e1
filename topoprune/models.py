"""Every model topoprune trains or prunes, by name: one :func:`load_model` for all of them.

=====================  ==================================================================
``minilm``             the embedded all-MiniLM-L6-v2 (:func:`topoprune.assets.default_checkpoint`)
``smollm2``            SmolLM2-135M, a causal LM (:func:`topoprune.assets.smollm2_dir`)
``tiny-bert`` ...      tiny random-init configs for tests (:data:`TINY`), with MiniLM's tokenizer
a directory            any Hugging Face model directory (``config.json``, weights, a tokenizer)
=====================  ==================================================================

Bad names and directories are refused with one line: a path that does not exist, a directory
without a tokenizer (transformers would silently build an empty one that maps every word to
``[UNK]``), weights stored as a pickle whose loading would run code, and -- for
:func:`load_causal_lm` -- a model that is not a causal LM (an encoder, a classifier, or one whose
LM head would be newly initialised).
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch

from .assets import default_checkpoint, smollm2_dir
from .errors import ConfigError
from .io import short

log = logging.getLogger(__name__)

#: Tiny random-init test models (2 blocks, hidden size 64).
TINY = ("tiny-bert", "tiny-gpt2", "tiny-opt", "tiny-llama", "tiny-t5")
#: The tiny models that are causal LMs.
TINY_CAUSAL = ("tiny-opt", "tiny-llama", "tiny-gpt2")
#: Every name :func:`load_model` knows besides a directory.
BUILTIN = ("minilm", "smollm2") + TINY
#: What a model is loaded as, per task.
TASKS = ("classification", "causal_lm", "seq2seq")
#: Files that carry a tokenizer's vocabulary (one must be in a model directory).
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
               "sentencepiece.bpe.model", "sentencepiece.model", "bpe.codes", "vocab.model")
#: Endings of the architecture names of causal language models in ``config.json``.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_dir(name: str) -> Path:
    """The directory behind ``name``: MiniLM's, SmolLM2's, or ``name`` itself (checked).

    Raises
    ------
    ConfigError
        A tiny model (it has no directory), a path that does not exist, or a directory without
        ``config.json``.
    """
    if name == "minilm":
        return default_checkpoint()
    if name == "smollm2":
        return smollm2_dir()
    if name in TINY:
        raise ConfigError(f"{name} is built in memory and has no model directory")
    path = Path(name).expanduser()
    try:
        is_dir, has_config = path.is_dir(), (path / "config.json").is_file()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot be used as --model ({exc.strerror or short(exc)})") from None
    if not is_dir:
        raise ConfigError(f"{name}: not a Hugging Face model directory (no such directory; or use "
                          f"{', '.join(BUILTIN)})")
    if not has_config:
        raise ConfigError(f"{name}: not a Hugging Face model directory (no config.json)")
    return path


def check_model(name: str) -> None:
    """Refuse a model name that is neither built in nor a model directory (cheap: nothing is loaded)."""
    if name not in BUILTIN:
        model_dir(name)


def refused_pickle(path) -> ConfigError:
    """The one-line error for weights in ``path`` stored as a pickle whose loading would run code."""
    return ConfigError(f"{path}: refused: loading a pickle in it would execute code (only plain tensors and "
                       "containers are allowed; save the weights as safetensors)")


def load_tokenizer(name: str | None = None):
    """The tokenizer of model ``name`` (MiniLM's for ``minilm``, a tiny model, or ``None``).

    Raises
    ------
    ConfigError
        A directory without a tokenizer, or whose tokenizer files cannot be read.
    """
    from transformers import AutoTokenizer

    path = default_checkpoint() if name is None or name in TINY else model_dir(name)
    if not any((path / f).is_file() for f in VOCAB_FILES):
        # transformers would build an empty tokenizer that maps every word to [UNK]
        raise ConfigError(f"{path}: no tokenizer in the model directory (none of {', '.join(VOCAB_FILES[:3])}, ...); "
                          "save one with tokenizer.save_pretrained(DIR)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # OSError, ValueError, KeyError, ... from the tokenizer files
        raise ConfigError(f"{path}: no usable tokenizer in the model directory ({short(exc, 160)}); save one "
                          "with tokenizer.save_pretrained(DIR)") from None
    return tokenizer


def _tiny(name: str, task: str, tokenizer, extra: dict, seed: int):
    import transformers as tf

    torch.manual_seed(seed)
    small = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    arch, cfg = {
        "tiny-bert": ("Bert", tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=256, **small)),
        "tiny-gpt2": ("GPT2", tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **small)),
        "tiny-opt": ("OPT", tf.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                                         word_embed_proj_dim=64, max_position_embeddings=512, **small)),
        "tiny-llama": ("Llama", tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=128, **small)),
        "tiny-t5": ("T5", tf.T5Config(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
                                      decoder_start_token_id=tokenizer.pad_token_id, **small)),
    }[name]
    if arch == "T5" and task != "seq2seq":
        raise ConfigError("tiny-t5 is a seq2seq model: use --data ptb-span or a seq2seq file")
    kind = {"classification": "ForSequenceClassification", "causal_lm": "ForCausalLM",
            "seq2seq": "ForConditionalGeneration"}[task]
    cls = getattr(tf, f"{arch}{kind}", None) or getattr(tf, f"{arch}LMHeadModel" if task == "causal_lm" else "", None)
    if cls is None:
        raise ConfigError(f"{name} has no {task} head")
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cls(cfg)


def build_model(name: str, task: str, tokenizer, num_labels: int = 0, seed: int = 0, *, dtype=None):
    """The model ``name`` with a ``task`` head (see the module table); ``tokenizer`` sizes a tiny model.

    Parameters
    ----------
    task : {"classification", "causal_lm", "seq2seq"}
    num_labels : int
        Classes of a classification head (a new head is initialised when the directory has none:
        seed the global generator first for a reproducible one).
    seed : int
        Seed of a tiny model's initialisation.
    dtype : torch.dtype, optional
        Load a directory's weights in this dtype (default: as transformers chooses).
    """
    import transformers as tf

    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    extra = {"num_labels": num_labels} if task == "classification" else {}
    if name in TINY:
        return _tiny(name, task, tokenizer, extra, seed)
    if name == "smollm2" and task != "causal_lm":
        raise ConfigError("smollm2 is a causal LM: use --data ptb or a causal_lm file")
    path = model_dir(name)
    auto = {"classification": tf.AutoModelForSequenceClassification, "causal_lm": tf.AutoModelForCausalLM,
            "seq2seq": tf.AutoModelForSeq2SeqLM}[task]
    try:
        return auto.from_pretrained(str(path), **extra, **({"dtype": dtype} if dtype is not None else {}))
    except pickle.UnpicklingError:
        raise refused_pickle(path) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: cannot be loaded as a {task} model ({short(exc, 160)})") from None


def load_model(name: str, task: str, *, num_labels: int = 0, seed: int = 0, dtype=None):
    """``(model, tokenizer)`` for ``name`` (see the module table) with a ``task`` head."""
    tokenizer = load_tokenizer(name)
    return build_model(name, task, tokenizer, num_labels, seed, dtype=dtype), tokenizer


def _check_architecture(path: Path) -> None:
    """Refuse a model directory whose ``config.json`` names an architecture that is not a causal LM."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / 'config.json'}: not valid JSON ({short(exc, 160)})") from None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(archs, list) and archs and not any(isinstance(a, str) and a.endswith(CAUSAL_SUFFIXES)
                                                     for a in archs):
        raise ConfigError(f"{path}: is a {archs[0]}, not a causal language model")


def newly_initialised(model: torch.nn.Module, missing) -> list[str]:
    """The ``missing`` weights (from ``output_loading_info``) not tied to a weight the checkpoint provided."""
    missing = set(missing)
    if not missing:
        return []
    by_storage: dict = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_storage.setdefault(tensor.data_ptr(), []).append(name)
    covered = {name for names in by_storage.values() if any(n not in missing for n in names) for name in names}
    return sorted(missing - covered)


def load_causal_lm(name: str, seed: int = 0):
    """``(model, tokenizer, source)``: a complete causal LM in eval mode, fp32.

    Raises
    ------
    ConfigError
        ``name`` is not a causal LM: a tiny non-causal model, a directory whose ``config.json``
        names another architecture, or weights that would leave a tensor (an LM head) newly
        initialised.
    """
    from transformers import AutoModelForCausalLM

    if name in TINY and name not in TINY_CAUSAL:
        raise ConfigError(f"{name} is not a causal LM (use {', '.join(TINY_CAUSAL)}, smollm2 or a directory)")
    if name in TINY_CAUSAL:
        tokenizer = load_tokenizer(name)
        # eval(): a freshly built model is in training mode, with dropout on (OPT, GPT-2)
        return build_model(name, "causal_lm", tokenizer, seed=seed).eval(), tokenizer, name
    path = model_dir(name)
    _check_architecture(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    except pickle.UnpicklingError:
        raise refused_pickle(path) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: cannot be loaded as a causal LM ({short(exc, 160)})") from None
    new = newly_initialised(model, info.get("missing_keys") or ())
    if new:
        raise ConfigError(f"{path}: is not a complete {type(model).__name__}: {new[0]} is not in the checkpoint; "
                          "it would be random")
    return model.eval(), load_tokenizer(name), str(path)
