"""A local BERT folder (CXR-BERT as published, or a plain HF BERT) read without running any code it carries.

The published BiomedVLP-CXR-BERT-specialized folder declares `model_type: "cxr-bert"` with an `auto_map` to its own
`configuration_cxrbert.py` / `modeling_cxrbert.py`, and a `CXRBertTokenizer` that is BERT's WordPiece unchanged.
transformers' Auto classes would import that code (or prompt for it); here config.json is read into a BertConfig,
the weights under `bert.` load strictly into a BertModel without pooler, and the tokenizer is BertTokenizer over
the folder's vocab.txt with the lower-casing its tokenizer_config.json states.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel, BertTokenizer

MODEL_TYPES = ("bert", "cxr-bert")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the published folder has the .bin; newer saves the other
# BertConfig fields a folder's config.json may set; everything else (auto_map, projection_size, ...) is not BERT's
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type",
)
# keys of the folder's checkpoint that are not the BERT encoder: MLM head, CXR-BERT's projection head, pooler,
# and buffers older transformers saved (position_ids / token_type_ids are non-persistent now)
IGNORED_PREFIXES = ("cls.", "cls_projection_head.", "pooler.")
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# what a tower built from a folder depends on besides weights a checkpoint replaces: the architecture and tokenizer
DESCRIBED_FILES = ("config.json", "tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json")
TOKENIZER_OPTIONS = ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "do_basic_tokenize",
                     "model_max_length", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def read_bert_config(folder: str | Path) -> BertConfig:
    """config.json of a BERT folder -> BertConfig; `model_type` must be bert or cxr-bert (its own code is ignored)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the BERT folder")
    values = _read_json(path)
    model_type = values.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not a BERT ({MODEL_TYPES})")
    return BertConfig(**{k: values[k] for k in CONFIG_FIELDS if k in values})


def _weights_path(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(f"{folder}: no BERT weights ({' or '.join(WEIGHT_FILES)}); the folder holds {present}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors or torch pickle file -> {key: tensor} on the CPU (weights_only: no pickled code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def bert_state_dict(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a folder checkpoint with bare BertModel keys: `bert.*` of a masked-LM / CXR-BERT
    checkpoint, or the keys of a plain BertModel save; heads, pooler and old buffers are dropped."""
    prefixed = any(k.startswith("bert.") for k in state)
    out, foreign = {}, []
    for key, value in state.items():
        if prefixed:
            if not key.startswith("bert."):
                if not key.startswith(IGNORED_PREFIXES):
                    foreign.append(key)
                continue
            key = key[len("bert."):]
        if key.startswith(IGNORED_PREFIXES) or key in IGNORED_BUFFERS:
            continue
        out[key] = value
    if foreign:
        raise ValueError(f"{where}: keys that are neither BERT nor a known head: {foreign[:5]}")
    return out


def load_bert(folder: str | Path) -> BertModel:
    """A BertModel without pooler holding the folder's encoder weights; every key must match (strict)."""
    folder = Path(folder)
    config = read_bert_config(folder)
    path = _weights_path(folder)
    weights = bert_state_dict(read_state_dict(path), str(path))
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the global RNG as it was
        model = BertModel(config, add_pooling_layer=False)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match config.json's BERT: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    model.load_state_dict(weights, strict=True)
    return model.eval()  # as from_pretrained returns it; training switches it with the rest of the model


def load_bert_tokenizer(folder: str | Path) -> BertTokenizer:
    """BERT's WordPiece over the folder's vocab.txt, with the options of its tokenizer_config.json (whatever
    tokenizer_class it names: CXR-BERT's is a BertTokenizer subclass adding nothing). A folder saved by
    transformers 5 holds tokenizer.json instead of vocab.txt: BertTokenizer, named here, reads that."""
    folder = Path(folder)
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        if (folder / "tokenizer.json").is_file():
            return BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        raise FileNotFoundError(f"{vocab}: the BERT folder has neither vocab.txt nor tokenizer.json")
    config_path = folder / "tokenizer_config.json"
    options = _read_json(config_path) if config_path.is_file() else {}
    kwargs = {k: options[k] for k in TOKENIZER_OPTIONS if options.get(k) is not None}
    for key, value in kwargs.items():  # special tokens may be saved as AddedToken dicts
        if isinstance(value, dict):
            kwargs[key] = value.get("content")
    return BertTokenizer(str(vocab), **kwargs)


def describe_folder(folder: str | Path | None) -> dict[str, Any]:
    """{"folder", "files": {name: sha256}} of the config and tokenizer files of a BERT folder ({"folder": None}
    without one): a changed --cxr-bert-path or tokenizer changes it. The weights file is left out, as a checkpoint
    replaces those weights."""
    if folder is None:
        return {"folder": None}
    folder = Path(folder).resolve()
    files = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
             for name in DESCRIBED_FILES if (folder / name).is_file()}
    return {"folder": str(folder), "files": files}
