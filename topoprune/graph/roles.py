"""Name every 2-D weight by its role: attention q/k/v/o, cross-attention, MLP, embeddings, ...

:func:`describe` turns a checkpoint's tensor list (names, shapes, ``config.json``) into
:class:`MatrixSpec` objects in the canonical ``[out, in]`` orientation, splitting fused
projections (GPT-2 ``c_attn``, GPT-NeoX/Falcon/BLOOM ``query_key_value``, Phi-3 ``qkv_proj``
and ``gate_up_proj``) into their q/k/v (or gate/up) row ranges. Names are matched by the
module path's last component and its context (an ancestor named ``attention``, ``mlp``, ...),
which covers BERT, RoBERTa, DistilBERT, GPT-2, GPT-NeoX, OPT, T5, BART, LLaMA, Mistral,
Qwen2, Phi, Phi-3, Falcon and the many models sharing their names. Anything else is
analysed as a generic ``linear`` matrix, with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import replace as _replace

from .loading import Checkpoint, TensorInfo

log = logging.getLogger(__name__)

ATTENTION_ROLES = ("q", "k", "v", "o")
CROSS_ROLES = ("cross_q", "cross_k", "cross_v", "cross_o")
MLP_ROLES = ("mlp_in", "mlp_gate", "mlp_up", "mlp_out")
ROLES = ATTENTION_ROLES + CROSS_ROLES + MLP_ROLES + ("embedding", "lm_head", "linear", "other")

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16", "F8_E4M3", "F8_E5M2",
                 "float8_e4m3fn", "float8_e5m2")

_CROSS_CTX = {"encdecattention", "encoder_attn", "crossattention", "cross_attn", "src_attn", "cross_attention"}
_ATTN_CTX = {"attention", "attn", "self_attn", "self_attention", "selfattention", "self"} | _CROSS_CTX
_MLP_CTX = {"mlp", "ffn", "feed_forward", "densereludense", "intermediate", "ff", "feedforward", "experts",
            "block_sparse_moe"}
_Q = {"q_proj", "query", "q", "q_lin", "wq", "q_attn"}
_K = {"k_proj", "key", "k", "k_lin", "wk"}
_V = {"v_proj", "value", "v", "v_lin", "wv"}
_O = {"o_proj", "out_proj", "o", "out_lin", "wo", "dense", "c_proj", "out", "proj", "output"}
_QKV = {"query_key_value", "qkv_proj", "c_attn", "wqkv", "qkv"}
_MLP_IN = {"fc1", "c_fc", "dense_h_to_4h", "wi", "lin1", "fc_in"}
_MLP_GATE = {"gate_proj", "wi_0", "w1"}
_MLP_UP = {"up_proj", "wi_1", "w3"}
_MLP_OUT = {"fc2", "dense_4h_to_h", "wo", "lin2", "fc_out", "down_proj", "w2", "c_proj"}
_EMBED = {"word_embeddings", "position_embeddings", "token_type_embeddings", "embed_tokens", "embed_positions",
          "wte", "wpe", "shared", "embed_in", "tok_embeddings", "embeddings", "relative_attention_bias"}
_LM_HEAD = {"lm_head", "embed_out", "output_layer", "vocab_projector"}
_CONV1D_LEAVES = {"c_attn", "q_attn", "c_proj", "c_fc"}
_BLOCK_CONTAINERS = {"layer", "layers", "h", "block", "blocks"}
_INTERLEAVED_QKV = {"gpt_neox", "bloom", "gptj"}  # fused query_key_value stored per head: [q_h, k_h, v_h]
_GROUPED_QKV = {"internlm2"}  # like Falcon new_decoder_architecture: per kv head [q_1..q_g, k, v]
_FALCON = {"falcon", "refinedweb", "refinedwebmodel"}
_ENCODER_ONLY = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "albert", "deberta", "deberta-v2",
                 "mpnet", "camembert", "ernie"}


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix to analyse, in ``[out, in]`` orientation.

    Attributes
    ----------
    name : str
        Report name: the tensor name, with ``:q``/``:k``/``:v`` (or ``:gate``/``:up``)
        appended for a piece of a fused projection.
    tensor : str
        Name of the stored tensor.
    role : str
        One of :data:`ROLES`.
    block, side : int, str
        Block index (-1 outside blocks) and ``encoder``/``decoder`` (``""`` if unknown).
    shape : (int, int)
        ``(out, in)`` after transposition and splitting.
    transpose : bool
        Stored as ``[in, out]`` (GPT-2 ``Conv1D``).
    rows : tuple of (int, int) or None
        Row ranges of the ``[out, in]`` tensor forming this piece (fused projections).
    n_heads, n_kv_heads, head_dim : int
        Attention geometry (0 when unknown).
    """

    name: str
    tensor: str
    role: str
    block: int
    side: str
    shape: tuple[int, int]
    transpose: bool = False
    rows: tuple[tuple[int, int], ...] | None = None
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0

    @property
    def component(self) -> str:
        if self.role in ATTENTION_ROLES:
            return "attention"
        if self.role in CROSS_ROLES:
            return "cross_attention"
        if self.role in MLP_ROLES:
            return "mlp"
        return self.role


@dataclass(frozen=True)
class Layout:
    """What :func:`describe` found: matrices, architecture name and warnings."""

    specs: tuple[MatrixSpec, ...]
    model_type: str
    known: bool
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Geometry:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int


def _cfg(config: dict, *keys, default=None):
    for key in keys:
        val = config.get(key)
        if val is not None:
            return val
    return default


def geometry(config: dict, side: str = "") -> _Geometry:
    """Heads, key-value heads, head dim and hidden size from a ``config.json`` dict."""
    hidden = int(_cfg(config, "hidden_size", "n_embd", "d_model", "dim", default=0) or 0)
    side_heads = {"encoder": "encoder_attention_heads", "decoder": "decoder_attention_heads"}.get(side)
    keys = ((side_heads,) if side_heads else ()) + ("num_attention_heads", "n_head", "num_heads", "n_heads",
                                                     "encoder_attention_heads")
    heads = int(_cfg(config, *keys, default=0) or 0)
    kv = _kv_heads(config, heads)
    head_dim = int(_cfg(config, "head_dim", "d_kv", default=0) or 0)
    if not head_dim and heads and hidden:
        head_dim = hidden // heads
    return _Geometry(heads, int(kv or 0), head_dim, hidden)


def _compacted(geo: _Geometry, config: dict, key: str) -> _Geometry:
    """The heads a compacted model kept in layer ``key`` (``topoprune compact`` records them per layer)."""
    record = config.get("topoprune_compact")
    kept = ((record or {}).get("blocks") or {}).get("heads", {}).get(key) if isinstance(record, dict) else None
    if not isinstance(kept, dict) or not all(isinstance(kept.get(k), int) and kept[k] > 0 for k in ("kept", "kv_kept")):
        return geo
    return _Geometry(kept["kept"], kept["kv_kept"], geo.head_dim, geo.hidden)


def _kv_heads(config: dict, heads: int) -> int:
    """Key-value heads.

    Falcon's ``num_kv_heads`` only counts with ``new_decoder_architecture``: ``multi_query``
    (Falcon-7B, GPTBigCode) means one kv head, and the old per-head interleaved Falcon layout
    has as many kv heads as query heads, whatever ``num_kv_heads`` says.
    """
    layout = _qkv_layout(config)
    if layout == "interleaved":
        return heads
    if layout == "stacked" and config.get("multi_query", _model_type(config) in _FALCON):
        return 1
    return int(_cfg(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num",
                    default=heads) or 0)


def _model_type(config: dict) -> str:
    return str(config.get("model_type", "")).lower()


def _qkv_layout(config: dict) -> str:
    """Row layout of a fused q/k/v projection: ``grouped``, ``interleaved`` or ``stacked``.

    ``grouped``: per kv head ``[q_1..q_group, k, v]`` (Falcon ``new_decoder_architecture``,
    InternLM2); ``interleaved``: per head ``[q_h, k_h, v_h]`` (GPT-NeoX, BLOOM, Falcon without
    ``multi_query``); ``stacked``: ``[q; k; v]`` with k and v of ``n_kv_heads`` heads (GPT-2
    ``c_attn``, Phi-3 ``qkv_proj``, Falcon ``multi_query``, GPTBigCode).
    """
    model_type = _model_type(config)
    if model_type in _GROUPED_QKV or (model_type in _FALCON and config.get("new_decoder_architecture")):
        return "grouped"
    if model_type in _INTERLEAVED_QKV or (model_type in _FALCON and not config.get("multi_query", True)):
        return "interleaved"
    return "stacked"


def _block_of(parts: list[str]) -> int:
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and i > 0 and parts[i - 1].lower() in _BLOCK_CONTAINERS:
            return int(p)
    for p in parts:
        if p.isdigit():
            return int(p)
    return -1


def _side_of(parts: list[str], model_type: str, config: dict) -> str:
    low = [p.lower() for p in parts[:-1]]  # not the leaf: ``lm_head.decoder`` is BERT's output layer
    if "encoder" in low:
        return "encoder"
    if "decoder" in low:
        return "decoder"
    if model_type in _ENCODER_ONLY:
        return "encoder"
    if model_type and not config.get("is_encoder_decoder"):
        return "decoder"
    return ""


def _classify(parts: list[str]) -> str | None:
    """Role (or ``qkv``/``kv``/``gate_up`` for fused) from the module path, else None."""
    leaf = parts[-1].lower()
    ctx = {p.lower() for p in parts[:-1]}
    if leaf in _LM_HEAD or (leaf == "decoder" and ({"lm_head", "predictions"} & ctx)):
        return "lm_head"
    if leaf in _EMBED or "embeddings" in ctx and leaf not in _O:
        return "embedding"
    cross = bool(ctx & _CROSS_CTX)
    prefix = "cross_" if cross else ""
    if ctx & _ATTN_CTX:
        if leaf == "c_attn" and "crossattention" in ctx:
            return "kv"
        if leaf in _QKV:
            return "qkv"
        for names, role in ((_Q, "q"), (_K, "k"), (_V, "v")):
            if leaf in names:
                return prefix + role
        if leaf in _O or (leaf == "dense" and "output" in ctx):
            return prefix + "o"
    if leaf == "gate_up_proj":
        return "gate_up"
    if leaf in _MLP_GATE:
        return "mlp_gate"
    if leaf in _MLP_UP:
        return "mlp_up"
    if leaf in _MLP_IN or (leaf == "dense" and "intermediate" in ctx):
        return "mlp_in"
    if leaf in _MLP_OUT and (ctx & _MLP_CTX or leaf not in {"wo", "c_proj"}):
        return "mlp_out"
    if leaf == "dense" and "output" in ctx and not ctx & _ATTN_CTX:
        return "mlp_out"  # BERT-style layer.N.output.dense
    return None


def _split_qkv(out_rows: int, geo: _Geometry, config: dict):
    """Row ranges of q, k, v inside a fused projection (see :func:`_qkv_layout`), or None.

    None when the head counts do not add up to ``out_rows``; without head counts only the
    equal-thirds ``[q; k; v]`` split is assumed.
    """
    h, kv, hd = geo.n_heads, geo.n_kv_heads, geo.head_dim
    layout = _qkv_layout(config)
    if not (h and kv and hd):
        if layout != "stacked" or out_rows % 3:
            return None
        third = out_rows // 3
        return {"q": ((0, third),), "k": ((third, 2 * third),), "v": ((2 * third, out_rows),)}
    if layout == "grouped":
        return _split_grouped(out_rows, h, kv, hd)
    if layout == "interleaved":
        if 3 * h * hd != out_rows:
            return None
        return {c: tuple((i * 3 * hd + j * hd, i * 3 * hd + (j + 1) * hd) for i in range(h))
                for j, c in enumerate("qkv")}
    qn, kn = h * hd, kv * hd
    if qn + 2 * kn != out_rows:
        return None
    return {"q": ((0, qn),), "k": ((qn, qn + kn),), "v": ((qn + kn, out_rows),)}


def _split_grouped(out_rows: int, h: int, kv: int, hd: int):
    """Falcon ``new_decoder_architecture`` (and InternLM2): per kv head ``[q_1..q_group, k, v]``."""
    if h % kv or (h + 2 * kv) * hd != out_rows:
        return None
    group = h // kv
    span = (group + 2) * hd
    q = tuple((g * span, g * span + group * hd) for g in range(kv))
    k = tuple((g * span + group * hd, g * span + (group + 1) * hd) for g in range(kv))
    v = tuple((g * span + (group + 1) * hd, (g + 1) * span) for g in range(kv))
    return {"q": q, "k": k, "v": v}


def describe(ckpt: Checkpoint) -> Layout:
    """Classify every 2-D floating-point tensor of ``ckpt``.

    Returns
    -------
    Layout
        ``known`` is False when no attention or MLP matrix was recognised (the matrices
        are then all ``linear`` and a warning is logged). 1-D tensors, integer and boolean
        buffers and 2-D biases are not matrices, nor are tensors with no entries: their names are in ``skipped``.
    """
    config = ckpt.config or {}
    model_type = _model_type(config)
    specs: list[MatrixSpec] = []
    skipped: list[str] = []
    for info in ckpt.tensors():
        specs_for = _describe_one(info, ckpt, config, model_type)
        if specs_for is None:
            skipped.append(info.name)
        else:
            specs.extend(specs_for)
    known = any(s.role in ATTENTION_ROLES + MLP_ROLES + CROSS_ROLES for s in specs)
    if specs and not known:
        specs = [s if s.role != "other" else _replace(s, role="linear") for s in specs]
        log.warning("%s: unknown layout (model_type %r); analysing %d matrices as generic 'linear'",
                    ckpt.source, model_type or "?", len(specs))
    unmatched = [s.name for s in specs if s.role == "linear" and s.block >= 0]
    if known and unmatched:
        log.warning("%s: %d block matrices not recognised, analysed as 'linear' (e.g. %s)",
                    ckpt.source, len(unmatched), unmatched[0])
    return Layout(tuple(specs), model_type, known, tuple(skipped))


def _is_matrix(info: TensorInfo) -> bool:
    """2-D, not empty, floating point, and not a bias (BART's ``final_logits_bias`` is ``[1, vocab]``)."""
    if len(info.shape) != 2 or 0 in info.shape or not any(info.dtype.upper() == d.upper() for d in _FLOAT_DTYPES):
        return False
    return not info.name.rsplit(".", 1)[-1].lower().endswith("bias")


def _describe_one(info: TensorInfo, ckpt: Checkpoint, config: dict, model_type: str):
    if not _is_matrix(info):
        return None
    name = info.name
    module = name[: -len(".weight")] if name.endswith(".weight") else name
    parts = module.split(".")
    leaf = parts[-1].lower()
    block = _block_of(parts)
    side = _side_of(parts, model_type, config)
    geo = _compacted(geometry(config, side), config, f"{side or 'model'}.{block}")
    role = _classify(parts)
    transpose = name in ckpt.conv1d or (leaf in _CONV1D_LEAVES and model_type in ("", "gpt2", "openai-gpt",
                                                                                  "imagegpt", "decision_transformer"))
    shape = tuple(info.shape[::-1]) if transpose else tuple(info.shape)
    common = dict(tensor=name, block=block, side=side, transpose=transpose,
                  n_heads=geo.n_heads, n_kv_heads=geo.n_kv_heads, head_dim=geo.head_dim)
    if role is None:  # unrecognised: generic matrix inside a block, 'other' outside (pooler, classifier)
        role = "linear" if block >= 0 else "other"
        return [MatrixSpec(name, role=role, shape=shape, **common)]
    if role in ("qkv", "kv", "gate_up"):
        out_rows = shape[0]
        if role == "gate_up":
            half = out_rows // 2
            pieces = {"mlp_gate": ((0, half),), "mlp_up": ((half, out_rows),)}
        elif role == "kv":
            half = out_rows // 2
            pieces = {"cross_k": ((0, half),), "cross_v": ((half, out_rows),)}
        else:
            split = _split_qkv(out_rows, geo, config)
            if split is None:
                log.warning("%s: cannot split fused %s (%d rows) with the head counts in config.json; "
                            "analysed whole", ckpt.source, name, out_rows)
                return [MatrixSpec(name, role="linear", shape=shape, **common)]
            pieces = split
        out = []
        for piece, rows in pieces.items():
            n = sum(b - a for a, b in rows)
            suffix = piece.removeprefix("mlp_").removeprefix("cross_")
            out.append(MatrixSpec(f"{name}:{suffix}", role=piece, shape=(n, shape[1]), rows=rows, **common))
        return out
    return [MatrixSpec(name, role=role, shape=shape, **common)]
