"""Closed forms of the one-shot allocation functions and the per-row top-k mask, on hand-built tensors."""
import math

import numpy as np
import pytest
import torch

from topoprune.oneshot import allocation as al
from topoprune.errors import ConfigError, TensorError
from topoprune.graph.bipartite import row_top_k_mask


# ----------------------------------------------------------------------------- scores and statistics
def test_wanda_scores_hand_example():
    """|W_ij| * a_j on a 3x4 matrix with explicit numbers."""
    w = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                      [0.5, 1.0, -1.0, -4.0],
                      [2.0, 0.0, 0.0, -0.5]])
    a = torch.tensor([1.0, 2.0, 3.0, 0.5])
    expected = torch.tensor([[1.0, 4.0, 0.0, 1.5],
                             [0.5, 2.0, 3.0, 2.0],
                             [2.0, 0.0, 0.0, 0.25]])
    s = al.wanda_scores(w, a)
    assert s.dtype == torch.float32 and s.shape == (3, 4)
    assert torch.equal(s, expected)
    assert torch.equal(al.magnitude_scores(w), w.abs())


def test_wanda_scores_shape_mismatch():
    """An activation vector of the wrong length is a TensorError."""
    with pytest.raises(TensorError):
        al.wanda_scores(torch.ones(3, 4), torch.ones(3))
    with pytest.raises(TensorError):
        al.wanda_scores(torch.ones(3, 4), torch.ones(1, 4))


def test_activation_norm_closed_form():
    """a_j = sqrt(sum over tokens of x_j^2 / n_samples)."""
    x = torch.tensor([[[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]],
                      [[1.0, 2.0, 0.0], [1.0, 1.0, 0.0]]])  # 2 samples x 2 tokens x 3 features
    sum_sq = x.reshape(-1, 3).pow(2).sum(0)
    assert torch.equal(sum_sq, torch.tensor([4.0, 9.0, 0.0]))
    a = al.activation_norm(sum_sq, 2)
    assert torch.allclose(a, torch.tensor([math.sqrt(2.0), math.sqrt(4.5), 0.0]), rtol=0, atol=1e-7)
    assert torch.allclose(al.activation_norm(torch.tensor([4.0, 9.0, 0.0]), 4), torch.tensor([1.0, 1.5, 0.0]))
    with pytest.raises(ConfigError):
        al.activation_norm(sum_sq, 0)


def test_outlier_ratio_single_outlier():
    """One entry of 100 among ones: mean 114/15, threshold 5 * mean = 38, one outlier of 15 entries."""
    a = torch.ones(2, 5)
    a[1, 3] = 100.0
    b = torch.ones(1, 5)
    assert al.outlier_ratio([a, b], m=5.0) == pytest.approx(1 / 15, abs=1e-15)
    # threshold above the outlier: none
    assert al.outlier_ratio([a, b], m=15.0) == 0.0


def test_outlier_ratio_mean_over_the_block_together():
    """The mean is taken over all layers of the block, not per layer."""
    a = torch.full((2, 2), 10.0)  # 4 entries of 10
    b = torch.ones(4, 4)  # 16 entries of 1
    # joint mean (40 + 16) / 20 = 2.8, threshold 3 * 2.8 = 8.4: all 4 entries of a are outliers
    assert al.outlier_ratio([a, b], m=3.0) == pytest.approx(4 / 20, abs=1e-15)
    # per layer, no layer would have any outlier
    assert al.outlier_ratio([a], m=3.0) == 0.0 and al.outlier_ratio([b], m=3.0) == 0.0


def test_owl_closed_form():
    """Ratios [0.1, 0.3, 0.2] with s=0.6, lam=0.08 give [0.68, 0.52, 0.60]."""
    s = al.owl([0.1, 0.3, 0.2], 0.6, 0.08)
    np.testing.assert_allclose(s, [0.68, 0.52, 0.60], rtol=0, atol=1e-12)


@pytest.mark.parametrize("lam", [0.02, 0.08, 0.2])
def test_owl_properties(lam):
    """More outliers, lower sparsity; mean exactly s; band width 2 lam."""
    ratios = np.array([0.012, 0.003, 0.02, 0.007, 0.015])
    s = al.owl(ratios, 0.5, lam)
    order = np.argsort(ratios)
    assert np.all(np.diff(s[order]) < 0)  # sorted by ratio ascending: sparsity strictly falls
    assert s.mean() == pytest.approx(0.5, abs=1e-12)
    assert s.max() - s.min() == pytest.approx(2 * lam, abs=1e-12)
    # equal ratios: every block at s
    np.testing.assert_array_equal(al.owl([0.1, 0.1, 0.1], 0.5, lam), [0.5, 0.5, 0.5])


def test_owl_rebalances_weighted_mean_after_clipping():
    """Clipped OWL allocations keep the parameter-weighted mean at s, inside the bounds."""
    w = np.array([1.0, 3.0, 2.0])
    s = al.owl([0.0, 1.0, 0.5], 0.95, 0.2, weights=w)
    assert (s >= 0.01).all() and (s <= 0.99).all()
    assert (w * s).sum() / w.sum() == pytest.approx(0.95, abs=1e-9)
    raw = 1 - (np.array([0.0, 0.4, 0.2]) - 0.2 + 0.05)
    np.testing.assert_allclose(al.owl([0.0, 1.0, 0.5], 0.95, 0.2, rebalance_mean=False), np.clip(raw, 0.01, 0.99))


# ----------------------------------------------------------------------------- NeuroAL block step
def test_block_grids():
    """The NeuroAL paper's grids: 14 block values (13 at s >= 0.8), 15 row values starting at 0."""
    assert len(al.block_grid(0.8)) == 13 and 0.25 not in al.block_grid(0.8)
    assert len(al.block_grid(0.7)) == 14 and al.block_grid(0.7)[-1] == 0.25
    assert len(al.block_grid(0.9)) == 13
    assert len(al.ROW_GRID) == 15 and al.ROW_GRID[0] == 0.0
    assert al.BLOCK_GRID[:10] == pytest.approx([0.01 * i for i in range(1, 11)])


def test_block_ramp_hand_values():
    """L=4, s=0.5, lam=0.1: [0.4, 0.4667, 0.5333, 0.6]."""
    np.testing.assert_allclose(al.block_ramp(0.5, 4, 0.1), [0.4, 0.4 + 0.2 / 3, 0.6 - 0.2 / 3, 0.6], atol=1e-12)
    np.testing.assert_allclose(al.block_ramp(0.5, 4, 0.1), [0.4, 0.4667, 0.5333, 0.6], atol=5e-5)


@pytest.mark.parametrize("n_blocks", [2, 5, 12])
@pytest.mark.parametrize("lam", al.BLOCK_GRID)
def test_block_ramp_no_clipping(lam, n_blocks):
    """s=0.7: first block densest, linear in depth, mean exactly s, span 2 lam."""
    s = al.block_ramp(0.7, n_blocks, lam)
    step = np.diff(s)
    assert s[0] == s.min() and s[-1] == s.max()
    np.testing.assert_allclose(step, 2 * lam / (n_blocks - 1), rtol=0, atol=1e-12)
    assert s.mean() == pytest.approx(0.7, abs=1e-12)
    assert s[-1] - s[0] == pytest.approx(2 * lam, abs=1e-12)
    assert s[0] == pytest.approx(0.7 - lam, abs=1e-12)


def test_block_ramp_clipping_with_and_without_rebalance():
    """s=0.9, lam=0.25: rebalance keeps the mean at s within bounds; without it, np.clip of the raw ramp."""
    raw = 0.9 - 0.25 + 0.5 * np.arange(5) / 4
    assert raw.max() > 0.99  # the case clips
    plain = al.block_ramp(0.9, 5, 0.25, rebalance_mean=False)
    np.testing.assert_array_equal(plain, np.clip(raw, 0.01, 0.99))
    assert plain.mean() < 0.9 - 1e-3  # clipping moved the mean off target
    s = al.block_ramp(0.9, 5, 0.25)
    assert s.mean() == pytest.approx(0.9, abs=1e-9)
    assert (s >= 0.01).all() and (s <= 0.99).all()
    assert np.all(np.diff(s) >= 0) and s[0] < s[-1]
    # weighted: the weighted mean is on target
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    sw = al.block_ramp(0.9, 5, 0.25, weights=w)
    assert (w * sw).sum() / w.sum() == pytest.approx(0.9, abs=1e-9)
    assert (sw >= 0.01).all() and (sw <= 0.99).all()


def test_block_ramp_edge_cases():
    """One block gets s; lam=0 gives uniform; negative lam is a ConfigError."""
    np.testing.assert_array_equal(al.block_ramp(0.6, 1, 0.1), [0.6])
    np.testing.assert_allclose(al.block_ramp(0.6, 4, 0.0), [0.6] * 4, atol=1e-15)
    with pytest.raises(ConfigError):
        al.block_ramp(0.6, 4, -0.1)
    np.testing.assert_array_equal(al.uniform(0.3, 3), [0.3, 0.3, 0.3])


def test_rebalance_unchanged_without_clipping():
    """Values whose mean is on target and inside the bounds come back unchanged."""
    v = np.array([0.4, 0.5, 0.6])
    np.testing.assert_array_equal(al.rebalance(v, np.ones(3), 0.5), v)
    with pytest.raises(ConfigError):
        al.rebalance(v, np.ones(3), 0.995)


# ----------------------------------------------------------------------------- NeuroAL row step
def test_row_sparsities_lambda_zero_and_constant_drop():
    """lam=0, or a constant drop, gives every row the layer's sparsity."""
    d = np.random.default_rng(0).normal(size=50)
    np.testing.assert_allclose(al.row_sparsities(d, 0.6, 0.0), 0.6, atol=1e-15)
    np.testing.assert_allclose(al.row_sparsities(np.full(7, 3.0), 0.6, 0.2), 0.6, atol=1e-15)


@pytest.mark.parametrize("lam", [0.01, 0.1, 0.25])
def test_row_sparsities_properties(lam):
    """Higher drop, lower sparsity; mean exactly the layer's; span 2 lam without clipping."""
    d = np.random.default_rng(1).normal(size=40)
    s = al.row_sparsities(d, 0.5, lam)
    order = np.argsort(d)
    assert np.all(np.diff(s[order]) <= 1e-15) and s[order[0]] > s[order[-1]]
    assert s.mean() == pytest.approx(0.5, abs=1e-12)
    assert s.max() - s.min() == pytest.approx(2 * lam, abs=1e-12)
    # closed form: s_j = 1 - (x_j - mean(x) + 0.5), x = 2 lam minmax(d)
    x = 2 * lam * (d - d.min()) / (d.max() - d.min())
    np.testing.assert_allclose(s, 1 - (x - x.mean() + 0.5), atol=1e-12)


def test_row_sparsities_clipped_mean_exact():
    """Near the bounds, rebalancing keeps the mean at the layer's sparsity."""
    d = np.random.default_rng(2).exponential(size=64)
    s = al.row_sparsities(d, 0.95, 0.25)
    assert (s >= 0.01).all() and (s <= 0.99).all()
    assert s.mean() == pytest.approx(0.95, abs=1e-9)
    assert np.isclose(s, 0.99).any()  # the case does clip


def test_keep_counts_exact_total_and_close_to_ideal():
    """Largest remainder: the counts sum to the total and differ from the ideal by < 1 per row."""
    rng = np.random.default_rng(3)
    rows = rng.uniform(0.05, 0.95, size=33)
    n_in = 37
    want = (1 - rows) * n_in
    k = al.keep_counts(rows, n_in)
    assert k.dtype.kind == "i" and k.sum() == round(want.sum())
    assert np.all(np.abs(k - want) < 1)
    for total in (int(np.floor(want.sum())), int(np.ceil(want.sum())) + 1):
        k = al.keep_counts(rows, n_in, total_keep=total)
        assert k.sum() == total and np.all(np.abs(k - want) < 1 + 1e-9)


def test_keep_counts_ties_go_to_the_lower_row():
    """Equal remainders: the lower row index gets the extra entry."""
    np.testing.assert_array_equal(al.keep_counts([0.5, 0.5], 3), [2, 1])
    np.testing.assert_array_equal(al.keep_counts([0.5, 0.5, 0.5, 0.5], 3), [2, 2, 1, 1])
    np.testing.assert_array_equal(al.keep_counts([0.25] * 4, 8), [6, 6, 6, 6])


# ----------------------------------------------------------------------------- alignment
def test_alignment_zero_for_identical_and_proportional():
    """NA is 0 for identical vectors and for positive multiples, positive otherwise."""
    a = torch.tensor([0.3, 1.2, 2.0, 0.1])
    assert al.alignment(a, a.clone()) == 0.0
    assert al.alignment(a, 2 * a) == 0.0  # exact in binary
    assert al.alignment(a.double(), 3.7 * a.double()) == pytest.approx(0.0, abs=1e-15)
    b = a.clone()
    b[0] = 0.5
    assert al.alignment(a, b) > 1e-4


def test_alignment_hand_example():
    """dense [1, 3], sparse [1, 1]: ||[0.25, 0.75] - [0.5, 0.5]|| / 2 = sqrt(2)/8."""
    na = al.alignment(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert na == pytest.approx(math.sqrt(2) / 8, rel=1e-12)
    with pytest.raises(TensorError):
        al.alignment(torch.ones(2), torch.ones(3))


# ----------------------------------------------------------------------------- check_sparsity
@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, False, "0.5", None])
def test_check_sparsity_rejects(bad):
    """Sparsities outside (0, 1), NaN, booleans and non-numbers are ConfigErrors."""
    with pytest.raises(ConfigError):
        al.check_sparsity(bad)


def test_check_sparsity_accepts():
    """Values inside (0, 1) come back as floats."""
    assert al.check_sparsity(0.5) == 0.5 and isinstance(al.check_sparsity(0.5), float)
    assert al.check_sparsity(np.float64(0.25)) == 0.25


# ----------------------------------------------------------------------------- row_top_k_mask
def test_row_top_k_exact_counts_and_top_values():
    """Each row keeps exactly k[j] entries, all at least as large as every dropped one."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 20, generator=g)
    k = [0, 1, 5, 10, 19, 20]
    m = row_top_k_mask(scores, k)
    assert m.dtype == torch.bool and m.shape == scores.shape
    assert m.sum(1).tolist() == k
    for j in range(6):
        kept, dropped = scores[j][m[j]], scores[j][~m[j]]
        if kept.numel() and dropped.numel():
            assert kept.min() > dropped.max()


def test_row_top_k_ties_to_lowest_index():
    """All-equal rows keep their first k; ties at the threshold go to the lowest index."""
    m = row_top_k_mask(torch.ones(2, 6), 3)
    assert m.tolist() == [[True] * 3 + [False] * 3] * 2
    m = row_top_k_mask(torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0]]), 2)
    assert m.tolist() == [[True, False, True, False, False]]
    m = row_top_k_mask(torch.tensor([[1.0, 5.0, 2.0, 2.0, 2.0]]), 3)
    assert m.tolist() == [[False, True, True, True, False]]


def test_row_top_k_matches_stable_sort_with_many_ties():
    """Equal to a stable descending sort per row, on integer scores with many ties."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (8, 15), generator=g).float()
    k = torch.randint(0, 16, (8,), generator=g).tolist()
    m = row_top_k_mask(scores, k)
    for j in range(8):
        order = np.argsort(-scores[j].numpy(), kind="stable")
        ref = np.zeros(15, bool)
        ref[order[:k[j]]] = True
        assert m[j].numpy().tolist() == ref.tolist()


def test_row_top_k_zero_and_full_rows_and_errors():
    """k=0 keeps nothing, k=n keeps everything; k outside [0, n] and NaN are errors."""
    s = torch.randn(3, 4)
    assert not row_top_k_mask(s, 0).any()
    assert row_top_k_mask(s, 4).all()
    with pytest.raises(ValueError):
        row_top_k_mask(s, 5)
    with pytest.raises(ValueError):
        row_top_k_mask(s, [1, -1, 2])
    s[1, 2] = float("nan")
    with pytest.raises(ValueError):
        row_top_k_mask(s, 2)
