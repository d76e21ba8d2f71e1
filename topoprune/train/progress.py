"""A training progress bar on stderr: steps, loss, sparsity of the masks and heads left.

The Trainer's own bar shows steps only, and its printer writes one dict per log line on stdout.
:class:`TrainProgress` replaces both when progress is wanted (the CLI asks for it when stderr is a
terminal and ``--quiet`` is not given): one ``tqdm`` bar over the optimizer steps whose postfix
carries the last logged loss, the share of masked weights and the heads left, and a second,
transient bar while the model is evaluated. Only the main process draws.
"""
from __future__ import annotations

import time

from transformers import TrainerCallback

#: Seconds between two recomputations of the masks' sparsity (a sum over every mask).
SPARSITY_EVERY_S = 1.0


class TrainProgress(TrainerCallback):
    """``tqdm`` bars for training and evaluation, on stderr.

    Parameters
    ----------
    neuroprune : NeuroPrune, optional
        Source of the sparsity and the heads left (``None``: loss only).
    file : file-like, optional
        Where the bars go (``sys.stderr`` by default).
    """

    def __init__(self, neuroprune=None, file=None):
        self.neuroprune = neuroprune
        self.file = file
        self.bar = None
        self.eval_bar = None
        self.loss: float | None = None
        self._sparsity: float | None = None
        self._measured = -float("inf")

    def _tqdm(self, **kwargs):
        import sys

        from tqdm.auto import tqdm

        return tqdm(file=self.file or sys.stderr, dynamic_ncols=True, **kwargs)

    def sparsity(self) -> float | None:
        """Share of masked entries over every mask of the run (recomputed at most once a second)."""
        if self.neuroprune is None or not len(self.neuroprune.masks):
            return None
        now = time.monotonic()
        if now - self._measured >= SPARSITY_EVERY_S:
            masks = self.neuroprune.masks.masks.values()
            kept = sum(int(m.sum()) for m in masks)
            total = sum(m.numel() for m in masks)
            self._sparsity, self._measured = 1 - kept / max(1, total), now
        return self._sparsity

    def postfix(self) -> dict:
        """The bar's postfix: ``loss``, ``sparsity`` and ``heads`` (left / all) when known."""
        out = {}
        if self.loss is not None:
            out["loss"] = f"{self.loss:.4g}"
        s = self.sparsity()
        if s is not None:
            out["sparsity"] = f"{s:.1%}"
        if self.neuroprune is not None:
            left = self.neuroprune.heads_remaining()
            if left:
                out["heads"] = f"{sum(left.values())}/{self.neuroprune.heads_total()}"
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = self._tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.set_postfix(self.postfix(), refresh=False)
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero or eval_dataloader is None:
            return
        if self.eval_bar is None:
            try:
                total = len(eval_dataloader)
            except TypeError:
                total = None
            self.eval_bar = self._tqdm(total=total, desc="evaluate", unit="batch", leave=False,
                                       position=1 if self.bar is not None else 0)
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_eval()

    def on_predict(self, args, state, control, **kwargs):
        self._close_eval()

    def _close_eval(self):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    def on_train_end(self, args, state, control, **kwargs):
        self._close_eval()
        if self.bar is not None:
            self.bar.set_postfix(self.postfix(), refresh=False)
            self.bar.close()
            self.bar = None
