"""Read checkpoints tensor by tensor: HF directories, safetensors, torch state dicts, GGUF, modules.

:func:`open_checkpoint` sniffs the file content (not just the suffix) and returns a
:class:`Checkpoint` that lists tensor names and shapes without reading data, and loads one
tensor at a time (safetensors are memory-mapped for the time of one tensor's copy), so memory is
bounded by the largest tensor, not by the model.

Pickle-based files are read with ``torch.load(weights_only=True)``: a pickle that would run
code is refused. A shard index may only name files inside its directory, and a tensor whose
declared size does not fit in the memory available is refused before it is read
(:mod:`topoprune.graph.guards`). GGUF files are dequantised through transformers (needs ``gguf`` and
``accelerate``); that path holds the whole fp32 model in memory.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .guards import (check_config, check_memory, element_size, entry_path, mapping_error, numel,
                     reraise_interrupt)
from ..io import short

log = logging.getLogger(__name__)

#: File names tried, in order, inside a model directory.
_DIR_CANDIDATES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, shape and dtype, read from metadata only."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    shard: str = ""


class Checkpoint:
    """Weights to analyse: metadata up front, data one tensor at a time.

    Attributes
    ----------
    source : str
        The path (or ``<ClassName>`` for an in-memory model) named in messages.
    config : dict
        The model's ``config.json`` (or ``model.config``), empty when absent.
    conv1d : frozenset of str
        Tensors known to be stored ``[in, out]`` (transformers ``Conv1D``).
    """

    source: str = ""
    config: dict
    conv1d: frozenset = frozenset()

    def tensors(self) -> list[TensorInfo]:
        raise NotImplementedError

    def load(self, name: str) -> torch.Tensor:
        """Return tensor ``name`` as a CPU tensor in its stored dtype."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors shards, memory-mapped one tensor at a time."""

    def __init__(self, files: list[Path], config: dict, source: str):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.source, self.config = source, config
        self._infos: list[TensorInfo] = []
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in the index is missing")
            try:
                with safe_open(str(f), framework="pt") as h:
                    for key in h.keys():
                        sl = h.get_slice(key)
                        self._infos.append(TensorInfo(key, tuple(sl.get_shape()), str(sl.get_dtype()), str(f)))
            except CheckpointError:
                raise
            except BaseException as exc:  # SafetensorError, OSError, a reader's panic (a BaseException)
                reraise_interrupt(exc)
                raise mapping_error(f, exc) or CheckpointError(f"{f}: not a valid safetensors file ({short(exc)})") \
                    from None
        self._by_name = {t.name: t for t in self._infos}

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        # Open the shard for each tensor: the memory map is released right after the copy,
        # so file pages read earlier do not pile up in this process's resident set.
        info = self._by_name[name]
        check_memory(name, numel(info.shape) * element_size(info.dtype), "load")
        try:
            with self._safe_open(info.shard, framework="pt") as handle:
                return handle.get_tensor(name)
        except BaseException as exc:
            reraise_interrupt(exc)
            raise mapping_error(info.shard, exc) or CheckpointError(
                f"{info.shard}: tensor {name!r} cannot be read ({short(exc)})") from None


class StateDictCheckpoint(Checkpoint):
    """A dict of tensors: a torch ``.pt``/``.bin`` file (mmap where possible) or a module's."""

    def __init__(self, state: dict, config: dict, source: str, conv1d: frozenset = frozenset()):
        self.source, self.config, self.conv1d = source, config, conv1d
        self._state = state

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in self._state.items()]

    def load(self, name: str) -> torch.Tensor:
        return self._state[name].detach()


def _sniff(path: Path) -> str:
    """Return the format of ``path`` from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({short(exc)})") from None
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head[:4] == b"GGUF":
        return "gguf"
    # safetensors first: its 8-byte header length may itself start with 0x80 (a pickle's mark)
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:1] == b"\x80":
        return "pickle"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(path.read_bytes()[:50_000_000])
            return "json"
        except (ValueError, OSError):
            pass
    try:
        head.decode("utf-8")
        return "text" if all(c >= 32 or c in (9, 10, 13) for c in head) else "unknown"
    except UnicodeDecodeError:
        return "unknown"


def _read_config(directory: Path) -> dict:
    cfg = directory / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg}: not valid JSON ({short(exc)})") from None
    return check_config(data, cfg) if isinstance(data, dict) else {}


def _flatten_tensors(obj, prefix: str = "") -> dict:
    out: dict = {}
    for key, val in obj.items():
        name = f"{prefix}{key}"
        if isinstance(val, torch.Tensor):
            out[name] = val
        elif isinstance(val, dict):
            out.update(_flatten_tensors(val, name + "."))
    return out


def _load_torch(path: Path, config: dict, fmt: str) -> Checkpoint:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a user
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch")
    except pickle.UnpicklingError as exc:
        msg = short(exc)
        if any(k in msg for k in ("Weights only load failed", "weights_only", "Unsupported global", "GLOBAL")):
            raise CheckpointError(
                f"{path}: refused: loading this pickle would execute code "
                "(only plain tensors and containers are allowed)"
            ) from None
        raise CheckpointError(f"{path}: not a valid PyTorch file ({msg})") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid PyTorch file ({short(exc)})") from None
    if isinstance(obj, torch.nn.Module):  # pragma: no cover - weights_only forbids it
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = _flatten_tensors(obj)
    if not state:
        raise CheckpointError(f"{path}: contains no tensors")
    return StateDictCheckpoint(state, config, str(path))


def _load_gguf(path: Path) -> Checkpoint:
    try:
        import gguf  # noqa: F401
        import accelerate  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF needs the 'gguf' and 'accelerate' packages") from None
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    log.info("dequantising %s to fp32 through transformers", path)
    try:  # transformers shows its own tqdm bar while dequantising: keep stderr clean
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise CheckpointError(f"{path}: GGUF file cannot be loaded ({short(exc)})") from None
    ckpt = from_module(model)
    ckpt.source = str(path)
    return ckpt


def from_module(model: torch.nn.Module) -> Checkpoint:
    """Wrap an in-memory ``nn.Module`` (e.g. a transformers model) as a checkpoint."""
    config = {}
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        config = cfg.to_dict()
    conv1d = frozenset(
        f"{mod_name}.weight" for mod_name, mod in model.named_modules() if type(mod).__name__ == "Conv1D"
    )
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return StateDictCheckpoint(state, config, f"<{type(model).__name__}>", conv1d)


def _open_file(path: Path, config: dict) -> Checkpoint:
    fmt = _sniff(path)
    if fmt == "safetensors":
        return SafetensorsCheckpoint([path], config, str(path))
    if fmt in ("torch", "pickle"):
        return _load_torch(path, config, fmt)
    if fmt == "gguf":
        return _load_gguf(path)
    if fmt == "json":
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError):
            index = None
        if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
            return _open_index(path, config)
        raise CheckpointError(f"{path}: is a JSON file, not weights (give a .safetensors, .bin/.pt or .gguf file)")
    if fmt == "text":
        raise CheckpointError(f"{path}: is a text file, not weights (give a .safetensors, .bin/.pt or .gguf file)")
    raise CheckpointError(f"{path}: not a recognised weights format (expected safetensors, PyTorch or GGUF)")


def _open_index(index_path: Path, config: dict) -> Checkpoint:
    try:
        index = json.loads(index_path.read_text())
        entries = set(index["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index ({short(exc)})") from None
    # every shard must lie inside the checkpoint directory (checked on the entry as written)
    files = sorted({entry_path(index_path.parent, e, index_path) for e in sorted(entries, key=repr)})
    for f in files:
        try:
            found = f.is_file()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise CheckpointError(f"{index_path}: shard {f.name!r} cannot be read ({exc.strerror})") from None
        if not found:
            raise CheckpointError(f"{f}: shard listed in {index_path.name} is missing")
    if all(_sniff(f) == "safetensors" for f in files):
        return SafetensorsCheckpoint(files, config, str(index_path.parent))
    state: dict = {}
    for f in files:
        state.update(_load_torch(f, config, _sniff(f))._state)  # type: ignore[attr-defined]
    return StateDictCheckpoint(state, config, str(index_path.parent))


def open_checkpoint(source) -> Checkpoint:
    """Open ``source`` for tensor-by-tensor reading.

    Parameters
    ----------
    source : str, Path, nn.Module or Checkpoint
        A Hugging Face model directory (``model.safetensors``, sharded safetensors with
        an index, ``pytorch_model.bin``, or a single ``.gguf``), a single weights file,
        or an in-memory model.

    Raises
    ------
    CheckpointError
        With a one-line message naming the path and the problem.
    """
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, torch.nn.Module):
        return from_module(source)
    if isinstance(source, dict):
        return StateDictCheckpoint(_flatten_tensors(source), {}, "<state_dict>")
    path = Path(source).expanduser()
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as exc:  # e.g. a file name longer than the file system allows
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or short(exc)})") from None
    if not exists:
        raise CheckpointError(f"{path}: no such file or directory")
    if is_file:
        return _open_file(path, _read_config(path.parent))
    config = _read_config(path)
    for name in _DIR_CANDIDATES:
        if (path / name).is_file():
            return _open_file(path / name, config)
    for pattern in ("*.safetensors", "*.gguf", "*.pt", "*.pth", "*.bin"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return _open_file(found[0], config)
        if len(found) > 1 and pattern == "*.safetensors":
            return SafetensorsCheckpoint(found, config, str(path))
        if len(found) > 1:
            raise CheckpointError(f"{path}: several {pattern} files and no index; name one file")
    raise CheckpointError(f"{path}: directory holds no weights (no *.safetensors, *.bin, *.pt or *.gguf)")


def iter_tensors(ckpt: Checkpoint) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
    """Yield ``(info, tensor)`` one at a time, shard by shard."""
    for info in sorted(ckpt.tensors(), key=lambda t: t.shard):
        yield info, ckpt.load(info.name)
