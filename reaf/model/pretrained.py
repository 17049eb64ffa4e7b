"""Weights folders: a model shared without pickles (config.json, model.safetensors, text/, README.md), written by
`save_pretrained` and read back offline by `from_pretrained`; nothing on the reading path calls torch.load."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reaf import atomic
from reaf.data import transforms as T
from reaf.data.input_spec import InputSpec

log = logging.getLogger(__name__)

FORMAT = "reaf-weights"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TEXT_DIR, CARD_FILE = "config.json", "model.safetensors", "text", "README.md"
PROMPT_PROTOCOL = {"version": "1", "template": "volume", "pairs": "reaf.evaluation.prompts (Not X, X)"}
ORIENTATION = ("CT-RATE's voxel order (L, P, S axes, z from the feet up) read from the NIfTI header's affine "
               "(reaf.data.orientation, policy 'header'); DICOM series ordered along the slice normal")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "special_tokens_map.json")


def is_weights_folder(path: str | Path) -> bool:
    """A folder holding a weights folder's config.json (the last file save_pretrained writes)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_folder_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a weights folder, checked: its format and version, and that the weights file is there."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a REAF weights folder (no {CONFIG_FILE}; written by python -m "
                                "reaf.export, which writes it last)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a REAF weights folder config (format {FORMAT!r} expected)")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {info.get('format_version')!r}; this reaf reads {FORMAT_VERSION}")
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: the weights folder lacks {WEIGHTS_FILE}")
    return info


def read_weights(folder: str | Path) -> dict[str, Any]:
    """A weights folder as a checkpoint dict: {"state_dict", "config": {"model", "args"}, "weights_folder"} (the
    shape reaf.model.checkpoint reads), from safetensors: no unpickling."""
    from safetensors.torch import load_file

    info = read_folder_config(folder)
    try:
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error types for a cut or foreign file
        raise ValueError(f"{Path(folder) / WEIGHTS_FILE}: not a readable safetensors file ({err})") from err
    return {"state_dict": state, "config": {"model": info["model"], "args": info.get("train")}, "weights_folder": info}


def folder_fingerprint(folder: str | Path) -> dict[str, Any]:
    """{"path", "size", "sha256", "sha256_scope"} of a weights folder: sha256 over its config.json and weights."""
    folder = Path(folder)
    digest, size = hashlib.sha256(), 0
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(2**24), b""):
                digest.update(block)
                size += len(block)
    return {"path": str(folder.resolve()), "size": size, "sha256": digest.hexdigest(),
            "sha256_scope": f"weights folder: {CONFIG_FILE} then {WEIGHTS_FILE}"}


def _same_architecture(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Configs equal up to vision.reference_compat (the weights' own switch, as for checkpoints)."""
    def strip(cfg: dict[str, Any]) -> dict[str, Any]:
        return {**cfg, "vision": {k: v for k, v in cfg["vision"].items() if k != "reference_compat"}}

    return strip(a) == strip(b)


def from_pretrained(folder: str | Path, *, model: str | None = None, config: dict[str, Any] | None = None,
                    cxr_bert_path: str | None = None) -> nn.Module:
    """The model of a weights folder, offline, in eval mode on the CPU: architecture from config.json, the BERT's
    from text/config.json, tokenizer from text/, every weight from model.safetensors (strict); never unpickles.

    `model` (a configs/ name or JSON) or `config` (a config dict, e.g. one an embeddings file recorded) may be given
    by callers that take them for checkpoints: they must describe the folder's architecture. `cxr_bert_path` is
    used for the tokenizer only when the folder has none (exported from a checkpoint without its BERT folder).
    """
    from transformers import BertModel

    from reaf.model.bert_folder import read_bert_config
    from reaf.model.checkpoint import load_state_dict_strict
    from reaf.model.clip import ReafCLIP
    from reaf.model.config import config_from_dict, load_model_config

    folder = Path(folder)
    weights = read_weights(folder)
    info = weights["weights_folder"]
    cfg = config_from_dict(info["model"], where=str(folder / CONFIG_FILE))
    asked = load_model_config(model).to_dict() if model is not None else config
    if asked is not None and not _same_architecture(config_from_dict(asked).to_dict(), cfg.to_dict()):
        raise ValueError(f"{folder}: the weights folder holds another architecture than the model asked for "
                         f"({model or 'the recorded config'}); leave --model out to use the folder's own")
    text_dir = folder / TEXT_DIR
    tokenizer_dir: str | None = str(text_dir) if info["text_tower"].get("tokenizer") else None
    if tokenizer_dir is None and cxr_bert_path is not None:
        log.info("%s has no tokenizer: using the one of %s", folder, cxr_bert_path)
        tokenizer_dir = str(cxr_bert_path)
    elif cxr_bert_path is not None:
        log.info("%s carries its own text tower and tokenizer: --cxr-bert-path %s is not used", folder, cxr_bert_path)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the global RNG as it was
        bert = BertModel(read_bert_config(text_dir), add_pooling_layer=False)
        net = ReafCLIP(cfg, bert_path=tokenizer_dir, bert=bert)
    load_state_dict_strict(net, weights["state_dict"], str(folder / WEIGHTS_FILE))
    net.set_reference_compat(cfg.vision.reference_compat)
    net.recorded_input = recorded_input_spec(weights, cfg.vision.img_size)
    return net.eval()


def describe_input(spec: InputSpec) -> dict[str, Any]:
    """The input a model expects, as config.json records it."""
    return {
        "spacing_mm_zyx": list(T.TARGET_SPACING),
        "resample": f"trilinear, align_corners=False, voxel count max(1, {T.RESAMPLE_GRID}) per axis (the "
                    "reference's grid: the count truncated)",
        "hu_window": [spec.hu_min, spec.hu_max],
        "fit": spec.mode,
        "size_dhw": list(spec.size),
        "normalise": {"mean": T.MEAN, "std": T.STD, "of": "windowed values clip((HU - min) / (max - min), 0, 1)"},
        "orientation": ORIENTATION,
    }


def input_spec_of(record: dict[str, Any]) -> InputSpec:
    """describe_input's record -> InputSpec."""
    low, high = record["hu_window"]
    return InputSpec(size=tuple(record["size_dhw"]), hu_min=float(low), hu_max=float(high), mode=record["fit"])


def recorded_input_spec(obj: dict[str, Any], img_size: tuple[int, int, int]) -> InputSpec:
    """The input a checkpoint dict was trained on: a weights folder's record, our checkpoint's --input-info, else
    (the reference's reaf.pt, which records none) the defaults -1150 350 crop."""
    if "weights_folder" in obj:
        return input_spec_of(obj["weights_folder"]["input"])
    args = (obj.get("config") or {}).get("args") or {}
    return InputSpec.from_args(args.get("input_info"), img_size)


def text_tower_source(model: nn.Module) -> tuple[str, Path | None]:
    """(kind, folder holding its tokenizer) of a model's text tower: "bert-folder" (--cxr-bert-path),
    "pretrained-package" (text.pretrained), "builtin" (the offline vocabulary) or "random" (no tokenizer known)."""
    from reaf.model.text import pretrained_folder

    if getattr(model, "bert_path", None) is not None:
        return "bert-folder", Path(model.bert_path)
    if model.cfg.text.pretrained is not None:
        return "pretrained-package", pretrained_folder(model.cfg.text.pretrained)
    return ("builtin", None) if model.cfg.text.tokenizer == "builtin" else ("random", None)


def write_text_folder(model: nn.Module, folder: Path) -> dict[str, Any]:
    """text/: the BERT's config.json (plain BertModel, as built) and the tokenizer's files; returns the
    config.json description of the text tower. The text weights are in model.safetensors."""
    from reaf.model.bert_folder import CONFIG_FIELDS, TOKENIZER_OPTIONS
    from reaf.model.text import builtin_vocab

    bert_cfg = model.text.transformer.config
    fields = {k: getattr(bert_cfg, k) for k in CONFIG_FIELDS if getattr(bert_cfg, k, None) is not None}
    atomic.write_json({"model_type": "bert", "architectures": ["BertModel"], **fields}, folder / "config.json",
                      indent=2)
    kind, source = text_tower_source(model)
    files: list[str] = []
    if kind == "builtin":
        atomic.write_text(folder / "vocab.txt", "\n".join(builtin_vocab()) + "\n")
        atomic.write_json({"tokenizer_class": "BertTokenizer", "do_lower_case": True},
                          folder / "tokenizer_config.json", indent=2)
        files = ["vocab.txt", "tokenizer_config.json"]
    elif source is not None:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                atomic.write_bytes(folder / name, (source / name).read_bytes())
                files.append(name)
        options = {}
        if (source / "tokenizer_config.json").is_file():  # only BERT's options: no auto_map, no custom class
            saved = json.loads((source / "tokenizer_config.json").read_text())
            options = {k: saved[k] for k in TOKENIZER_OPTIONS if saved.get(k) is not None}
        atomic.write_json({"tokenizer_class": "BertTokenizer", **options}, folder / "tokenizer_config.json", indent=2)
        files.append("tokenizer_config.json")
    if kind == "random":
        log.warning("the text tower has no tokenizer (a %r tokenizer without --cxr-bert-path): the weights folder "
                    "can encode volumes but not text; export with --cxr-bert-path to include it", model.cfg.text.tokenizer)
    return {
        "kind": kind,
        "source": None if source is None else str(source),
        "bert": {"hidden_size": bert_cfg.hidden_size, "num_hidden_layers": bert_cfg.num_hidden_layers,
                 "vocab_size": bert_cfg.vocab_size, "config": f"{TEXT_DIR}/config.json"},
        "pooling": model.cfg.text.pooling,
        "context_length": model.cfg.text.context_length,
        "tokenizer": None if kind == "random" else {"class": "BertTokenizer", "folder": TEXT_DIR, "files": files},
        "weights": f"{WEIGHTS_FILE} (text.transformer.*, text.proj.*)",
    }


def save_pretrained(model: nn.Module, folder: str | Path, *, input_spec: InputSpec, source: dict[str, Any] | None,
                    train: dict[str, Any] | None = None, card: str | None = None,
                    thresholds: dict[str, Any] | None = None) -> Path:
    """Write the weights folder of `model`: text/, model.safetensors, README.md (`card`), then config.json last,
    each file atomically (a folder without config.json is unfinished). Refuses a folder that is not empty."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder}: exists and is not an empty folder; choose another --out or remove it")
    text = write_text_folder(model, folder / TEXT_DIR)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_output(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "reaf.export"})
    if card is not None:
        atomic.write_text(folder / CARD_FILE, card)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model.cfg.to_dict(),
        "reference_compat": bool(model.cfg.vision.reference_compat),
        "text_tower": text,
        "input": describe_input(input_spec),
        "prompts": PROMPT_PROTOCOL,
        "source_checkpoint": source,
        "train": train,
    }
    if thresholds is not None:  # reaf.predict's findings (reaf.evaluation.thresholds)
        info["thresholds"] = thresholds
    atomic.write_json(info, folder / CONFIG_FILE, indent=2)
    return folder


def export_checkpoint(checkpoint: str | Path, folder: str | Path, *, results: str | Path | None = None,
                      cxr_bert_path: str | None = None, model: str | None = None) -> Path:
    """Our checkpoint, the reference's reaf.pt (-> the paper model with reference_compat) or a weights folder ->
    a weights folder with its model card (evaluation table from a zero_shot.py results.json when given). `model`:
    a configs/ name or JSON to build instead of the checkpoint's own (as zero_shot.py --model)."""
    from reaf.evaluation.embeddings import file_fingerprint
    from reaf.model.checkpoint import is_reference_format, model_from_checkpoint, read_checkpoint
    from reaf.model.model_card import model_card

    obj = read_checkpoint(checkpoint)
    reference = is_reference_format(obj)
    train = None if reference else (obj["config"].get("args") or None)
    run = {k: obj[k] for k in ("epoch", "step", "name") if isinstance(obj.get(k), (int, str))}
    kind = "reference (open_clip reaf.pt)" if reference else "reaf checkpoint"
    if "weights_folder" in obj:
        kind = "reaf weights folder"
        run = dict((obj["weights_folder"].get("source_checkpoint") or {}).get("run") or {})
    del obj
    net = model_from_checkpoint(checkpoint, model=model, cxr_bert_path=cxr_bert_path)
    spec = net.recorded_input
    source = {**file_fingerprint(checkpoint), "format": kind, "run": run}
    evaluation = read_results(results) if results is not None else None
    thresholds = None if evaluation is None else _export_thresholds(evaluation, results, checkpoint, spec)
    card = model_card(net, source=source, train=train, input_spec=spec, results=evaluation, thresholds=thresholds)
    return save_pretrained(net, folder, input_spec=spec, source=source, train=train, card=card, thresholds=thresholds)


def _export_thresholds(results: dict[str, Any], path: str | Path, checkpoint: str | Path,
                       spec: InputSpec) -> dict[str, Any] | None:
    """The per-class thresholds of `results` when they are these weights' on this input (then reaf.predict reports
    findings with them), else None with the reason logged."""
    from reaf.evaluation.thresholds import thresholds_from_results, weights_sha256

    template = results.get("template")
    if template not in ("volume", "organ"):
        log.warning("%s: template %r: no thresholds recorded (one template's results are needed)", path, template)
        return None
    try:
        found = thresholds_from_results(results, str(path), weights=weights_sha256(Path(checkpoint)),
                                        template=template, input_spec=spec.describe())
    except ValueError as err:
        log.warning("no thresholds recorded: %s", err)
        return None
    return {"values": found.values, **found.source}


def read_results(path: str | Path) -> dict[str, Any]:
    """A zero_shot.py results.json (for the model card's evaluation table)."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable results.json ({err})") from err
    if not isinstance(results, dict) or "classification" not in results:
        raise ValueError(f"{path}: not a zero_shot.py results.json (no 'classification' entry)")
    return results
