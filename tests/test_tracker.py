"""Topology during training: degrees in the training process, fits and modularity in the background,
and the completed snapshots equal to the synchronous analysis."""
import math
import os
import subprocess
import sys

import pytest
import torch

from topoprune.models import build_model, load_tokenizer
from topoprune.train.topology import topology_snapshot
from topoprune.train.tracker import TopologyTracker


def _same(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys(), (a.keys() ^ b.keys())
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        assert x == y, (k, x, y)
    return True


@pytest.fixture(scope="module")
def sparse_bert():
    torch.manual_seed(0)
    model = build_model("tiny-bert", "classification", load_tokenizer(), 2)
    with torch.no_grad():  # pruned entries and a dead neuron, as during training
        for name, p in model.named_parameters():
            if p.ndim == 2 and "encoder" in name:
                p[p.abs() < 0.015] = 0
        model.bert.encoder.layer[0].intermediate.dense.weight[:3] = 0
    return model


@pytest.mark.parametrize("background", [False, True])
def test_completed_snapshot_equals_the_synchronous_analysis(sparse_bert, background):
    heads = {"encoder.0": 3, "encoder.1": 4}
    sync = topology_snapshot(sparse_bert, eps=1e-4, heads_remaining=heads)
    tracker = TopologyTracker(sparse_bert, eps=1e-4, background=background, nice=0)
    try:
        cheap = tracker.snapshot(7, heads)
        done = tracker.finish()
    finally:
        tracker.close()
    assert [s for s, _ in done] == [7]
    assert _same(done[0][1], sync)
    assert cheap["mlp/sparsity"] == sync["mlp/sparsity"] and cheap["mlp/in_conn_sd"] == sync["mlp/in_conn_sd"]
    assert cheap.get("mlp/modularity") is None and sync["mlp/modularity"] is not None  # the part that waits


def test_training_history_is_complete_and_equal_to_synchronous(tmp_path, toy_classification):
    from transformers import TrainingArguments

    from topoprune.train.callbacks import NeuroPruneTrainer
    from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig

    histories = []
    for background in (True, False):
        torch.manual_seed(0)
        model = build_model("tiny-bert", "classification", load_tokenizer(), 2)
        np_ = NeuroPrune(model, NeuroPruneConfig(target=0.6, end=6, mlp_weight=0.0, attn_weight=0.0))
        args = TrainingArguments(output_dir=str(tmp_path / str(background)), per_device_train_batch_size=8,
                                 max_steps=6, learning_rate=1e-3, save_strategy="no", report_to="none",
                                 use_cpu=True, seed=0, disable_tqdm=True, logging_steps=2)
        trainer = NeuroPruneTrainer(model=model, args=args, train_dataset=toy_classification, neuroprune=np_,
                                    topology_every=2)
        trainer.np_callback.topology_background = background
        trainer.np_callback.topology_nice = 0  # a test on a busy machine should not wait for idle cores
        trainer.np_callback.topology_skip_stale = False  # every snapshot completed, as the synchronous ones
        trainer.train()
        histories.append(trainer.np_callback.history.frame())
    bg, sync = histories
    assert list(bg["step"]) == [2, 4, 6]
    assert bg["mlp/modularity"].notna().all() and bg["mlp/in_alpha"].notna().all()
    assert bg.drop(columns=["epoch"]).equals(sync.drop(columns=["epoch"]))


def raising_work(jobs, fit, modularity):
    raise ValueError("a metric failed")


def dying_work(jobs, fit, modularity):
    import os

    os._exit(3)


class _Count(__import__("logging").Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("work", [raising_work, dying_work], ids=["raises", "dies"])
def test_failed_background_work_is_reported_once_and_snapshots_go_on(sparse_bert, work):
    import logging

    handler = _Count()
    logger = logging.getLogger("topoprune.train.tracker")
    logger.addHandler(handler)
    tracker = TopologyTracker(sparse_bert, eps=1e-4, nice=0, work=work)
    try:
        first = tracker.snapshot(1)
        assert tracker.finish() == []  # nothing completes
        second = tracker.snapshot(2)
        tracker.snapshot(3)
        assert tracker.finish() == [] and tracker.poll() == []
    finally:
        tracker.close()
        logger.removeHandler(handler)
    assert tracker.failed and ("ValueError" in tracker.failed or "Broken" in tracker.failed)
    assert len([m for m in handler.messages if "stopped" in m]) == 1
    assert first["mlp/sparsity"] == second["mlp/sparsity"] > 0  # degree statistics still measured
    assert {"mlp_in", "mlp_out", "q"} <= set(tracker.degrees)  # per role, for histograms


def test_degrees_per_role_concatenate_the_matrices(sparse_bert):
    tracker = TopologyTracker(sparse_bert, eps=1e-4, fits=False, modularity=False)
    tracker.snapshot(0)
    roles = {s.role for s in tracker.specs}
    assert set(tracker.degrees) == roles
    for role, (ins, outs) in tracker.degrees.items():
        specs = [s for s in tracker.specs if s.role == role]
        assert len(ins) == sum(tracker.binding.weight(s).shape[0] for s in specs)
        assert len(outs) == sum(tracker.binding.weight(s).shape[1] for s in specs)
        assert ins.sum() == outs.sum()  # both count the same edges


def slow_work(jobs, fit, modularity):
    import time

    from topoprune.train.tracker import heavy_metrics

    time.sleep(0.3)
    return heavy_metrics(jobs, fit, modularity)


@pytest.mark.parametrize("skip_stale", [True, False])
def test_a_backlog_is_dropped_not_waited_for(sparse_bert, skip_stale):
    tracker = TopologyTracker(sparse_bert, eps=1e-4, nice=0, work=slow_work, skip_stale=skip_stale)
    n_jobs = len(tracker.rows()[1])
    try:
        for step in (1, 2, 3):
            tracker.snapshot(step)
        done = tracker.finish()
    finally:
        tracker.close()
    steps = [s for s, _ in done]
    assert steps[-1] == 3 and done[-1][1]["mlp/modularity"] is not None  # the last one is always complete
    if skip_stale:
        assert n_jobs > 2 and tracker.skipped and 3 not in tracker.skipped
        assert sorted(steps + tracker.skipped) == [1, 2, 3]
    else:
        assert steps == [1, 2, 3] and tracker.skipped == []


def test_background_process_takes_the_idle_scheduling_class():
    code = ("import os; from topoprune.train.tracker import background_priority as p; "
            "print(p(0), os.sched_getscheduler(0) == os.SCHED_OTHER, p(15), os.sched_getscheduler(0) == os.SCHED_IDLE)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["normal", "True", "idle", "True"]


def test_background_process_is_idle_class_from_its_start(sparse_bert):
    tracker = TopologyTracker(sparse_bert, eps=1e-4)
    try:
        tracker.snapshot(1)
        pids = list(tracker._pool._processes)
        assert pids and all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids)
        seen = []
        original = tracker._complete

        def complete(step):  # while the run waits for it, the background process runs at normal priority
            seen.append(os.sched_getscheduler(pids[0]))
            return original(step)

        tracker._complete = complete
        assert tracker.finish()[0][0] == 1
        assert seen == [os.SCHED_OTHER] and os.sched_getscheduler(pids[0]) == os.SCHED_IDLE
    finally:
        tracker.close()


def test_a_raise_while_waiting_is_not_undone_by_the_starting_process(sparse_bert):
    # finish() right after the first snapshot: the background process is still importing when the
    # run raises its priority, and must still run at normal priority when its work starts.
    tracker = TopologyTracker(sparse_bert, eps=1e-4)
    try:
        tracker.snapshot(1)
        tracker._waiting(True)
        policy = tracker._pool.submit(os.sched_getscheduler, 0).result(timeout=120)
        assert policy == os.SCHED_OTHER
        tracker._waiting(False)
        assert os.sched_getscheduler(next(iter(tracker._pool._processes))) == os.SCHED_IDLE
    finally:
        tracker.close()
