"""Sparsity schedules: exact endpoints, monotonicity, the cubic formula by hand, validation."""
import pytest

from topoprune.errors import ConfigError
from topoprune.train.schedules import SCHEDULES, Schedule, ScheduleConfig, get_schedule

RAMPS = ("linear", "cubic", "cosine", "iterative")


@pytest.mark.parametrize("name", RAMPS)
def test_endpoints_exact(name):
    s = get_schedule(name, target=0.9, initial=0.1, start=100, end=1100, frequency=10)
    assert s(0) == 0.1 and s(100) == 0.1          # before and at start: initial
    assert s(1100) == 0.9 and s(10 ** 6) == 0.9   # at and after end: target, exactly
    assert s.fraction(1100) == s(1100)


@pytest.mark.parametrize("name", RAMPS)
@pytest.mark.parametrize("frequency", [1, 7, 50])
def test_monotone_and_bounded(name, frequency):
    s = get_schedule(name, target=0.8, start=10, end=510, frequency=frequency)
    values = [s(t) for t in range(0, 600)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert min(values) == 0.0 and max(values) == 0.8


def test_cubic_matches_zhu_gupta_by_hand():
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with s_i = 0.2, s_f = 0.8, t0 = 100, n dt = 400
    s = get_schedule("cubic", target=0.8, initial=0.2, start=100, end=500, frequency=50)
    # t = 300: (300 - 100) / 400 = 0.5 -> 0.8 - 0.6 * 0.125 = 0.725
    assert s(300) == pytest.approx(0.725, abs=1e-12)
    # between updates the value holds: t = 349 uses t_u = 300; t = 350 -> 0.8 - 0.6 * (1 - 0.625)^3
    assert s(349) == s(300)
    assert s(350) == pytest.approx(0.8 - 0.6 * 0.375 ** 3, abs=1e-12)


def test_linear_and_cosine_midpoints():
    lin = get_schedule("linear", target=0.6, start=0, end=100)
    cos = get_schedule("cosine", target=0.6, start=0, end=100)
    assert lin(25) == pytest.approx(0.15) and lin(50) == pytest.approx(0.3)
    assert cos(50) == pytest.approx(0.3) and cos(25) < lin(25)


def test_iterative_removes_the_same_share_of_survivors_each_round():
    # 90 % in 11 rounds of 63 steps: every round keeps 0.1 ** (1 / 11) of what survived it
    s = get_schedule("iterative", target=0.9, start=0, end=11 * 63, frequency=63)
    kept = [1 - s(63 * r) for r in range(12)]
    assert kept[0] == 1.0 and s(62) == 0.0 and s(11 * 63) == 0.9 and s(10 ** 6) == 0.9
    assert all(b / a == pytest.approx(0.1 ** (1 / 11), rel=1e-12) for a, b in zip(kept, kept[1:]))
    assert s(63 * 3 + 62) == s(63 * 3)  # the mask holds while the round retrains
    # from an initial sparsity: 1 - s_t = (1 - s_i)^(1 - p) (1 - s_f)^p; nothing to prune: constant
    s = get_schedule("iterative", target=0.9, initial=0.5, start=0, end=40, frequency=10)
    assert s(20) == pytest.approx(1 - 0.5 ** 0.5 * 0.1 ** 0.5, abs=1e-12)
    flat = get_schedule("iterative", target=0.3, initial=0.3, start=0, end=40, frequency=10)
    assert {flat(t) for t in range(60)} == {0.3}


def test_constant_is_target_everywhere():
    s = get_schedule("constant", target=0.5)
    assert [s(t) for t in (0, 1, 10 ** 9)] == [0.5, 0.5, 0.5]
    assert isinstance(s, Schedule) and s.config.to_dict()["name"] == "constant"


def test_registry_lists_all_schedules():
    assert set(SCHEDULES) == {"constant", "linear", "cubic", "cosine", "iterative"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=1.0, end=10), "target"),
    (dict(target=-0.1, end=10), "target"),
    (dict(target=float("nan"), end=10), "target"),
    (dict(target=0.5, initial=0.6, end=10), "initial"),
    (dict(target=0.5, start=10, end=10), "end"),
    (dict(target=0.5, start=-1, end=10), "start"),
    (dict(target=0.5), "end step"),
    (dict(target=0.5, end=10, frequency=0), "frequency"),
    (dict(target=0.5, end=10, frequency=11), "frequency"),
    (dict(target=0.5, end=10.5), "end"),
    (dict(target=0.5, name="exponential", end=10), "unknown schedule"),
])
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScheduleConfig(**kwargs)


def test_get_schedule_rejects_unknown_names_and_settings():
    with pytest.raises(ConfigError, match="unknown schedule"):
        get_schedule("step", target=0.5, end=10)
    with pytest.raises(ConfigError, match="setting"):
        get_schedule("cubic", target=0.5, end=10, warmup=3)


def test_config_is_frozen():
    cfg = ScheduleConfig(target=0.5, end=10)
    with pytest.raises(AttributeError):
        cfg.target = 0.2
