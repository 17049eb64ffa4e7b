"""Encoding a split for evaluation: every volume and every distinct report once, sharded over the ranks.

Under torch.distributed each rank encodes its share (volumes r, r+W, r+2W, ... of the split's order, and likewise
the distinct reports) and the shares are gathered, so that every rank holds the whole split's embeddings in the
split's order; with one process this is the plain loop over the split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from reaf import dist
from reaf.finite import require_finite

log = logging.getLogger(__name__)
T = TypeVar("T")


@torch.inference_mode()
def encode_texts(
    model: torch.nn.Module, texts: list[str], *, batch_size: int, device: str | torch.device
) -> np.ndarray:
    """Unit-norm text embeddings (T, E) float32 of `texts` (row i = texts[i]), batched through model.tokenize +
    model.encode_text in order of length, so that a batch pads to about its own length (reports vary 2-3x)."""
    model = dist.unwrap(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    for start in range(0, len(texts), batch_size):
        input_ids, attention_mask = model.tokenize([texts[i] for i in order[start : start + batch_size]])
        chunks.append(model.encode_text(input_ids.to(device), attention_mask.to(device)).float().cpu())
    out = np.zeros((0, 0), np.float32)
    if chunks:
        out = torch.cat(chunks)[torch.argsort(torch.tensor(order))].numpy()
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
    the skipped volumes are left out: (N - len(skipped), E) in the order of the remaining names; (0, 0) when no
    volume was encoded (every one skipped, or `names` empty)."""
    model = dist.unwrap(model)
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
    if not (seen | dropped).all():
        missing = [names[i] for i in np.flatnonzero(~seen & ~dropped)[:5]]
        raise RuntimeError(f"the loader did not yield {int((~seen).sum())} volume(s) of the split, e.g. {missing}")
    return np.zeros((0, 0), np.float32) if out is None else out[~dropped]


def _loader(
    split: Any, spec: Any, tokenize: Any, *, batch_size: int, workers: int, seed: int, skip_bad: bool = False
) -> Any:
    """This rank's share of the split, in the split's order (the whole split on a single process)."""
    from reaf.data.loader import build_dataloader

    return build_dataloader(split, spec, tokenize, batch_size=batch_size, workers=workers, seed=seed, train=False,
                            skip_bad=skip_bad)


def split_labels(split: Any) -> np.ndarray | None:
    """(N, 18) float32 labels of the split (NaN = unknown), or None when it has none."""
    return np.stack([s.labels for s in split.samples]).astype(np.float32) if split.has_labels else None


def on_every_rank(work: Callable[[], T]) -> list[T]:
    """Every rank's work() result, in rank order, on every rank. When work() raised on any rank, every rank
    raises (that rank its own error, the others a RuntimeError naming it), so that no rank waits for one that
    stopped. One process: [work()], its error unchanged."""
    try:
        result, error = work(), None
    except Exception as err:  # re-raised below, after the other ranks have heard of it
        result, error = None, err
    gathered = dist.all_gather_object((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failed = [(rank, cause) for rank, (_, cause) in enumerate(gathered) if cause is not None]
    if failed:
        raise RuntimeError(f"evaluation stopped on rank {failed[0][0]}: {failed[0][1]}")
    return [part for part, _ in gathered]


def _in_index_order(parts: list[tuple[list[int], np.ndarray]], wanted: list[int], what: str) -> np.ndarray:
    """Rows gathered from the ranks, each part (split indices, (len, E) rows), in increasing index order; the
    indices must be exactly `wanted` (increasing): (len(wanted), E)."""
    order = [i for indices, _ in parts for i in indices]
    arrays = [rows for indices, rows in parts if indices]
    if sorted(order) != list(wanted) or not arrays:
        raise RuntimeError(f"{what}: the ranks' shares hold {len(order)} row(s), expected {len(wanted)}")
    return np.concatenate(arrays)[np.argsort(order, kind="stable")]


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
    loader: Any = None,
    texts: bool = True,
) -> dict[str, Any]:
    """Encode every volume once and every distinct report once; every rank must call it (see the module doc).

    Returns, on every rank, {"names", "scan_ids", "reports" (N lists), "image" (N, E), "text" (N, E) (row i =
    report of volume i; identical reports share one encoding), "labels" (N, 18) float or None, "logit_scale" float,
    "skipped"} in the split's order. skip_bad: volumes that cannot be read are left out of every field and listed
    in "skipped" ([{name, cause}], split order). `loader`: this rank's share (built here when None; training
    passes its own so that persistent workers live across epochs). texts=False: no report is encoded and "text" is
    None (the linear probe's training split needs only the images).
    """
    inner = dist.unwrap(model)
    names = [s.name for s in split.samples]
    if loader is None:
        loader = _loader(split, spec, inner.tokenize, batch_size=batch_size, workers=workers, seed=seed,
                         skip_bad=skip_bad)
    share = list(loader.sampler)  # split indices of this rank's volumes, in the split's order

    def encode_share() -> tuple[list[int], np.ndarray, dict[str, str]]:
        skipped: dict[str, str] = {}
        image = encode_volumes(inner, loader, [names[i] for i in share], device=device, skipped=skipped)
        return [i for i in share if names[i] not in skipped], image, skipped

    volumes = on_every_rank(encode_share)
    causes = {name: cause for _, _, skipped in volumes for name, cause in skipped.items()}
    kept = [i for i, name in enumerate(names) if name not in causes]
    if not kept:
        raise RuntimeError(f"--skip-bad: every one of the {len(names)} volume(s) was unreadable, e.g. "
                           f"{list(causes.items())[:2]}")
    image = _in_index_order([(indices, rows) for indices, rows, _ in volumes], kept, "image embeddings")
    reports = [split.samples[i].report for i in kept]
    unique = list(dict.fromkeys(reports)) if texts else []
    mine = list(range(dist.rank(), len(unique), dist.world_size()))
    text = None
    if texts:
        parts = on_every_rank(lambda: (mine, encode_texts(inner, [unique[j] for j in mine], batch_size=batch_size,
                                                          device=device)))
        row = {report: j for j, report in enumerate(unique)}
        text = _in_index_order(parts, list(range(len(unique))), "report embeddings")[[row[r] for r in reports]]
    labels = split_labels(split)
    log.debug("rank %d encoded %d of %d volume(s) and %d of %d report(s)", dist.rank(), len(share), len(names),
              len(mine), len(unique))
    return {
        "names": [names[i] for i in kept],
        "scan_ids": [split.samples[i].scan_id for i in kept],
        "reports": reports,
        "image": image,
        "text": text,
        "labels": None if labels is None else labels[kept],
        "logit_scale": float(inner.logit_scale.detach().float().exp().cpu()),
        "skipped": [{"name": names[i], "cause": causes[names[i]]} for i in range(len(names)) if names[i] in causes],
    }
