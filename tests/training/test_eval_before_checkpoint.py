"""An epoch's end: its evaluation reads a split that serves validation and zero-shot once, and runs before the
epoch's checkpoint is final (a kill during evaluation resumes into the epoch and evaluates again); a precision
change on resume is logged, not silent."""

import json
import logging
from pathlib import Path

import pytest
import torch

import main as cli
import reaf.data.loader as loader_module
from reaf import create_model
from reaf.training import state as train_state
from reaf.training.optim import build_optimizer
from reaf.training.run import TrainingRun
from tests.support.training import NUM_VALID, make_dataset, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_a_failed_evaluation_leaves_no_checkpoint_past_it_and_resume_evaluates_again(data, tmp_path, monkeypatch):
    real, calls = TrainingRun.evaluate, []

    def evaluate_once_failing(self, epoch, step):
        calls.append(epoch)
        if len(calls) == 1:
            raise RuntimeError("killed during evaluation")
        return real(self, epoch, step)

    monkeypatch.setattr(TrainingRun, "evaluate", evaluate_once_failing)
    flags = ("--epochs", "1", "--batch-size", "2", "--save-every-n-steps", "1", "--val-frequency", "1")
    assert cli.main(train_argv(data, tmp_path, "run", *flags)) == 1
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert (latest["epoch"], latest["step"]) == (0, 3)  # the last mid-epoch save, not the epoch's end
    assert not (tmp_path / "run" / "checkpoints" / "epoch_1.pt").exists()
    assert cli.main(train_argv(data, tmp_path, "run", *flags, "--resume", "latest")) == 0
    assert calls == [1, 1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "val/loss" in row] == [4]
    final = torch.load(tmp_path / "run" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert (final["epoch"], final["step"]) == (1, 4)


def test_a_split_serving_validation_and_zero_shot_is_read_once_per_epoch(data, tmp_path, monkeypatch):
    """With only --data-root, CT-RATE's valid split is both the validation and the zero-shot split."""
    read, real = [], loader_module.load_volume

    def load_volume(path, *args, **kwargs):
        read.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loader_module, "load_volume", load_volume)
    flags = ("--epochs", "2", "--batch-size", "4", "--val-frequency", "1", "--zeroshot-frequency", "2")
    assert cli.main(train_argv(data, tmp_path, "once", *flags)) == 0
    valid = [name for name in read if name.startswith("valid_")]
    assert len(valid) == 2 * NUM_VALID and len(set(valid)) == NUM_VALID  # epoch 1: validation; epoch 2: both
    rows = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [(row["epoch"], "val/loss" in row, "zeroshot/auc_18" in row) for row in rows if "epoch" in row
                 and ("val/loss" in row or "zeroshot/auc_18" in row)]
    assert evaluated == [(1, True, False), (2, True, True)]
    assert (tmp_path / "once" / "zeroshot" / "epoch_2" / "embeddings.pt").is_file()


@pytest.mark.parametrize("saved_fp16", [True, False])
def test_a_precision_change_on_resume_is_logged(caplog, saved_fp16):
    torch.manual_seed(0)
    model = create_model("tiny")
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    saved = torch.amp.GradScaler("cpu", enabled=saved_fp16)
    payload = train_state.checkpoint_payload(model, optimizer, saved, train_state.Position(1, 0, 4), name="x",
                                             config={"run": {"precision": "fp16" if saved_fp16 else "fp32"}},
                                             rng=[], sampler={})  # fmt: skip
    now = torch.amp.GradScaler("cpu", enabled=not saved_fp16)
    with caplog.at_level(logging.WARNING, logger="reaf.training.state"):
        train_state.restore_training(payload, model, optimizer, now)
    text = caplog.text
    assert ("state is dropped" if saved_fp16 else "starts from its initial scale") in text
    assert ("precision fp16" if saved_fp16 else "precision fp32") in text
