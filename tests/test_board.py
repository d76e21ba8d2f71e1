"""TensorBoard during training: topology scalars at their snapshot's step (the background ones too),
degree histograms per role at every snapshot, and the CCDF figure as an image at the end."""
from pathlib import Path

import numpy as np
import torch


def _events(root: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = {p.parent for p in root.rglob("events.out.tfevents.*")}
    assert len(dirs) == 1, dirs  # one run: the integration's scalars and our histograms side by side
    acc = EventAccumulator(str(dirs.pop()), size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_scalars_histograms_and_the_ccdf(tmp_path, toy_classification):
    from transformers import TrainingArguments

    from topoprune.models import build_model, load_tokenizer
    from topoprune.train.callbacks import NeuroPruneTrainer
    from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig

    torch.manual_seed(0)
    model = build_model("tiny-bert", "classification", load_tokenizer(), 2)
    np_ = NeuroPrune(model, NeuroPruneConfig(target=0.6, end=6, mlp_weight=0.0, attn_weight=0.0))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=6,
                             learning_rate=1e-3, save_strategy="no", report_to=["tensorboard"], use_cpu=True,
                             seed=0, disable_tqdm=True, logging_steps=2)
    trainer = NeuroPruneTrainer(model=model, args=args, train_dataset=toy_classification, neuroprune=np_,
                                topology_every=2)
    trainer.np_callback.topology_nice = 0
    trainer.np_callback.topology_skip_stale = False  # every snapshot completed (the machine may be busy)
    trainer.train()
    history = trainer.np_callback.history.frame()

    acc = _events(tmp_path / "out")
    tags = acc.Tags()
    roles = {s.role for s in trainer.np_callback.tracker.specs}
    for role in roles:
        for side in ("in", "out"):
            steps = [e.step for e in acc.Histograms(f"degrees/{role}/{side}")]
            assert steps == [2, 4, 6], (role, side, steps)
    # the last MLP in-degree histogram counts every row of every mlp_in matrix
    last = acc.Histograms("degrees/mlp_in/in")[-1].histogram_value
    assert last.num == sum(trainer.np_callback.tracker.binding.weight(s).shape[0]
                           for s in trainer.np_callback.tracker.specs if s.role == "mlp_in")
    assert "degrees/ccdf" in tags["images"]
    # scalars at the step of their snapshot, the background ones (modularity) included
    for name in ("mlp/sparsity", "mlp/modularity"):
        events = {e.step: e.value for e in acc.Scalars(f"train/topology/{name}")}
        assert sorted(events) == [2, 4, 6], (name, events)
        for step, value in events.items():
            want = history.loc[history["step"] == step, name].item()
            assert np.isclose(value, want, rtol=1e-6), (name, step, value, want)
