r"""Knowledge distillation from a dense teacher while the student is pruned.

Structured pruning removes whole neurons and heads; what the student loses is largely recovered
when it learns the teacher's output distribution rather than the hard labels alone (Hinton,
Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531; used for
pruning by Sanh, Wolf & Rush 2020, "Movement Pruning", arXiv 2005.07683, with
:math:`\lambda = 0.9`, :math:`T = 2`, and by Xia, Zhong & Chen 2022, "Structured Pruning Learns
Compact and Accurate Models", arXiv 2204.00408). The training loss becomes

.. math::

    \mathcal{L} = (1 - \lambda)\,\mathcal{L}_\text{task}
        + \lambda\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t / T)\,\|\,\mathrm{softmax}(z_s / T)\big)

averaged over examples (classification) or over the predicted tokens (language models:
positions whose label is not ``-100``), where :math:`z_s, z_t` are student and teacher logits.
The :math:`T^2` factor keeps the soft term's gradient on the scale of the hard term's
(Hinton et al., section 2). NeuroPrune's penalties are added on top, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..io import short

#: Positions with this label are not predicted (the transformers convention).
IGNORE = -100


@dataclass(frozen=True)
class Distillation:
    r"""Distil from ``teacher`` while training.

    Parameters
    ----------
    teacher : str
        A finished ``topoprune train`` run directory (its ``model/``) or a model directory with
        the same tokenizer and, for classification, the same labels.
    weight : float
        :math:`\lambda \in [0, 1]`, the share of the soft (teacher) term; default 0.9 as in
        Movement Pruning.
    temperature : float
        :math:`T > 0`; default 2 as in Movement Pruning.
    """

    teacher: str
    weight: float = 0.9
    temperature: float = 2.0

    def __post_init__(self):
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError("teacher must be a run or model directory")
        for name, ok in (("weight", lambda x: 0.0 <= x <= 1.0), ("temperature", lambda x: x > 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ConfigError(f"distillation {name} must be {'in [0, 1]' if name == 'weight' else '> 0'}, "
                                  f"got {value!r}")

    def teacher_dir(self) -> Path:
        """The teacher's model directory: ``TEACHER/model`` of a run, else ``TEACHER`` itself."""
        path = Path(self.teacher).expanduser()
        if (path / "topoprune.json").is_file() and (path / "model" / "config.json").is_file():
            return path / "model"
        if not path.is_dir():
            raise ConfigError(f"{self.teacher}: teacher is not a directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{self.teacher}: teacher is neither a topoprune run nor a model directory "
                              "(no config.json)")
        return path


#: Endings of the architecture names a teacher for each task must have (``config.json``).
HEADS = {"classification": ("ForSequenceClassification",), "causal_lm": ("ForCausalLM", "LMHeadModel"),
         "seq2seq": ("ForConditionalGeneration",)}


def load_teacher(config: Distillation, task: str, student: torch.nn.Module) -> torch.nn.Module:
    """The teacher of ``config`` for ``task``, frozen in eval mode.

    Raises
    ------
    ConfigError
        Not a run or model directory; a model without a trained head for ``task`` (a new head
        would be initialised at random and teach noise); other labels or another vocabulary.
    """
    from transformers import AutoConfig

    from ..models import build_model

    path = config.teacher_dir()
    try:
        tcfg = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{config.teacher}: teacher config cannot be read ({short(exc, 160)})") from None
    archs = [a for a in (getattr(tcfg, "architectures", None) or []) if isinstance(a, str)]
    if not any(a.endswith(HEADS[task]) for a in archs):
        raise ConfigError(f"{config.teacher}: teacher is a {archs[0] if archs else 'model without a head'}, "
                          f"not a trained {task} model")
    labels = student.config.num_labels if task == "classification" else 0
    if task == "classification" and tcfg.num_labels != labels:
        raise ConfigError(f"{config.teacher}: teacher has {tcfg.num_labels} labels, the task {labels}")
    teacher = build_model(str(path), task, None, labels)
    vocab_t, vocab_s = (m.get_input_embeddings().num_embeddings for m in (teacher, student))
    if vocab_t != vocab_s:
        raise ConfigError(f"{config.teacher}: teacher has a vocabulary of {vocab_t} tokens, the student "
                          f"{vocab_s} (another tokenizer)")
    teacher.eval().requires_grad_(False)
    return teacher


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None, task: str,
                 temperature: float) -> torch.Tensor:
    r""":math:`T^2\,\mathrm{KL}(p_t \| p_s)` at temperature :math:`T`, averaged over predictions.

    Parameters
    ----------
    student, teacher : torch.Tensor
        Logits, ``[batch, classes]`` (classification) or ``[batch, seq, vocab]``.
    labels : torch.Tensor or None
        ``[batch, seq]`` token labels of a language-model task; positions labelled ``-100`` are
        not predicted. A causal LM's logits at position ``t`` predict label ``t + 1``.
    task : {"classification", "causal_lm", "seq2seq"}
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    s, t = student.float() / temperature, teacher.float() / temperature
    if task != "classification" and labels is not None:
        if task == "causal_lm":
            s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
        keep = labels != IGNORE  # [batch, seq]
        s, t = s[keep], t[keep]  # [predictions, vocab]
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    if s.shape[0] == 0:
        return student.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl * temperature ** 2
