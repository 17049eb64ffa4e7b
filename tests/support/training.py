"""Helpers of the training tests: a tiny synthetic CT-RATE cache, a dropout-free BERT folder, run flags."""

import contextlib
import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from reaf import create_model
from reaf.training.optim import CosineSchedule, build_optimizer
from reaf.training.step import StepContext

REPO = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VALID = 8, 4


def make_dataset(root: Path) -> Path:
    """Synthetic CT-RATE (real NIfTI + CSVs) preprocessed to the cache format at the tiny input size; returns the
    cache root, itself a complete layout-A data root."""
    import reaf.preprocess
    import reaf.synthetic.dataset

    raw, cache = root / "raw", root / "cache"
    reaf.synthetic.dataset.generate(raw, seed=0, num_train=NUM_TRAIN, num_valid=NUM_VALID, num_test=0)
    for split in ("train", "valid"):
        argv = ["--ct-rate-root", str(raw), "--split", split, "--out", str(cache), "--format", "cache",
                "--model", "tiny", "--input-info", "-1150", "350", "resize", "--workers", "1"]
        assert reaf.preprocess.main(argv) == 0
    return cache


def make_bert(folder: Path) -> Path:
    """A tiny BERT with its tokenizer in a local folder (the --cxr-bert-path layout), dropout off so that runs with
    different batch splits draw no different random masks."""
    from reaf.model.config import load_model_config
    from reaf.model.text import _builtin_vocab_file, builtin_vocab

    text = load_model_config("tiny").text  # the tiny tower's sizes, with dropout off
    config = BertConfig(vocab_size=len(builtin_vocab()), hidden_size=text.hidden_size,
                        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
                        intermediate_size=text.intermediate_size, max_position_embeddings=text.max_position_embeddings,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    BertTokenizer(str(_builtin_vocab_file()), do_lower_case=True).save_pretrained(folder)
    return folder


def train_argv(data: Path, logs: Path, name: str, *extra: str) -> list[str]:
    """main.py flags of a tiny CPU run on the synthetic cache (no evaluation, every step logged)."""
    return ["--model", "tiny", "--data-root", str(data), "--input-data-type", "cache", "--input-info", "-1150", "350",
            "resize", "--workers", "0", "--precision", "fp32", "--lr", "1e-3", "--warmup", "2", "--logs", str(logs),
            "--name", name, "--log-every-n-steps", "1", "--zeroshot-frequency", "0", "--val-frequency", "0",
            "--report-to", "none", *extra]


def step_losses(run_dir: Path) -> dict[int, list[float]]:
    """Every train/loss value metrics.jsonl holds, per optimiser step (a step relogged after a resume twice)."""
    out: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            out.setdefault(row["step"], []).append(row["train/loss"])
    return out


def tiny(bert=None, **overrides):
    torch.manual_seed(0)
    return create_model("tiny", cxr_bert_path=str(bert) if bert else None, **overrides)


def batches(split, model, batch_size):
    from reaf.data import loader as loaders
    from reaf.data.input_spec import InputSpec

    spec = InputSpec.from_args(["-1150", "350", "resize"], model.cfg.vision.img_size)
    return loaders.build_dataloader(split, spec, model.tokenize, batch_size=batch_size, workers=0, seed=0, train=True)


def context(model, accum=1, lr=1e-3, clip=None):
    opt = build_optimizer(model, lr=lr, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    return StepContext(model, opt, torch.amp.GradScaler("cpu", enabled=False), CosineSchedule(opt, lr, 0, 10),
                       contextlib.nullcontext, torch.device("cpu"), accum, clip)
