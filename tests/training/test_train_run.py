"""main.py end to end on synthetic CT-RATE: run folder, checkpoints, logs, wandb/tensorboard, SIGKILL + exact resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as cli
from reaf import create_model, load_checkpoint
from reaf.model.config import load_model_config
from tests.support.training import REPO, make_bert, make_dataset, step_losses, train_argv

EPOCHS = 40  # of one optimiser step each in the smoke run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def smoke(data, tmp_path_factory):
    """40 one-step epochs over the 8 training volumes, val every 10, zero-shot after the last, reporting to wandb
    and tensorboard. The model is the tiny config reading out the max over its tokens, as the demo does (with the
    CLS readout whether it leaves its initial ln(8) plateau within 40 steps depends on the volumes drawn), and the
    BERT folder has dropout off."""
    logs = tmp_path_factory.mktemp("logs")
    bert = make_bert(tmp_path_factory.mktemp("bert"))
    config = tmp_path_factory.mktemp("config") / "tiny_max.json"
    config.write_text(json.dumps(load_model_config("tiny", global_pool="max").to_dict()))
    argv = train_argv(data, logs, "smoke", "--model", str(config), "--epochs", str(EPOCHS), "--batch-size", "8",
                      "--lr", "3e-3", "--use-cxr-bert", "--cxr-bert-path", str(bert), "--val-frequency", "10", "--zeroshot-frequency",
                      str(EPOCHS), "--report-to", "wandb,tensorboard", "--save-frequency", "20")
    assert cli.main(argv) == 0
    return logs / "smoke"


def test_smoke_run_writes_the_run_folder(smoke):
    config = json.loads((smoke / "config.json").read_text())
    assert config["model"]["vision"]["img_size"] == [32, 96, 96] and config["args"]["batch_size"] == 8
    assert config["run"]["name"] == "smoke" and config["run"]["precision"] == "fp32"
    names = sorted(p.name for p in (smoke / "checkpoints").iterdir())
    assert names == ["epoch_20.pt", "epoch_40.pt", "latest.pt"]  # --save-frequency 20; no temp files left
    assert (smoke / "zeroshot" / f"epoch_{EPOCHS}" / "results.json").is_file()
    log = (smoke / "train.log").read_text()
    assert "--precision amp" not in log and "run smoke on 1 process(es)" in log


def test_checkpoint_loads_weights_only_and_describes_itself(smoke):
    ckpt = torch.load(smoke / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    keys = {"epoch", "step", "name", "state_dict", "optimizer", "scaler", "scheduler_step", "config", "rng"}
    assert keys <= set(ckpt)
    assert (ckpt["epoch"], ckpt["step"], ckpt["scheduler_step"], ckpt["name"]) == (EPOCHS, EPOCHS, EPOCHS, "smoke")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["config"]["args"]["model"].endswith("tiny_max.json") and ckpt["config"]["model"]["embed_dim"] == 64
    assert ckpt["config"]["model"]["vision"]["global_pool"] == "max"
    assert len(ckpt["rng"]) == 1 and ckpt["batches_done"] == 0
    model = create_model("tiny", global_pool="max", cxr_bert_path=ckpt["config"]["args"]["cxr_bert_path"])
    load_checkpoint(model, smoke / "checkpoints" / f"epoch_{EPOCHS}.pt")
    assert torch.equal(model.logit_scale.detach(), ckpt["state_dict"]["logit_scale"])


def test_the_logged_loss_falls(smoke):
    losses = [float(v) for v in re.findall(r"train/loss=([0-9.]+)", (smoke / "train.log").read_text())]
    assert len(losses) == EPOCHS
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses  # ln(8) = 2.08 at the start


def test_validation_and_zero_shot_are_logged(smoke):
    rows = [json.loads(line) for line in (smoke / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss" in r]
    assert [r["epoch"] for r in val] == [10, 20, 30, 40]
    assert val[0]["val/dup_all/report_to_volume/N"] == 4
    assert any("zeroshot/auc_18" in r for r in rows)


def test_tensorboard_and_wandb_leave_their_run_files(smoke):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((smoke / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(smoke / "tensorboard"))
    acc.Reload()
    logged = [e.value for e in acc.Scalars("train/loss")]
    assert len(logged) == EPOCHS and logged[0] == pytest.approx(step_losses(smoke)[1][0], rel=1e-6)
    runs = list((smoke / "wandb").glob("offline-run-*-smoke"))
    assert len(runs) == 1 and any(p.stat().st_size > 0 for p in runs[0].glob("run-smoke.wandb"))


def test_sigkill_mid_epoch_then_resume_latest_continues_the_same_losses(data, tmp_path):
    """Text dropout is on in the tiny model, so equal losses also need the RNG states restored."""
    flags = ("--epochs", "2", "--batch-size", "2", "--save-every-n-steps", "1")
    assert cli.main(train_argv(data, tmp_path, "straight", *flags)) == 0
    expected = {step: values[0] for step, values in step_losses(tmp_path / "straight").items()}
    assert sorted(expected) == list(range(1, 9))

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "main.py", *train_argv(data, tmp_path, "killed", *flags)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "checkpoints" / "latest.pt"
    killed_at = None
    while proc.poll() is None and killed_at is None:
        if latest.exists():
            ckpt = torch.load(latest, map_location="cpu", weights_only=True)
            if ckpt["step"] >= 2 and ckpt["batches_done"] > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = ckpt["step"]
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    assert cli.main(train_argv(data, tmp_path, "killed", *flags, "--resume", "latest")) == 0
    starts = re.findall(r"training from epoch \d+, step (\d+)", (tmp_path / "killed" / "train.log").read_text())
    resumed_from = int(starts[-1])
    assert resumed_from >= killed_at
    got = step_losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 9))
    for step, values in got.items():  # steps the killed run logged past its checkpoint appear twice: both equal
        assert values == pytest.approx([expected[step]] * len(values), rel=1e-6, abs=1e-7), step
    final = torch.load(tmp_path / "killed" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, atol=1e-6, rtol=1e-5)


def test_a_second_run_into_a_used_folder_is_refused(data, smoke, capsys):
    argv = train_argv(data, smoke.parent, "smoke", "--epochs", "1")
    assert cli.main(argv) == 1
    assert "--resume latest" in capsys.readouterr().err


def test_warmup_epochs_warm_up_over_that_many_epochs_of_steps(data, tmp_path):
    """--warmup-epochs 1 with 8 volumes in batches of 2: 4 warm-up steps, lr (k+1)/4 of the peak, then cosine."""
    argv = train_argv(data, tmp_path, "warm", "--epochs", "2", "--batch-size", "2", "--save-frequency", "0")
    argv[argv.index("--warmup"):argv.index("--warmup") + 2] = ["--warmup-epochs", "1"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["train/lr"] for row in rows if "train/lr" in row]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and len(lrs) == 8
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] < lrs[4]
    assert "warm-up: 4 optimiser step(s) (1 epoch(s) of 4)" in (tmp_path / "warm" / "train.log").read_text()
