"""Compact a pruned model, save it, load it back with one call; ``topoprune compact`` end to end.

======================  ===================================================================
:func:`compact`           remove dead heads and neurons in place (:mod:`~topoprune.compaction.plan`,
                          :mod:`~topoprune.compaction.surgery`); the record goes into
                          ``model.config.topoprune_compact``
:func:`save_compact`      write safetensors and ``config.json`` (in ``dtype``); when every layer has
                          the same widths and the configuration can say so, plain
                          ``from_pretrained`` rebuilds the model too
:func:`load_compact`      rebuild the model class of the configuration with the recorded widths
:func:`run_compact`       ``topoprune compact SRC --out DIR``: SRC a ``train``/``oneshot`` run or a
                          model directory whose pruned weights are zero
======================  ===================================================================
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from .. import __version__
from ..errors import CheckpointError, ConfigError
from ..graph.binding import Binding
from ..models import newly_initialised, refused_pickle
from .config import DTYPES
from .plan import find_plan
from .surgery import apply_plan, apply_record

log = logging.getLogger(__name__)

#: Config key holding the compaction record.
RECORD_KEY = "topoprune_compact"
#: Config fields that may hold an MLP width, and those that describe heads.
WIDTH_KEYS = ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "hidden_dim", "ffn_hidden_size",
              "encoder_ffn_dim", "decoder_ffn_dim")
#: Tokenizer files copied next to a compacted model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def _probe(model: torch.nn.Module):
    """The model's first output on its own dummy inputs (None when it has none or cannot run them)."""
    inputs = getattr(model, "dummy_inputs", None)
    if not isinstance(inputs, dict) or not inputs:
        return None
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs)
    except Exception:  # a model its dummy inputs do not suit: nothing to compare
        return None
    finally:
        model.train(was)
    first = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()), None)
    return first.detach().float().clone() if isinstance(first, torch.Tensor) else None


def compact(model: torch.nn.Module, masks=None, *, verify: bool = True) -> torch.nn.Module:
    """Remove every attention head and MLP neuron of ``model`` that its zero weights make dead.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model whose pruned weights are zero (or any model with ``masks``).
    masks : MaskSet or path, optional
        Keep-masks applied to the weights first (:meth:`~topoprune.graph.masks.MaskSet.apply_to_weights`).
    verify : bool
        Run the model on its dummy inputs before and after and refuse a result whose outputs
        differ (a model family whose code reads widths from somewhere the surgery does not know);
        the model is then left changed and must be reloaded.

    Returns
    -------
    model
        The same model, smaller; outputs unchanged (up to float rounding). What was removed is in
        ``model.config.topoprune_compact`` (``blocks``: kept heads and widths per layer).

    Raises
    ------
    ConfigError
        A model without recognisable attention or MLP layers, masks that do not fit it, or a
        compaction that would change the model's outputs.
    """
    if masks is not None:
        from ..graph.masks import MaskSet

        (masks if isinstance(masks, MaskSet) else MaskSet.load(masks)).apply_to_weights(model)
    binding = Binding(model)
    if not binding.attention and not binding.mlp:
        raise ConfigError(f"{type(model).__name__}: no recognisable attention or MLP layers to compact")
    plan = find_plan(binding)
    reference = _probe(model) if verify and not plan.empty else None
    record = apply_plan(binding, plan)
    if reference is not None:
        now = _probe(model)
        scale = max(1.0, float(reference.abs().max()))
        diff = float("inf") if now is None or now.shape != reference.shape else float((now - reference).abs().max())
        if not diff <= 1e-4 * scale:
            raise ConfigError(f"{type(model).__name__}: removing its dead heads and neurons changed its outputs "
                              f"(max |difference| {diff:.3g}); this model family cannot be compacted yet")
    previous = getattr(model.config, RECORD_KEY, None) or {"params": {}, "attributes": {}}
    record = {"version": 1, "params": {**previous.get("params", {}), **record["params"]},
              "attributes": {**previous.get("attributes", {}), **record["attributes"]},
              "blocks": plan.summary()}
    setattr(model.config, RECORD_KEY, record)
    return model


def _build(config, cls=None):
    """An uninitialised model of class ``cls`` (default: ``config``'s architecture), weights to be loaded."""
    import transformers
    from transformers.initialization import no_init_weights

    archs = getattr(config, "architectures", None) or []
    cls = cls or (getattr(transformers, archs[0], None) if archs else None)
    if cls is None:
        raise CheckpointError(f"config.json names no transformers model class ({archs or 'no architectures'})")
    with no_init_weights():
        return cls(config)


def _plain(model) -> bool:
    """Try to state the widths in the standard config fields; True when ``from_pretrained`` then fits."""
    cfg = model.config
    record = getattr(cfg, RECORD_KEY, None) or {}
    blocks = record.get("blocks", {})
    widths = {v["kept"] for v in blocks.get("mlp", {}).values()}
    heads = {(v["kept"], v["kv_kept"]) for v in blocks.get("heads", {}).values()}
    trial = copy.deepcopy(cfg)
    hd = _head_dim(model)
    try:
        if len(widths) == 1:
            width = next(iter(widths))
            for key in WIDTH_KEYS:
                if getattr(trial, key, None) is not None:
                    setattr(trial, key, width)
        if len(heads) == 1 and hd and any(v["kept"] != v["of"] for v in blocks.get("heads", {}).values()):
            (n, kv), = heads
            trial.head_dim, trial.num_attention_heads = hd, n
            if getattr(trial, "num_key_value_heads", None) is not None:
                trial.num_key_value_heads = kv
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        with torch.device("meta"):
            built = _build(trial, type(model))
        got = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    except Exception:  # a config that cannot say these widths, or a class that cannot build it: no plain loading
        return False
    if got != want:
        return False
    for key in list(WIDTH_KEYS) + ["head_dim", "num_attention_heads", "num_key_value_heads"]:
        if hasattr(trial, key):
            setattr(cfg, key, getattr(trial, key))
    return True


def _head_dim(model) -> int | None:
    dims = {la.head_dim for la in Binding(model).attention if la.head_dim}
    return dims.pop() if len(dims) == 1 else None


def save_compact(model: torch.nn.Module, out, dtype: str | None = None) -> dict:
    """Write a compacted ``model`` (from :func:`compact`) into directory ``out`` (created; must not exist).

    Returns
    -------
    dict
        ``{"plain": bool, "dtype": str}``: whether plain ``from_pretrained`` rebuilds it.
    """
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        model.to(DTYPES[dtype])
    record = getattr(model.config, RECORD_KEY, None)
    if record is None:
        raise ConfigError(f"{type(model).__name__} was not compacted (call topoprune.compact first)")
    plain = _plain(model)
    record["plain"] = plain
    _save(model, Path(out))
    return {"plain": plain, "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def _save(model: torch.nn.Module, out: Path) -> None:
    """``config.json`` (+ generation config) and ``model.safetensors`` under the model's own parameter
    names (transformers' ``save_pretrained`` renames some for older checkpoints; plain
    ``from_pretrained`` reads both), tied copies stored once."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = next(model.parameters()).dtype
    model.config.save_pretrained(str(out))
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(str(out))
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})


def _state(directory: Path) -> dict:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    state = {}
    for f in files:
        if not (directory / f).is_file():
            raise CheckpointError(f"{directory / f}: missing")
        state.update(load_file(str(directory / f)))
    return state


def load_compact(directory) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_compact` (or ``topoprune compact``), in eval mode.

    Raises
    ------
    CheckpointError
        Not a compacted model directory, or weights that do not fit the recorded shapes.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(str(directory))
    record = getattr(config, RECORD_KEY, None)
    if not isinstance(record, dict):
        raise CheckpointError(f"{directory}: not a compacted model (no {RECORD_KEY} in config.json)")
    model = _build(config)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    apply_record(model, record)
    state = _state(directory)
    model.tie_weights()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that differs from the record
        raise CheckpointError(f"{directory}: weights do not fit the recorded model "
                              f"({' '.join(str(exc).split())[:160]})") from None
    missing = newly_initialised(model, result.missing_keys)  # tied copies of loaded weights are fine
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{directory}: weights do not fit the recorded model "
                              f"({(missing or result.unexpected_keys)[0]!r})")
    return model.eval()


def _source(src: Path) -> tuple[Path, Path | None]:
    """``(model directory, mask file or None)`` of a run directory or a model directory."""
    if (src / "model" / "config.json").is_file():
        masks = src / "masks.safetensors"
        return src / "model", masks if masks.is_file() else None
    if (src / "config.json").is_file():
        return src, None
    raise ConfigError(f"{src}: neither a topoprune run (with model/) nor a model directory (with config.json)")


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))


def run_compact(src, out, *, dtype: str | None = None, overwrite: bool = False) -> dict:
    """``topoprune compact``: compact the model of ``src`` into ``out``; return the ``topoprune.json`` record."""
    import transformers

    from ..io import OutputDir, atomic_path

    src = Path(src)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not src.exists():
        raise ConfigError(f"{src}: no such run or model directory")
    model_dir, mask_file = _source(src)
    target = OutputDir(out, kind="compact", overwrite=overwrite, reads=[src])
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{model_dir}: config.json cannot be read ({' '.join(str(exc).split())[:160]})") from None
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ConfigError(f"{model_dir}: config.json names no transformers model class ({archs or 'none'})")
    t0 = time.perf_counter()
    try:
        model = cls.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    except __import__("pickle").UnpicklingError:
        raise refused_pickle(model_dir) from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{model_dir}: cannot be loaded ({' '.join(str(exc).split())[:160]})") from None
    n_before = sum(p.numel() for p in model.parameters())
    compact(model, mask_file)
    n_after = sum(p.numel() for p in model.parameters())
    with target:
        saved = save_compact(model, target.path, dtype)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, target.path / name)
        record = {"topoprune_version": __version__, "source": str(src), "masks": str(mask_file) if mask_file else None,
                  "parameters": {"before": n_before, "after": n_after},
                  "bytes": {"before": _size(model_dir), "after": _size(target.path)},
                  **saved, "blocks": model.config.topoprune_compact["blocks"],
                  "seconds": time.perf_counter() - t0}
        with atomic_path(target.path / "topoprune.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        target.commit()
    log.info("compacted %s: %d -> %d parameters", src, n_before, n_after)
    return record
