"""Carry out a :class:`~topoprune.compaction.plan.Plan`: smaller weight tensors, updated head counts.

The surgery works on the shared model binding, not per architecture: every kept head or neuron
is a set of rows (or columns) of the ``[out, in]`` matrices the binding names, and a fused
tensor (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``, Falcon, Phi-3 ``gate_up_proj``) keeps
the rows of all its pieces in their stored order, so its layout (stacked, interleaved per head,
grouped per key/value head) is preserved. Each weight tensor is replaced by its gathered rows
and columns (its bias by its rows); ``nn.Linear``'s ``in_features``/``out_features`` and
``Conv1D``'s ``nf``/``nx`` follow. The attention module's head settings that transformers reads
in ``forward`` are updated where the module has them (:data:`HEAD_ATTRIBUTES`).

:func:`apply_plan` returns a *record* -- the new shape of every changed parameter and the new
value of every changed module attribute -- from which :func:`apply_record` rebuilds the same
shapes on a freshly built model of the original configuration (how a compacted directory is
loaded: :func:`topoprune.compaction.load_compact`).
"""
from __future__ import annotations

import torch

from ..graph.binding import Binding, canonical
from .plan import Plan

#: Attention-module attributes that count heads (query heads, key/value heads), by what they count.
HEAD_ATTRIBUTES = {
    "num_heads": "heads", "num_attention_heads": "heads", "n_heads": "heads", "n_head": "heads",
    "num_key_value_heads": "kv_heads", "num_kv_heads": "kv_heads", "n_head_kv": "kv_heads",
    "num_key_value_groups": "groups", "all_head_size": "width", "inner_dim": "width", "split_size": "width",
}


def _piece_rows(spec, n_rows: int) -> torch.Tensor:
    """Canonical row index of each row of the piece ``spec`` (its local order)."""
    if spec.rows is None:
        return torch.arange(n_rows)
    return torch.cat([torch.arange(a, b) for a, b in spec.rows])


def _keep_rows(binding: Binding, spec, local: list[int], kept: dict) -> None:
    """Keep piece-local rows ``local`` of ``spec``: record their canonical rows on the tensor."""
    full = canonical(binding.parameter(spec.tensor), _Whole(spec.transpose)).shape[0]
    piece = _piece_rows(spec, spec.shape[0])
    covered = kept.setdefault(spec.tensor, {"rows": {}, "cols": None, "n_rows": full})
    covered["rows"][tuple(piece.tolist())] = piece[torch.as_tensor(local, dtype=torch.long)]


class _Whole:
    """A whole tensor (no row ranges), in stored or transposed orientation."""

    rows = None

    def __init__(self, transpose: bool):
        self.transpose = transpose


def _set_param(module: torch.nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    old = getattr(module, name)
    setattr(module, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))


def _fix_linear(module: torch.nn.Module) -> None:
    """``in_features``/``out_features`` (``nn.Linear``) or ``nf``/``nx`` (``Conv1D``) from the weight."""
    w = module.weight
    if isinstance(module, torch.nn.Linear):
        module.out_features, module.in_features = int(w.shape[0]), int(w.shape[1])
    elif hasattr(module, "nf"):
        module.nx, module.nf = int(w.shape[0]), int(w.shape[1])


def _reshape(binding: Binding, tensor: str, rows: torch.Tensor | None, cols: torch.Tensor | None,
             fold: torch.Tensor | None = None) -> dict:
    """Gather canonical ``rows``/``cols`` of parameter ``tensor`` (and its bias); return new shapes."""
    lin = binding.linears[tensor]
    module = lin.module
    with torch.no_grad():
        w = canonical(module.weight, lin)  # [out, in]
        if rows is not None:
            w = w.index_select(0, rows.to(w.device))
        if cols is not None:
            w = w.index_select(1, cols.to(w.device))
        bias = getattr(module, "bias", None)
        new_bias = None
        if isinstance(bias, torch.Tensor):
            new_bias = bias.detach().clone()
            if fold is not None:
                new_bias += fold.to(new_bias.dtype)
            if rows is not None:
                new_bias = new_bias.index_select(0, rows.to(new_bias.device))
        stored = (w.t() if lin.transpose else w).contiguous().clone()
    _set_param(module, "weight", stored)
    _set_param(module, "bias", new_bias)
    _fix_linear(module)
    shapes = {f"{lin.name}.weight": list(stored.shape)}
    if new_bias is not None:
        shapes[f"{lin.name}.bias"] = list(new_bias.shape)
    return shapes


def apply_plan(binding: Binding, plan: Plan) -> dict:
    """Shrink ``binding``'s model in place to ``plan``; return the record of what changed.

    Returns
    -------
    dict
        ``{"params": {name: shape}, "attributes": {module: {attribute: value}}}`` for every
        parameter whose shape changed and every head setting that changed.
    """
    kept: dict[str, dict] = {}
    cols: dict[str, torch.Tensor] = {}
    folds: dict[str, torch.Tensor] = {}
    attributes: dict[str, dict] = {}
    for hp in plan.heads:
        if not hp.removed:
            continue
        la, hd = hp.layer, hp.layer.head_dim
        q_rows = [h * hd + i for h in hp.keep for i in range(hd)]
        kv_rows = [g * hd + i for g in hp.keep_kv for i in range(hd)]
        for spec, local in ((la.q, q_rows), (la.k, kv_rows), (la.v, kv_rows)):
            _keep_rows(binding, spec, local, kept)
        cols[la.o.tensor] = torch.as_tensor(q_rows, dtype=torch.long)
        module = binding.model.get_submodule(hp.module)
        values = {"heads": len(hp.keep), "kv_heads": len(hp.keep_kv), "groups": len(hp.keep) // len(hp.keep_kv),
                  "width": len(hp.keep) * hd}
        attributes[hp.module] = {a: values[what] for a, what in HEAD_ATTRIBUTES.items()
                                 if isinstance(getattr(module, a, None), int) and not isinstance(getattr(module, a),
                                                                                                 bool)}
    for np_ in plan.neurons:
        if not np_.removed and np_.fold is None:
            continue
        for spec in np_.mlp.inputs:
            _keep_rows(binding, spec, np_.keep, kept)
        cols[np_.mlp.out.tensor] = torch.as_tensor(np_.keep, dtype=torch.long)
        if np_.fold is not None:
            folds[np_.mlp.out.tensor] = np_.fold
    params: dict[str, list] = {}
    for tensor in sorted(set(kept) | set(cols)):
        rows = None
        if tensor in kept:
            info = kept[tensor]
            covered = torch.cat([torch.as_tensor(k, dtype=torch.long) for k in info["rows"]])
            rest = torch.as_tensor(sorted(set(range(info["n_rows"])) - set(covered.tolist())), dtype=torch.long)
            rows = torch.sort(torch.cat([rest] + list(info["rows"].values()))).values
        params.update(_reshape(binding, tensor, rows, cols.get(tensor), folds.get(tensor)))
    for module_name, attrs in attributes.items():
        module = binding.model.get_submodule(module_name)
        for a, v in attrs.items():
            setattr(module, a, v)
    return {"params": params, "attributes": attributes}


def apply_record(model: torch.nn.Module, record: dict) -> None:
    """Give a freshly built model the shapes and head settings of a compacted one (values unset).

    The parameters named in ``record["params"]`` are replaced by uninitialised tensors of the
    recorded shapes (to be filled by ``load_state_dict``); the attributes are set.
    """
    for name, shape in record.get("params", {}).items():
        module_name, attr = name.rsplit(".", 1)
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        setattr(module, attr, torch.nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                                 requires_grad=old.requires_grad))
        if attr == "weight":
            _fix_linear(module)
    for module_name, attrs in record.get("attributes", {}).items():
        module = model.get_submodule(module_name)
        for a, v in attrs.items():
            setattr(module, a, v)
