"""The benchmarks' shared tools: the code fingerprint that invalidates stored results, and figure saving."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.figsave import save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint  # noqa: E402

MEASURE = "def measure(x):\n    return x * {factor}\n"
PLOT = "def plot(x):\n    return '{label}'\n"


def _module(tmp_path: Path, name: str, factor: int, label: str):
    path = tmp_path / f"{name}.py"
    path.write_text(MEASURE.format(factor=factor) + "\n\n" + PLOT.format(label=label))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fingerprint_follows_the_measuring_code_only(tmp_path):
    base = _module(tmp_path, "bench_a", 2, "first title")
    relabelled = _module(tmp_path, "bench_b", 2, "another title")  # only the plotting differs
    remeasured = _module(tmp_path, "bench_c", 3, "first title")  # the measurement differs
    settings = {"tweets": {"epochs": 1.0}}
    fp = code_fingerprint("models.py", measured=(settings, base.measure))
    assert fp == code_fingerprint("models.py", measured=(settings, relabelled.measure))
    assert fp != code_fingerprint("models.py", measured=(settings, remeasured.measure))
    assert fp != code_fingerprint("models.py", measured=({"tweets": {"epochs": 2.0}}, base.measure))
    assert fp != code_fingerprint("graph", measured=(settings, base.measure))  # the package part counts
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_fingerprint_without_measured_code_is_the_whole_caller():
    # called from this file: its text is part of the hash, so it differs from the named-code form
    named = code_fingerprint("models.py", measured=(test_fingerprint_follows_the_measuring_code_only,))
    assert code_fingerprint("models.py") != named
    assert code_fingerprint("models.py") == code_fingerprint("models.py")


def test_save_figure_writes_png_and_svg_atomically(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    paths = save_figure(fig, "probe", dpi=50, directory=tmp_path / "figs")
    assert [p.name for p in paths] == ["probe.png", "probe.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:1000]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["probe.png", "probe.svg"]  # no temporaries


def test_save_figure_redraws_the_same_bytes(tmp_path):
    # SVG element ids and the date would otherwise differ from one drawing of the same figure to the next
    from matplotlib.figure import Figure

    drawn = []
    for name in ("a", "b"):
        fig = Figure(figsize=(2, 2))
        ax = fig.subplots()
        ax.plot([0, 1], [1, 0], label="line")
        ax.fill_between([0, 1], [0, 0], [1, 1], alpha=0.2)
        ax.legend()
        drawn.append([p.read_bytes() for p in save_figure(fig, "probe", dpi=50, directory=tmp_path / name)])
    assert drawn[0][0] == drawn[1][0]
    assert drawn[0][1] == drawn[1][1]
    assert b"<dc:date>" not in drawn[0][1]


def test_save_figure_keeps_the_old_figure_when_saving_fails(tmp_path):
    from matplotlib.figure import Figure

    (tmp_path / "probe.png").write_bytes(b"old")
    fig = Figure()
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    with pytest.raises(RuntimeError):
        save_figure(fig, "probe", directory=tmp_path)
    assert (tmp_path / "probe.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.png"]


def test_paired_perplexity_change_of_the_separating_benchmark():
    from analysis.bench_separate import paired_change

    ref = [4.0, 5.0, 6.0, 5.5]
    change, se = paired_change([x + 0.1 for x in ref], ref)  # every block 0.1 nats worse
    assert change == pytest.approx(100 * (math.exp(0.1) - 1)) and se == pytest.approx(0.0, abs=1e-9)
    d = [0.1, -0.1, 0.3, 0.1]  # mean 0.1, sample sd 0.1633
    change, se = paired_change([a + b for a, b in zip(ref, d)], ref)
    assert change == pytest.approx(100 * (math.exp(0.1) - 1))
    assert se == pytest.approx(100 * math.exp(0.1) * 0.16330 / 2, rel=1e-3)


def test_paired_accuracy_difference_of_the_separating_benchmark():
    from analysis.bench_separate import paired_accuracy

    diff, se = paired_accuracy("1111", "1111")
    assert diff == 0.0 and se == 0.0
    diff, se = paired_accuracy("1100", "1010")  # d = 0, 1, -1, 0: mean 0, sample sd sqrt(2/3)
    assert diff == 0.0 and se == pytest.approx(100 * math.sqrt(2 / 3) / 2)
    diff, se = paired_accuracy("1110", "0110")  # d = 1, 0, 0, 0: mean 0.25, sample sd 0.5
    assert diff == pytest.approx(25.0) and se == pytest.approx(100 * 0.5 / 2)
    with pytest.raises(ValueError):  # different held-out sets are never paired
        paired_accuracy("101", "10")


def test_paired_difference_over_seeds_pairs_each_seed_with_its_own_gmp_run():
    from analysis.bench_separate import paired_accuracy, paired_over_seeds

    def run(seed, correct):
        return {"seed": seed, "correct": correct}

    groups = {("gmp", 0.5): [run(0, "1010"), run(1, "1111")],
              ("neuroprune", 0.5): [run(1, "0111"), run(0, "1110"), run(2, "1111")]}  # seed 2: no GMP run
    mean, se, per_seed = paired_over_seeds(groups, "neuroprune", 0.5, "correct", paired_accuracy)
    (d0, se0), (d1, se1) = paired_accuracy("1110", "1010"), paired_accuracy("0111", "1111")
    assert per_seed == [d0, d1] == [25.0, -25.0]
    assert mean == pytest.approx(0.0) and se == pytest.approx(math.hypot(se0, se1) / 2)
    assert paired_over_seeds(groups, "l1", 0.5, "correct", paired_accuracy) is None
    assert paired_over_seeds(groups, "neuroprune", 0.7, "correct", paired_accuracy) is None
