"""Synthetic power laws are recovered; degenerate sequences get a verdict instead of a fit."""
import numpy as np
import pytest

from topoprune.graph.config import FitConfig
from topoprune.errors import ConfigError
from topoprune.graph.fits import fit_degrees, scan_xmin


def _discrete_power_law(alpha, n, xmin=1, seed=0):
    """Exact sample of P(X = x) ~ x^-alpha, x >= xmin (support cut at 10^6: negligible mass)."""
    rng = np.random.default_rng(seed)
    support = np.arange(xmin, 1_000_001, dtype=np.float64)
    cdf = np.cumsum(support ** -alpha)
    return support[np.searchsorted(cdf, rng.random(n) * cdf[-1])].astype(int)


@pytest.mark.parametrize("alpha", [2.2, 2.5, 3.0, 3.5])
def test_alpha_recovered_within_0_1(alpha):
    fit = fit_degrees(_discrete_power_law(alpha, 20000, seed=int(alpha * 10)))
    assert abs(fit.alpha - alpha) < 0.1
    assert fit.verdict in ("power_law", "inconclusive")
    assert fit.comparisons["exponential"][0] > 0  # beats the exponential


def test_lognormal_and_narrow_sequences_are_not_power_laws():
    rng = np.random.default_rng(0)
    narrow = np.round(rng.normal(80, 8, 3000)).astype(int)
    fit = fit_degrees(narrow)
    assert fit.verdict != "power_law"
    assert np.isfinite(fit.alpha) and fit.n == 3000


def test_too_short_and_constant():
    assert fit_degrees([3, 4, 5]).verdict == "too_few_points"
    assert fit_degrees(np.full(500, 7)).verdict == "constant"
    assert fit_degrees(np.zeros(500)).verdict == "too_few_points"  # dead neurons are left out
    f = fit_degrees([])
    assert np.isnan(f.alpha) and f.as_dict("in_")["in_verdict"] == "too_few_points"


def test_xmin_scan_is_bounded():
    x = np.sort(_discrete_power_law(2.5, 5000).astype(float))
    cfg = FitConfig(max_xmin_candidates=5)
    xmin, alpha, d = scan_xmin(x, cfg)
    assert xmin >= x.min() and 0 <= d <= 1


def test_bad_fit_config():
    with pytest.raises(ConfigError):
        FitConfig(alternatives=("gamma",))
    with pytest.raises(ConfigError):
        FitConfig(alpha_range=(3.0, 2.0))
