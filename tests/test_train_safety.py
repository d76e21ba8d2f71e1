"""Training runs are never lost or silently replaced, resume only from complete checkpoints,
and the same command with the same seed gives the same model.

The kill tests SIGKILL a real ``topoprune train`` process (``tests/killrun.py``) at several points,
mid-checkpoint included, resume it, and compare with an uninterrupted run bit for bit.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from topoprune.cli import main

HERE = Path(__file__).parent
TINY = ["--n-train", "128", "--n-eval", "32", "--batch-size", "16", "--lr", "1e-3", "--topology-every", "2"]
# head pruning every 3 steps with a loose threshold: the runs below do remove heads
RUN = ["train", "--model", "tiny-bert", "--max-steps", "8", "--save-steps", "2", "--target", "0.5",
       "--head-pruning", "steps", "--head-every", "3", "--theta", "0.9", *TINY]
TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def outcome(out: Path) -> dict:
    """What must not depend on interruptions or repetitions: masks, metrics, sparsity, heads, history."""
    rec = json.loads((out / "topoprune.json").read_text())
    masks = load_file(str(out / "masks.safetensors"))
    return {"masks": {k: v.tolist() for k, v in sorted(masks.items())},
            "metrics": {k: v for k, v in rec["metrics"].items() if k not in TIMING},
            "sparsity": rec["sparsity"], "heads": rec["heads_remaining"], "steps": rec["steps"],
            "history": (out / "topology_history.csv").read_text()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run(*RUN, "--out", out)
    assert r.exit_code == 0, r.output
    return outcome(out)


@pytest.mark.parametrize("where", ["step:5", "trainer-save:6", "masks:6", "rotate:6"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, reference, where):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(HERE / "killrun.py"), where, *RUN, "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not out.exists()  # the run appears only when finished
    staging = tmp_path / ".run.partial"
    ckpts = sorted(p.name for p in (staging / "checkpoints").iterdir())
    if where.startswith(("trainer-save", "masks")):
        assert "checkpoint-6" in ckpts and not (staging / "checkpoints/checkpoint-6/topoprune-checkpoint.json").exists()
    # without --resume the interrupted run is not discarded
    r = run(*RUN, "--out", out)
    assert r.exit_code == 2 and "interrupted run" in r.output and "--resume" in r.output
    r = CliRunner().invoke(main, list(map(str, [*RUN, "--out", out, "--resume"])))
    assert r.exit_code == 0, r.output
    expected = {"step:5": "checkpoint-4", "trainer-save:6": "checkpoint-4", "masks:6": "checkpoint-4",
                "rotate:6": "checkpoint-6"}[where]
    assert f"resuming from {expected}" in r.stderr
    if where.startswith(("trainer-save", "masks")):
        assert "skipping checkpoint-6" in r.stderr
    assert outcome(out) == reference
    assert not staging.exists() and json.loads((out / "topoprune.json").read_text())["resumed_from"] == expected


def test_same_seed_same_run_for_a_model_directory(tmp_path):
    """A model directory without a classification head: the new head is seeded too."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from topoprune.assets import default_checkpoint

    torch.manual_seed(123)
    tok = AutoTokenizer.from_pretrained(str(default_checkpoint()))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)
    model_dir = tmp_path / "bert"
    BertModel(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    args = ["train", "--model", model_dir, "--max-steps", "4", "--save-steps", "100", "--target", "0.5", *TINY]
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        r = run(*args, "--seed", seed, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        results.append(outcome(tmp_path / name))
    assert results[0] == results[1]
    assert results[0]["masks"] != results[2]["masks"]  # the seed matters: the check above could fail


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    short = ["train", "--model", "tiny-bert", "--max-steps", "2", "--save-steps", "2", *TINY]
    old_mask = os.umask(0o027)
    try:
        assert run(*short, "--out", out).exit_code == 0
    finally:
        os.umask(old_mask)
    # the run honours the umask, also for files safetensors writes owner-only
    assert (out / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o640
    assert (out / "masks.safetensors").stat().st_mode & 0o777 == 0o640 and out.stat().st_mode & 0o777 == 0o750
    before = (out / "topoprune.json").read_text()
    r = run(*short, "--out", out)
    assert r.exit_code == 2 and "--resume" in r.output and "--overwrite" in r.output
    assert (out / "topoprune.json").read_text() == before
    # --resume with other settings than the run's is refused, naming what changed
    r = run(*short, "--lr", "0.01", "--out", out, "--resume")
    assert r.exit_code == 2 and "lr" in r.output and "0.01" in r.output
    r = run(*short[:3], "--max-steps", "4", *short[5:], "--out", out, "--resume")  # a larger step budget is fine
    assert r.exit_code == 0, r.output
    assert json.loads((out / "topoprune.json").read_text())["steps"] == 4
    r = run(*short, "--out", out, "--overwrite")
    assert r.exit_code == 0 and json.loads((out / "topoprune.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or old directories left
    r = run(*short, "--out", out, "--resume", "--overwrite")
    assert r.exit_code == 2 and "exclude" in r.output


def test_foreign_directory_is_never_touched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for flag in ([], ["--overwrite"]):
        r = run("train", "--model", "tiny-bert", "--max-steps", "2", *TINY, "--out", mine, *flag)
        assert r.exit_code == 2 and "not written by topoprune" in r.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_resume_without_a_complete_checkpoint(tmp_path):
    r = run("train", "--model", "tiny-bert", "--max-steps", "2", *TINY, "--out", tmp_path / "none", "--resume")
    assert r.exit_code == 2 and "no complete checkpoint" in r.output
    broken = tmp_path / ".run.partial" / "checkpoints" / "checkpoint-2"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    r = run("train", "--model", "tiny-bert", "--max-steps", "2", *TINY, "--out", tmp_path / "run", "--resume")
    assert r.exit_code == 2 and "no complete checkpoint" in r.output and "incomplete" in r.output


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"), ("no-tokenizer", "no tokenizer"), ("pickle", "refused"),
    ("report-to", "unknown integration"), ("report-not-installed", "not installed"),
])
def test_bad_model_and_integration_exit_2_one_line(tmp_path, case, message):
    extra = []
    model = tmp_path / "model"
    if case == "missing":
        model = tmp_path / "nope"
    else:
        from transformers import BertConfig, BertForSequenceClassification

        from topoprune.assets import default_checkpoint

        BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=64)).save_pretrained(model)
        if case != "no-tokenizer":
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(default_checkpoint())).save_pretrained(model)
        if case == "pickle":  # weights as a pickle whose loading would run code
            (model / "model.safetensors").unlink()

            class Evil:
                def __reduce__(self):
                    return (os.system, ("echo pwned",))

            torch.save({"bert.embeddings.word_embeddings.weight": Evil()}, model / "pytorch_model.bin")
    if case == "report-to":
        extra = ["--report-to", "nosuchlogger"]
    if case == "report-not-installed":
        from transformers.integrations.integration_utils import get_available_reporting_integrations

        missing = [n for n in ("wandb", "mlflow", "comet_ml", "clearml") if n not in
                   get_available_reporting_integrations()]
        if not missing:
            pytest.skip("every tried integration is installed here")
        extra = ["--report-to", missing[0]]
    r = subprocess.run([sys.executable, "-m", "topoprune.cli", "train", "--model", str(model), "--max-steps", "1",
                        *TINY, *extra, "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "weights_only" not in r.stderr and "pwned" not in r.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_refused_pickle_in_a_checkpoint_being_resumed(tmp_path):
    """A checkpoint whose optimizer state is a pickle that would run code: one line, nothing run."""
    from topoprune.train.rundir import mark_complete

    out = tmp_path / "run"
    # no topology snapshot before the checkpoint: its history file is empty, and is restored as such
    short = ["train", "--model", "tiny-bert", "--max-steps", "2", "--save-steps", "2", *TINY, "--topology-every", "50"]
    assert run(*short, "--out", out).exit_code == 0
    ckpt = out / "checkpoints" / "checkpoint-2"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state": Evil()}, ckpt / "optimizer.pt")
    mark_complete(ckpt, 2)  # complete as far as files go: the content is what is refused
    r = subprocess.run([sys.executable, "-m", "topoprune.cli", *short[:3], "--max-steps", "4", *short[5:],
                        "--out", str(out), "--resume"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith(("resuming", "training stopped"))]
    assert len(err) == 1 and err[0].startswith("error: ") and "refused" in err[0] and "weights_only" not in r.stderr
    assert not (tmp_path / "pwned").exists()
    assert json.loads((out / "topoprune.json").read_text())["steps"] == 2  # the finished run is untouched


def test_bad_out_refused_before_training(tmp_path, monkeypatch):
    """An empty --out, one inside the model directory, a file, a name too long: exit 2, nothing trained."""
    import topoprune.train.data

    def no_work(*a, **k):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(topoprune.train.data, "load_task", no_work)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out, message in (("", "required"), (str(model / "run"), "inside the input"), ("afile", "not a directory"),
                         ("x" * 300, "too long")):
        model_arg = str(model) if "inside" in message else "tiny-bert"
        r = run("train", "--model", model_arg, "--max-steps", "1", *TINY, "--out", out)
        assert r.exit_code == 2 and message in r.output, (out[:20], r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "model"]
