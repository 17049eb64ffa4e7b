"""Embeddings files: image + report embeddings of a split, keyed by checkpoint hash + data, reused when unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from reaf import atomic, dist
from reaf.evaluation.encoding import encode_split, split_labels
from reaf.finite import require_finite

log = logging.getLogger(__name__)

REPORT_TEXT = (
    "Sample.report as reaf.data.readers reads it for training: 'Findings: ... Impressions: ...' from the "
    "reports CSV, or the reference's report JSON when --report-root is given"
)

EMBEDDINGS_VERSION = 1
FULL_HASH_LIMIT = 512 * 2**20  # files above this are hashed on their first and last MiB plus their size
PARTIAL_BLOCK = 2**20


def _files_digest(split: Any) -> str:
    """sha256 over (relative path, size, mtime) of every volume file: a changed file changes the digest."""
    from reaf.data.formats import volume_file

    digest = hashlib.sha256()
    for sample in split.samples:
        stat = volume_file(Path(split.root), sample.rel, split.fmt).stat()
        digest.update(f"{sample.rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_description(split: Any, spec: Any) -> dict[str, Any]:
    """What the embeddings depend on besides the model: source, format, input spec, names, reports, file stats."""
    return {
        "source": str(split.source),
        "root": str(split.root),
        "format": split.fmt,
        "input": {"size": list(spec.size), "hu_min": spec.hu_min, "hu_max": spec.hu_max, "mode": spec.mode},
        "volumes": [s.name for s in split.samples],
        "reports_sha256": hashlib.sha256("\x00".join(s.report for s in split.samples).encode()).hexdigest(),
        "volume_files_sha256": _files_digest(split),
    }


def encoded_split(
    model: torch.nn.Module,
    split: Any,
    spec: Any,
    *,
    results_dir: Path,
    checkpoint: dict | None,
    data: dict,
    encoded: dict | None = None,
    file_name: str = "embeddings.pt",
    **loader_args: Any,
) -> tuple[dict | None, bool]:
    """(encoded, reused): results_dir/file_name (embeddings.pt; the probe keeps its train split in
    embeddings_train.pt beside it) when checkpoint and data are unchanged (logged), else the split
    encoded by encode_split (every rank takes part) and written there by rank 0 with its key and meta (checkpoint,
    model config, `data` = data_description(split, spec)); rank 0 decides the reuse, the other ranks get
    (None, reused). `encoded`: the split already encoded by the caller: only written (no collective, no reuse)."""
    from reaf.model.bert_folder import describe_folder

    config = dist.unwrap(model).cfg.to_dict()
    text = describe_folder(getattr(dist.unwrap(model), "bert_path", None))
    key = cache_key(checkpoint, config, data, text)
    path = results_dir / file_name
    if encoded is None:  # no collective otherwise: training's rank 0 calls this alone with its encoding
        cached = reusable_embeddings(path, key) if dist.is_main() else None
        if dist.broadcast_object(cached is not None):
            if cached is not None:
                labels, row = split_labels(split), {s.name: i for i, s in enumerate(split.samples)}
                # not in the key: always the current labels, for the volumes encoded (--skip-bad may drop some)
                cached["labels"] = None if labels is None else labels[[row[name] for name in cached["names"]]]
            return cached, True
        encoded = encode_split(model, split, spec, **loader_args)
    if not dist.is_main():
        return None, False
    save_embeddings(path, encoded, key=key, meta={"checkpoint": checkpoint, "model_config": config, "data": data,
                                                        "text_tower": text})
    return encoded, False


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """{"path", "size", "sha256", "sha256_scope"} of a file; huge files hash first+last MiB and the size (said so).
    A weights folder (reaf.export) is fingerprinted by its config.json and model.safetensors."""
    path = Path(path)
    if path.is_dir():
        from reaf.model.pretrained import folder_fingerprint

        return folder_fingerprint(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**24), b""):
                digest.update(block)
            scope = "full file"
        else:
            digest.update(f.read(PARTIAL_BLOCK))
            f.seek(size - PARTIAL_BLOCK)
            digest.update(f.read(PARTIAL_BLOCK))
            digest.update(str(size).encode())
            scope = f"first and last {PARTIAL_BLOCK} bytes + size (file larger than {FULL_HASH_LIMIT} bytes)"
    return {"path": str(path.resolve()), "size": size, "sha256": digest.hexdigest(), "sha256_scope": scope}


def check_fingerprint(recorded: dict[str, Any], path: str | os.PathLike) -> None:
    """ValueError naming the file when the checkpoint at `path` is not the one `recorded` (a file_fingerprint, as an
    embeddings file or results.json holds it) describes: a file replaced since, or another checkpoint. The one
    check of "same weights as recorded", for a checkpoint file and a weights folder (fingerprinted by its config.json
    and model.safetensors) alike."""
    path = Path(path)
    if not (path.is_file() or path.is_dir()):
        raise FileNotFoundError(f"{path}: checkpoint not found (the embeddings were made with {recorded.get('path')})")
    now = file_fingerprint(path)
    if (now["size"], now["sha256"]) != (recorded.get("size"), recorded.get("sha256")):
        raise ValueError(f"{path}: not the checkpoint the embeddings were made with ({now['size']} bytes, sha256 "
                         f"{now['sha256'][:12]}...; recorded {recorded.get('path')}: {recorded.get('size')} bytes, "
                         f"sha256 {str(recorded.get('sha256'))[:12]}...): the file changed since; pass --resume with "
                         "that checkpoint, or run zero_shot.py again to re-encode the split")


def cache_key(checkpoint: dict[str, Any] | None, model_config: dict, data: dict[str, Any],
              text_tower: dict[str, Any] | None = None) -> str | None:
    """The reuse key: sha256 over checkpoint hash, model config, data description and the text tower's BERT folder
    (reaf.bert_folder.describe_folder); None without a checkpoint."""
    if checkpoint is None:
        return None
    blob = json.dumps({"checkpoint": checkpoint["sha256"], "model": model_config, "data": data, "text": text_tower},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_embeddings(path: Path, encoded: dict[str, Any], *, key: str | None, meta: dict[str, Any]) -> None:
    """Write `encoded` ({"names", "scan_ids", "reports", "image" (N,E), "text" (N,E), "logit_scale", ...}) + meta."""
    payload = {"version": EMBEDDINGS_VERSION, "key": key, "meta": meta}
    for name, value in encoded.items():
        payload[name] = torch.as_tensor(value) if name in ("image", "text", "labels") and value is not None else value
    atomic.torch_save(payload, path)


def load_embeddings(path: Path) -> dict[str, Any]:
    """Read an embeddings file (weights_only); image/text come back as float32 numpy arrays (N, E)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable REAF embeddings file ({err})") from err
    if not isinstance(payload, dict) or payload.get("version") != EMBEDDINGS_VERSION:
        raise ValueError(f"{path}: not a REAF embeddings file of version {EMBEDDINGS_VERSION}")
    for name in ("image", "text", "labels"):
        if payload.get(name) is not None:
            payload[name] = payload[name].float().numpy()
    for name in ("image", "text"):  # a NaN row would otherwise just never be found (or always be)
        if payload.get(name) is not None:
            require_finite(payload[name], f"{path}: {name} embeddings", payload.get("names"))
    return payload


def reusable_embeddings(path: Path, key: str | None) -> dict[str, Any] | None:
    """The embeddings stored at `path` if their key equals `key` (same checkpoint and data), else None; logged."""
    if key is None or not path.is_file():
        return None
    try:
        payload = load_embeddings(path)
    except ValueError as err:
        log.warning("not reusing embeddings: %s", err)
        return None
    if payload.get("key") != key:
        log.info("embeddings at %s were made from another checkpoint or data; encoding again", path)
        return None
    log.info("reusing embeddings from %s (same checkpoint sha256 and data; key %s)", path, key[:12])
    return payload
