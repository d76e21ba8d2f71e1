"""Paired differences between two training runs on the same held-out examples, and over seeds.

Two runs of one seed are evaluated on the same examples, so the standard error of their difference
is that of the per-example differences, far smaller than that of either accuracy where the runs
agree on most examples. Over seeds, each seed's paired difference is averaged
(:func:`paired_over_seeds`).
"""
from __future__ import annotations

import math

def paired_change(losses: list[float], reference: list[float]) -> tuple[float, float]:
    """Perplexity change (%) of one run against another on the same held-out blocks, and its standard
    error: the mean and s.e. of the per-block loss differences d, mapped by 100 (exp(d) - 1)."""
    d = [a - b for a, b in zip(losses, reference)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    return 100 * math.expm1(mean), 100 * math.exp(mean) * se


def paired_accuracy(correct: str, reference: str) -> tuple[float, float]:
    """Accuracy difference (points) of one run against another on the same held-out examples, and its
    standard error: the mean and s.e. of the per-example differences d in {-1, 0, 1}, times 100."""
    d = [int(a) - int(b) for a, b in zip(correct, reference, strict=True)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    return 100 * mean, 100 * se


def group_runs(rows: list[dict]) -> dict:
    """Runs by ``(method, target)``, each group in stored order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    return groups


def paired_over_seeds(groups: dict, method: str, target: float | None, field: str, compare, reference: str = "gmp"):
    """A method's paired difference from GMP (or ``reference``) at the same sparsity, over the seeds
    both were run with.

    Each seed's runs share their held-out examples (the split is drawn with the seed), so each seed
    gives a paired difference and its standard error; the result is their mean, the standard error of
    that mean (sqrt(sum se_i^2) / k, the seeds' test noise being independent), and the per-seed
    differences (whose spread shows the training noise). ``None`` for the reference itself and where
    no seed has both runs.
    """
    if method == reference:
        return None
    gmp = {r["seed"]: r.get(field) for r in groups.get((reference, target), [])}
    per_seed = [compare(r[field], gmp[r["seed"]]) for r in sorted(groups.get((method, target), []),
                                                                      key=lambda r: r["seed"])
                if r.get(field) and gmp.get(r["seed"])]
    if not per_seed:
        return None
    k = len(per_seed)
    return (sum(c for c, _ in per_seed) / k, math.sqrt(sum(se * se for _, se in per_seed)) / k,
            [c for c, _ in per_seed])
