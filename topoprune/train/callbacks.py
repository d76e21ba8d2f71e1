"""NeuroPrune inside an unmodified Hugging Face ``Trainer``: a callback and a loss hook.

Hook order (the three mask sites of :class:`~topoprune.graph.masks.MaskSet`):

======================  ===============================================================
``compute_loss``        task loss + :meth:`NeuroPrune.penalty` (:class:`NeuroPruneTrainer`)
``on_pre_optimizer_step``  gradients masked (after clipping, before ``optimizer.step``)
``on_optimizer_step``   new small weights masked, scheduled target masks applied,
                        weights and optimizer state re-masked, attachment scores refreshed
``on_step_end``         head pruning every N steps (if so configured); topology every
                        ``topology_every`` steps, logged through ``Trainer.log``
``on_epoch_end``        dominating-set head pruning (the paper's default)
``on_evaluate``         topology snapshot logged with the evaluation
``on_train_end``        last snapshot completed; the degree CCDF image to TensorBoard
``on_save``             ``masks.safetensors`` and the topology history written into the
                        checkpoint, then its completion mark (:mod:`topoprune.train.rundir`), then
                        older checkpoints rotated away
======================  ===============================================================

Users of their own ``Trainer`` subclass add the callback and the penalty themselves
(``loss = loss + callback.neuroprune.penalty()``); plain-loop users call
:class:`~topoprune.train.neuroprune.NeuroPrune` directly.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..errors import CheckpointError, TopopruneError
from .distill import distill_loss
from .neuroprune import NeuroPrune
from .rundir import mark_complete, rotate
from .topology import TopologyHistory, topology_snapshot
from .tracker import BACKGROUND_NICE, TopologyTracker

log = logging.getLogger(__name__)

#: Topology snapshots of a run (and of each checkpoint, so a resumed run keeps its history).
HISTORY_FILE = "topology_history.csv"


def _summary(snap: dict) -> str:
    """One line of a snapshot for ``-v``: sparsity, connectivity sd and heads left."""
    parts = [f"{k.replace('/', ' ')} {v:.3g}" for k, v in snap.items()
             if v is not None and k in ("mlp/sparsity", "attention/sparsity", "mlp/in_conn_sd", "heads/remaining")]
    return ", ".join(parts) or "no attention or MLP matrices"


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class TrainingDiverged(TopopruneError):
    """The loss became NaN or Inf; training stops, earlier checkpoints are kept."""


class NeuroPruneCallback(TrainerCallback):
    """Applies a :class:`NeuroPrune` controller at the Trainer's optimizer and epoch events.

    Parameters
    ----------
    neuroprune : NeuroPrune
    topology_every : int
        Steps between topology snapshots (0: only at evaluations and at the end).
    history : TopologyHistory, optional
        Where snapshots are collected (a new one by default).
    topology_fits : bool
        Fit power laws in snapshots (costs ~10 ms per matrix).
    topology_background : bool
        Fits and modularity in a background process (:class:`~topoprune.train.tracker.TopologyTracker`):
        a snapshot then costs the training loop only its degree statistics. Completed
        snapshots are merged into the history (and logged) when ready; evaluation, checkpoints
        and the end of training wait for the pending ones, so what is saved is complete.
    keep_checkpoints : int or None
        Complete checkpoints kept (older ones are removed only once a newer one is complete);
        ``None`` keeps all. :class:`NeuroPruneTrainer` takes this over from the Trainer's
        ``save_total_limit``, whose rotation would run before the masks are written.

    Attributes
    ----------
    trainer : Trainer or None
        Set by :class:`NeuroPruneTrainer`; snapshots go through ``trainer.log`` (so
        TensorBoard / CSV integrations receive them) when it is set.
    """

    def __init__(self, neuroprune: NeuroPrune, *, topology_every: int = 50, history: TopologyHistory | None = None,
                 topology_fits: bool = True, keep_checkpoints: int | None = None, topology_background: bool = True):
        self.neuroprune = neuroprune
        self.keep_checkpoints = keep_checkpoints
        self.topology_every = int(topology_every)
        self.history = history or TopologyHistory()
        self.topology_fits = topology_fits
        self.topology_background = topology_background
        self.topology_nice = BACKGROUND_NICE  # niceness of the background process
        self.topology_skip_stale = True  # a snapshot left behind by a newer one keeps its degree statistics only
        self.tracker: TopologyTracker | None = None
        self.board = None  # TopologyBoard, when the Trainer reports to TensorBoard
        self._board_checked = False
        self.trainer: Trainer | None = None
        self._epochs_done = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._epochs_done = int(state.epoch or 0)  # a resumed run has done these epochs' pruning

    # -- the three mask sites -------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.neuroprune.before_optimizer_step(optimizer)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.neuroprune.after_optimizer_step(optimizer, state.global_step + 1)  # global_step counts after this

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.neuroprune.maybe_prune_heads(state.global_step, optimizer)
        epoch = state.epoch or 0.0
        if epoch >= 1 and abs(epoch - round(epoch)) < 1e-6:
            # The epoch's last step: prune heads here rather than in on_epoch_end, so that a
            # checkpoint saved at this step (saving follows on_step_end) already holds them.
            self._end_epoch(round(epoch), optimizer)
        due = bool(self.topology_every) and state.global_step % self.topology_every == 0
        if due:
            self.snapshot(state)
        if self.tracker is not None and (due or self.tracker.world == 1):  # ranks exchange at snapshots only
            self._collect(wait=False)

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        self._end_epoch(round(state.epoch or 0), optimizer)

    def _end_epoch(self, epoch: int, optimizer) -> None:
        if epoch <= self._epochs_done:
            return
        self._epochs_done = epoch
        decisions = self.neuroprune.end_epoch(optimizer)
        if decisions:
            log.info("epoch %d: %d layer(s) lost heads", epoch, len(decisions))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        snap = self.snapshot(state, log_it=False, complete=True)
        if metrics is not None:
            metrics.update({f"eval_topology/{k}": v for k, v in snap.items() if v is not None})

    def on_train_end(self, args, state, control, **kwargs):
        self.snapshot(state, complete=True)
        if self.board is not None and self.tracker is not None:
            try:
                self.board.ccdf_image(self.tracker.degrees, state.global_step)
            except Exception as exc:  # a figure is a convenience: never fail a finished run over it
                log.warning("TensorBoard CCDF image not written: %s", exc)
            self.board.close()
            self.board = None
        if self.tracker is not None:
            self.tracker.close()
            if self.tracker.skipped:
                log.info("fits and modularity of %d snapshot(s) skipped: the background process was behind "
                         "(steps %s)", len(self.tracker.skipped), ", ".join(map(str, self.tracker.skipped)))

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        _barrier()  # every rank has written its part (RNG state) of the checkpoint
        if self.tracker is not None:
            self._collect(wait=True)  # a checkpoint holds complete snapshots
        if ckpt.is_dir() and state.is_world_process_zero:
            self.neuroprune.save(ckpt)
            self.history.save(ckpt / HISTORY_FILE)
            mark_complete(ckpt, state.global_step)  # last: only now may the checkpoint be resumed from
            if self.keep_checkpoints:
                rotate(args.output_dir, self.keep_checkpoints)
        _barrier()

    # -- topology ------------------------------------------------------------------------
    def snapshot(self, state, log_it: bool = True, complete: bool = False) -> dict:
        """Measure the topology now, add it to the history and (optionally) to the Trainer's logs.

        Only the main process records and logs. With a background tracker the power-law fits and
        the modularity arrive later (:meth:`_collect`); ``complete`` waits for them. Under
        ``torch.distributed`` every rank takes the snapshot and computes the fits and modularity
        of its share of the matrices (:class:`TopologyTracker`, ``rank`` / ``world``).
        """
        main, (rank, world) = state.is_world_process_zero, _rank_world()
        if not main and world == 1:
            return {}
        if self.tracker is None:
            self.tracker = TopologyTracker(self.neuroprune.model, eps=self.neuroprune.config.eps,
                                           fits=self.topology_fits, background=self.topology_background,
                                           nice=self.topology_nice, skip_stale=self.topology_skip_stale,
                                           rank=rank, world=world)
        recorded = main and self.history.rows and self.history.rows[-1]["step"] == state.global_step
        if not recorded and self.tracker.last_step != state.global_step:
            snap = self.tracker.snapshot(state.global_step, self.neuroprune.heads_remaining())
            if main:
                self.history.add(state.global_step, state.epoch, snap)
                board = self._board()
                if board is not None:
                    board.histograms(self.tracker.degrees, state.global_step)
                if log_it:
                    self._log({f"topology/{k}": v for k, v in snap.items() if v is not None})
                log.info("step %d: %s", state.global_step, _summary(snap))
        if complete:
            self._collect(wait=True, log_it=log_it)
        if not main:
            return {}
        return {k: v for k, v in self.history.rows[-1].items() if k not in ("step", "epoch")}

    def _board(self):
        """The TensorBoard writer of degree histograms, made at the first snapshot (or ``None``)."""
        if not self._board_checked:
            self._board_checked = True
            if self.trainer is not None:
                from .board import TopologyBoard, tensorboard_dir

                where = tensorboard_dir(self.trainer)
                if where is not None:
                    self.board = TopologyBoard(where)
        return self.board

    def _collect(self, wait: bool, log_it: bool = True) -> None:
        """Merge the completed background snapshots into the history; log what they add, at the
        step of the snapshot they complete."""
        self.tracker.exchange(wait)  # every rank, at the same points; nothing with one process
        if self.tracker.rank != 0:
            return
        done = self.tracker.finish() if wait else self.tracker.poll()
        for step, snap in done:
            added = self.history.update(step, snap)
            if log_it and added:
                self._log({f"topology/{k}": v for k, v in added.items() if v is not None}, step=step)

    def _log(self, logs: dict, step: int | None = None) -> None:
        """``trainer.log`` (at ``step`` rather than the current step, if given) without taking the
        Trainer's own log of this step away: ``Trainer.log`` clears ``control.should_log``, and
        under DDP only the main process logs topology, so the ranks would disagree about the
        collective the Trainer's logging runs."""
        if self.trainer is None:
            return
        state = self.trainer.state
        keep, now = self.trainer.control.should_log, state.global_step
        if step is not None:
            state.global_step = step  # integrations (TensorBoard) and log_history take the step from here
        try:
            self.trainer.log(logs)
        finally:
            state.global_step = now
            self.trainer.control.should_log = keep


class NeuroPruneTrainer(Trainer):
    r"""A ``Trainer`` whose loss includes the NeuroPrune penalty and whose events drive the masks.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`transformers.Trainer`.
    neuroprune : NeuroPrune
        The controller, bound to the same model.
    topology_every : int
        Steps between topology snapshots.
    topology_fits, topology_background : bool
        As for :class:`NeuroPruneCallback`.
    teacher, distill, task : torch.nn.Module, Distillation, str, optional
        Distil from ``teacher`` with the weight and temperature of ``distill``
        (:mod:`~topoprune.train.distill`) on a ``task`` model; the loss is then
        :math:`(1 - \lambda) \mathcal{L}_\text{task} + \lambda T^2 \mathrm{KL}` before the penalty.

    Notes
    -----
    Resuming (``trainer.train(resume_from_checkpoint=...)``) restores the masks and head
    decisions saved in the checkpoint directory. A NaN/Inf loss raises
    :class:`TrainingDiverged`; checkpoints saved before it are left untouched.
    """

    def __init__(self, *args, neuroprune: NeuroPrune, topology_every: int = 50, topology_fits: bool = True,
                 topology_background: bool = True, teacher=None, distill=None, task: str = "classification",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.neuroprune = neuroprune
        self.teacher, self.distill, self.task = teacher, distill, task
        keep, self.args.save_total_limit = self.args.save_total_limit, None  # rotated after the masks, not before
        self.np_callback = NeuroPruneCallback(neuroprune, topology_every=topology_every, topology_fits=topology_fits,
                                              keep_checkpoints=keep, topology_background=topology_background)
        self.np_callback.trainer = self
        self.add_callback(self.np_callback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.teacher is not None:
            loss = self._distilled(loss, outputs, inputs)
        if model.training:
            loss = loss + self.neuroprune.penalty().to(loss.device, loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _distilled(self, loss, outputs, inputs):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        if next(self.teacher.parameters()).device != logits.device:
            self.teacher.to(logits.device)
        with torch.no_grad():
            taught = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}
                                  | ({"labels": inputs["labels"]} if self.task == "seq2seq" else {})).logits
        soft = distill_loss(logits, taught, inputs.get("labels"), self.task, self.distill.temperature)
        w = self.distill.weight
        return (1.0 - w) * loss + w * soft.to(loss.dtype)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not math.isfinite(float(loss)):
            last = self._last_checkpoint()
            raise TrainingDiverged(f"loss became {float(loss)} at step {self.state.global_step + 1}; "
                                   + (f"last good checkpoint: {last}" if last else "no checkpoint saved yet"))
        return loss

    def _last_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(self.args.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ckpt = Path(resume_from_checkpoint)
        if not (ckpt / "masks.safetensors").is_file():
            raise CheckpointError(f"{ckpt}: has no masks.safetensors; resuming would start from fresh masks")
        self.neuroprune.load(ckpt)
        if (ckpt / HISTORY_FILE).is_file():
            self.np_callback.history.load(ckpt / HISTORY_FILE)
        log.info("resumed masks, head decisions and topology history from %s", ckpt)

    @torch.no_grad()
    def topology(self) -> dict:
        """A topology snapshot of the model now (not recorded)."""
        return topology_snapshot(self.model, eps=self.neuroprune.config.eps)
