"""What a pruned model can lose without changing its outputs: dead attention heads and MLP neurons.

:func:`find_plan` reads a bound model (:class:`~topoprune.graph.binding.Binding`) whose pruned
weights are zero and decides, exactly:

* **Attention heads.** Head ``h`` contributes nothing when its W_O columns ``h*hd:(h+1)*hd``
  are all zero -- whatever its Q/K/V rows hold. This covers heads removed by dominating-set
  head pruning (their W_O slice was folded into the replacer) and heads a mask zeroed. With
  grouped-query attention a key/value head goes only with all of its query heads, and every
  kept group keeps the same number of query heads (the model repeats key/value heads
  uniformly): where groups differ, zero heads are kept back until they match -- still exact,
  since their W_O columns are zero. One head per layer is always kept.
* **MLP hidden neurons.** Neuron ``i`` contributes nothing when its output column is zero, or
  when its input is constant: an all-zero fan-in row makes it ``act(b_i)`` (gated:
  ``act(b_gate,i) * b_up,i``), which is zero without biases and is otherwise folded into the
  output bias (:attr:`NeuronPlan.fold`) -- ``W_out[:, i] * act(b_i)`` -- before the neuron is
  removed. In a gated MLP a zero gate row (``act(0) = 0``) or a zero up row without bias also
  silences the neuron. One neuron per MLP is always kept.

Heads are left in place (with a note) where removing them would change the model: T5's relative
position bias is computed once, for every head, and shared by all layers; ALiBi slopes depend on
the head count.
"""
from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field

import torch

from ..graph.binding import Attention, Binding, Mlp

log = logging.getLogger(__name__)

#: Model types whose attention biases depend on the head count (ALiBi): their heads are kept.
ALIBI_TYPES = ("bloom", "mpt")


@dataclass
class HeadPlan:
    """The heads an attention layer keeps (query heads and key/value heads, sorted)."""

    layer: Attention
    module: str
    keep: list[int]
    keep_kv: list[int]

    @property
    def removed(self) -> int:
        return self.layer.n_heads - len(self.keep)


@dataclass
class NeuronPlan:
    """The hidden neurons an MLP keeps, and the constant its removed neurons add to the output bias."""

    mlp: Mlp
    keep: list[int]
    fold: torch.Tensor | None = None  # [d_out], added to the output bias

    @property
    def removed(self) -> int:
        return self.mlp.width - len(self.keep)


@dataclass
class Plan:
    """Everything a model can lose exactly; see the module notes."""

    heads: list[HeadPlan] = field(default_factory=list)
    neurons: list[NeuronPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(p.removed for p in self.heads) and not any(p.removed for p in self.neurons)

    def summary(self) -> dict:
        """Per layer: heads (and key/value heads) and MLP width kept, of how many; and the notes."""
        return {"heads": {p.layer.key: {"kept": len(p.keep), "of": p.layer.n_heads, "kv_kept": len(p.keep_kv),
                                        "kv_of": p.layer.n_kv_heads or p.layer.n_heads} for p in self.heads},
                "mlp": {p.mlp.key: {"kept": len(p.keep), "of": p.mlp.width, "folded": p.fold is not None}
                        for p in self.neurons},
                "notes": list(self.notes)}


def _attention_module(binding: Binding, layer: Attention) -> str:
    """The module holding the attention layer's settings: the parent of its query projection."""
    return binding.linears[layer.q.tensor].name.rsplit(".", 1)[0]


def _head_blocker(binding: Binding, module: torch.nn.Module) -> str | None:
    """Why heads of this model cannot be removed, or None."""
    cfg = getattr(binding.model, "config", None)
    if hasattr(module, "has_relative_attention_bias"):
        return "heads kept: the relative position bias (T5) is computed once, for every head, and shared by all layers"
    if getattr(cfg, "alibi", False) or getattr(cfg, "model_type", "") in ALIBI_TYPES:
        return "heads kept: ALiBi position biases depend on the number of heads"
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        source = ""
    if re.search(r"config\.(num_attention_heads|num_key_value_heads|n_head|num_heads)", source):
        return f"heads kept: {type(module).__name__} reads its head counts from the configuration all layers share"
    return None


def _heads(binding: Binding, layer: Attention, notes: list[str]) -> HeadPlan | None:
    if not layer.has_heads:
        notes.append(f"{layer.key}: head layout unknown; heads kept")
        return None
    module = _attention_module(binding, layer)
    why = _head_blocker(binding, binding.model.get_submodule(module))
    n, hd = layer.n_heads, layer.head_dim
    kv = layer.n_kv_heads or n
    if why is not None or n % kv:
        if why and why not in notes:
            notes.append(why)
        return HeadPlan(layer, module, list(range(n)), list(range(kv)))
    with torch.no_grad():
        o = binding.weight(layer.o).detach()  # [d, n * hd]
        live = o.reshape(o.shape[0], n, hd).abs().amax(dim=(0, 2)) > 0  # [n]
    group = n // kv
    per_group = [[h for h in range(g * group, (g + 1) * group) if live[h]] for g in range(kv)]
    if not any(per_group):  # keep one head: a layer without heads is not a layer transformers can run
        per_group[0] = [0]
    width = max(len(p) for p in per_group)
    keep, keep_kv = [], []
    for g, kept in enumerate(per_group):
        if not kept:
            continue
        extra = [h for h in range(g * group, (g + 1) * group) if h not in kept][:width - len(kept)]
        keep += sorted(kept + extra)
        keep_kv.append(g)
    return HeadPlan(layer, module, sorted(keep), keep_kv)


def _activation(binding: Binding):
    """The MLP activation named in the model's config (a callable), or None when unknown."""
    from transformers.activations import ACT2FN

    cfg = getattr(binding.model, "config", None)
    for key in ("hidden_act", "activation_function", "hidden_activation", "dense_act_fn", "activation"):
        name = getattr(cfg, key, None)
        if isinstance(name, str) and name in ACT2FN:
            return ACT2FN[name]
    return None


def _neurons(binding: Binding, mlp: Mlp, act) -> NeuronPlan:
    with torch.no_grad():
        w_out = binding.weight(mlp.out).detach()  # [d_out, n]
        out_live = w_out.abs().amax(dim=0) > 0  # [n]
        rows = [binding.weight(s).detach().abs().amax(dim=1) > 0 for s in mlp.inputs]  # [n] each
        biases = [binding.bias(s) for s in mlp.inputs]
        zero = [torch.zeros(mlp.width, dtype=w_out.dtype, device=w_out.device) if b is None else b.detach()
                for b in biases]
        dead = ~out_live
        constant = torch.zeros_like(dead)
        values = None
        if act is not None:
            if mlp.gated:
                gate_live, up_live = rows
                act_bg = act(zero[0])
                dead |= ~gate_live & (act_bg == 0)
                dead |= ~up_live & (zero[1] == 0)
                constant = ~gate_live & ~up_live & ~dead
                values = act_bg * zero[1]
            else:
                value = act(zero[0])
                dead |= ~rows[0] & (value == 0)
                constant = ~rows[0] & ~dead
                values = value
        fold = None
        if bool(constant.any()):
            if binding.bias(mlp.out) is None:  # nowhere to fold the constant: the neurons stay
                constant[:] = False
            else:
                fold = w_out[:, constant] @ values[constant]  # [d_out]
        removable = dead | constant
        if bool(removable.all()):
            removable[0] = False
            if fold is not None and bool(constant[0]):
                fold = fold - w_out[:, 0] * values[0]
    keep = [int(i) for i in torch.nonzero(~removable).flatten()]
    return NeuronPlan(mlp, keep, fold)


def find_plan(binding: Binding) -> Plan:
    """The heads and neurons ``binding``'s model can lose without changing its outputs."""
    plan = Plan()
    for layer in binding.attention:
        hp = _heads(binding, layer, plan.notes)
        if hp is not None:
            plan.heads.append(hp)
    act = _activation(binding)
    if act is None:
        plan.notes.append("MLP activation not named in the config: only neurons with a zero output column go")
    for mlp in binding.mlp:
        plan.neurons.append(_neurons(binding, mlp, act))
    log.info("compaction plan: %d of %d heads and %d of %d MLP neurons removable",
             sum(p.removed for p in plan.heads), sum(p.layer.n_heads for p in plan.heads),
             sum(p.removed for p in plan.neurons), sum(p.mlp.width for p in plan.neurons))
    return plan
