"""Checks on what a checkpoint declares, made before it is trusted: memory needed, files named.

* :func:`check_memory` refuses a tensor whose declared size cannot fit in the memory available
  now, with a line naming it, instead of an allocation failure deep inside a reader.
* :func:`check_config` refuses head counts and sizes in ``config.json`` that are not positive
  integers (they decide how fused projections are split and attention graphs are built).
* :func:`entry_path` resolves a file named inside a checkpoint's JSON (a shard index) against the
  checkpoint directory and refuses absolute names and names that climb out of it (``..``).
  The check is lexical, on the entry as written: a symbolic link that lives inside the directory
  is followed wherever it points (Hugging Face cache snapshots are links into ``../../blobs``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import CheckpointError, TensorError

#: Bytes per element of the dtypes safetensors and torch name (unknown dtypes count as 4 bytes).
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
#: Bytes per element of the float32 working copy the analysis makes of every matrix.
WORK_BYTES = 4
GIB = 1024 ** 3


def element_size(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a safetensors name such as ``BF16`` or a torch name such as ``float32``)."""
    if dtype.upper() in DTYPE_BYTES:
        return DTYPE_BYTES[dtype.upper()]
    import torch

    torch_dtype = getattr(torch, dtype.removeprefix("torch."), None)
    return torch_dtype.itemsize if isinstance(torch_dtype, torch.dtype) else 4


def numel(shape) -> int:
    """Number of elements of ``shape`` (exact, however large)."""
    return math.prod(int(s) for s in shape)


def reraise_interrupt(exc: BaseException) -> None:
    """Re-raise ``exc`` if it is an interrupt or an exit; anything else a file reader raises (a
    Rust reader's panic is a ``BaseException``) means a broken file and is reported as such."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(name: str, nbytes: int, what: str = "analyse") -> None:
    """Refuse ``nbytes`` for tensor ``name`` when they exceed the memory available now.

    Parameters
    ----------
    name : str
        The tensor, named in the message.
    nbytes : int
        Bytes the step needs.
    what : str
        The step (``load``, ``analyse``), named in the message.

    Raises
    ------
    TensorError
        ``"<name>: needs X GiB to <what>, Y GiB available"``.
    """
    free = available_memory()
    if nbytes > free:
        raise TensorError(f"{name}: needs {nbytes / GIB:.1f} GiB to {what}, {free / GIB:.1f} GiB available")


def analysis_bytes(shape, dtype: str) -> int:
    """Bytes needed to analyse a tensor: the stored tensor plus its float32 working copy."""
    return numel(shape) * (element_size(dtype) + WORK_BYTES)


def declared_tensors(path) -> list[tuple[str, tuple, str]]:
    """``(name, shape, dtype)`` of every well-formed entry of a safetensors header (best effort, no data read)."""
    import json
    import struct

    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(min(n, 100_000_000)))
    except (OSError, ValueError, struct.error):
        return []
    out = []
    for name, entry in header.items() if isinstance(header, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list) \
                and all(isinstance(s, int) and s >= 0 for s in entry["shape"]):
            out.append((name, tuple(entry["shape"]), entry["dtype"]))
    return out


def mapping_error(path, exc: BaseException) -> Exception | None:
    """The one-line error for a safetensors file that could not be memory-mapped (``None`` for other failures).

    The reader maps the whole file; a file larger than the memory the system lets a process map
    fails with ``ENOMEM``. The message names the largest tensor when it alone does not fit,
    else the file.
    """
    text = str(exc)
    if "Cannot allocate memory" not in text and "os error 12" not in text:
        return None
    free = available_memory()
    tensors = declared_tensors(path)
    if tensors:
        name, shape, dtype = max(tensors, key=lambda t: numel(t[1]) * element_size(t[2]))
        need = numel(shape) * element_size(dtype)
        if need > free:
            return TensorError(f"{name}: needs {need / GIB:.1f} GiB to load, {free / GIB:.1f} GiB available")
    size = os.path.getsize(path)
    return CheckpointError(f"{path}: cannot be mapped into memory ({size / GIB:.1f} GiB file, "
                           f"{free / GIB:.1f} GiB available)")


#: ``config.json`` settings that size attention heads and hidden layers: positive integers when given.
GEOMETRY_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "num_attention_heads", "n_head", "num_heads", "n_heads",
                 "encoder_attention_heads", "decoder_attention_heads", "num_key_value_heads", "num_kv_heads",
                 "n_head_kv", "multi_query_group_num", "head_dim", "d_kv")
#: Largest geometry value accepted (no model has a million heads or a hidden size above 2**20).
MAX_GEOMETRY = 2 ** 20


def check_config(config: dict, path) -> dict:
    """Return ``config`` after checking its geometry settings (:data:`GEOMETRY_KEYS`).

    Raises
    ------
    CheckpointError
        Naming ``path`` and the first setting that is not an integer from 1 to :data:`MAX_GEOMETRY`.
    """
    for key in GEOMETRY_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 1 <= value <= MAX_GEOMETRY):
            raise CheckpointError(f"{path}: {key} must be an integer from 1 to {MAX_GEOMETRY}, got {value!r}")
    return config


def entry_path(directory: Path, entry, where: Path) -> Path:
    """The file ``entry`` (as named in the JSON file ``where``) inside ``directory``.

    Raises
    ------
    CheckpointError
        When ``entry`` is not a non-empty string, is absolute, or leaves ``directory`` once
        normalised (``..``); the message names ``where`` and the entry.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise CheckpointError(f"{where}: entry {entry!r} is not a file name")
    if "\0" in entry:
        raise CheckpointError(f"{where}: entry {entry!r} is not a file name")
    if (PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute()
            or PureWindowsPath(entry).drive or os.path.isabs(entry)):
        raise CheckpointError(f"{where}: entry {entry!r} is an absolute path; only files inside "
                              f"{directory} are read")
    norm = os.path.normpath(entry.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise CheckpointError(f"{where}: entry {entry!r} points outside {directory}; only files inside it are read")
    return directory / norm
