"""NeuroPrune inside an unmodified Hugging Face Trainer: masks hold, topology is logged, resume works."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from topoprune.train.callbacks import NeuroPruneTrainer, TrainingDiverged
from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig


class _Random(torch.utils.data.Dataset):
    def __init__(self, n=64, seq=8, vocab=50, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (n, seq), generator=g)
        self.y = (self.x[:, 0] % 2).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=5e-3, num_train_epochs=2,
                logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                eval_strategy="no")
    base.update(kw)
    return TrainingArguments(**base)


def _train(tmp_path, config, **kw):
    model = _model()
    np_ = NeuroPrune(model, config)
    trainer = NeuroPruneTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=_Random(),
                                eval_dataset=_Random(32, seed=1), neuroprune=np_, topology_every=4,
                                topology_fits=False)
    return trainer, np_


def test_target_mode_in_trainer_reaches_sparsity_and_masks_hold(tmp_path):
    cfg = NeuroPruneConfig(target=0.7, end=12, start=0)
    trainer, np_ = _train(tmp_path, cfg)
    trainer.train()
    rep = np_.sparsity_report()
    mlp = rep[rep["role"].isin(["mlp_in", "mlp_out"])]
    assert ((mlp["sparsity"] - 0.7).abs() < 0.01).all()
    for name, mask in np_.masks.masks.items():
        w = trainer.model.get_parameter(name)
        assert torch.count_nonzero(w.detach()[~mask]) == 0
    logged = [h for h in trainer.state.log_history if "topology/mlp/sparsity" in h]
    assert logged and logged[-1]["topology/mlp/sparsity"] > logged[0]["topology/mlp/sparsity"]
    assert len(trainer.np_callback.history.rows) >= 4
    metrics = trainer.evaluate()
    assert metrics["eval_topology/mlp/sparsity"] == pytest.approx(0.7, abs=0.01)


def test_paper_mode_penalty_in_loss(tmp_path):
    cfg = NeuroPruneConfig(mlp_weight=1e-3, attn_weight=1e-3)
    trainer, np_ = _train(tmp_path, cfg, num_train_epochs=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with_pen = trainer.compute_loss(trainer.model, batch)
    plain = trainer.model(**batch).loss
    assert float((with_pen - plain).detach()) == pytest.approx(float(np_.penalty().detach()), rel=1e-4)


def test_resume_restores_masks_and_reaches_the_same_sparsity(tmp_path):
    cfg = NeuroPruneConfig(target=0.6, end=12)
    full, np_full = _train(tmp_path / "full", cfg)
    full.train()
    part, np_part = _train(tmp_path / "part", cfg, save_strategy="steps", save_steps=8, max_steps=8)
    part.train()  # "killed" after 8 of 16 steps (one epoch: its head pruning is in the checkpoint)
    ckpt = tmp_path / "part" / "checkpoint-8"
    assert (ckpt / "masks.safetensors").is_file()
    resumed, np_res = _train(tmp_path / "part", cfg, save_strategy="no")
    resumed._load_from_checkpoint(str(ckpt))
    for name, mask in np_part.masks.masks.items():  # identical masks right after resuming
        assert torch.equal(mask, np_res.masks.masks[name]), name
    assert np_res.head_decisions == np_part.head_decisions
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert np_res.heads_remaining() == np_full.heads_remaining()
    final_full, final_res = np_full.sparsity_report(), np_res.sparsity_report()
    mlp = final_full["role"].isin(["mlp_in", "mlp_out"]) & (final_full["level"] == "matrix")
    # The same final sparsity. (Which entries survive depends on the weights, and the Trainer's
    # data order after a resume is not guaranteed bit-identical; the plain-loop resume is exact,
    # see test_neuroprune.py.)
    assert final_res[mlp]["sparsity"].tolist() == final_full[mlp]["sparsity"].tolist()


def test_nan_loss_stops_with_message(tmp_path):
    trainer, np_ = _train(tmp_path, NeuroPruneConfig(mlp_weight=1e-3))
    with torch.no_grad():
        trainer.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1; no checkpoint saved yet"):
        trainer.train()
