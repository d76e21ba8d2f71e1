r"""Sparsity schedules: the target fraction of pruned weights as a pure function of the step.

NeuroPrune itself has no schedule or target -- the sparsity it reaches is an outcome of the
regulariser weights (Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 4) -- so these serve
target-driven runs and the magnitude-pruning baselines it is compared with. Every schedule
rises from ``initial`` at step ``start`` to ``target`` at step ``end`` and stays there;
steps before ``start`` give ``initial``. The fraction is updated only every ``frequency``
steps (:math:`\Delta t`), so between updates it is constant:

* ``constant``: :math:`s_t = s_f` at every step (one-shot);
* ``linear``: :math:`s_t = s_i + (s_f - s_i)\, p_t`;
* ``cubic`` (gradual magnitude pruning, Zhu & Gupta 2017, arXiv 1710.01878, Eq. 1):
  :math:`s_t = s_f + (s_i - s_f)\,(1 - p_t)^3`, which prunes fast early and slowly near the
  end;
* ``cosine``: :math:`s_t = s_f + (s_i - s_f)\,\tfrac12 (1 + \cos \pi p_t)`;
* ``iterative`` (iterative magnitude pruning: prune, then retrain with the mask fixed, and repeat;
  Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks",
  arXiv 1506.02626; Frankle & Carbin 2019, arXiv 1803.03635, remove 20 % of the surviving weights
  per round): :math:`1 - s_t = (1 - s_i)^{1 - p_t} (1 - s_f)^{p_t}`, so that each of the
  :math:`n = (t_\text{end} - t_0) / \Delta t` rounds removes the same share
  :math:`1 - ((1 - s_f) / (1 - s_i))^{1/n}` of the weights that survive it, and the
  :math:`\Delta t` steps between two rounds retrain with the mask fixed. One round per epoch is
  ``frequency`` = the steps of an epoch, ``end = start + n * frequency``, and training
  ``n + 1`` epochs retrains the last cut for a whole epoch (the learning rate follows the run's
  one schedule; it does not restart each round),

with progress :math:`p_t = \min(1, (t_u - t_0) / (t_\text{end} - t_0))` and
:math:`t_u = t_0 + \lfloor (t - t_0) / \Delta t \rfloor \Delta t` the last update step
(:math:`n \Delta t = t_\text{end} - t_0` in Zhu & Gupta's notation).

>>> sched = get_schedule("cubic", target=0.9, start=0, end=100, frequency=10)
>>> sched(0), sched(100), round(sched(50), 4)
(0.0, 0.9, 0.7875)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError


def _progress(step: int, cfg: ScheduleConfig) -> float:
    """Progress :math:`p_t \\in [0, 1]` at the last update step at or before ``step``."""
    if step <= cfg.start:
        return 0.0
    if step >= cfg.end:
        return 1.0
    updated = cfg.start + (step - cfg.start) // cfg.frequency * cfg.frequency  # t_u
    return (updated - cfg.start) / (cfg.end - cfg.start)


def constant(step: int, cfg: ScheduleConfig) -> float:
    """:math:`s_t = s_f` for every step (start, end and frequency are ignored)."""
    return float(cfg.target)


def _ramp(step: int, cfg: ScheduleConfig, shape: Callable[[float], float]) -> float:
    r""":math:`s_i + (s_f - s_i)\,\text{shape}(p_t)`, exactly :math:`s_i` at :math:`p = 0` and :math:`s_f` at 1."""
    p = _progress(step, cfg)
    if p == 0.0:
        return float(cfg.initial)
    if p == 1.0:
        return float(cfg.target)
    return cfg.initial + (cfg.target - cfg.initial) * shape(p)


def linear(step: int, cfg: ScheduleConfig) -> float:
    r""":math:`s_t = s_i + (s_f - s_i)\, p_t`."""
    return _ramp(step, cfg, lambda p: p)


def cubic(step: int, cfg: ScheduleConfig) -> float:
    r"""Gradual magnitude pruning, :math:`s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n \Delta t))^3`.

    Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878, Eq. (1), for
    :math:`t \in \{t_0, t_0 + \Delta t, \dots, t_0 + n \Delta t\}`; written as
    :math:`s_i + (s_f - s_i)(1 - (1 - p_t)^3)`.
    """
    return _ramp(step, cfg, lambda p: 1.0 - (1.0 - p) ** 3)


def cosine(step: int, cfg: ScheduleConfig) -> float:
    r""":math:`s_t = s_f + (s_i - s_f)\,\tfrac12 (1 + \cos \pi p_t)`."""
    return _ramp(step, cfg, lambda p: 0.5 * (1.0 - math.cos(math.pi * p)))


def iterative(step: int, cfg: ScheduleConfig) -> float:
    r"""Iterative magnitude pruning's rounds, :math:`1 - s_t = (1 - s_i)^{1 - p_t} (1 - s_f)^{p_t}`.

    Each update (every :math:`\Delta t` steps) removes the same share of the surviving weights
    (Han et al. 2015, arXiv 1506.02626; Frankle & Carbin 2019, arXiv 1803.03635, Sec. 2).
    """
    kept = (1.0 - cfg.target) / (1.0 - cfg.initial)  # r: the share of weights the whole ramp keeps
    if kept == 1.0:  # nothing to prune: s_t = s_i = s_f
        return float(cfg.target)
    # s_i + (s_f - s_i) (1 - r^p) / (1 - r) = 1 - (1 - s_i) r^p, as s_f - s_i = (1 - s_i)(1 - r)
    return _ramp(step, cfg, lambda p: (1.0 - kept ** p) / (1.0 - kept))


#: Name -> schedule function ``f(step, config) -> fraction``.
SCHEDULES: dict[str, Callable[[int, ScheduleConfig], float]] = {
    "constant": constant, "linear": linear, "cubic": cubic, "cosine": cosine, "iterative": iterative}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class ScheduleConfig:
    """A sparsity schedule's settings.

    Parameters
    ----------
    target : float
        Final sparsity :math:`s_f`, in [0, 1).
    name : str
        A key of :data:`SCHEDULES`.
    initial : float
        Sparsity :math:`s_i` at and before ``start``, in [0, target].
    start, end : int
        First and last step of the ramp, ``0 <= start < end``. ``end`` is required except
        for ``constant``.
    frequency : int
        Update interval :math:`\\Delta t` in steps, ``1 <= frequency <= end - start``.
    """

    target: float
    name: str = "cubic"
    initial: float = 0.0
    start: int = 0
    end: int | None = None
    frequency: int = 1

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.name!r}; choose from {sorted(SCHEDULES)}")
        if not (isinstance(self.target, (int, float)) and 0.0 <= self.target < 1.0):
            raise ConfigError(f"target sparsity must be in [0, 1), got {self.target!r}")
        if not (isinstance(self.initial, (int, float)) and 0.0 <= self.initial <= self.target):
            raise ConfigError(f"initial sparsity must be in [0, target={self.target}], got {self.initial!r}")
        if not (_is_int(self.start) and self.start >= 0):
            raise ConfigError(f"start must be an integer step >= 0, got {self.start!r}")
        end = self.end
        if end is None:
            if self.name != "constant":
                raise ConfigError(f"schedule {self.name!r} needs an end step")
            # unused by 'constant'; set so the invariants below hold
            step = self.frequency if _is_int(self.frequency) and self.frequency > 0 else 1
            object.__setattr__(self, "end", self.start + step)
            end = self.end
        if not (_is_int(end) and end > self.start):
            raise ConfigError(f"end must be an integer step > start ({self.start}), got {end!r}")
        if not (_is_int(self.frequency) and 1 <= self.frequency <= end - self.start):
            raise ConfigError(f"frequency must be an integer in [1, end - start = {end - self.start}], "
                              f"got {self.frequency!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Schedule:
    """A configured schedule: ``schedule(step)`` (or ``.fraction(step)``) is the sparsity at ``step``."""

    config: ScheduleConfig

    def fraction(self, step: int) -> float:
        """Target fraction of pruned weights at optimiser step ``step``, in [0, 1)."""
        return SCHEDULES[self.config.name](int(step), self.config)

    __call__ = fraction


def get_schedule(name: str, **params) -> Schedule:
    """Look up schedule ``name`` and bind its settings (the fields of :class:`ScheduleConfig`).

    Raises
    ------
    ConfigError
        Unknown name or invalid settings.
    """
    unknown = sorted(set(params) - {f.name for f in dataclasses.fields(ScheduleConfig)} - {"name"})
    if unknown:
        raise ConfigError(f"unknown schedule setting(s) {unknown}")
    return Schedule(ScheduleConfig(name=name, **params))
