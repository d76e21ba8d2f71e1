"""The CLI end to end: report files, compare, plot; one-line errors with exit code 2."""
import json
import subprocess
import sys

import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from topoprune.cli import main


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def test_analyze_default_checkpoint_plots_compare_plot(tmp_path):
    out = tmp_path / "rep"
    r = run("analyze", "--out", out, "--plots", "--block-modularity")
    assert r.exit_code == 0, r.output
    assert "37 matrices (bert)" in r.output and "mlp_in" in r.output
    for name in ("report.csv", "summary.csv", "layered.csv", "report.json", "degrees.safetensors",
                 "patterns.safetensors"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["version"] and doc["config"]["graph"]["density"] == 0.1 and len(doc["matrices"]) == 37
    assert list((out / "figures").glob("*.png")) and list((out / "figures").glob("*.svg"))
    assert not list(out.rglob("*.tmp"))
    # compare a report with itself: all deltas zero
    r = run("compare", out, out, "--out", tmp_path / "cmp.csv")
    assert r.exit_code == 0, r.output
    import pandas as pd

    cmp = pd.read_csv(tmp_path / "cmp.csv")
    assert len(cmp) == 37 and cmp.filter(like="_delta").abs().max().max() == 0
    r = run("plot", out, "--out", tmp_path / "figs")
    assert r.exit_code == 0 and list((tmp_path / "figs").glob("*.png"))


def test_compare_two_checkpoints(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"layers.0.mlp.fc1.weight": torch.randn(64, 32, generator=g)}
    b = {"layers.0.mlp.fc1.weight": a["layers.0.mlp.fc1.weight"] * (torch.rand(64, 32, generator=g) > 0.5)}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    r = run("compare", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--json", "-j", "1")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows[0]["n_edges_a"] == round(0.1 * 64 * 32) and rows[0]["n_edges_b"] == int((b["layers.0.mlp.fc1.weight"] != 0).sum())


def _bad_inputs(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "notes.txt").write_text("just some text\n")
    good = tmp_path / "good.safetensors"
    save_file({"layers.0.mlp.fc1.weight": torch.randn(16, 8)}, good)
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:-20])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x01\x02garbage" * 50)
    save_file({"a.bias": torch.ones(3)}, tmp_path / "only1d.safetensors")
    nan = torch.randn(16, 8)
    nan[0, 0] = float("nan")
    save_file({"layers.0.mlp.fc1.weight": nan}, tmp_path / "nan.safetensors")
    return [
        ([tmp_path / "missing"], "missing: no such file or directory"),
        ([tmp_path / "empty_dir"], "empty_dir: directory holds no weights"),
        ([tmp_path / "config.json"], "config.json: is a JSON file, not weights"),
        ([tmp_path / "notes.txt"], "notes.txt: is a text file, not weights"),
        ([tmp_path / "trunc.safetensors"], "trunc.safetensors: not a valid safetensors file"),
        ([tmp_path / "garbage.safetensors"], "garbage.safetensors: not a recognised weights format"),
        ([tmp_path / "only1d.safetensors"], "only1d.safetensors: no 2-D floating-point weight matrices"),
        ([tmp_path / "nan.safetensors"], "layers.0.mlp.fc1.weight: contains NaN or Inf"),
        ([good, "--density", "0"], "density must be in (0, 1]"),
        ([good, "--density", "1.5"], "density must be in (0, 1]"),
        ([good, "--roles", "nope"], "unknown role"),
    ]


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path):
    for args, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        r = subprocess.run([sys.executable, "-m", "topoprune.cli", "analyze", *map(str, args), "--out", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert not out.exists(), args  # no half-written output


def test_nan_flag_mode_goes_on(tmp_path):
    nan = torch.randn(16, 8)
    nan[0, 0] = float("inf")
    save_file({"layers.0.mlp.fc1.weight": nan, "layers.0.mlp.fc2.weight": torch.randn(8, 16)},
              tmp_path / "m.safetensors")
    r = run("analyze", tmp_path / "m.safetensors", "--nonfinite", "flag", "--out", tmp_path / "o", "-j", "1")
    assert r.exit_code == 0, r.output
    assert "nonfinite" in (tmp_path / "o" / "report.csv").read_text()


def test_bad_layers_flag():
    r = CliRunner().invoke(main, ["analyze", "--layers", "a-b"])
    assert r.exit_code == 2 and "--layers" in r.output


def test_json_output_and_help(tmp_path):
    save_file({"layers.0.mlp.fc1.weight": torch.randn(32, 16)}, tmp_path / "m.safetensors")
    r = run("analyze", tmp_path / "m.safetensors", "--json", "--out", tmp_path / "o", "-j", "1", "--no-modularity")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["matrices"][0]["role"] == "mlp_in" and doc["config"]["matrix_modularity"] is False
    r = run("analyze", "--help")
    assert r.exit_code == 0 and "--density" in r.output and "--block-modularity" in r.output
