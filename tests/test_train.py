"""`topoprune train` end to end on tiny models: outputs, baselines, bad input, resume, 2-process DDP."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from topoprune.cli import main

TINY = ["--n-train", "128", "--n-eval", "32", "--batch-size", "16", "--lr", "1e-3", "--topology-every", "4",
        "--save-steps", "4"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def test_train_classification_target_mode(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--model", "tiny-bert", "--data", "tweets", "--max-steps", "8", "--target", "0.5", *TINY,
            "--out", out)
    assert r.exit_code == 0, r.output
    assert "classification: 8 steps" in r.output and "eval_accuracy" in r.output
    for name in ("model/config.json", "model/model.safetensors", "masks.safetensors", "topoprune.json",
                 "topology_history.csv", "figures/topology.png", "figures/topology.svg"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "topoprune.json").read_text())
    mlp = [r for r in rec["sparsity"] if r["level"] == "role" and r["role"].startswith("mlp")]
    assert mlp and all(abs(r["sparsity"] - 0.5) < 0.01 for r in mlp)
    assert rec["config"]["neuroprune"]["target"] == 0.5 and rec["steps"] == 8
    assert rec["topoprune_version"] and "accuracy" in " ".join(rec["metrics"])
    # the saved model reloads with plain transformers, with the masked zeros in place
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01
    r = run("plot", out)
    assert r.exit_code == 0 and "files written" in r.output


@pytest.mark.parametrize("model, data, method", [("tiny-gpt2", "ptb", "l1"), ("tiny-t5", "ptb-span", "gmp")])
def test_train_lm_and_seq2seq_baselines(tmp_path, model, data, method):
    extra = ["--target", "0.3"] if method == "gmp" else []
    r = run("train", "--model", model, "--data", data, "--method", method, "--max-steps", "4", "--max-length", "32",
            *TINY, *extra, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "run" / "topoprune.json").read_text())
    assert rec["metrics"]["eval_perplexity"] > 1 and rec["config"]["neuroprune"]["method"] == method


@pytest.mark.parametrize("args, message", [
    (["--eps", "0"], "eps"), (["--theta", "-1"], "theta"), (["--target", "1.0"], "target"),
    (["--alpha", "-1"], "weight"), (["--data", "nope.csv"], "nope.csv"),
])
def test_bad_hyperparameters_exit_2_before_training(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "topoprune.cli", "train", "--model", "tiny-bert", "--max-steps", "2",
                        *TINY, *args, "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not (tmp_path / "run" / "topoprune.json").exists()


def test_dataset_missing_column(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("sentence,label\nhello,1\nbye,0\n")
    r = run("train", "--model", "tiny-bert", "--data", bad, "--max-steps", "2", *TINY, "--out", tmp_path / "run")
    assert r.exit_code == 2 and "text" in r.output


def test_resume_continues_to_the_same_final_sparsity(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "tiny-bert", "--max-steps", "8", "--target", "0.6", "--head-pruning", "off", *TINY]
    r = run(*args, "--out", out)
    assert r.exit_code == 0, r.output
    first = json.loads((out / "topoprune.json").read_text())
    (out / "topoprune.json").unlink()
    import shutil

    shutil.rmtree(out / "checkpoints" / "checkpoint-8")  # "killed" after step 4's checkpoint
    r = run(*args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    again = json.loads((out / "topoprune.json").read_text())
    pick = lambda rec: [(r["name"], r["sparsity"]) for r in rec["sparsity"] if r.get("role", "").startswith("mlp")]  # noqa: E731
    assert pick(again) == pick(first) and again["steps"] == 8


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_process_ddp_identical_masks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", _free_port(),
           "-m", "topoprune.cli", "train", "--model", "tiny-bert", "--max-steps", "6", "--target", "0.5",
           "--theta", "0.5", "--head-pruning", "steps", "--head-every", "3", *TINY, "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "ddp" / "topoprune.json").read_text())
    assert rec["world_size"] == 2 and rec["ranks_agree"] is True  # mask digests all-gathered across ranks
    assert rec["head_decisions"], "theta 0.5 on a random-init model must remove heads"
    # the snapshots' fits and modularity were spread over both ranks, and the final one is what a
    # single process computes on the saved model
    assert set(rec["topology_matrices_by_rank"]) == {"0", "1"} and min(rec["topology_matrices_by_rank"].values()) > 0
    import pandas as pd
    from transformers import AutoModelForSequenceClassification

    from topoprune.train.topology import topology_snapshot

    history = pd.read_csv(tmp_path / "ddp" / "topology_history.csv")
    assert list(history["step"]) == [4, 6] and history["mlp/modularity"].notna().all()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ddp" / "model")
    snap = topology_snapshot(model, eps=rec["config"]["neuroprune"]["eps"], heads_remaining=rec["heads_remaining"])
    assert snap["mlp/modularity"] is not None and snap["mlp/in_conn_sd"] is not None
    for key in ("mlp/modularity", "mlp/in_alpha", "mlp/in_conn_sd", "attention/in_alpha", "attention/in_conn_sd"):
        want = float("nan") if snap.get(key) is None else snap[key]
        assert history[key].iloc[-1] == pytest.approx(want, rel=1e-9, nan_ok=True), key


def test_accelerate_launch_two_processes(tmp_path):
    """`accelerate launch --multi_gpu` (its torch.distributed launcher; gloo on CPU) runs the same DDP path."""
    import shutil

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate is a dependency: its launcher must be installed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", _free_port(),
           "-m", "topoprune.cli", "train", "--model", "tiny-bert", "--max-steps", "4", "--target", "0.5",
           "--head-pruning", "off", *TINY, "--out", str(tmp_path / "acc")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "acc" / "topoprune.json").read_text())
    assert rec["world_size"] == 2 and rec["ranks_agree"] is True


@pytest.mark.slow
def test_train_smollm2_on_ptb(tmp_path):
    """Real SmolLM2-135M: two paper-mode NeuroPrune steps on PTB blocks (slow: loads and saves 0.5 GB)."""
    r = run("train", "--model", "smollm2", "--data", "ptb", "--max-steps", "2", "--max-length", "32", "--n-train", "8",
            "--n-eval", "4", "--batch-size", "2", "--lr", "1e-5", "--topology-every", "0", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "run" / "topoprune.json").read_text())
    # a pipeline check: 32-token blocks leave little context (dense SmolLM2 scores 293 at 128-token blocks)
    assert 1 < rec["metrics"]["eval_perplexity"] < 5000 and rec["task"] == "causal_lm"
    assert rec["sparsity"] and (tmp_path / "run" / "model" / "config.json").is_file()


def test_target_mode_recuts_every_ten_steps_by_default():
    """Without --frequency the schedule re-cuts every min(10, schedule length) steps; an explicit value wins."""
    from topoprune.train.run import TrainConfig

    assert TrainConfig(neuroprune={"target": 0.5}).neuroprune_config(100).frequency == 10
    assert TrainConfig(neuroprune={"target": 0.5}).neuroprune_config(8).frequency == 6  # end = 0.75 * 8
    assert TrainConfig(neuroprune={"target": 0.5, "frequency": 3}).neuroprune_config(100).frequency == 3
    assert TrainConfig(neuroprune={"target": 0.5, "frequency": None}).neuroprune_config(100).frequency == 10


def test_leave_process_group_shuts_the_group_down(tmp_path):
    """The CLI's exit path: a barrier, then the group is destroyed (a live gloo group can abort at exit)."""
    import torch.distributed as dist

    from topoprune.train.run import leave_process_group

    leave_process_group()  # no group: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    leave_process_group(wait=True)
    assert not dist.is_initialized()
    leave_process_group(wait=False)  # twice (atexit after the CLI): still a no-op


def test_python_train_takes_extra_callbacks_and_topology_sync(tmp_path):
    from transformers import TrainerCallback

    from topoprune.train.run import TrainConfig, train

    seen = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((state.global_step, model is not None))

    cfg = TrainConfig(model="tiny-bert", out=str(tmp_path / "run"), max_steps=4, n_train=64, n_eval=16, batch_size=16,
                      lr=1e-3, topology_every=2, topology_background=False, neuroprune={"target": 0.5})
    rec = train(cfg, progress=False, callbacks=[Steps()])
    assert seen == [(1, True), (2, True), (3, True), (4, True)]
    assert rec["config"]["topology_background"] is False
    import pandas as pd

    history = pd.read_csv(tmp_path / "run" / "topology_history.csv")
    assert list(history["step"]) == [2, 4] and history["mlp/modularity"].notna().all()  # computed in the loop


@pytest.mark.parametrize("data", ["tweets", "tweets3"])
def test_sample_sizes_and_seed_reach_every_builtin_tweet_task(tmp_path, data):
    from topoprune.train.run import TrainConfig, train

    cfg = TrainConfig(model="tiny-bert", data=data, out=str(tmp_path / "run"), max_steps=1, n_train=24, n_eval=12,
                      batch_size=8, topology_every=0, seed=3)
    rec = train(cfg, progress=False)
    assert re.search(r": 24 \(.*\) train / 12 \(", rec["data"]) and "seed=3" in rec["data"]
