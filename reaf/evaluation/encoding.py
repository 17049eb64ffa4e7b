"""Encoding a split for evaluation: every volume and every distinct report once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from reaf.finite import require_finite


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@torch.inference_mode()
def encode_texts(
    model: torch.nn.Module, texts: list[str], *, batch_size: int, device: str | torch.device
) -> np.ndarray:
    """Unit-norm text embeddings (T, E) float32 of `texts`, batched through model.tokenize + model.encode_text."""
    model = unwrap(model)
    chunks = []
    for start in range(0, len(texts), batch_size):
        input_ids, attention_mask = model.tokenize(texts[start : start + batch_size])
        chunks.append(model.encode_text(input_ids.to(device), attention_mask.to(device)).float().cpu())
    out = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    require_finite(out, "text embeddings (a NaN in the text tower's weights?)", [t[:60] for t in texts])
    return out


@torch.inference_mode()
def encode_volumes(
    model: torch.nn.Module,
    loader: Any,
    names: list[str],
    *,
    device: str | torch.device,
    skipped: dict[str, str] | None = None,
) -> np.ndarray:
    """Unit-norm image embeddings (N, E) float32 in the order of `names`; each volume of `loader` encoded once.

    With `skipped` (a dict to fill: name -> cause of volumes the loader dropped under --skip-bad) the rows of
    the skipped volumes are left out: (N - len(skipped), E) in the order of the remaining names."""
    model = unwrap(model)
    position = {name: i for i, name in enumerate(names)}
    out: np.ndarray | None = None
    seen = np.zeros(len(names), dtype=bool)
    for batch in tqdm(loader, desc="encode volumes", unit="batch", leave=False):
        if skipped is not None:
            skipped.update(batch.get("skipped", []))
        if not batch["name"]:
            continue
        emb = model.encode_image(batch["image"].to(device, non_blocking=True)).float().cpu().numpy()
        require_finite(emb, "image embeddings (a NaN volume or NaN weights?)", batch["name"])
        rows = [position[name] for name in batch["name"]]
        if out is None:
            out = np.zeros((len(names), emb.shape[1]), np.float32)
        out[rows] = emb
        seen[rows] = True
    dropped = np.array([name in (skipped or {}) for name in names], dtype=bool)
    if out is None or not (seen | dropped).all():
        missing = [names[i] for i in np.flatnonzero(~seen & ~dropped)[:5]]
        if out is None and dropped.all():
            raise RuntimeError(f"--skip-bad: every one of the {len(names)} volume(s) was unreadable, e.g. "
                               f"{list(skipped.items())[:2]}")
        raise RuntimeError(f"the loader did not yield {int((~seen).sum())} volume(s) of the split, e.g. {missing}")
    return out[~dropped]


def _loader(
    split: Any, spec: Any, tokenize: Any, *, batch_size: int, workers: int, seed: int, skip_bad: bool = False
) -> Any:
    """The whole split in order on this process (one replica), whatever torch.distributed says."""
    from reaf.data.loader import build_dataloader

    return build_dataloader(split, spec, tokenize, batch_size=batch_size, workers=workers, seed=seed, train=False,
                            num_replicas=1, rank=0, skip_bad=skip_bad)


def split_labels(split: Any) -> np.ndarray | None:
    """(N, 18) float32 labels of the split (NaN = unknown), or None when it has none."""
    return np.stack([s.labels for s in split.samples]).astype(np.float32) if split.has_labels else None


def encode_split(
    model: torch.nn.Module,
    split: Any,
    spec: Any,
    *,
    batch_size: int,
    workers: int,
    device: str | torch.device,
    seed: int = 0,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Encode every volume once and every distinct report once.

    Returns {"names", "scan_ids", "reports" (N lists), "image" (N, E), "text" (N, E) (row i = report of volume i;
    identical reports share one encoding), "labels" (N, 18) float or None, "logit_scale" float, "skipped"}.
    skip_bad: volumes that cannot be read are left out of every field and listed in "skipped" ([{name, cause}]).
    """
    inner = unwrap(model)
    loader = _loader(split, spec, inner.tokenize, batch_size=batch_size, workers=workers, seed=seed,
                     skip_bad=skip_bad)
    skipped: dict[str, str] = {}
    image = encode_volumes(inner, loader, [s.name for s in split.samples], device=device, skipped=skipped)
    kept = [i for i, s in enumerate(split.samples) if s.name not in skipped]
    names = [split.samples[i].name for i in kept]
    reports = [split.samples[i].report for i in kept]
    labels = split_labels(split)
    unique = list(dict.fromkeys(reports))
    row = {text: i for i, text in enumerate(unique)}
    text = encode_texts(inner, unique, batch_size=batch_size, device=device)[[row[r] for r in reports]]
    return {
        "names": names,
        "scan_ids": [split.samples[i].scan_id for i in kept],
        "reports": reports,
        "image": image,
        "text": text,
        "labels": None if labels is None else labels[kept],
        "logit_scale": float(inner.logit_scale.detach().float().exp().cpu()),
        "skipped": [{"name": name, "cause": cause} for name, cause in skipped.items()],
    }
