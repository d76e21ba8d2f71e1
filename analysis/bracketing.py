"""Bracketing a penalty weight: which alpha to try next so that a penalised run reaches a sparsity.

In paper mode (Dhurandhar et al., "NeuroPrune", Findings of ACL 2024, arXiv 2404.01306) sparsity is
an outcome of the penalty weight, so comparing methods at the same sparsity takes a search over
alpha per method, seed and budget; every try is a run, so the search must be short
(:func:`next_alpha`).
"""
from __future__ import annotations

import math

def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def next_alpha(tries: list[tuple[float, float]], target: float, first: float, slope: float = 1.6,
               max_factor: float = 8.0) -> float:
    """The penalty weight to try next so that the MLP sparsity reaches ``target``.

    Sparsity rises monotonically with alpha; logit(sparsity) is close to linear in log(alpha)
    (slope about 1.6 in the 2,000-tweet frontier). ``tries``: (alpha, reached sparsity) so far.
    None: ``first``. One: a step of the assumed ``slope``. More: a secant through the two tries
    closest to the target in logit, falling back to ``slope`` where the secant is flat or falls.
    A step is at most ``max_factor`` either way, and once tries lie on both sides of the target
    the next one stays strictly inside that bracket (its geometric middle when the step leaves it).
    """
    if not tries:
        return first
    goal = _logit(target)
    near = sorted(tries, key=lambda t: abs(_logit(t[1]) - goal))
    (a0, s0) = near[0]
    k = slope
    if len(near) > 1 and near[1][0] != a0:
        (a1, s1) = near[1]
        secant = (_logit(s1) - _logit(s0)) / (math.log(a1) - math.log(a0))
        if secant > 0.05:
            k = secant
    step = max(-math.log(max_factor), min(math.log(max_factor), (goal - _logit(s0)) / k))
    alpha = a0 * math.exp(step)
    below = [a for a, s in tries if s < target]
    above = [a for a, s in tries if s >= target]
    if below and above:  # the closest alphas on either side of the target
        lo, hi = max(below), min(above)
        if lo < hi and not lo < alpha < hi:
            alpha = math.sqrt(lo * hi)
    return float(f"{alpha:.4g}")


def pooled(runs, method: str, target: float, penalised: bool, **group) -> list[dict]:
    """The stored ``runs`` that can stand for ``method`` at ``target`` within ``group``.

    A penalised run's sparsity is an outcome of its alpha, not of the target it was bracketed
    for, so every run of a penalised method in the group (a seed, a budget: ``seed=0``,
    ``epochs=3``) counts for every target -- a try made while bracketing 50 % is a point of the same
    alpha-to-sparsity curve as one made for 70 %. A target-mode run stands for its own target only.
    """
    return [r for r in runs if r["method"] == method and all(r[k] == v for k, v in group.items())
            and (penalised or r["target"] == target)]
