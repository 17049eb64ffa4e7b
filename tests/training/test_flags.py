"""main.py flags: the README's commands parse, booleans are switches, values reach the model, errors are clear."""

import copy
import shlex

import pytest
import torch

from reaf.dist import DistEnv
from reaf.training.flags import build_parser, parse_args, report_targets
from reaf.training.settings import effective_precision, resolve

# The README seed's "Custom Training" and "Distributed Training" commands, verbatim after the program name.
README_CUSTOM = """
  --model vit_base_singlescan_h2_token2744 --data-root /path/to/ct_rate --train-data /path/to/ct_rate/train
  --val-data /path/to/ct_rate/val --zeroshot-ct-rate /path/to/ct_rate/test --batch-size 16 --epochs 50 --lr 5e-4
  --warmup 2 --workers 8 --precision amp --grad-checkpointing --fusion-method weighted_mean --use-cxr-bert
  --cxr-bert-path /path/to/cxr-bert --wandb-project-name REAF --name REAF_experiment --logs ./logs
"""
README_DISTRIBUTED = """
  --model vit_base_singlescan_h2_token2744 --data-root /path/to/ct_rate --batch-size 16 --epochs 50 --precision amp
"""
DESIGN_FLAGS = """--model --data-root --train-data --val-data --zeroshot-ct-rate --batch-size --epochs --lr --warmup
--workers --precision --grad-checkpointing --fusion-method --use-cxr-bert --cxr-bert-path --wandb-project-name --name
--logs --input-data-type --input-info --resume --seed --wd --beta1 --beta2 --eps --lock-text --no-lock-text
--report-to --zeroshot-frequency --val-frequency --save-frequency --sample-unit --accum-freq --grad-clip-norm
--vision-init --log-every-n-steps --load-checkpoint --report-root --zeroshot-template --skip-bad --device""".split()


def test_every_design_flag_exists():
    known = {s for action in build_parser()._actions for s in action.option_strings}
    assert sorted(set(DESIGN_FLAGS) - known) == []


def test_the_readme_custom_training_command_parses_to_its_values():
    args = parse_args(shlex.split(README_CUSTOM))
    assert args.model == "vit_base_singlescan_h2_token2744" and args.train_data == "/path/to/ct_rate/train"
    assert (args.batch_size, args.epochs, args.lr, args.warmup, args.workers) == (16, 50, 5e-4, 2, 8)
    assert isinstance(args.warmup, int)  # optimiser steps
    assert args.grad_checkpointing is True and args.use_cxr_bert is True
    assert args.fusion_method == "weighted_mean" and args.precision == "amp"
    assert (args.wandb_project_name, args.name, args.logs) == ("REAF", "REAF_experiment", "./logs")


def test_warmup_takes_steps_or_epochs_not_both():
    from reaf.training.optim import warmup_steps

    args = parse_args(shlex.split(README_DISTRIBUTED) + ["--warmup-epochs", "2"])
    assert warmup_steps(args.warmup, args.warmup_epochs, 800) == 1600  # the reference's two epochs
    args = parse_args(shlex.split(README_DISTRIBUTED) + ["--warmup", "30"])
    assert args.warmup_epochs is None and warmup_steps(args.warmup, args.warmup_epochs, 800) == 30
    assert warmup_steps(0, 0.5, 7) == 4
    for extra in (["--warmup", "3", "--warmup-epochs", "2"], ["--warmup-epochs", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(shlex.split(README_DISTRIBUTED) + extra)


def test_the_readme_distributed_command_parses():
    args = parse_args(shlex.split(README_DISTRIBUTED))
    assert args.data_root == "/path/to/ct_rate" and args.train_data is None and args.grad_checkpointing is False


@pytest.mark.parametrize(
    ("flag", "dest", "value"),
    [
        ("--grad-checkpointing", "grad_checkpointing", True),
        ("--no-grad-checkpointing", "grad_checkpointing", False),
        ("--lock-text", "lock_text", True),
        ("--no-lock-text", "lock_text", False),
        ("--no-use-cxr-bert", "use_cxr_bert", False),
        ("--skip-bad", "skip_bad", True),
    ],
)
def test_booleans_are_bare_switches(flag, dest, value):
    assert getattr(parse_args(["--train-data", "x", flag]), dest) is value


def test_defaults_follow_the_reference_recipe():
    args = parse_args(["--train-data", "x"])
    assert (args.beta1, args.beta2, args.eps, args.wd) == (0.9, 0.98, 1e-6, 0.2)
    assert args.lock_text is None and args.fusion_method is None  # None = the model config decides
    assert args.accum_freq == 1 and args.report_to == "none" and args.resume is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--report-to", "wandb,mlflow"], "mlflow"),
        (["--report-to", "none,wandb"], "cannot be combined"),
        (["--input-info", "-1150", "350", "zoom"], "crop or resize"),
        (["--use-cxr-bert"], "--cxr-bert-path"),
        (["--accum-freq", "0"], "argument --accum-freq: must be >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
        (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
        (["--save-frequency", "-2"], "argument --save-frequency: must be >= 0, got -2"),
        (["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
        (["--beta2", "1.0"], "--beta2 must be in [0, 1), got 1.0"),
        (["--fusion-method", "median"], "invalid choice"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train-data", "x", *argv])
    assert message in capsys.readouterr().err


def test_training_needs_data():
    with pytest.raises(SystemExit):
        parse_args(["--model", "tiny"])


def test_report_targets():
    assert report_targets("none") == ()
    assert report_targets("wandb, tensorboard,wandb") == ("wandb", "tensorboard")


def test_precision_amp_is_fp32_on_cpu_and_fp16_on_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [effective_precision(p, cpu) for p in ("amp", "amp_bf16", "fp32")] == ["fp32", "bf16", "fp32"]
    assert [effective_precision(p, gpu) for p in ("amp", "amp_bf16", "fp32")] == ["fp16", "bf16", "fp32"]


def test_resolving_leaves_the_namespace_untouched(tmp_path):
    args = parse_args(["--train-data", "x", "--logs", str(tmp_path), "--batch-size", "3", "--accum-freq", "2"])
    before = copy.deepcopy(vars(args))
    settings = resolve(args, DistEnv(0, 4, 0, torch.device("cpu")), None, None)
    assert vars(args) == before
    assert settings.global_batch == 24 and settings.precision == "fp32" and settings.report_to == ()
    assert "-model_vit_base_singlescan_h2_token2744-lr_0.0005-b_24-j_4-p_amp" in settings.name
    assert settings.run_dir == str(tmp_path / settings.name)


@pytest.mark.parametrize("method", ["max", "learned", "inverse_weighted_mean"])
def test_fusion_method_reaches_the_model(method):
    from reaf.training.run import build_model

    args = parse_args(["--model", "tiny", "--train-data", "x", "--fusion-method", method])
    model = build_model(args, None, torch.device("cpu"))
    assert model.cfg.vision.fusion_method == method
    assert {f.method for f in model.visual.trunk.fusion.values()} == {method}
    learned = [n for n, _ in model.named_parameters() if n.endswith("fusion.scan.logits")]
    assert bool(learned) == (method == "learned")


def test_lock_text_defaults_to_the_config_and_the_flag_overrides_it():
    from reaf.training.run import build_model

    def trainable_bert(*flags: str) -> set[bool]:
        args = parse_args(["--model", "tiny", "--train-data", "x", *flags])
        model = build_model(args, None, torch.device("cpu"))
        return {p.requires_grad for n, p in model.text.transformer.named_parameters() if "LayerNorm" not in n}

    assert trainable_bert() == {True}  # configs/tiny.json: text.lock false
    assert trainable_bert("--lock-text") == {False}



def test_data_root_defaults_never_pick_a_held_out_test_split_for_training(tmp_path):
    """With only --data-root, training validates and runs its per-epoch zero-shot on val; a test split (the
    synthetic CT-RATE's) is left for the final evaluation. Without one (CT-RATE), valid serves as before."""
    from reaf.training.settings import find_data

    for name in ("train_fixed", "valid_fixed"):
        (tmp_path / "dataset" / name).mkdir(parents=True)
    valid = str(tmp_path / "dataset" / "valid_fixed")
    args = parse_args(["--data-root", str(tmp_path)])
    assert find_data(args) == (str(tmp_path / "dataset" / "train_fixed"), valid, valid)
    (tmp_path / "dataset" / "test_fixed").mkdir()
    assert find_data(args) == (str(tmp_path / "dataset" / "train_fixed"), valid, valid)
    assert parse_args(["--data-root", str(tmp_path), "--zeroshot-ct-rate", "x.csv"]).zeroshot_ct_rate == "x.csv"
