"""torchrun with 2 gloo processes equals one process on the same global batch: losses and parameters (DDP, the
all-gather with gradient, gradient accumulation under no_sync, rank sharding of the sampler), and the last epoch's
validation + zero-shot, whose split the two ranks encode together; trained on single sentences with shared positives."""

import json
import os
import subprocess
import sys

import pytest
import torch

import main as cli
from tests.support.training import REPO, make_bert, make_dataset, step_losses, train_argv

# 2 ranks x 2 volumes x accum 2 = 8 = the whole synthetic train split: one optimiser step per epoch
EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_bert(tmp_path_factory.mktemp("bert"))  # dropout off: the batch split draws no different masks


@pytest.fixture(scope="module")
def runs(data, bert, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    # single sentences with --positives shared: the mask over the global batch is gathered across ranks and
    # micro-batches in the order of the features
    common = ("--epochs", str(EPOCHS), "--lr", "1e-4", "--use-cxr-bert", "--cxr-bert-path", str(bert),
              "--val-frequency", str(EPOCHS), "--zeroshot-frequency", str(EPOCHS), "--text-sampling", "sentence",
              "--positives", "shared")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # also on: activation checkpointing, and --precision amp (fp32 on a CPU); the single run has neither
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--", "main.py",
           *train_argv(data, logs, "ddp", *common, "--batch-size", "2", "--accum-freq", "2", "--grad-checkpointing",
                       "--precision", "amp")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    # one volume per rank and micro-batch: every gradient must fit DDP's buckets in place (the CLS token's did not)
    assert "Grad strides do not match bucket view strides" not in done.stderr
    assert cli.main(train_argv(data, logs, "single", *common, "--batch-size", "8")) == 0
    return logs / "ddp", logs / "single"


def test_per_step_losses_equal_a_single_process_on_the_global_batch(runs):
    ddp, single = (step_losses(run) for run in runs)
    assert sorted(ddp) == sorted(single) == list(range(1, EPOCHS + 1))
    for step in single:
        assert ddp[step][0] == pytest.approx(single[step][0], abs=1e-5), step


@pytest.mark.parametrize("epoch", [1, EPOCHS])
def test_parameters_equal_a_single_process(runs, epoch):
    """epoch_1.pt holds the parameters after exactly one optimiser step."""
    ddp, single = (torch.load(run / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True) for run in runs)
    assert ddp["step"] == single["step"] == epoch
    assert ddp["state_dict"].keys() == single["state_dict"].keys()  # no `module.` prefix
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][name], value, atol=1e-5, rtol=0)


def test_the_last_epochs_evaluation_equals_a_single_process(runs):
    """val/loss is left out: it is the loss of each evaluation batch of --batch-size volumes (2 vs 8 here)."""
    ddp, single = ([json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if "val/loss" in r]
                   for run in runs)
    assert len(ddp) == len(single) == 1 and ddp[0]["epoch"] == EPOCHS and "zeroshot/auc_18" in single[0]
    assert ddp[0].keys() == single[0].keys() and single[0]["val/dup_all/report_to_volume/N"] == 4
    for key, value in single[0].items():
        if key != "val/loss":
            assert ddp[0][key] == pytest.approx(value, abs=1e-4), key
    assert (runs[0] / "zeroshot" / f"epoch_{EPOCHS}" / "results.json").is_file()


def test_the_ddp_checkpoint_records_both_ranks(runs):
    ckpt = torch.load(runs[0] / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["config"]["run"]["world_size"] == 2 and ckpt["config"]["run"]["global_batch"] == 8
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert ckpt["sampler"] == {"batch_size": 2, "world_size": 2, "accum_freq": 2}


def test_main_flags_pass_through_torchrun():
    """torchrun's parser matches abbreviations anywhere on the line: main.py's --logs reads as an ambiguous prefix
    of torchrun's --logs-specs unless `--` ends torchrun's flags (as train_ghs.sh and this file's launch do)."""
    from torch.distributed.run import get_args_parser

    from reaf.training.flags import build_parser

    flags = [s for a in build_parser()._actions for s in a.option_strings if s not in ("-h", "--help")]
    torchrun = get_args_parser()
    for flag in flags:
        after_dashes = torchrun.parse_args(["--nproc-per-node=2", "--", "main.py", flag, "1"])
        assert after_dashes.training_script == "main.py" and after_dashes.training_script_args == [flag, "1"]
    clashing = []
    for flag in flags:
        try:
            torchrun.parse_args(["--nproc-per-node=2", "main.py", flag, "1"])
        except SystemExit:
            clashing.append(flag)
    assert clashing == ["--logs"]


def test_train_ghs_runs_the_recipe_through_torchrun(data, bert, tmp_path_factory):
    """The launcher with data configured: torchrun (NPROC=1 here), the recipe's flags, extra flags scaled down."""
    logs = tmp_path_factory.mktemp("ghs")
    env = {**os.environ, "CT_RATE_ROOT": str(data), "CXR_BERT_PATH": str(bert), "NPROC": "1", "LOGS": str(logs),
           "REPORT_TO": "none", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    extra = ["--model", "tiny", "--input-info", "-1150", "350", "resize", "--batch-size", "4", "--epochs", "1",
             "--workers", "0", "--zeroshot-frequency", "0"]
    done = subprocess.run(["bash", "train_ghs.sh", *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ckpt = torch.load(logs / "reaf_ct_rate" / "checkpoints" / "epoch_1.pt", weights_only=True)
    args = ckpt["config"]["args"]
    assert args["grad_checkpointing"] and args["lock_text"] and args["resume"] == "latest"
    assert ckpt["config"]["run"]["precision"] == "fp32" and ckpt["step"] == 2  # 8 volumes / 4
    assert args["warmup_epochs"] == 2  # the reference's unit: its --warmup 2 meant two epochs
