"""Symmetric contrastive (InfoNCE) loss over the global batch: local rows, all-gathered columns with gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reaf import dist


def _symmetric_ce(img: torch.Tensor, txt: torch.Tensor, all_img: torch.Tensor, all_txt: torch.Tensor,
                  scale: torch.Tensor, offset: int) -> torch.Tensor:
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"image features {tuple(img.shape)} and text features {tuple(txt.shape)} must be (n, E)")
    labels = torch.arange(img.shape[0], device=img.device) + offset
    logits_per_image = scale * img @ all_txt.T  # (n, N)
    logits_per_text = scale * txt @ all_img.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy for this rank's rows against every rank's columns.

    img, txt: (n, E) unit-norm features of this rank (every rank the same n; under accumulation n spans all
    micro-batches); scale: () the exp'd logit scale. Returns a 0-dim loss. This is open_clip's
    ClipLoss(local_loss=True, gather_with_grad=True): the mean over ranks equals the loss of the whole gathered
    batch and, because the gather passes gradients back, DDP's gradient average equals that loss's gradient.
    """
    all_img = dist.gather_with_grad(img)  # (world*n, E), rank order
    all_txt = dist.gather_with_grad(txt)
    return _symmetric_ce(img, txt, all_img, all_txt, scale, offset=img.shape[0] * dist.rank())


def local_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same loss over features held by this process only (evaluation on one rank; no collectives)."""
    return _symmetric_ce(img, txt, img, txt, scale, offset=0)
