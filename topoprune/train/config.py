"""The settings of NeuroPrune training (:class:`NeuroPruneConfig`): every default in one place.

The defaults follow Dhurandhar et al. 2024, "NeuroPrune: A Neuro-inspired Topological Sparse
Training Algorithm for Large Language Models", Findings of ACL, arXiv 2404.01306, where the
paper gives a value (:math:`\varepsilon = 10^{-4}`, :math:`\theta = 0.15`, head pruning at
epoch ends); where it is silent the choice is documented on the field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..graph.roles import MLP_ROLES
from .head_distance import THETA_SCALES
from .heads import THETA
from .penalties import DELTA, EPSILON
from .schedules import ScheduleConfig

#: NeuroPrune and the baselines trained in the same harness.
TRAIN_METHODS = ("neuroprune", "dense", "l1", "gmp", "random")
#: When redundant heads are pruned.
HEAD_MODES = ("epoch", "steps", "off")
#: How the penalties act: through the loss's gradient (the paper), or as proximal steps (:mod:`~topoprune.train.proximal`).
PENALTY_FORMS = ("gradient", "proximal")
#: Steps between mask re-cuts in target mode, at most (``pruning_frequency=10``, the default of
#: TensorFlow's ``model_pruning`` library that implemented Zhu & Gupta's schedule); re-cutting
#: every step costs an O(n) selection per matrix per step (~12 % of a MiniLM step).
DEFAULT_FREQUENCY = 10
#: Paper mode's penalties when they are not given: the proximal form with weights that prune over half
#: of MiniLM's MLP weights and a third of its attention weights over the default budget of
#: ``topoprune train`` (3 epochs of 2,000 sentiment tweets, lr 1e-4: 57.8 % and 32.1 % at 1.4
#: points below dense fine-tuning; BENCHMARKS.md has the grid they come from). The sparsity grows
#: with the sum of the learning rates over the run, so a shorter or slower run needs larger
#: weights. The gradient form at the paper's weights prunes a few per cent in such a run.
PAPER_PENALTIES = {"mlp_weight": 1.5e-4, "attn_weight": 2e-3, "penalty_form": "proximal"}
#: Target mode's: the schedule sets the sparsity, the penalties only nudge the weights it ranks
#: (the proximal form would zero weights beyond the target).
TARGET_PENALTIES = {"mlp_weight": 1e-6, "attn_weight": 1e-6, "penalty_form": "gradient"}
#: Roles whose matrices may be sparsified (by target schedule or epsilon masks).
SPARSIFIABLE = MLP_ROLES + ("q", "k", "v", "o")


def _num(x, lo=0.0, strict=False, integer=False) -> bool:
    ok = isinstance(x, int if integer else (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return ok and (x > lo if strict else x >= lo)


@dataclass(frozen=True)
class NeuroPruneConfig:
    r"""Settings of a :class:`NeuroPrune` run; invalid values raise :class:`ConfigError`.

    Parameters
    ----------
    method : {"neuroprune", "dense", "l1", "gmp", "random"}
        ``dense``: no penalty, no masks. ``l1``: :math:`\alpha \sum |W_\text{mlp}| + \beta
        \sum |W_{qkv}|` (the paper's baseline; epsilon masks in paper mode, magnitude masks in
        target mode). ``gmp`` / ``random``: no penalty; masks at the scheduled sparsity by
        magnitude / by seeded random priority (both need ``target``).
    mlp_weight, attn_weight : float or None
        :math:`\alpha` (MLP term) and :math:`\beta` (attention term), >= 0. The paper tunes
        both over {1e-7, ..., 0.1} without saying which is which. ``None``: the mode's default,
        :data:`PAPER_PENALTIES` in paper mode, :data:`TARGET_PENALTIES` in target mode.
    penalty_form : {"gradient", "proximal"} or None
        ``gradient``: the penalties join the loss (the paper). ``proximal``: they are left out of
        the loss and applied after every optimiser step as soft thresholds scaled by the
        optimiser's per-weight step sizes (:mod:`~topoprune.train.proximal`), so that weights
        reach :math:`|w| < \varepsilon` within a short fine-tuning run. ``None``: the mode's
        default (proximal in paper mode, gradient in target mode).
    eps, theta : float
        Connection threshold :math:`\varepsilon > 0` (paper: 1e-4); head-similarity
        threshold :math:`\theta \ge 0` (paper default 0.15).
    theta_scale : {"absolute", "layer"}
        How :math:`\theta` is read: an absolute l∞ distance between two heads' parameters (the
        paper), or a share of each layer's weight scale, the median over its heads of their
        largest entry (:func:`~topoprune.train.head_distance.layer_theta`), so that one
        :math:`\theta` means the same on models whose weights have another scale.
    refresh_every : int
        Recount :math:`c_i` every this many optimiser steps (>= 1). Default 1: the count is one
        pass over each MLP matrix on its own device (:func:`~topoprune.train.penalties.attachment_scores`),
        so the scores follow the graph through the whole schedule. A longer period leaves
        :math:`c_i` stale between counts; before the first count after the dense start it is
        :math:`\approx 1` for every neuron, and then the weighted penalty is plain l1 and the
        keep-score :math:`|w|\,c_i` plain magnitude (GMP): a run shorter than the period never
        uses the graph at all. Target mode recounts before every cut whatever the period.
    head_pruning, head_every_steps : {"epoch", "steps", "off"}, int or None
        When ELIM_REDUNDANT runs (``neuroprune`` only): :meth:`NeuroPrune.end_epoch`, every
        ``head_every_steps`` (>= 1) optimiser steps, or never.
    head_include_bias : bool
        Q/K/V biases enter the head distance (the paper is silent; default weights only).
    head_fold : bool
        A removed head's W_O slice is added to its replacer's (the paper; default), or only
        zeroed (:func:`~topoprune.train.heads.apply_head_mask`).
    target : float or None
        Sparsity in [0, 1) of the ``roles`` matrices at step ``end`` (target mode); None: paper mode.
    neuron_target, head_target : float or None
        Structured target mode (:mod:`~topoprune.train.structure`): the share in [0, 1) of every
        MLP's hidden neurons and of every attention layer's heads pruned whole at step ``end``,
        on the same schedule, chosen by graph strength (``neuroprune``), weight norm (``gmp``,
        ``l1``) or at random (``random``). A compacted model then really is smaller.
    schedule, start, end, frequency, initial
        :class:`~topoprune.train.schedules.ScheduleConfig` fields of the target schedule. ``end``
        (the step the target is reached) is required for all but ``constant``, unless
        ``end_fraction`` is given; ``frequency`` defaults to ``min(DEFAULT_FREQUENCY, end - start)``.
    end_fraction : float or None
        Target mode: end the schedule after this share of the training steps instead of at a
        fixed ``end``; the trainer resolves it from its step count (:meth:`resolved`).
        Paper mode: ``end`` (or this share of the steps) is the step after which the penalties
        stop acting, so that the rest of training recovers with the masks fixed (the paper is
        silent; ``None``: they act throughout).
    seed, roles : int, tuple of str
        Seed of the ``random`` method. Roles sparsified by the PA penalty (MLP roles), epsilon
        masks (paper mode) and the target schedule (target mode); default every MLP matrix.
    attention_masks : bool
        Also prune Q/K/V entries below :math:`\varepsilon`, in both modes and for every method
        but ``dense``, so that NeuroPrune and its baselines mask the same matrices by the same
        rule (only the penalised methods drive Q/K/V weights towards it).
    delta, sync_every : float, int
        Square-root smoothing :math:`\delta \ge 0` of the attention penalty; under
        ``torch.distributed`` also broadcast rank 0's masks every ``sync_every`` steps (0: never).
    """

    method: str = "neuroprune"
    mlp_weight: float | None = None
    attn_weight: float | None = None
    penalty_form: str | None = None
    eps: float = EPSILON
    theta: float = THETA
    theta_scale: str = "absolute"
    refresh_every: int = 1
    head_pruning: str = "epoch"
    head_every_steps: int | None = None
    head_include_bias: bool = False
    head_fold: bool = True
    target: float | None = None
    neuron_target: float | None = None
    head_target: float | None = None
    schedule: str = "cubic"
    start: int = 0
    end: int | None = None
    end_fraction: float | None = None
    frequency: int | None = None
    initial: float = 0.0
    seed: int = 0
    roles: tuple[str, ...] = MLP_ROLES
    attention_masks: bool = True
    delta: float = DELTA
    sync_every: int = 0

    def __post_init__(self):
        object.__setattr__(self, "roles", tuple(self.roles))
        for name, value in (TARGET_PENALTIES if self.scheduled else PAPER_PENALTIES).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        checks = [
            (self.method in TRAIN_METHODS, f"method must be one of {TRAIN_METHODS}"),
            (self.penalty_form in PENALTY_FORMS, f"penalty_form must be one of {PENALTY_FORMS}"),
            (_num(self.mlp_weight), "mlp_weight (alpha) must be a finite number >= 0"),
            (_num(self.attn_weight), "attn_weight (beta) must be a finite number >= 0"),
            (_num(self.eps, strict=True), "eps must be a finite number > 0"),
            (_num(self.theta), "theta must be a finite number >= 0"),
            (self.theta_scale in THETA_SCALES, f"theta_scale must be one of {THETA_SCALES}"),
            (_num(self.delta), "delta must be a finite number >= 0"),
            (_num(self.refresh_every, 1, integer=True), "refresh_every must be an integer >= 1"),
            (self.head_pruning in HEAD_MODES, f"head_pruning must be one of {HEAD_MODES}"),
            (self.head_pruning != "steps" or _num(self.head_every_steps, 1, integer=True),
             "head_pruning='steps' needs head_every_steps >= 1"),
            (_num(self.sync_every, integer=True) and _num(self.seed, integer=True),
             "sync_every and seed must be integers >= 0"),
            (bool(self.roles) and set(self.roles) <= set(SPARSIFIABLE),
             f"roles must be a non-empty subset of {SPARSIFIABLE}"),
            (self.target is None or (_num(self.target) and self.target < 1.0), "target sparsity must be in [0, 1)"),
            (all(t is None or (_num(t) and t < 1.0) for t in (self.neuron_target, self.head_target)),
             "neuron_target and head_target must be in [0, 1)"),
            (not self.scheduled or self.method != "dense",
             "method 'dense' trains without masks: leave target, neuron_target and head_target unset"),
            (self.scheduled or self.method not in ("gmp", "random"),
             f"method {self.method!r} needs a target sparsity (target=..., neuron_target=... or head_target=...)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{msg}; got {self._shown()}")
        if self.end_fraction is not None and not (_num(self.end_fraction, strict=True) and self.end_fraction <= 1):
            raise ConfigError(f"end_fraction must be in (0, 1], got {self.end_fraction!r}")
        if not self.scheduled and self.end is not None and not _num(self.end, 1, integer=True):
            raise ConfigError(f"end (the step the penalties stop) must be an integer >= 1, got {self.end!r}")
        if self.scheduled:  # validates schedule, start, end, frequency, initial
            if self.end is None and self.end_fraction is not None:  # the end comes with the step count
                f = self.frequency if self.frequency is not None else 1
                end, frequency = self.start + (f if _num(f, 1, integer=True) else 1), f
            else:
                end, frequency = self._schedule_steps(None)
            ScheduleConfig(*self._schedule_target(), self.start, end, frequency)

    @property
    def scheduled(self) -> bool:
        """A target (unstructured or structured) is reached on a schedule."""
        return any(t is not None for t in (self.target, self.neuron_target, self.head_target))

    def _schedule_target(self) -> tuple[float, str, float]:
        if self.target is not None:
            return self.target, self.schedule, self.initial
        return max(self.neuron_target or 0.0, self.head_target or 0.0), self.schedule, 0.0

    def _shown(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != f.default) or "defaults"

    def _schedule_steps(self, end: int | None) -> tuple[int | None, int]:
        end = self.end if self.end is not None else end
        frequency = self.frequency
        if frequency is None:
            frequency = max(1, min(DEFAULT_FREQUENCY, end - self.start)) if isinstance(end, int) else 1
        return end, frequency

    def resolved(self, total_steps: int | None = None) -> NeuroPruneConfig:
        """A copy with the schedule's ``end`` (from ``end_fraction`` of ``total_steps`` when unset)
        and ``frequency`` filled in; unchanged in paper mode."""
        if not self.scheduled:
            if self.end is None and self.end_fraction is not None and total_steps is not None:
                return dataclasses.replace(self, end=max(1, int(round(self.end_fraction * total_steps))))
            return self
        end = self.end
        if end is None and self.end_fraction is not None and total_steps is not None:
            end = max(self.start + 1, int(round(self.end_fraction * total_steps)))
        end, frequency = self._schedule_steps(end)
        return dataclasses.replace(self, end=end, frequency=frequency)

    def schedule_config(self) -> ScheduleConfig | None:
        """The target schedule's :class:`ScheduleConfig` (None in paper mode).

        Raises
        ------
        ConfigError
            The end is given as ``end_fraction`` and not resolved yet (see :meth:`resolved`).
        """
        if not self.scheduled:
            return None
        r = self.resolved()
        if r.end is None and r.schedule != "constant":
            raise ConfigError(f"end_fraction={self.end_fraction} needs the number of training steps: use "
                              "config.resolved(total_steps)")
        return ScheduleConfig(*r._schedule_target(), r.start, r.end, r.frequency)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), roles=list(self.roles))
