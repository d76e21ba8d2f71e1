"""``topoprune analyze`` of several checkpoints: combined tables, order by step, trajectory figure,
--resume without recomputing finished checkpoints, one-line errors naming the checkpoint, --keep-going."""
import json
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from topoprune.cli import main

FAST = ("-j", "1", "--no-modularity")
STEPS = (5, 20, 100)  # the names sort 100, 20, 5 as text: the order must come from the numbers


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, *needles):
    """Exit 2 and a single ``error:`` line on stderr holding every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _tiny_bert(path, zero_share: float, seed: int):
    """A 2-layer random-init BERT with ``zero_share`` of every matrix zeroed, saved with save_pretrained."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16)
    model = BertModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_((torch.rand(p.shape, generator=g) >= zero_share).to(p.dtype))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``checkpoints/checkpoint-{5,20,100}``: three tiny BERTs with 0 %, 30 % and 60 % of their weights zeroed."""
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    for i, step in enumerate(STEPS):
        _tiny_bert(root / f"checkpoint-{step}", 0.3 * i, seed=i)
    return root


@pytest.fixture
def zoo_copy(zoo, tmp_path):
    """A private copy of the zoo, for tests that break or fix a checkpoint."""
    return shutil.copytree(zoo, tmp_path / "run" / "checkpoints")


def _rows(table, label):
    rows = table[table["checkpoint"] == label].drop(columns=[c for c in ("checkpoint", "step") if c in table])
    return rows.reset_index(drop=True)


def test_directory_of_checkpoints_ordered_by_step_combined_as_single_analyses(zoo, tmp_path):
    out = tmp_path / "rep"
    r = run("analyze", zoo, "--out", out, *FAST)
    assert r.exit_code == 0, r.stderr
    assert "3 checkpoints: 3 analysed" in r.stdout
    labels = [f"checkpoint-{s}" for s in STEPS]
    report, summary = pd.read_csv(out / "report.csv"), pd.read_csv(out / "summary.csv")
    assert list(report.columns[:2]) == ["checkpoint", "step"] and list(summary.columns[:2]) == ["checkpoint", "step"]
    assert list(dict.fromkeys(report["checkpoint"])) == labels
    assert report.groupby("checkpoint", sort=False)["step"].first().tolist() == list(STEPS)
    for name in (".topoprune", "zoo.json", "figures/trajectory.png", "figures/trajectory.svg"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "failed.csv").exists() and not list(tmp_path.glob(".rep*"))
    record = json.loads((out / "zoo.json").read_text())
    assert [c["checkpoint"] for c in record["checkpoints"]] == labels
    assert {c["status"] for c in record["checkpoints"]} == {"ok"}
    # every checkpoint's rows are what a single analyze of it writes, and its sub-report is that report
    edges = []
    for label in labels:
        single = tmp_path / f"single-{label}"
        assert run("analyze", zoo / label, "--out", single, *FAST).exit_code == 0
        assert not (single / "checkpoints").exists()
        pd.testing.assert_frame_equal(_rows(report, label), pd.read_csv(single / "report.csv"), check_dtype=False)
        pd.testing.assert_frame_equal(_rows(summary, label), pd.read_csv(single / "summary.csv"), check_dtype=False)
        sub = out / "checkpoints" / label
        assert (sub / "report.csv").read_bytes() == (single / "report.csv").read_bytes()
        assert (sub / ".topoprune").is_file() and (sub / "degrees.safetensors").is_file()
        edges.append(int(report.loc[report["checkpoint"] == label, "n_edges"].sum()))
    assert len(set(edges)) == 3  # the checkpoints differ
    # the figure can be redrawn from the saved output
    (out / "figures" / "trajectory.png").unlink()
    assert run("plot", out).exit_code == 0 and (out / "figures" / "trajectory.png").is_file()


def test_explicit_checkpoints_keep_their_order_and_labels(zoo, tmp_path):
    weights = tmp_path / "loose" / "final.safetensors"
    weights.parent.mkdir()
    shutil.copy(zoo / "checkpoint-20" / "model.safetensors", weights)
    out = tmp_path / "rep"
    r = run("analyze", zoo / "checkpoint-100", weights, zoo / "checkpoint-5", "--out", out, *FAST, "--no-fits")
    assert r.exit_code == 0, r.stderr
    report = pd.read_csv(out / "report.csv")
    assert list(dict.fromkeys(report["checkpoint"])) == ["checkpoint-100", "final.safetensors", "checkpoint-5"]
    steps = report.groupby("checkpoint", sort=False)["step"].first()
    assert steps["checkpoint-100"] == 100 and pd.isna(steps["final.safetensors"]) and steps["checkpoint-5"] == 5
    assert (out / "checkpoints" / "final.safetensors" / "report.json").is_file()
    assert (out / "figures" / "trajectory.svg").is_file()
    # the same file name in two places: the parent directory tells them apart
    r = run("analyze", zoo / "checkpoint-5" / "model.safetensors", zoo / "checkpoint-20" / "model.safetensors",
            "--out", tmp_path / "rep2", *FAST, "--no-fits")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "rep2" / "checkpoints").iterdir()) == [
        "checkpoint-20-model.safetensors", "checkpoint-5-model.safetensors"]
    one_error(run("analyze", zoo, weights, "--out", tmp_path / "rep3"), "is a directory of checkpoints")


def test_a_model_directory_is_one_checkpoint(zoo, tmp_path):
    """A directory with config.json stays one checkpoint, even with checkpoint directories inside."""
    model = _tiny_bert(tmp_path / "model", 0.0, seed=0)
    shutil.copytree(zoo / "checkpoint-5", model / "checkpoint-5")
    out = tmp_path / "rep"
    r = run("analyze", model, "--out", out, *FAST, "--no-fits")
    assert r.exit_code == 0, r.stderr
    assert (out / "report.json").is_file() and not (out / "checkpoints").exists()
    assert "checkpoint" not in pd.read_csv(out / "report.csv").columns
    # --resume of one checkpoint with nothing interrupted starts afresh; an existing OUT still needs --overwrite
    one_error(run("analyze", model, "--out", out, *FAST, "--no-fits", "--resume"), "exists", "--overwrite")


def test_resume_after_failure_reuses_finished_checkpoints(zoo_copy, tmp_path, monkeypatch):
    import topoprune.graph.analysis

    out, staging = tmp_path / "rep", tmp_path / ".rep.partial"
    good = (zoo_copy / "checkpoint-20" / "config.json").read_text()
    (zoo_copy / "checkpoint-20" / "config.json").write_text("{not json")
    line = one_error(run("analyze", zoo_copy, "--out", out, *FAST), "checkpoint-20: ", "config.json",
                     "not valid JSON", "--resume")
    assert str(staging) in line
    assert not out.exists()  # nothing at OUT; the finished checkpoint waits in the staging directory
    first = staging / "checkpoints" / "checkpoint-5" / "report.csv"
    stamp = first.stat().st_mtime_ns
    assert not (staging / "checkpoints" / "checkpoint-20").exists()
    one_error(run("analyze", zoo_copy, "--out", out, *FAST), "interrupted analysis", "--resume", "--overwrite")
    one_error(run("analyze", zoo_copy, "--out", out, *FAST, "--resume", "--density", "0.2"),
              "--resume needs the settings", "density 0.1 -> 0.2")
    one_error(run("analyze", zoo_copy, "--out", out, "-j", "1", "--resume"), "matrix_modularity")
    (zoo_copy / "checkpoint-20" / "config.json").write_text(good)
    calls = []
    original = topoprune.graph.analysis.analyze_report

    def counting(source, *a, **k):
        calls.append(source.name)
        return original(source, *a, **k)

    monkeypatch.setattr(topoprune.graph.analysis, "analyze_report", counting)
    r = run("analyze", zoo_copy, "--out", out, *FAST, "--resume", "-j", "2")  # -j does not change results
    assert r.exit_code == 0, r.stderr
    assert calls == ["checkpoint-20", "checkpoint-100"] and "1 reused" in r.stdout
    assert (out / "checkpoints" / "checkpoint-5" / "report.csv").stat().st_mtime_ns == stamp
    assert not staging.exists()
    report = pd.read_csv(out / "report.csv")
    assert list(dict.fromkeys(report["checkpoint"])) == [f"checkpoint-{s}" for s in STEPS]
    # a finished output is extended: only a new checkpoint is analysed
    _tiny_bert(zoo_copy / "checkpoint-200", 0.5, seed=7)
    calls.clear()
    r = run("analyze", zoo_copy, "--out", out, *FAST, "--resume")
    assert r.exit_code == 0, r.stderr
    assert calls == ["checkpoint-200"] and (out / "checkpoints" / "checkpoint-5" / "report.csv").stat().st_mtime_ns \
        == stamp
    assert pd.read_csv(out / "report.csv")["checkpoint"].nunique() == 4
    one_error(run("analyze", zoo_copy, "--out", out, *FAST), "exists", "--overwrite")
    one_error(run("analyze", zoo_copy, "--out", out, *FAST, "--resume", "--overwrite"), "exclude each other")


def test_broken_checkpoint_stops_with_one_line_and_nothing_written(zoo_copy, tmp_path):
    shards = zoo_copy / "checkpoint-5" / "model.safetensors"
    shards.write_bytes(shards.read_bytes()[:-40])  # truncated: the first checkpoint, nothing finished before it
    out = tmp_path / "rep"
    one_error(run("analyze", zoo_copy, "--out", out, *FAST), "checkpoint-5: ", "model.safetensors",
              "not a valid safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no OUT, no staging directory


def test_keep_going_records_failures(zoo_copy, tmp_path):
    (zoo_copy / "checkpoint-20" / "config.json").write_text("{not json")
    out = tmp_path / "rep"
    r = run("analyze", zoo_copy, "--out", out, *FAST, "--keep-going")
    assert r.exit_code == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint-20: ") and "config.json" in warnings[0]
    failed = pd.read_csv(out / "failed.csv")
    assert failed["checkpoint"].tolist() == ["checkpoint-20"] and failed["step"].tolist() == [20]
    assert "not valid JSON" in failed["reason"][0] and "\n" not in failed["reason"][0]
    assert list(dict.fromkeys(pd.read_csv(out / "report.csv")["checkpoint"])) == ["checkpoint-5", "checkpoint-100"]
    assert (out / "figures" / "trajectory.png").is_file() and not (out / "checkpoints" / "checkpoint-20").exists()
    # none succeeds: exit 2 and nothing written
    for label in ("checkpoint-5", "checkpoint-100"):
        (zoo_copy / label / "config.json").write_text("[broken")
    r = run("analyze", zoo_copy, "--out", tmp_path / "none", *FAST, "--keep-going")
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1].startswith("error: no checkpoint could be analysed")
    assert len(r.stderr.strip().splitlines()) == 4
    assert not (tmp_path / "none").exists() and not (tmp_path / ".none.partial").exists()


def test_trajectory_table_by_role_or_component():
    from topoprune.graph.zoo import trajectory

    roles = ["q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o", "mlp_in", "mlp_out"]
    comp = {r: "cross_attention" if r.startswith("cross") else "mlp" if r.startswith("mlp") else "attention"
            for r in roles}
    rows = [dict(checkpoint=c, step=s, role=r, component=comp[r], status="ok", in_alpha=2.0 + s / 100,
                 in_conn_sd=0.1, modularity=0.5) for c, s in (("checkpoint-200", 200), ("checkpoint-100", 100))
            for r in roles]
    table = trajectory(pd.DataFrame(rows))
    assert table.attrs["by"] == "component" and table.attrs["x"] == "step"
    assert sorted(table["group"].unique()) == ["attention", "cross_attention", "mlp"]
    assert table[table["group"] == "mlp"]["x"].tolist() == [100, 200]  # sorted by step for drawing
    few = pd.DataFrame(rows).query("role in ['q', 'mlp_in']").assign(step=pd.NA)
    table = trajectory(few)
    assert table.attrs == {"x": "checkpoint", "by": "role", "labels": ["checkpoint-200", "checkpoint-100"]}
    assert table[table["group"] == "q"]["x"].tolist() == [0, 1]
