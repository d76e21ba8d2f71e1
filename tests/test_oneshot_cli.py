"""``topoprune oneshot`` end to end on a tiny LLaMA: run directory, reload, one-line errors with exit code 2."""
import json

import pytest
import torch
from click.testing import CliRunner

from topoprune.cli import main

TEXT = (
    "The river rose slowly through the night, and by morning the low fields near the old mill were under water. "
    "Farmers moved their cattle to the hills while the children watched from the bridge. "
    "In the town, the baker opened early and sold bread to anyone who came, paid or not. "
    "A teacher wrote the names of the families who needed shelter on a long sheet of paper. "
    "When the rain stopped, the sky turned a pale yellow and the birds returned to the trees. "
    "Engineers from the city arrived in the afternoon to inspect the dam and the roads. "
    "They said the water would fall within two days, but nobody in the valley believed them. "
    "Old stories told of a flood that had lasted a whole month and carried away three houses. "
    "Still, the market reopened on Friday, and prices for grain, milk and wool went up a little. "
    "By the end of the week most people had gone home, tired but glad the worst had passed. "
)

FAST = ("--n-calibration", "4", "--n-search", "2", "--seq-len", "32")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT * 3, encoding="utf-8")  # about 600 words
    return path


def run(*args):
    return CliRunner().invoke(main, ["oneshot", *map(str, args)], catch_exceptions=False)


def _stderr(r):
    try:
        return r.stderr
    except ValueError:  # click < 8.2 without a separate stderr
        return r.output


def _assert_clean(tmp_path, out_name="OUT"):
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out_name}.")]
    assert not leftovers, leftovers


def test_oneshot_neuroal_run_directory(tmp_path, calib):
    """A NeuroAL run writes the model, masks, record, reports, comparison and figures; the model reloads."""
    out = tmp_path / "OUT"
    r = run("tiny-llama", "--sparsity", 0.6, "--allocation", "neuroal", "--calibration", calib, *FAST,
            "--eval-tokens", 512, "--window", 64, "--no-fits", "-o", out)
    assert r.exit_code == 0, r.output
    assert "wanda + neuroal: sparsity 0.6" in r.stdout and "PTB perplexity" in r.stdout
    for rel in ("model/config.json", "model/model.safetensors", "masks.safetensors", "topoprune.json",
                "layers.csv", "report/report.json", "dense-report/report.json", "compare.csv",
                "figures/allocation.png", "figures/allocation.svg"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    _assert_clean(tmp_path)
    rec = json.loads((out / "topoprune.json").read_text())
    for key in ("lambda_block", "lambda_row", "block_sparsity", "layers", "perplexity", "search", "fallbacks",
                "config", "calibration", "seconds", "sparsity"):
        assert key in rec, key
    assert rec["config"]["sparsity"] == 0.6 and rec["config"]["allocation"] == "neuroal"
    assert rec["calibration"]["windows"] == [4, 32] and rec["calibration"]["source"] == str(calib)
    assert rec["evaluation"]["tokens"] == 512 and rec["evaluation"]["window"] == 64
    from topoprune.oneshot.allocation import ROW_GRID, block_grid

    assert rec["lambda_block"] in block_grid(0.6) and rec["lambda_row"] in ROW_GRID
    assert len(rec["search"]["block"]) == 14 and len(rec["search"]["row"]) == 15
    assert len(rec["block_sparsity"]) == 2
    assert set(rec["perplexity"]) == {"dense", "pruned"}
    assert all(torch.isfinite(torch.tensor(v)) and v > 1 for v in rec["perplexity"].values())
    layers = rec["layers"]
    assert len(layers) == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    total = sum(r["numel"] for r in layers)
    assert abs(rec["sparsity"] - 0.6) <= len(layers) / total
    # the saved model reloads with transformers and has exactly the recorded zeros
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    params = dict(model.named_parameters())
    from topoprune.graph.masks import MaskSet

    masks = MaskSet.load(out / "masks.safetensors")
    assert sorted(masks.names()) == sorted(r["name"] for r in layers)
    kept = 0
    for r in layers:
        w = params[r["name"]]
        nz = int(torch.count_nonzero(w))
        assert nz == r["kept"], r["name"]
        assert torch.equal(w != 0, masks.masks[r["name"]]), r["name"]
        assert r["sparsity"] == pytest.approx(1 - nz / w.numel(), abs=1e-12)
        kept += nz
    assert 1 - kept / total == pytest.approx(rec["sparsity"], abs=1e-12)
    assert masks.metadata["lambda_block"] == rec["lambda_block"]
    # the pruned report sees the pruned graph: its edges are the kept weights
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["matrices"]


def test_oneshot_dense_perplexity_without_dropout(tmp_path, calib):
    """tiny-opt has dropout 0.1: the recorded dense perplexity is the eval-mode one."""
    r = run("tiny-opt", "--sparsity", 0.5, "--allocation", "uniform", "--calibration", calib, *FAST,
            "--eval-tokens", 256, "--window", 64, "--no-analyze", "-o", tmp_path / "OUT")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "OUT" / "topoprune.json").read_text())
    from topoprune.oneshot.calibration import perplexity, text_ids
    from topoprune.models import build_model, load_tokenizer as _tokenizer

    tok = _tokenizer()
    model = build_model("tiny-opt", "causal_lm", tok, seed=0).eval()
    expected = perplexity(model, text_ids(tok, "ptb", "test"), window=64, max_tokens=256)
    assert rec["perplexity"]["dense"] == pytest.approx(expected, rel=1e-9)
    assert rec["perplexity"]["pruned"] != rec["perplexity"]["dense"]


def _bad(tmp_path, *args, message=""):
    r = run(*args, "--no-analyze", "--no-eval", *FAST)
    assert r.exit_code == 2, r.output
    lines = _stderr(r).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], _stderr(r)
    assert "Traceback" not in r.output
    return r


@pytest.mark.parametrize("sparsity", ["0", "1", "1.5", "-0.2", "nan"])
def test_bad_sparsity(tmp_path, calib, sparsity):
    """Sparsity outside (0, 1): exit 2, one line, no output directory."""
    out = tmp_path / "OUT"
    _bad(tmp_path, "tiny-llama", "--sparsity", sparsity, "--calibration", calib, "-o", out, message="sparsity")
    assert not out.exists()
    _assert_clean(tmp_path)


def test_empty_and_missing_calibration(tmp_path):
    """An empty or a missing calibration file: exit 2, one line naming the file, no output directory."""
    out = tmp_path / "OUT"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    _bad(tmp_path, "tiny-llama", "--calibration", empty, "-o", out, message="empty")
    _bad(tmp_path, "tiny-llama", "--calibration", tmp_path / "missing.txt", "-o", out, message="missing.txt")
    assert not out.exists()
    _assert_clean(tmp_path)


def test_missing_model_directory(tmp_path, calib):
    """A model directory that does not exist: exit 2, one line naming it, no output directory."""
    out = tmp_path / "OUT"
    _bad(tmp_path, tmp_path / "no-such-model", "--calibration", calib, "-o", out, message="no-such-model")
    assert not out.exists()
    _assert_clean(tmp_path)


def test_model_without_blocks(tmp_path, calib):
    """A Hugging Face directory of an encoder-decoder: exit 2 before anything is written."""
    from topoprune.models import build_model, load_tokenizer as _tokenizer

    tok = _tokenizer()
    path = tmp_path / "t5"
    build_model("tiny-t5", "seq2seq", tok).save_pretrained(path)
    tok.save_pretrained(path)
    out = tmp_path / "OUT"
    r = run(path, "--calibration", calib, "--no-analyze", "--no-eval", *FAST, "-o", out)
    assert r.exit_code == 2, r.output
    assert _stderr(r).strip().startswith("error:") and len(_stderr(r).strip().splitlines()) == 1
    assert not out.exists()
    _assert_clean(tmp_path)


def test_existing_output_needs_overwrite(tmp_path, calib):
    """An earlier topoprune run in OUT is kept without --overwrite (exit 2) and replaced with it; a
    directory topoprune did not write is never replaced."""
    mine = tmp_path / "MINE"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    for extra in ((), ("--overwrite",)):
        _bad(tmp_path, "tiny-llama", "--calibration", calib, "-o", mine, *extra, message="not written by topoprune")
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"] and (mine / "keep.txt").read_text() == "precious"
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "topoprune.json").write_text("{}")  # an earlier run
    (out / "keep.txt").write_text("old")
    _bad(tmp_path, "tiny-llama", "--calibration", calib, "-o", out, message="--overwrite")
    assert (out / "keep.txt").read_text() == "old"
    _assert_clean(tmp_path)
    r = run("tiny-llama", "--sparsity", 0.5, "--allocation", "owl", "--calibration", calib, *FAST, "--no-analyze",
            "--no-eval", "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "topoprune.json").is_file()
    rec = json.loads((out / "topoprune.json").read_text())
    assert rec["perplexity"] == {} and rec["evaluation"] is None and rec["outlier_ratios"]
    assert not (out / "report").exists()
    _assert_clean(tmp_path)
    # an empty existing directory needs no --overwrite
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    r = run("tiny-llama", "--allocation", "uniform", "--calibration", calib, *FAST, "--no-analyze", "--no-eval",
            "-o", empty)
    assert r.exit_code == 0, r.output
    assert (empty / "masks.safetensors").is_file()
    _assert_clean(tmp_path, "EMPTY")


@pytest.mark.parametrize("args,message", [(("--window", 64, "--stride", 100), "stride"),
                                          (("--window", 1), "window"), (("--eval-tokens", -1), "eval_tokens")])
def test_bad_evaluation_settings_fail_before_any_work(tmp_path, calib, monkeypatch, args, message):
    """Bad perplexity settings: exit 2 before the model is even loaded, no output directory."""
    import topoprune.oneshot.run as run_mod

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(run_mod, "load_causal_lm", no_load)
    out = tmp_path / "OUT"
    r = run("tiny-llama", "--calibration", calib, *FAST, *args, "-o", out)
    assert r.exit_code == 2, r.output
    lines = _stderr(r).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], _stderr(r)
    assert not out.exists()
    _assert_clean(tmp_path)


def test_owl_options_reach_the_allocation(tmp_path, calib):
    """--owl-lambda sets OWL's band: 0 gives every block the target, a wide band spreads them within it."""
    spreads = {}
    for lam in (0.0, 0.2):
        out = tmp_path / f"owl{lam}"
        r = run("tiny-llama", "--sparsity", 0.5, "--allocation", "owl", "--owl-lambda", lam, "--owl-m", 3,
                "--calibration", calib, *FAST, "--no-analyze", "--no-eval", "-o", out)
        assert r.exit_code == 0, r.output
        rec = json.loads((out / "topoprune.json").read_text())
        assert rec["config"]["owl_lambda"] == lam and rec["config"]["owl_m"] == 3
        blocks = rec["block_sparsity"]
        assert all(0.5 - lam - 1e-9 <= b <= 0.5 + lam + 1e-9 for b in blocks), blocks
        spreads[lam] = max(blocks) - min(blocks)
        assert abs(rec["sparsity"] - 0.5) < 1e-3
    assert spreads[0.0] < 1e-9 < spreads[0.2]


@pytest.mark.parametrize("args", [("--owl-m", 0), ("--owl-lambda", -0.1)])
def test_bad_owl_settings(tmp_path, calib, args):
    out = tmp_path / "OUT"
    _bad(tmp_path, "tiny-llama", "--allocation", "owl", *args, "--calibration", calib, "-o", out, message="owl")
    assert not out.exists()
    _assert_clean(tmp_path)


def test_setting_presets_exactly_the_three_knobs():
    """``authors`` changes down_rows, group and rebalance and nothing else; explicit knobs win; the defaults
    are the DEFAULT_SETTING's (the authors')."""
    import dataclasses

    from topoprune.errors import ConfigError
    from topoprune.oneshot.config import DEFAULT_SETTING, OneShotConfig

    ours, authors = OneShotConfig.preset("topoprune"), OneShotConfig.preset("authors")
    assert DEFAULT_SETTING == "authors" and authors == OneShotConfig() == OneShotConfig.preset()
    assert ours.setting == "topoprune" and authors.setting == "authors"
    differ = {f.name: getattr(authors, f.name) for f in dataclasses.fields(OneShotConfig)
              if getattr(authors, f.name) != getattr(ours, f.name)}
    assert differ == {"down_rows": "next_input", "group": "row", "rebalance": False}
    mixed = OneShotConfig.preset("authors", method="magnitude", sparsity=0.7, group="layer", rebalance=None)
    assert (mixed.group, mixed.down_rows, mixed.rebalance, mixed.method, mixed.sparsity) == \
        ("layer", "next_input", False, "magnitude", 0.7)
    assert mixed.setting == "custom" and mixed.comparison == "layer"
    assert OneShotConfig.preset("authors", method="magnitude").comparison == "row"
    with pytest.raises(ConfigError, match="setting must be one of topoprune, authors"):
        OneShotConfig.preset("paper")


def test_setting_reaches_the_run(tmp_path, calib):
    """--setting is recorded with its knobs; explicit knobs override it; the default is the authors'."""
    cases = {"authors": (("--setting", "authors"), ("next_input", "row", False, "authors")),
             "override": (("--setting", "authors", "--down-rows", "block_output", "--rebalance", "--group", "auto"),
                          ("block_output", "auto", True, "topoprune")),
             "default": ((), ("next_input", "row", False, "authors")),
             "ours": (("--setting", "topoprune"), ("block_output", "auto", True, "topoprune")),
             "knobs": (("--down-rows", "block_output", "--rebalance", "--group", "auto", "--gqa-rows", "block"),
                       ("block_output", "auto", True, "topoprune"))}
    for name, (args, (down, group, rebalance, setting)) in cases.items():
        out = tmp_path / name
        allocation = "neuroal" if name == "authors" else "uniform"
        r = run("tiny-llama", "--sparsity", 0.6, "--allocation", allocation, *args, "--calibration", calib, *FAST,
                "--no-analyze", "--no-eval", "-o", out)
        assert r.exit_code == 0, r.output
        rec = json.loads((out / "topoprune.json").read_text())
        c = rec["config"]
        assert (c["down_rows"], c["group"], c["rebalance"], rec["setting"]) == (down, group, rebalance, setting), name
        assert ("authors setting" in r.stdout) == (setting == "authors"), r.stdout
        if name == "knobs":
            assert c["gqa_rows"] == "block"
        if name == "authors":  # the next block's input drop is zero: down_proj rows keep the block ratio
            downs = [k for k in rec["fallbacks"] if "down_proj" in k]
            assert len(downs) == 2 and rec["lambda_row"] is not None
            assert abs(rec["sparsity"] - 0.6) < 0.05


@pytest.mark.parametrize("option", ["--setting", "--group", "--down-rows", "--gqa-rows"])
def test_bad_setting_values(tmp_path, calib, option):
    """A bad --setting or knob value: one line naming the option, exit 2, no output directory."""
    out = tmp_path / "OUT"
    _bad(tmp_path, "tiny-llama", option, "bogus", "--calibration", calib, "-o", out, message=option)
    assert not out.exists()
    _assert_clean(tmp_path)


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analysis" / "bench_oneshot.py"
    spec = importlib.util.spec_from_file_location("bench_oneshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.parent / "results" / "bench_oneshot.json"


def test_bench_keys_keep_stored_runs_and_skip_unchanged_baselines():
    """Our setting's run keys are those stored before the settings axis; the authors' setting is run only
    where it changes the run (NeuroAL; magnitude's comparison group)."""
    from types import SimpleNamespace

    bench, results = _bench()
    if results.is_file():
        for row in json.loads(results.read_text())["rows"]:
            k = row["key"]
            args = SimpleNamespace(**{a: k[a] for a in ("model", "n_calibration", "n_search", "seq_len",
                                                         "eval_tokens", "window")})
            assert bench.run_key(args, k["sparsity"], k["method"], k["allocation"], k.get("setting", "topoprune")) == k
    args = SimpleNamespace(model="m", n_calibration=1, n_search=1, seq_len=2, eval_tokens=0, window=2)
    assert "setting" not in bench.run_key(args, 0.5, "wanda", "neuroal")
    assert bench.run_key(args, 0.5, "wanda", "neuroal", "authors")["setting"] == "authors"
    eff = bench.effective_setting
    assert eff("authors", "wanda", "neuroal", 0.7) == "authors" and eff("authors", "magnitude", "uniform", 0.5) == \
        "authors" and eff("authors", "magnitude", "owl", 0.7) == "authors"
    assert eff("authors", "wanda", "uniform", 0.7) == eff("authors", "wanda", "owl", 0.7) == "topoprune"
    assert eff("authors", "wanda", "owl", 0.9) == "authors"  # OWL's band reaches the clip bound: rebalancing matters
    assert eff("authors", "dense", "dense", 0.0) == eff("topoprune", "wanda", "neuroal", 0.5) == "topoprune"
