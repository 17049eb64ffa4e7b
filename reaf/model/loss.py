"""Symmetric contrastive (InfoNCE) loss over the global batch: local rows, all-gathered columns with gradient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reaf import dist
from reaf.data.text_sampling import split_sentences

POSITIVES = ("own", "shared")  # main.py --positives: each text's own volume, or see shared_positives


def _symmetric_ce(img: torch.Tensor, txt: torch.Tensor, all_img: torch.Tensor, all_txt: torch.Tensor,
                  scale: torch.Tensor, offset: int, positives: torch.Tensor | None = None) -> torch.Tensor:
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"image features {tuple(img.shape)} and text features {tuple(txt.shape)} must be (n, E)")
    n, total = img.shape[0], all_img.shape[0]
    logits_per_image = scale * img @ all_txt.T  # (n, N)
    logits_per_text = scale * txt @ all_img.T
    if positives is None:
        labels = torch.arange(n, device=img.device) + offset
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    if positives.shape != (total, total):
        raise ValueError(f"positives {tuple(positives.shape)} must be (N, N) = ({total}, {total})")
    rows = slice(offset, offset + n)
    if not bool(positives.diagonal().all()):
        raise ValueError("positives must hold every sample's own pair (its diagonal)")
    # soft targets: each row's positives share its probability mass equally (one-hot rows give the plain loss)
    targets_per_text = positives[rows].to(logits_per_text.dtype)  # (n, N): text i -> volumes
    targets_per_image = positives[:, rows].T.to(logits_per_image.dtype)  # (n, N): volume j -> texts
    targets_per_text = targets_per_text / targets_per_text.sum(1, keepdim=True)
    targets_per_image = targets_per_image / targets_per_image.sum(1, keepdim=True)
    by_image = F.cross_entropy(logits_per_image, targets_per_image)
    return (by_image + F.cross_entropy(logits_per_text, targets_per_text)) / 2


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy for this rank's rows against every rank's columns.

    img, txt: (n, E) unit-norm features of this rank (every rank the same n; under accumulation n spans all
    micro-batches); scale: () the exp'd logit scale. Returns a 0-dim loss. This is open_clip's
    ClipLoss(local_loss=True, gather_with_grad=True): the mean over ranks equals the loss of the whole gathered
    batch and, because the gather passes gradients back, DDP's gradient average equals that loss's gradient.
    positives: None (each text's positive is its own volume: CLIP) or (N, N) bool over the whole gathered batch,
    [text i, volume j] true when text i is as true of volume j (shared_positives); each row's target
    is then spread equally over its positives, in both directions.
    """
    all_img = dist.gather_with_grad(img)  # (world*n, E), rank order
    all_txt = dist.gather_with_grad(txt)
    return _symmetric_ce(img, txt, all_img, all_txt, scale, offset=img.shape[0] * dist.rank(), positives=positives)


def local_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                           positives: torch.Tensor | None = None) -> torch.Tensor:
    """The same loss over features held by this process only (evaluation on one rank; no collectives)."""
    return _symmetric_ce(img, txt, img, txt, scale, offset=0, positives=positives)


def shared_positives(texts: list[str], reports: list[str]) -> np.ndarray:
    """(N, N) bool: [i, j] when every sentence of text i is a sentence of report j, so text i is as true of volume j
    as of its own (a repeated negation such as "No pleural effusion was detected.", the one report of two
    reconstructions of a scan). Text i is sample i's, drawn from reports[i], so the diagonal is always true. A text
    without sentences counts as one sentence, itself."""
    if len(texts) != len(reports):
        raise ValueError(f"{len(texts)} texts for {len(reports)} reports")
    # one row per distinct sentence of the texts, one column per report: [s, j] when report j holds sentence s;
    # each distinct string is split once (a whole-report text is its report). For a global batch of 2048 this takes
    # 0.16 s where nested frozenset comparisons took 0.56 s (bench/bench_positives.py).
    split = {text: split_sentences(text) for text in {*texts, *reports}}
    row: dict[str, int] = {}
    text_rows = [[row.setdefault(s, len(row)) for s in (split[t] or [t.strip()])] for t in texts]
    holds = np.zeros((len(row), len(reports)), dtype=bool)
    for j, report in enumerate(reports):
        holds[[row[s] for s in {*split[report], report.strip()} if s in row], j] = True
    return np.stack([holds[rows].all(axis=0) for rows in text_rows]) if texts else np.zeros((0, 0), dtype=bool)
