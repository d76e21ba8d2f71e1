"""One binding of a live model: blocks, their matrices with role, head layout and orientation,
and one oriented read and write of every weight.

:class:`Binding` is the one place where topoprune meets an ``nn.Module``. It takes the same
description :func:`topoprune.graph.roles.describe` gives a checkpoint (names and shapes, read
from ``model.state_dict()``) and ties it to the model's parameters and modules:

======================  ===================================================================
:attr:`Binding.specs`     every 2-D weight as a :class:`~topoprune.graph.roles.MatrixSpec` (role,
                          block, side, heads, ``[out, in]`` orientation)
:attr:`Binding.linears`   every stored weight tensor as a :class:`Linear` (a fused q/k/v or gate/up
                          tensor holds several specs): what a layer-wise pruner masks
:attr:`Binding.attention` every attention layer as an :class:`Attention` (q, k, v, o by name, with
                          the head layout, grouped-query attention included)
:attr:`Binding.mlp`       every MLP as an :class:`Mlp` (its input matrices and its output matrix)
:meth:`Binding.stack`     the stack of transformer blocks (a ``ModuleList``) and each block's linears
:meth:`Binding.weight`    the ``[out, in]`` view of a spec or linear; :meth:`Binding.write` the inverse
======================  ===================================================================

Analysis reads checkpoints through the description; sparse training (penalties, masks, head
surgery), one-shot pruning (block-by-block calibration, masks) and compaction read and write
weights through the binding.

**Orientation.** Every matrix is read and written ``[out, in]``: transformers' ``Conv1D`` (GPT-2)
stores ``[in, out]`` (``transpose``); a fused projection (GPT-2 ``c_attn``, GPT-NeoX
``query_key_value``, Phi-3 ``qkv_proj`` / ``gate_up_proj``) is a set of row ranges (``rows``).
:func:`canonical` and :func:`write_canonical` do this for any tensor of a parameter's shape (the
weight, its gradient, its mask), :func:`piece_mask` builds a full-size mask from a piece's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .loading import from_module
from .roles import ATTENTION_ROLES, CROSS_ROLES, MLP_ROLES, MatrixSpec, describe

log = logging.getLogger(__name__)

#: Names of the module lists that hold a model's transformer blocks.
BLOCK_CONTAINERS = {"layer", "layers", "h", "block", "blocks"}


def canonical(tensor: torch.Tensor, spec) -> torch.Tensor:
    """The ``[out, in]`` piece of a stored tensor that ``spec`` describes.

    Parameters
    ----------
    tensor : torch.Tensor
        The parameter (or its gradient or mask) in stored layout: ``[out, in]`` for
        ``nn.Linear``, ``[in, out]`` for ``Conv1D`` (``spec.transpose``), or a 1-D bias
        ``[out]`` (never transposed).
    spec : MatrixSpec, Linear or any object with ``transpose`` and ``rows``
        ``rows``: row ranges of the ``[out, in]`` tensor forming the piece (fused q/k/v,
        gate/up), ``None`` for the whole tensor.

    Returns
    -------
    torch.Tensor, shape [n_rows, in] (or [n_rows] for a bias)
        A view when there is at most one row range (slicing and ``.t()`` keep the autograd
        link to a ``Parameter``); a differentiable concatenation of views otherwise
        (interleaved fused layouts), which must be written back with :func:`write_canonical`.
    """
    c = tensor.t() if (spec.transpose and tensor.ndim == 2) else tensor
    rows = spec.rows
    if rows is None:
        return c
    if len(rows) == 1:
        a, b = rows[0]
        return c[a:b]
    return torch.cat([c[a:b] for a, b in rows], dim=0)


def write_canonical(tensor: torch.Tensor, spec, value: torch.Tensor) -> None:
    """Copy ``value`` (the ``[out, in]`` piece) into ``tensor`` in place; inverse of :func:`canonical`."""
    c = tensor.t() if (spec.transpose and tensor.ndim == 2) else tensor
    with torch.no_grad():
        if spec.rows is None:
            c.copy_(value)
            return
        offset = 0
        for a, b in spec.rows:
            c[a:b] = value[offset:offset + b - a]
            offset += b - a


def piece_mask(like: torch.Tensor, spec, piece, base=True) -> torch.Tensor:
    """A boolean mask of ``like``'s stored shape: ``base`` outside the piece ``spec``, ``piece`` in it.

    Parameters
    ----------
    like : torch.Tensor
        The parameter (shape and device are taken from it).
    spec : MatrixSpec or any object with ``transpose`` and ``rows``
    piece : bool or torch.BoolTensor
        Broadcast to the piece's ``[out, in]`` (or ``[out]`` for a bias) shape, e.g. a row
        mask ``[out, 1]`` or a column mask ``[1, in]``.
    base : bool or torch.BoolTensor
        Value outside the piece; a tensor of ``like``'s shape is written into in place.
    """
    full = base if isinstance(base, torch.Tensor) else torch.full_like(like, bool(base), dtype=torch.bool)
    write_canonical(full, spec, torch.as_tensor(piece, device=full.device).expand(canonical(full, spec).shape))
    return full


@dataclass(eq=False)
class Linear:
    """One stored weight tensor of a bound model, with its module.

    Attributes
    ----------
    name, param : str
        Module path and parameter name (``<name>.weight``).
    module : torch.nn.Module
        The module holding the weight (for forward hooks).
    block : int
        Block index (-1 outside blocks).
    specs : tuple of MatrixSpec
        The matrices stored in it: one, or several for a fused projection.
    """

    name: str
    param: str
    module: torch.nn.Module
    block: int
    specs: tuple[MatrixSpec, ...]
    rows = None  # the whole tensor (for canonical)

    @property
    def transpose(self) -> bool:
        """Stored ``[in, out]`` (``Conv1D``)."""
        return self.specs[0].transpose

    @property
    def fused(self) -> bool:
        """Several matrices (q/k/v or gate/up) in one tensor."""
        return len(self.specs) > 1 or self.specs[0].rows is not None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(s.role for s in self.specs)

    @property
    def role(self) -> str:
        """The role of its matrix; ``"q+k+v"`` (the roles joined by ``+``) for a fused tensor."""
        return "+".join(self.roles)

    @property
    def n_heads(self) -> int:
        return self.specs[0].n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.specs[0].n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.specs[0].head_dim

    @property
    def weight(self) -> torch.Tensor:
        """The whole weight as ``[out, in]`` (a view of the parameter)."""
        return canonical(self.module.weight, self)

    def write(self, value: torch.Tensor) -> None:
        """Write ``value`` (``[out, in]``) into the weight in place."""
        write_canonical(self.module.weight, self, value)


@dataclass(frozen=True)
class Attention:
    """One attention layer: q, k, v and o by name, and its head layout.

    ``key`` is ``<side>.<block>`` (``model.<block>`` when the side is unknown; ``.cross``
    appended for cross-attention, ``cross`` True); ``o`` is None when no output projection was
    recognised.
    """

    key: str
    q: MatrixSpec
    k: MatrixSpec
    v: MatrixSpec
    o: MatrixSpec | None
    cross: bool = False

    @property
    def qkv(self) -> tuple[MatrixSpec, MatrixSpec, MatrixSpec]:
        return self.q, self.k, self.v

    @property
    def n_heads(self) -> int:
        return self.q.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.q.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.q.head_dim

    @property
    def has_heads(self) -> bool:
        """The head layout is known and matches q's rows."""
        return bool(self.o is not None and self.n_heads and self.head_dim
                    and self.q.shape[0] == self.n_heads * self.head_dim)


@dataclass(frozen=True)
class Mlp:
    """One MLP: its input matrices (``mlp_in``, or ``mlp_gate`` and ``mlp_up``) and ``mlp_out``.

    Hidden neuron ``i`` is row ``i`` of every input matrix and column ``i`` of ``out``.
    """

    key: str
    inputs: tuple[MatrixSpec, ...]
    out: MatrixSpec

    @property
    def gated(self) -> bool:
        return len(self.inputs) == 2

    @property
    def width(self) -> int:
        return self.out.shape[1]


@dataclass
class Stack:
    """A model's stack of transformer blocks and the linear layers of each block, in order."""

    container: str
    layers: torch.nn.ModuleList
    linears: list[list[Linear]]

    def __len__(self) -> int:
        return len(self.layers)

    def all(self) -> list[Linear]:
        return [lin for block in self.linears for lin in block]


class Binding:
    """A live model's matrices, attention layers and blocks, with one oriented read/write.

    Parameters
    ----------
    model : torch.nn.Module
        Any transformers model (or a module with transformer-like parameter names).

    Attributes
    ----------
    model : torch.nn.Module
    layout : topoprune.graph.roles.Layout
        The description of the model's ``state_dict``.
    specs : tuple of MatrixSpec
        The described matrices that are parameters of the model (tied copies are bound once).
    linears : dict of str to Linear
        Every stored weight tensor holding at least one spec, by parameter name.
    attention : list of Attention
        Self- and cross-attention layers with exactly one q, k, v (and at most one o).
    mlp : list of Mlp
        MLPs with one ``mlp_in`` (or ``mlp_gate`` and ``mlp_up``) and one ``mlp_out`` of one width.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layout = describe(from_module(model))
        params = dict(model.named_parameters())
        self.specs = tuple(s for s in self.layout.specs if s.tensor in params)
        self._biases = {s.tensor: s.tensor[:-len("weight")] + "bias" for s in self.specs
                        if s.tensor.endswith(".weight") and s.tensor[:-len("weight")] + "bias" in params}
        modules = dict(model.named_modules())
        grouped: dict[str, list[MatrixSpec]] = {}
        for s in self.specs:
            grouped.setdefault(s.tensor, []).append(s)
        self.linears = {}
        for tensor, specs in grouped.items():
            module = modules.get(tensor.removesuffix(".weight"))
            if tensor.endswith(".weight") and getattr(module, "weight", None) is params[tensor]:
                self.linears[tensor] = Linear(tensor.removesuffix(".weight"), tensor, module, specs[0].block,
                                              tuple(specs))
        self.attention = self._group_attention()
        self.mlp = self._group_mlp()

    def _group_attention(self) -> list[Attention]:
        groups: dict[tuple[str, bool], dict[str, list[MatrixSpec]]] = {}
        for s in self.specs:
            if s.role in ATTENTION_ROLES + CROSS_ROLES:
                cross = s.role in CROSS_ROLES
                key = f"{s.side or 'model'}.{s.block}" + (".cross" if cross else "")
                groups.setdefault((key, cross), {}).setdefault(s.role.removeprefix("cross_"), []).append(s)
        layers = []
        for (key, cross), g in groups.items():
            if any(len(g.get(r, ())) != 1 for r in "qkv") or len(g.get("o", ())) > 1:
                log.warning("attention %s: expected one q, k, v (and o), got %s; left out",
                            key, {r: len(v) for r, v in g.items()})
                continue
            layers.append(Attention(key, g["q"][0], g["k"][0], g["v"][0], (g.get("o") or [None])[0], cross))
        return layers

    def _group_mlp(self) -> list[Mlp]:
        groups: dict[str, dict[str, list[MatrixSpec]]] = {}
        for s in self.specs:
            if s.role in MLP_ROLES:
                groups.setdefault(f"{s.side or 'model'}.{s.block}", {}).setdefault(s.role, []).append(s)
        out = []
        for key, g in groups.items():
            counts = {r: len(v) for r, v in g.items()}
            inputs = g.get("mlp_in") if "mlp_in" in g else [*g.get("mlp_gate", ()), *g.get("mlp_up", ())]
            ok = len(g.get("mlp_out", ())) == 1 and (counts.get("mlp_in") == 1 and len(g) == 2
                                                     or counts.get("mlp_gate") == counts.get("mlp_up") == 1)
            if not ok or any(i.shape[0] != g["mlp_out"][0].shape[1] for i in inputs):
                log.warning("MLP %s: expected mlp_in (or mlp_gate and mlp_up) and mlp_out of one width, got %s; "
                            "left out", key, counts)
                continue
            out.append(Mlp(key, tuple(inputs), g["mlp_out"][0]))
        return out

    # -- reading and writing -------------------------------------------------------------
    def parameter(self, name: str) -> torch.nn.Parameter:
        """The model's parameter ``name``."""
        return self.model.get_parameter(name)

    def weight(self, item: MatrixSpec | Linear) -> torch.Tensor:
        """The ``[out, in]`` view of a spec (a piece) or a linear (the whole tensor), with gradient."""
        return canonical(self.parameter(item.tensor if isinstance(item, MatrixSpec) else item.param), item)

    def write(self, item: MatrixSpec | Linear, value: torch.Tensor) -> None:
        """Write ``value`` (``[out, in]``) into the weight of ``item`` in place."""
        write_canonical(self.parameter(item.tensor if isinstance(item, MatrixSpec) else item.param), item, value)

    def bias_name(self, spec: MatrixSpec) -> str | None:
        """The parameter name of the bias belonging to ``spec``'s tensor, or None."""
        return self._biases.get(spec.tensor)

    def bias(self, spec: MatrixSpec) -> torch.Tensor | None:
        """The ``[out]`` view of ``spec``'s bias entries, or None without a bias."""
        name = self.bias_name(spec)
        return None if name is None else canonical(self.parameter(name), spec)

    def write_bias(self, spec: MatrixSpec, value: torch.Tensor) -> None:
        """Write ``value`` (``[out]``) into ``spec``'s bias entries."""
        write_canonical(self.parameter(self._biases[spec.tensor]), spec, value)

    # -- blocks --------------------------------------------------------------------------
    def stack(self) -> Stack:
        """The one stack of transformer blocks and the attention/MLP linears of each block.

        Raises
        ------
        ConfigError
            No recognisable attention/MLP blocks, more than one stack (an encoder-decoder), or
            a block without recognisable linear layers.
        """
        model = self.model
        roles = ATTENTION_ROLES + MLP_ROLES + ("linear",)
        containers, found = set(), {}
        for lin in self.linears.values():
            if lin.block < 0 or not all(r in roles for r in lin.roles):
                continue
            parts = lin.param.split(".")
            idx = next((i for i in range(1, len(parts)) if parts[i].isdigit() and parts[i - 1] in BLOCK_CONTAINERS),
                       None)
            if idx is None:
                continue
            containers.add(".".join(parts[:idx]))
            found[lin.param] = (int(parts[idx]), lin)
        if not self.layout.known or not found:
            raise ConfigError(f"{type(model).__name__}: no recognisable transformer blocks (attention/MLP layers) "
                              "to prune")
        if len(containers) != 1:
            raise ConfigError(f"{type(model).__name__}: one-shot pruning needs one stack of decoder blocks, found "
                              f"{sorted(containers)}")
        container = containers.pop()
        layers = model.get_submodule(container)
        stack = Stack(container, layers, [[] for _ in range(len(layers))])
        order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
        for _, (b, lin) in sorted(found.items(), key=lambda kv: order.get(kv[0], 0)):
            stack.linears[b].append(lin)
        if any(not block for block in stack.linears):
            raise ConfigError(f"{type(model).__name__}: some blocks of {container} have no recognisable linear layers")
        return stack
