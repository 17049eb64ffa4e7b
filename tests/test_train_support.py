"""Shared helpers of the training tests: a tiny synthetic CT-RATE cache, a dropout-free BERT folder, run flags."""

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VALID = 8, 4


def make_dataset(root: Path) -> Path:
    """Synthetic CT-RATE (real NIfTI + CSVs) preprocessed to the cache format at the tiny input size; returns the
    cache root, itself a complete layout-A data root."""
    import reaf.preprocess
    import reaf.synthetic.dataset

    raw, cache = root / "raw", root / "cache"
    reaf.synthetic.dataset.generate(raw, seed=0, num_train=NUM_TRAIN, num_valid=NUM_VALID)
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


def test_the_dataset_helper_gives_cached_splits_at_the_tiny_input(tmp_path):
    from reaf.data import readers
    from reaf.data.input_spec import InputSpec, load_volume, volume_file

    root = make_dataset(tmp_path)
    found = readers.find_splits(root)
    split = readers.read_split(found["train"], data_root=str(root), fmt="cache")
    assert len(split.samples) == NUM_TRAIN
    spec = InputSpec.from_args(["-1150", "350", "resize"], (32, 96, 96))
    volume = load_volume(volume_file(split.root, split.samples[0].rel, "cache"), "cache", spec, split.samples[0].meta)
    assert volume.shape == (1, 32, 96, 96) and torch.isfinite(volume).all()
