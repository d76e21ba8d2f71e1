r"""Binary weight masks kept by parameter name, for sparse training.

A :class:`MaskSet` maps a parameter name (as in ``model.named_parameters()``) to a
``torch.BoolTensor`` of the parameter's stored shape: **True keeps an entry, False prunes
it**. It is applied at three points of every optimiser step, always in place and without
monkey-patching modules or optimisers:

1. :meth:`MaskSet.apply_to_grads` -- after ``loss.backward()``, before ``optimizer.step()``:
   ``grad[~m] = 0``, so no gradient (task or penalty) reaches a pruned entry;
2. :meth:`MaskSet.apply_to_weights` -- after ``optimizer.step()``: ``w[~m] = 0`` (weight decay
   and momentum could otherwise move a pruned entry);
3. :meth:`MaskSet.apply_to_optimizer` -- after ``optimizer.step()``: every optimiser state
   tensor of the parameter's shape (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` of
   Adam/AdamW, ``momentum_buffer`` of SGD, ...) is zeroed at pruned entries, so no stale
   moment pushes a pruned weight back.

A mask only shrinks: :meth:`MaskSet.update` takes the logical AND with the new mask, so a
pruned entry never revives. Masks save to safetensors (:meth:`MaskSet.save`, atomic) with
free-form JSON metadata and restore exactly (:meth:`MaskSet.load`); under
``torch.distributed`` :meth:`MaskSet.broadcast` makes every rank hold rank ``src``'s masks.

:func:`select_keep` is the deterministic top-k selection used for target sparsities
(gradual magnitude pruning, Zhu & Gupta 2017, arXiv 1710.01878, and NeuroPrune's
attachment-weighted variant, Dhurandhar et al. 2024, arXiv 2404.01306).
:func:`topoprune.graph.binding.canonical` / :func:`~topoprune.graph.binding.write_canonical` give the ``[out, in]`` piece of a stored tensor
described by a :class:`topoprune.graph.roles.MatrixSpec` (GPT-2 ``Conv1D`` transposed, fused
q/k/v or gate/up split by row ranges).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, TensorError
from .binding import piece_mask
from .bipartite import top_k_mask
from ..io import short

log = logging.getLogger(__name__)

#: safetensors metadata key holding :attr:`MaskSet.metadata` as JSON.
META_KEY = "topoprune_masks"
#: Key prefix of the extra (non-mask) tensors stored next to the masks.
EXTRA_PREFIX = "extra::"
FORMAT = "topoprune.masks/1"


class MaskMismatch(ConfigError, TensorError):
    """A mask that does not fit the model: no such parameter, or another shape."""


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_object(obj, src: int = 0):
    """``obj`` as held by rank ``src`` when ``torch.distributed`` is initialised, else ``obj``."""
    if not _dist_ready():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def select_keep(weight: torch.Tensor, keep_fraction: float, scores: torch.Tensor | None = None, *,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
    r"""Mask keeping the ``round(keep_fraction * n)`` entries of highest keep-score.

    The keep-score is :math:`|w_{ij}|` (magnitude pruning) or, with row scores,
    :math:`|w_{ij}|\,c_i` -- NeuroPrune's attachment weighting (Dhurandhar et al. 2024,
    arXiv 2404.01306): an entry of a well-connected row (a hub, high :math:`c_i`) outranks an
    entry of equal magnitude in a poorly connected row, so hubs keep their edges and the
    preferential-attachment topology survives the cut.

    Parameters
    ----------
    weight : torch.Tensor, shape [out, in] (any shape without ``scores``)
    keep_fraction : float
        In [0, 1].
    scores : torch.Tensor, shape [out] or weight.shape, optional
        Row scores :math:`c_i` (broadcast along each row) or per-entry multipliers.
    allowed : torch.BoolTensor, shape weight.shape, optional
        Entries that may be kept (the current mask). Others are never selected, so a mask
        built from this one only shrinks; at most ``allowed.sum()`` entries are kept.

    Returns
    -------
    torch.BoolTensor, shape weight.shape
        Exactly ``min(round(keep_fraction * n), allowed.sum())`` True entries.

    Notes
    -----
    Deterministic: entries are ranked by a stable descending sort, so among equal scores
    the lowest row-major index is kept first (same result on every run and rank).
    """
    if not (isinstance(keep_fraction, (int, float)) and 0.0 <= keep_fraction <= 1.0):
        raise ConfigError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
    imp = weight.detach().abs().to(torch.promote_types(weight.dtype, torch.float32))
    if scores is not None:
        s = scores.detach().to(imp.dtype)
        if s.shape == imp.shape[:1] and imp.ndim == 2:
            s = s[:, None]
        elif s.shape != imp.shape:
            raise TensorError(f"scores: expected shape {tuple(imp.shape[:1])} or {tuple(imp.shape)}, "
                              f"got {tuple(s.shape)}")
        imp = imp * s
    if not bool(torch.isfinite(imp).all()):
        raise TensorError("select_keep: weight or scores contain NaN or Inf")
    flat = imp.reshape(-1)
    n = flat.numel()
    k = int(round(keep_fraction * n))
    if allowed is not None:
        if allowed.shape != weight.shape:
            raise TensorError(f"allowed: expected shape {tuple(weight.shape)}, got {tuple(allowed.shape)}")
        ok = allowed.reshape(-1).to(flat.device)
        k = min(k, int(ok.sum()))
        flat = flat.masked_fill(~ok, -math.inf)
    keep = top_k_mask(flat, k)  # O(n) selection; a full sort made the schedule step 10x slower
    return keep.reshape(weight.shape)


#: Columns of :func:`sparsity_table`.
SPARSITY_COLUMNS = ["level", "name", "tensor", "role", "block", "side", "numel", "pruned", "sparsity", "below_eps",
                    "target"]


def sparsity_table(rows: list[dict]):
    r"""Per-matrix sparsity rows, then one row per role and a total.

    Parameters
    ----------
    rows : list of dict
        One per matrix: ``name, tensor, role, block, side, numel, pruned`` (masked entries),
        ``below`` (entries with :math:`|w| < \varepsilon`) and ``target`` (NaN if none).

    Returns
    -------
    pandas.DataFrame
        :data:`SPARSITY_COLUMNS`; ``level`` is ``matrix``, ``role`` or ``total``;
        ``sparsity = pruned / numel`` and ``below_eps = below / numel``.
    """
    import pandas as pd

    df = pd.DataFrame(rows).assign(level="matrix")
    agg = df.groupby("role", sort=False).agg(numel=("numel", "sum"), pruned=("pruned", "sum"),
                                             below=("below", "sum"), target=("target", "first")).reset_index()
    total = pd.DataFrame([dict(level="total", name="total", role="all", numel=df.numel.sum(), pruned=df.pruned.sum(),
                               below=df.below.sum())])
    df = pd.concat([df, agg.assign(level="role", name=agg.role), total], ignore_index=True)
    df["block"] = df["block"].astype("Int64")
    df["sparsity"], df["below_eps"] = df.pruned / df.numel, df.pop("below") / df.numel
    return df[SPARSITY_COLUMNS]


class MaskSet:
    """Boolean masks by parameter name; True keeps an entry.

    Parameters
    ----------
    masks : mapping of str to torch.BoolTensor, optional

    Attributes
    ----------
    masks : dict of str to torch.BoolTensor
        Each of its parameter's stored shape, on its parameter's device.
    metadata : dict
        JSON metadata read by :meth:`load` (empty otherwise).
    extra : dict of str to torch.Tensor
        Non-mask tensors read by :meth:`load` (e.g. a trainer's cached scores).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None):
        self.masks: dict[str, torch.Tensor] = {}
        self.metadata: dict = {}
        self.extra: dict[str, torch.Tensor] = {}
        for name, m in (masks or {}).items():
            self.masks[name] = self._as_mask(m, name).clone()

    @staticmethod
    def _as_mask(m: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(m, torch.Tensor):
            raise TensorError(f"mask {name!r}: expected a tensor, got {type(m).__name__}")
        return m if m.dtype == torch.bool else m != 0

    @classmethod
    def from_threshold(cls, model: torch.nn.Module, names: Iterable[str], eps: float) -> MaskSet:
        """Masks keeping ``|w| >= eps`` for every named parameter of ``model`` (NeuroPrune's epsilon)."""
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {eps!r}")
        out = cls()
        for name in names:
            p = model.get_parameter(name)
            out.masks[name] = p.detach().abs() >= eps
        return out

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def __len__(self) -> int:
        return len(self.masks)

    def names(self) -> list[str]:
        """Masked parameter names, sorted."""
        return sorted(self.masks)

    def update(self, name: str, new_mask: torch.Tensor) -> int:
        """AND ``new_mask`` into the mask of ``name`` (created if absent); return entries newly pruned."""
        new = self._as_mask(new_mask, name)
        old = self.masks.get(name)
        if old is None:
            self.masks[name] = new.clone()
            return int((~new).sum())
        if new.shape != old.shape:
            raise TensorError(f"mask {name!r}: new shape {tuple(new.shape)} != {tuple(old.shape)}")
        before = int(old.sum())
        old &= new.to(old.device)
        return before - int(old.sum())

    def update_piece(self, binding, spec, keep, *, bias: bool = False) -> int:
        """:meth:`update` with ``keep`` given for one ``[out, in]`` piece of a bound model's tensor.

        Parameters
        ----------
        binding : topoprune.graph.binding.Binding
        spec : MatrixSpec
            The piece (a fused tensor's q rows, a Conv1D weight, ...).
        keep : bool or torch.BoolTensor
            Broadcast to the piece (e.g. a row mask ``[out, 1]``); entries outside the piece
            are left as they are.
        bias : bool
            Mask the piece's entries of the tensor's bias (``keep`` of shape ``[out]``) instead.
        """
        name = binding.bias_name(spec) if bias else spec.tensor
        return self.update(name, piece_mask(binding.parameter(name), spec, keep))

    def _param(self, model: torch.nn.Module, name: str) -> torch.nn.Parameter:
        try:
            p = model.get_parameter(name)
        except AttributeError:
            raise MaskMismatch(f"mask for {name!r} has no parameter in {type(model).__name__}") from None
        if p.shape != self.masks[name].shape:
            raise MaskMismatch(f"mask {name!r} has shape {tuple(self.masks[name].shape)}, "
                               f"parameter {tuple(p.shape)}")
        return p

    def _mask_on(self, name: str, device) -> torch.Tensor:
        m = self.masks[name]
        if m.device != device:
            m = self.masks[name] = m.to(device)
        return m

    def apply_to_grads(self, model: torch.nn.Module) -> None:
        """``grad[~mask] = 0`` for every masked parameter with a gradient (before ``optimizer.step``)."""
        for name in self.masks:
            p = self._param(model, name)
            if p.grad is not None:
                p.grad.masked_fill_(~self._mask_on(name, p.grad.device), 0)

    def apply_to_weights(self, model: torch.nn.Module) -> None:
        """``w[~mask] = 0`` in place for every masked parameter (after ``optimizer.step``, or to
        rebuild a pruned model from a dense one and a saved mask file).

        Raises
        ------
        MaskMismatch
            A mask for a parameter the model lacks, or of another shape (checked for every mask
            before any weight is changed).
        """
        params = {name: self._param(model, name) for name in self.masks}
        with torch.no_grad():
            for name, p in params.items():
                p.masked_fill_(~self._mask_on(name, p.device), 0)

    def apply_to_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> int:
        """Zero the optimiser state of every masked parameter at its pruned entries.

        Every tensor in ``optimizer.state[param]`` with the parameter's shape is zeroed where
        the mask is False: ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` (Adam, AdamW),
        ``momentum_buffer`` (SGD), and the like. Scalars (``step``) and factored states of
        other shapes are left alone.

        Returns
        -------
        int
            Number of state tensors touched.
        """
        touched = 0
        with torch.no_grad():
            for name in self.masks:
                p = self._param(model, name)
                state = optimizer.state.get(p)
                if not state:
                    continue
                for val in state.values():
                    if isinstance(val, torch.Tensor) and val.shape == p.shape:
                        val.masked_fill_(~self._mask_on(name, val.device), 0)
                        touched += 1
        return touched

    def sparsity(self) -> dict[str, float]:
        """Fraction of pruned (False) entries of every mask."""
        return {n: 1.0 - float(m.sum()) / max(m.numel(), 1) for n, m in sorted(self.masks.items())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the masks, by parameter name."""
        return {n: m.clone() for n, m in sorted(self.masks.items())}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace all masks by ``state`` (kept on the devices of the masks they replace)."""
        new = {}
        for name, m in state.items():
            m = self._as_mask(m, name)
            old = self.masks.get(name)
            new[name] = m.to(old.device).clone() if old is not None else m.clone()
        self.masks = new

    def save(self, path, metadata: Mapping | None = None, extra: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write the masks to a safetensors file atomically.

        Parameters
        ----------
        path : str or Path
        metadata : mapping, optional
            JSON-serialisable; stored as one JSON string under the safetensors metadata key
            ``topoprune_masks`` (alongside ``format``).
        extra : mapping of str to torch.Tensor, optional
            Further tensors (e.g. cached scores), stored under ``extra::<key>``.

        Returns
        -------
        Path
        """
        from safetensors.torch import save_file

        from ..io import atomic_path

        path = Path(path)
        tensors = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}
        for key, t in (extra or {}).items():
            tensors[EXTRA_PREFIX + key] = t.detach().cpu().clone().contiguous()
        try:
            meta = {"format": FORMAT, META_KEY: json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mask metadata is not JSON-serialisable: {exc}") from None
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        log.info("saved %d masks to %s", len(self.masks), path)
        return path

    @classmethod
    def load(cls, path, device=None) -> MaskSet:
        """Read a file written by :meth:`save`; ``metadata`` and ``extra`` are filled in."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such mask file")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            metadata = json.loads(meta.get(META_KEY, "{}"))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a valid mask file ({short(exc, 150)})") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a topoprune mask file (format {meta.get('format')!r})")
        out = cls()
        for key, t in tensors.items():
            t = t.to(device) if device is not None else t
            if key.startswith(EXTRA_PREFIX):
                out.extra[key[len(EXTRA_PREFIX):]] = t
            else:
                out.masks[key] = cls._as_mask(t, key)
        out.metadata = metadata
        return out

    def broadcast(self, src: int = 0) -> bool:
        """Overwrite every rank's masks with rank ``src``'s (no-op without ``torch.distributed``).

        The set of names is broadcast first, so ranks may start with different names; masks
        travel as uint8 on the device the backend needs (CUDA for NCCL).

        Returns
        -------
        bool
            True when a broadcast happened.
        """
        if not _dist_ready():
            return False
        dist = torch.distributed
        spec = broadcast_object({n: tuple(m.shape) for n, m in sorted(self.masks.items())}, src)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        new = {}
        for name, shape in spec.items():
            m = self.masks.get(name)
            buf = m.to(device, torch.uint8) if m is not None and tuple(m.shape) == shape else \
                torch.zeros(shape, dtype=torch.uint8, device=device)
            dist.broadcast(buf, src=src)
            home = m.device if m is not None else torch.device("cpu")
            new[name] = buf.to(home).bool()
        self.masks = new
        return True

    def __repr__(self) -> str:
        total = sum(m.numel() for m in self.masks.values())
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        return f"MaskSet({len(self.masks)} masks, {pruned}/{total} pruned)"
