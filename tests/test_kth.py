"""Exact k-th largest selection without a copy (topoprune.graph.kth)."""
import numpy as np
import pytest
import torch

from topoprune.graph import kth
from topoprune.graph.bipartite import top_k_mask
from topoprune.graph.kth import kth_largest


def _reference(x, k):
    return np.sort(x)[x.size - k]


@pytest.mark.parametrize("k_frac", [1e-6, 0.1, 0.5, 0.97, 1.0])
def test_kth_largest_equals_the_sorted_answer_on_a_large_array(k_frac):
    x = np.random.default_rng(1).standard_normal(3 * kth.SMALL + 17).astype(np.float32)
    k = max(1, int(k_frac * x.size))
    assert kth_largest(x, k) == _reference(x, k)


def test_kth_largest_with_heavy_ties_and_excluded_entries():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, 2 * kth.SMALL).astype(np.float32)  # five distinct values only
    x[rng.random(x.size) < 0.6] = -np.inf  # entries a pruning mask excludes
    for k in (1, 1000, x.size // 3, x.size // 2, x.size):
        assert kth_largest(x, k) == _reference(x, k)


def test_kth_largest_falls_back_when_the_sample_misses_the_bracket(monkeypatch):
    # a one-entry sample with no margin brackets only itself: the full partition decides
    monkeypatch.setattr(kth, "SAMPLE", 1)
    monkeypatch.setattr(kth, "SIGMAS", 0.0)
    x = np.random.default_rng(3).standard_normal(kth.SMALL + 5)
    for k in (1, 7, x.size // 2):
        assert kth_largest(x, k) == _reference(x, k)


def test_kth_largest_does_not_modify_its_input_and_rejects_bad_k():
    x = np.random.default_rng(4).standard_normal(kth.SMALL + 3).astype(np.float32)
    before = x.copy()
    kth_largest(x, 12345)
    assert np.array_equal(x, before)
    with pytest.raises(ValueError, match="k must be in"):
        kth_largest(x, 0)


def test_top_k_mask_on_a_large_array_keeps_exactly_the_largest_k():
    flat = torch.from_numpy(np.random.default_rng(5).standard_normal(2 * kth.SMALL).astype(np.float32))
    k = 123_457
    mask = top_k_mask(flat, k)
    assert int(mask.sum()) == k
    assert float(flat[mask].min()) >= float(flat[~mask].max())


@pytest.mark.parametrize("size", [1000, 2 * kth.SMALL + 1])
def test_kth_largest_of_magnitudes_without_an_abs_copy(size):
    x = np.random.default_rng(6).standard_normal(size).astype(np.float32)
    for k in (1, size // 10, size):
        assert kth_largest(x, k, absolute=True) == _reference(np.abs(x), k)


def test_top_k_mask_of_magnitudes_equals_the_mask_of_abs_including_ties():
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, 2 * kth.SMALL).astype(np.float32)  # +-v ties everywhere, and zeros
    flat = torch.from_numpy(x)
    for k in (1, 5000, x.size // 4, x.size // 2):
        got = top_k_mask(flat, k, absolute=True)
        assert torch.equal(got, top_k_mask(flat.abs(), k))
        assert int(got.sum()) == k
