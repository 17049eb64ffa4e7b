"""`--vision-init`: inflate a local timm/FAIR MAE ViT-B/16 checkpoint into the 3-D encoder (the reference's recipe)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from reaf.model.checkpoint import read_checkpoint
from reaf.model.config import VisionConfig
from reaf.model.layers import sincos_1d

log = logging.getLogger(__name__)
IGNORED_PREFIXES = ("decoder", "mask_token", "head.", "fc_norm.")  # MAE's decoder/classifier: not part of the encoder


def read_mae_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A timm safetensors file or a torch file (FAIR's {'model': ...} or {'state_dict': ...}) -> flat tensor dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = read_checkpoint(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def inflate_patch_kernel(weight: Tensor, patch_size: tuple[int, int, int]) -> Tensor:
    """(C, 3, 16, 16) RGB kernel -> (C, 1, pd, ph, pw): bicubic resize, sum over RGB, repeat in depth / pd."""
    pd, ph, pw = patch_size
    if tuple(weight.shape[-2:]) != (ph, pw):
        weight = F.interpolate(weight.float(), size=(ph, pw), mode="bicubic", align_corners=False)
    grey = weight.sum(dim=1, keepdim=True)
    return grey.unsqueeze(2).repeat(1, 1, pd, 1, 1) / pd


def inflate_pos_embed(pos_embed: Tensor, grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """MAE (1, [1+]n, C) table -> (CLS row (1, 1, C), spatial table (1, d, h, w, C)).

    The 2-D table is resampled to (h, w) and a 1-D sin-cos over depth spanning all C channels is added.
    """
    n, c = pos_embed.shape[1:]
    has_cls = math.isqrt(n) ** 2 != n
    cls_row = pos_embed[:, :1] if has_cls else pos_embed.new_zeros(1, 1, c)
    table = pos_embed[:, 1:] if has_cls else pos_embed
    side = math.isqrt(table.shape[1])
    d, h, w = grid
    table = resample_abs_pos_embed(table.float(), new_size=[h, w], old_size=[side, side], num_prefix_tokens=0)
    depth = sincos_1d(d, c)  # (d, C)
    spatial = depth[:, None, None, :] + table.reshape(1, h, w, c)
    return cls_row, spatial.reshape(1, d, h, w, c)


def inflate_mae(state: dict[str, Tensor], cfg: VisionConfig) -> dict[str, Tensor]:
    """MAE encoder state dict -> state dict of `VolumeEncoder` (every key but the fusion layers)."""
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise KeyError(f"MAE checkpoint has no {key!r}")
    cls_row, spatial = inflate_pos_embed(state.pop("pos_embed"), cfg.grid)
    out = dict(state)
    out["cls_token"] = state["cls_token"] + cls_row
    out["spatial_posemb"] = spatial
    out["patch_embed.proj.weight"] = inflate_patch_kernel(state["patch_embed.proj.weight"], cfg.patch_size)
    return out


def load_mae_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initialise `model.visual.trunk` from an MAE checkpoint; everything but the fusion layers must be covered."""
    trunk = model.visual.trunk  # type: ignore[union-attr]
    inflated = inflate_mae(read_mae_state_dict(path), trunk.cfg)
    own = trunk.state_dict()
    allowed_missing = {k for k in own if k.startswith(("fusion_layer.", "fusion."))}
    missing = sorted(set(own) - set(inflated) - allowed_missing)
    unexpected = sorted(set(inflated) - set(own))
    bad_shapes = [k for k in set(own) & set(inflated) if own[k].shape != inflated[k].shape]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"MAE checkpoint {path} does not fit the encoder: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {[(k, tuple(inflated[k].shape), tuple(own[k].shape)) for k in bad_shapes[:5]]}"
        )
    trunk.load_state_dict(inflated, strict=False)
    log.info("initialised the vision trunk from MAE weights %s (%d tensors)", path, len(inflated))
