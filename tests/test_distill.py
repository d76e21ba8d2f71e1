"""Distillation from a dense teacher: the loss's closed form, teacher checks, `train --teacher` end to end."""
import json
import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from topoprune.cli import main
from topoprune.errors import ConfigError
from topoprune.train.distill import Distillation, distill_loss

TINY = ["--n-train", "64", "--n-eval", "16", "--batch-size", "16", "--lr", "1e-3", "--topology-every", "0",
        "--save-steps", "100"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def test_loss_is_t_squared_kl_of_the_softened_distributions():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    T = 2.0
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    expected = T * T * float((pt * (pt.log() - ps.log())).sum(-1).mean())
    assert math.isclose(float(distill_loss(s, t, None, "classification", T)), expected, rel_tol=1e-5)
    assert float(distill_loss(s, s, None, "classification", T)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, t, None, "classification", T)) > 0


def test_language_model_loss_counts_only_predicted_tokens_shifted_for_causal_lms():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    labels = torch.tensor([[5, 1, -100, 2], [3, -100, -100, -100]])
    # causal: logits at t predict label t+1 -> positions (0,0), (0,2) and nothing in row 1
    picked_s, picked_t = s[[0, 0], [0, 2]], t[[0, 0], [0, 2]]
    want = distill_loss(picked_s, picked_t, None, "classification", 1.0)
    assert torch.allclose(distill_loss(s, t, labels, "causal_lm", 1.0), want)
    # seq2seq: logits and labels are aligned -> (0,0), (0,1), (0,3), (1,0)
    picked_s, picked_t = s[[0, 0, 0, 1], [0, 1, 3, 0]], t[[0, 0, 0, 1], [0, 1, 3, 0]]
    assert torch.allclose(distill_loss(s, t, labels, "seq2seq", 1.0),
                          distill_loss(picked_s, picked_t, None, "classification", 1.0))
    assert float(distill_loss(s, t, torch.full((2, 4), -100), "seq2seq", 1.0)) == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"teacher": "x", "weight": 1.5}, "weight"), ({"teacher": "x", "weight": float("nan")}, "weight"),
    ({"teacher": "x", "temperature": 0}, "temperature"), ({"teacher": ""}, "teacher"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Distillation(**kwargs)


def test_a_teacher_without_a_trained_head_is_refused(minilm_path):
    from topoprune.models import load_model
    from topoprune.train.distill import load_teacher

    student, _ = load_model("minilm", "classification", num_labels=2)
    with pytest.raises(ConfigError, match="not a trained classification model"):
        load_teacher(Distillation(str(minilm_path)), "classification", student)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "dense"
    r = run("train", "--model", "tiny-bert", "--method", "dense", "--max-steps", "6", *TINY, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_train_with_a_teacher_distils_and_records_it(tmp_path, teacher_run):
    out = tmp_path / "student"
    r = run("train", "--model", "tiny-bert", "--neurons", "0.5", "--max-steps", "6", *TINY, "--teacher", teacher_run,
            "--distill-weight", "1.0", "--out", out)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "topoprune.json").read_text())
    assert rec["config"]["distill"] == {"teacher": str(teacher_run), "weight": 1.0, "temperature": 2.0}
    # the same run without the teacher has another loss (hard labels instead of the teacher's outputs)
    r = run("train", "--model", "tiny-bert", "--neurons", "0.5", "--max-steps", "6", *TINY, "--out", tmp_path / "hard")
    plain = json.loads((tmp_path / "hard" / "topoprune.json").read_text())
    assert r.exit_code == 0 and not math.isclose(rec["train_loss"], plain["train_loss"], rel_tol=1e-3)


def test_a_student_identical_to_its_teacher_has_zero_soft_loss(teacher_run):
    from topoprune.models import load_tokenizer
    from topoprune.train.data import load_task
    from topoprune.train.distill import load_teacher

    cfg = Distillation(str(teacher_run))
    teacher = load_teacher(cfg, "classification", load_teacher(cfg, "classification", _Student(2)))
    student = load_teacher(cfg, "classification", teacher)
    data = load_task("tweets", load_tokenizer("tiny-bert"), max_length=32, n_train=16, n_eval=16, seed=0)
    batch = data.collator([data.train[i] for i in range(8)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = distill_loss(student(**inputs).logits, teacher(**inputs).logits, None, "classification", 2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


class _Student(torch.nn.Module):
    """Just enough of a student for the teacher checks."""

    def __init__(self, labels):
        super().__init__()
        self.config = type("C", (), {"num_labels": labels})()
        self.emb = torch.nn.Embedding(30522, 4)

    def get_input_embeddings(self):
        return self.emb


def test_teacher_with_other_labels_or_vocabulary_is_refused(teacher_run):
    from topoprune.train.distill import load_teacher

    with pytest.raises(ConfigError, match="2 labels, the task 3"):
        load_teacher(Distillation(str(teacher_run)), "classification", _Student(3))
    s = _Student(2)
    s.emb = torch.nn.Embedding(50, 4)
    with pytest.raises(ConfigError, match="vocabulary"):
        load_teacher(Distillation(str(teacher_run)), "classification", s)


@pytest.mark.parametrize("teacher, message", [("nope", "nope: teacher is not a directory"),
                                              (".", "neither a topoprune run nor a model directory")])
def test_bad_teacher_exit_2_with_one_line_and_no_run(tmp_path, teacher, message):
    r = subprocess.run([sys.executable, "-m", "topoprune.cli", "train", "--model", "tiny-bert", "--max-steps", "2",
                        *TINY, "--teacher", teacher, "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.glob("*run*"))
