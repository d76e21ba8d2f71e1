"""Figures: CCDF values, plot functions' return values and overlays, save_figures' files."""
import math

import matplotlib
import numpy as np
import pytest
import torch

import topoprune
from topoprune import plotting
from topoprune.graph.fits import fit_degrees
from topoprune.graph.report import load_report, save_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

FIGURES = ["ccdf_by_role_in", "ccdf_by_role_out", "ccdf_blocks_mlp_in", "ccdf_blocks_mlp_out", "ccdf_blocks_q",
           "block_trends", "patterns"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny_report():
    """Two blocks: an all-zero fc2 (no degrees), an 8x4 q (too few points), full attention in block 0."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "layers.0.mlp.fc1.weight": torch.randn(96, 48, generator=g),
        "layers.0.mlp.fc2.weight": torch.zeros(48, 96),
        "layers.1.mlp.fc1.weight": torch.randn(96, 48, generator=g),
        "layers.1.mlp.fc2.weight": torch.randn(48, 96, generator=g),
        "layers.0.self_attn.q_proj.weight": torch.randn(8, 4, generator=g),
        "layers.0.self_attn.k_proj.weight": torch.randn(8, 4, generator=g),
        "layers.0.self_attn.v_proj.weight": torch.randn(8, 4, generator=g),
        "layers.0.self_attn.o_proj.weight": torch.randn(4, 8, generator=g),
        "layers.1.self_attn.q_proj.weight": torch.randn(48, 48, generator=g),
    }
    rep = topoprune.analyze_report(sd, n_jobs=1, block_modularity=True)
    m = rep.matrices.set_index("name")
    assert m.loc["layers.0.mlp.fc2.weight", "status"] == "all_zero"
    assert m.loc["layers.0.self_attn.q_proj.weight", "in_verdict"] == "too_few_points"
    assert len(rep.layered)
    return rep


def _row(report, name):
    return report.matrices.set_index("name").loc[name]


# --------------------------------------------------------------------------- ccdf


def test_ccdf_known_answer():
    x, p = plotting.ccdf([1, 1, 2, 3])
    assert x.tolist() == [1, 2, 3]
    assert p.tolist() == [1.0, 0.5, 0.25]


def test_ccdf_drops_nonpositive_and_nonfinite():
    x, p = plotting.ccdf(np.array([0, 3, -1, np.nan, 3, 1, np.inf]))
    assert x.tolist() == [1, 3]
    assert p.tolist() == [1.0, 2 / 3]
    x, p = plotting.ccdf([0, 0])
    assert x.size == 0 and p.size == 0


# --------------------------------------------------------------------------- plot_ccdf


@pytest.fixture(scope="module")
def power_law_sample():
    rng = np.random.default_rng(1)
    x = np.floor((1 - rng.random(3000)) ** (-1 / 1.5) * 5).astype(int)  # discrete, alpha ~ 2.5
    return x, fit_degrees(x)


def test_plot_ccdf_overlays_meet_data_at_xmin(power_law_sample):
    x, fit = power_law_sample
    ax = plotting.plot_ccdf(x, fit=fit, label="sample")
    assert isinstance(ax, Axes)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    pl = next(ln for lab, ln in lines.items() if lab.startswith("power law"))
    ln_curve = lines["lognormal (same tail)"]
    empirical = np.mean(x >= fit.xmin)
    for curve in (pl, ln_curve):
        assert curve.get_xdata()[0] == fit.xmin
        assert curve.get_ydata()[0] == pytest.approx(empirical, rel=1e-9)
        assert np.all(np.diff(curve.get_ydata()) <= 0)
    assert f"{fit.alpha:.2f}" in pl.get_label()
    assert ax.get_legend().get_title().get_text() == f"verdict: {fit.verdict.replace('_', ' ')}"
    data = lines["sample"]
    assert data.get_ydata()[0] == 1.0 and len(data.get_xdata()) <= 110  # thinned for display


def test_plot_ccdf_without_usable_fit_draws_data_only(power_law_sample):
    x, _ = power_law_sample
    for fit in (None, {"alpha": math.nan, "xmin": math.nan, "verdict": "too_few_points"}):
        ax = plotting.plot_ccdf(x, fit=fit, overlay=("power_law", "lognormal"))
        assert [ln.get_label() for ln in ax.get_lines()] == ["_child0"]
    ax = plotting.plot_ccdf(x, fit={"alpha": 2.5, "xmin": 3}, overlay=())
    assert len(ax.get_lines()) == 1
    with pytest.raises(ValueError, match="overlay"):
        plotting.plot_ccdf(x, overlay=("gamma",))


def test_plot_ccdf_empty_sequence_and_given_axes():
    fig, ax = plt.subplots()
    out = plotting.plot_ccdf(np.zeros(10, dtype=int), fit={"alpha": 2.0, "xmin": 1.0}, ax=ax)
    assert out is ax
    assert not ax.get_lines()
    assert any(t.get_text() == "no edges" for t in ax.texts)


def test_plot_ccdf_reads_the_side_of_a_report_row(tiny_report):
    name = "layers.1.mlp.fc1.weight"
    row = _row(tiny_report, name)
    ax = plotting.plot_ccdf(tiny_report.degrees[name][1], fit=row, side="out")
    labels = [ln.get_label() for ln in ax.get_lines()]
    if np.isfinite(row["out_alpha"]):
        assert any(f"{row['out_alpha']:.2f}" in lab for lab in labels)
    assert ax.get_xlabel().startswith("out-degree")
    with pytest.raises(ValueError, match="side"):
        plotting.plot_ccdf([1, 2], side="both")


# --------------------------------------------------------------------------- report plots


def test_plot_role_ccdfs_one_panel_per_role(tiny_report):
    axes = plotting.plot_role_ccdfs(tiny_report, side="in")
    assert all(isinstance(a, Axes) for a in axes)
    assert len(axes) == tiny_report.matrices["role"].nunique()
    titles = [a.get_title() for a in axes]
    assert titles[0].startswith("query") and any(t.startswith("MLP in") for t in titles)
    axes = plotting.plot_role_ccdfs(tiny_report, side="out", roles=["mlp_out", "nonexistent"], pooled_fit=False)
    assert len(axes) == 1 and axes[0].get_title().startswith("MLP out")


def test_plot_block_grid_handles_all_zero_matrix(tiny_report):
    axes = plotting.plot_block_grid(tiny_report, role="mlp_out", side="in")
    assert len(axes) == 2 and all(isinstance(a, Axes) for a in axes)
    assert [a.get_title() for a in axes] == ["block 0", "block 1"]
    assert any(t.get_text() == "no edges" for t in axes[0].texts)  # all-zero fc2 of block 0
    assert axes[1].get_lines()
    axes = plotting.plot_block_grid(tiny_report, role="cross_q")
    assert len(axes) == 1 and "no cross_q" in axes[0].texts[0].get_text()


def test_plot_block_trends(tiny_report):
    axes = plotting.plot_block_trends(tiny_report)
    assert len(axes) == 3 and all(isinstance(a, Axes) for a in axes)
    labels = axes[2].get_legend_handles_labels()[1]
    assert "layered MLP graph" in labels and "layered attention graph" in labels
    mlp_in = next(ln for ln in axes[2].get_lines() if ln.get_label() == "MLP in")
    assert list(mlp_in.get_xdata()) == [0, 1]


def test_plot_pattern(tiny_report):
    name = "layers.1.mlp.fc1.weight"
    ax = plotting.plot_pattern(tiny_report, name, colorbar=True)
    assert isinstance(ax, Axes)
    img = ax.get_images()[0]
    np.testing.assert_array_equal(img.get_array(), tiny_report.patterns[name])
    assert ax.get_xlabel().startswith("inputs") and ax.get_ylabel().startswith("outputs")
    with pytest.raises(KeyError, match="no sparsity pattern"):
        plotting.plot_pattern(tiny_report, "nope")


def test_default_patterns_first_and_last_block(tiny_report):
    names = plotting.default_patterns(tiny_report)
    assert names == ["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.o_proj.weight",
                     "layers.0.mlp.fc1.weight", "layers.0.mlp.fc2.weight", "layers.1.self_attn.q_proj.weight",
                     "layers.1.mlp.fc1.weight", "layers.1.mlp.fc2.weight"]


# --------------------------------------------------------------------------- save_figures


def test_save_figures_writes_png_and_svg(tiny_report, tmp_path):
    backend = matplotlib.get_backend()
    open_before = plt.get_fignums()
    paths = plotting.save_figures(tiny_report, tmp_path / "figs")
    assert sorted(p.name for p in paths) == sorted(f"{s}.{f}" for s in FIGURES for f in ("png", "svg"))
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, p
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths if p.suffix == ".png")
    assert all(b"<svg" in p.read_bytes()[:2000] for p in paths if p.suffix == ".svg")
    assert sorted(tmp_path.joinpath("figs").iterdir()) == sorted(paths)  # no .tmp leftovers
    assert plt.get_fignums() == open_before and matplotlib.get_backend() == backend


def test_save_figures_shows_progress_only_when_asked(deep_report, tmp_path, capsys):
    rep = load_report(deep_report)
    config = plotting.FigureConfig(formats=("png",), grid_blocks=1)
    plotting.save_figures(rep, tmp_path / "quiet", config=config)
    assert capsys.readouterr().err == ""
    paths = plotting.save_figures(rep, tmp_path / "bar", config=config, progress=True)
    err = capsys.readouterr().err
    assert len(paths) == 7 and "figures" in err and "7/7" in err and "ccdf_blocks_q" in err


def test_save_figures_on_a_loaded_report_without_blocks(tmp_path):
    # Round trip through save_report/load_report (NaNs come back as None); a lone matrix
    # outside any block: no role grids, no layered graphs, nothing to fit.
    rep = topoprune.analyze_report({"pooler.dense.weight": torch.randn(6, 5)}, n_jobs=1, matrix_modularity=False)
    assert rep.matrices.loc[0, "in_verdict"] == "too_few_points"
    loaded = load_report(save_report(rep, tmp_path / "report"))
    paths = plotting.save_figures(loaded, tmp_path / "figs", formats=("png",))
    assert sorted(p.name for p in paths) == ["block_trends.png", "ccdf_by_role_in.png", "ccdf_by_role_out.png",
                                             "patterns.png"]
    assert sorted(tmp_path.joinpath("figs").iterdir()) == sorted(paths)


# --------------------------------------------------------------------------- deep models


def test_grid_blocks_spreads_the_shown_blocks_evenly():
    from topoprune.plotting.common import grid_blocks

    assert grid_blocks(range(32), 8) == [0, 4, 9, 13, 18, 22, 27, 31]
    assert grid_blocks([5, 3, 3, 1], 8) == [1, 3, 5]  # few blocks: all of them, sorted, once
    assert grid_blocks(range(80), 0) == list(range(80))
    assert grid_blocks(range(80), 1) == [0] and grid_blocks(range(80), 2) == [0, 79]
    assert grid_blocks([], 8) == []
    with pytest.raises(ValueError, match="grid_blocks"):
        plotting.FigureConfig(grid_blocks=-1)


@pytest.fixture(scope="module")
def deep_report(tmp_path_factory):
    """Nine blocks of a small MLP and q (no modularity, no patterns needed), saved to disk."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(9):
        sd[f"layers.{i}.mlp.fc1.weight"] = torch.randn(64, 32, generator=g)
        sd[f"layers.{i}.mlp.fc2.weight"] = torch.randn(32, 64, generator=g)
        sd[f"layers.{i}.self_attn.q_proj.weight"] = torch.randn(32, 32, generator=g)
    rep = topoprune.analyze_report(sd, n_jobs=1, matrix_modularity=False)
    return save_report(rep, tmp_path_factory.mktemp("deep") / "report")


def test_block_grids_of_a_deep_model_show_evenly_spaced_blocks(deep_report, tmp_path):
    rep = load_report(deep_report)
    axes = plotting.plot_block_grid(rep, role="mlp_in", side="in", blocks=[0, 4, 8])
    assert [a.get_title() for a in axes] == ["block 0", "block 4", "block 8"]
    paths = plotting.save_figures(rep, tmp_path / "few", config=plotting.FigureConfig(formats=("svg",), grid_blocks=3))
    grid = (tmp_path / "few" / "ccdf_blocks_mlp_in.svg").read_text()
    assert "MLP in in 3 of 9 blocks" in grid
    assert all(f"block {b}" in grid for b in (0, 4, 8))
    assert not any(f"block {b}" in grid for b in (1, 2, 3, 5, 6, 7))
    assert all(p.suffix == ".svg" for p in paths)
    trend = plotting.plot_block_trends(rep)[0]  # trends keep every block
    assert list(trend.get_lines()[0].get_xdata()) == list(range(9))


def test_plot_command_takes_grid_blocks_and_refuses_a_negative_count(deep_report, tmp_path):
    from click.testing import CliRunner

    from topoprune.cli import main

    r = CliRunner().invoke(main, ["plot", str(deep_report), "--out", str(tmp_path / "figs"), "--grid-blocks", "2"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "figs" / "ccdf_blocks_q.svg").read_text()
    assert "in 2 of 9 blocks" in text and "block 8" in text and "block 4" not in text
    r = CliRunner().invoke(main, ["plot", str(deep_report), "--out", str(tmp_path / "bad"), "--grid-blocks", "-1"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "--grid-blocks" in lines[0], r.stderr
    assert not (tmp_path / "bad").exists()


def test_zoo_resume_settings_name_grid_blocks_only_off_its_default():
    # A run started before --grid-blocks existed (settings without it) resumes at the default.
    from topoprune.cli.zoo import _figure_settings

    assert _figure_settings(None) == {} and _figure_settings(plotting.FigureConfig()) == {}
    assert _figure_settings(plotting.FigureConfig(grid_blocks=3)) == {"grid_blocks": 3}
