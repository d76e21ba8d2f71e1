"""Progress on stderr: a training bar with loss, sparsity and heads on a terminal; nothing in a pipe or
under --quiet."""
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest
import torch

ARGS = ["train", "--model", "tiny-bert", "--max-steps", "4", "--target", "0.5", "--n-train", "64", "--n-eval", "16",
        "--batch-size", "16", "--lr", "1e-3", "--topology-every", "2", "--save-steps", "100"]


def _run_on_terminal(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal; return its exit code and what it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "quiet"])
def test_training_bar_on_a_terminal(tmp_path, quiet):
    cmd = [sys.executable, "-m", "topoprune.cli", *(["--quiet"] if quiet else []), *ARGS, "--out", str(tmp_path / "r")]
    code, err = _run_on_terminal(cmd)
    assert code == 0, err
    if quiet:
        assert "step/s" not in err and "s/step" not in err and "sparsity=" not in err
    else:
        assert "train" in err and "4/4" in err
        assert "loss=" in err and "sparsity=" in err and "heads=" in err  # the postfix


def test_no_bar_in_a_pipe(tmp_path):
    r = subprocess.run([sys.executable, "-m", "topoprune.cli", *ARGS, "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and "4 steps" in r.stdout  # no bar, no per-log dicts: just the summary


def test_postfix_counts_masks_and_heads():
    from topoprune.models import build_model, load_tokenizer
    from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig
    from topoprune.train.progress import TrainProgress

    torch.manual_seed(0)
    model = build_model("tiny-bert", "classification", load_tokenizer(), 2)
    npr = NeuroPrune(model, NeuroPruneConfig(target=0.5, end=2))
    bar = TrainProgress(npr, file=io.StringIO())
    masks = list(npr.masks.masks.values())
    total = sum(m.numel() for m in masks)
    assert bar.postfix() == {"sparsity": f"{1 - sum(int(m.sum()) for m in masks) / total:.1%}", "heads": "8/8"}
    for m in masks:
        m[: m.shape[0] // 2] = False
    bar._measured = -float("inf")  # recompute now
    assert bar.postfix()["sparsity"] == f"{1 - sum(int(m.sum()) for m in masks) / total:.1%}"
    assert float(bar.postfix()["sparsity"][:-1]) >= 50
    bar.loss = 0.25
    assert bar.postfix()["loss"] == "0.25"
