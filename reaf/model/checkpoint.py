"""Loading weights: our checkpoints and the reference's (open_clip) format, whose keys are ours, checked strictly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
REFERENCE_MODEL = "vit_base_singlescan_h2_token2744"  # the architecture of the reference's released weights
DROPPED_KEYS = ("text.transformer.embeddings.position_ids", "text.transformer.embeddings.token_type_ids")


def read_checkpoint(path: str | Path, *, mmap: bool = True) -> dict[str, Any]:
    """The one reader of a checkpoint: a file through torch.load with weights_only=True on the CPU, memory-mapped
    when the file allows and `mmap` (skips optimizer pages when only weights are wanted; resuming reads it whole);
    a weights folder (reaf.export) from its safetensors, never unpickled, into the same dict shape."""
    path = Path(path)
    if path.is_dir():
        from reaf.model.pretrained import read_weights

        return read_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for a foreign or cut file
        raise ValueError(not_a_checkpoint(path, err)) from err
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def not_a_checkpoint(path: str | Path, err: BaseException) -> str:
    """The message for a file torch.load cannot read: which file, that it is no checkpoint, torch's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    # torch's weights-only refusal opens with advice; its "Unsupported operand/global" line says what it met
    first = next((line for line in lines if "Unsupported" in line), lines[0])[:160]
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    return (f"checkpoint {path} is not a readable PyTorch checkpoint (damaged, truncated or another kind of file; "
            f"{size} bytes; torch.load: {type(err).__name__}: {first})")


def is_reference_format(obj: dict[str, Any]) -> bool:
    """Ours carry {"config": {"model": ...}}; the reference's (and bare state dicts) do not."""
    config = obj.get("config")
    return not (isinstance(config, dict) and isinstance(config.get("model"), dict))


def is_training_checkpoint(obj: dict[str, Any]) -> bool:
    """Ours (main.py's) carry the resume fields besides their model config; the reference's has only
    epoch/name/state_dict/optimizer/scaler."""
    return not is_reference_format(obj) and {"step", "scheduler_step", "rng"} <= set(obj)


def clean_state_dict(obj: dict[str, Any]) -> dict[str, Tensor]:
    """Take ["state_dict"] if present, strip a leading `module.`, drop BERT's position_ids and pooler keys."""
    state = obj.get("state_dict", obj)
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        key = key.removeprefix("module.")
        if key in DROPPED_KEYS or ".pooler." in key:
            continue
        out[key] = value
    return out


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load every key; any missing, unexpected or mis-shaped tensor is an error naming `source`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {source} does not match the model: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load weights from our checkpoint or the reference's `reaf.pt` (with or without `module.`) into `model`.

    A reference-format file switches the model to `reference_compat`, so the official weights give the official
    embeddings. Raises on any mismatch. `ckpt`: the file as read_checkpoint already gave it (not read again).
    Returns the whole loaded checkpoint (optimizer state etc. for resuming).
    """
    obj = read_checkpoint(path) if ckpt is None else ckpt
    reference = is_reference_format(obj)
    compat = True if reference else bool(obj["config"]["model"]["vision"].get("reference_compat", False))
    load_state_dict_strict(model, clean_state_dict(obj), str(path))
    if model.visual.trunk.reference_compat != compat:  # type: ignore[union-attr]
        log.info("%s: reference_compat set to %s (as the checkpoint was trained)", path, compat)
    model.set_reference_compat(compat)  # type: ignore[operator]
    return obj


def model_from_checkpoint(path: str | Path, *, model: str | None = None, cxr_bert_path: str | None = None,
                          config: dict[str, Any] | None = None) -> nn.Module:
    """The one way to get a model back from a checkpoint: built from `model` (a configs/ name or JSON) when given,
    else from `config` (a model config dict, e.g. one an embeddings file recorded), else from the checkpoint's own
    config (the reference model for a reference-format file); then its weights loaded strictly. Returns it in eval
    mode on the CPU, with `recorded_input`: the InputSpec it was trained on (pretrained.recorded_input_spec), which
    the evaluation tools use when no --input-info is given."""
    from reaf.model.clip import create_model
    from reaf.model.config import config_from_dict
    from reaf.model.pretrained import recorded_input_spec

    if Path(path).is_dir():  # a weights folder builds its own text tower and tokenizer (reaf.model.pretrained)
        from reaf.model.pretrained import from_pretrained

        return from_pretrained(path, model=model, config=config, cxr_bert_path=cxr_bert_path)
    ckpt = read_checkpoint(path)  # read once: the config (when needed) and the weights come from this one load
    if model is not None:
        net = create_model(model, cxr_bert_path=cxr_bert_path)
    elif config is not None:
        net = create_model(config_from_dict(config, where=str(path)), cxr_bert_path=cxr_bert_path)
    elif is_reference_format(ckpt):
        log.info("%s is in the reference format: building %s", path, REFERENCE_MODEL)
        net = create_model(REFERENCE_MODEL, cxr_bert_path=cxr_bert_path)
    else:
        net = create_model(config_from_dict(ckpt["config"]["model"], where=str(path)), cxr_bert_path=cxr_bert_path)
    load_checkpoint(net, path, ckpt)
    net.recorded_input = recorded_input_spec(ckpt, net.cfg.vision.img_size)
    return net.eval()
