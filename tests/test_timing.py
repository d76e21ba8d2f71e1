"""Seconds per matrix and stage, the per-stage summary, ``-v`` and the analysis progress bar."""
import io
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from topoprune.cli import main
from topoprune.graph.analysis import analyze_report
from topoprune.graph.report import load_report, save_report
from topoprune.graph.timing import STAGES, TIME_COLUMNS, Progress, stage_table, timing_table


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.mlp.{n}.weight": torch.randn(s, generator=g)
               for i in range(2) for n, s in (("fc1", (96, 48)), ("fc2", (48, 96)))}
    tensors["layers.1.mlp.fc2.weight"] = torch.zeros(48, 96)  # all zero: no edges, no fits
    path = tmp_path_factory.mktemp("timing") / "model.safetensors"
    save_file(tensors, path)
    return path


def check_timing(rep, workers: int, backend: str):
    times = timing_table(rep)
    assert list(times.columns) == ["name", "n_edges", *TIME_COLUMNS]
    assert sorted(times["name"]) == sorted(rep.matrices["name"]) and (times[list(TIME_COLUMNS)] >= 0).all().all()
    assert (times["t_read"] > 0).all() and (times["t_edges"] > 0).all()
    edges = dict(zip(rep.matrices["name"], rep.matrices["n_edges"]))
    assert all(times["n_edges"] == times["name"].map(edges))
    stages = stage_table(rep)
    assert list(stages["stage"]) == list(STAGES)
    assert (stages["edges"] == rep.matrices["n_edges"].sum()).all()  # every stage: all the matrices' edges
    for stage, col in zip(STAGES, TIME_COLUMNS):
        row = stages.set_index("stage").loc[stage]
        assert row["seconds"] == pytest.approx(times[col].sum())
        assert row["edges_per_s_per_core"] == pytest.approx(row["edges"] / row["seconds"])
    t = rep.meta["timing"]
    assert t["workers"] == workers and t["backend"] == backend and t["device"] == "cpu" and t["wall_s"] > 0
    zero = times.set_index("name").loc["layers.1.mlp.fc2.weight"]
    assert zero["n_edges"] == 0 and zero["t_degrees"] == zero["t_fits"] == zero["t_modularity"] == 0
    return times


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_stage_seconds_in_process_and_in_the_pool(checkpoint, n_jobs, tmp_path):
    rep = analyze_report(checkpoint, n_jobs=n_jobs)
    times = check_timing(rep, n_jobs, "inline" if n_jobs == 1 else "processes")
    live = times[times["n_edges"] > 0]
    assert (live["t_fits"] > 0).all() and (live["t_modularity"] > 0).all()
    assert not any(c in rep.matrices.columns for c in TIME_COLUMNS)  # the table's values do not depend on speed
    save_report(rep, tmp_path / "r")
    assert timing_table(load_report(tmp_path / "r")).equals(times)


def test_stages_not_run_take_no_time(checkpoint):
    times = timing_table(analyze_report(checkpoint, n_jobs=1, fits=False, matrix_modularity=False))
    assert (times["t_fits"] == 0).all() and (times["t_modularity"] == 0).all()
    assert math.isnan(stage_table(analyze_report(checkpoint, n_jobs=1, fits=False))
                      .set_index("stage").loc["fits", "edges_per_s_per_core"])


def test_stage_seconds_on_a_dask_cluster(checkpoint):
    pytest.importorskip("distributed")
    rep = analyze_report(checkpoint, scheduler="local:1")
    check_timing(rep, 1, "dask")
    assert (timing_table(rep).query("n_edges > 0")["t_fits"] > 0).all()


def test_verbose_prints_the_stage_summary(checkpoint, tmp_path):
    r = CliRunner().invoke(main, ["-v", "analyze", str(checkpoint), "--out", str(tmp_path / "o"), "-j", "1"])
    assert r.exit_code == 0, r.output
    assert "time per stage (1 worker, inline, device cpu" in r.stderr and "edges/s/core" in r.stderr
    assert all(f"  {stage} " in r.stderr for stage in STAGES) and "time per stage" not in r.stdout
    r = CliRunner().invoke(main, ["analyze", str(checkpoint), "--out", str(tmp_path / "o2"), "-j", "1"])
    assert r.exit_code == 0 and "time per stage" not in r.stderr


def test_progress_shows_matrices_edges_per_second_and_eta():
    out = io.StringIO()
    bar = Progress(4, True, file=out)
    bar.advance(1, 1200, "layers.0.mlp.fc1.weight")
    bar.advance(2, 3000, "layers.1.mlp.fc1.weight")
    bar.bar.refresh()
    text = out.getvalue()
    bar.close()
    assert "3/4" in text and "edges/s" in text and "layers.1.mlp.fc1.weight" in text
    assert "<" in text and "matrix/s" in text  # elapsed<remaining, and tqdm's own rate
    assert bar.edges == 4200
    quiet = io.StringIO()
    bar = Progress(4, False, file=quiet)
    bar.advance(4, 10, "x")
    bar.close()
    assert quiet.getvalue() == ""


def test_analyze_bar_on_a_terminal(checkpoint, tmp_path):
    import sys

    from test_progress import _run_on_terminal  # stderr on a pseudo-terminal

    code, err = _run_on_terminal([sys.executable, "-m", "topoprune.cli", "analyze", str(checkpoint), "-j", "1",
                                  "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert "analyze" in err and "/4 [" in err and "edges/s" in err and "matrix/s" in err
