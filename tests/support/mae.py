"""A synthetic 2-D MAE ViT state dict (timm keys) and its position table, for --vision-init tests."""

import numpy as np
import torch


def mae_2d_table(side: int, dim: int) -> torch.Tensor:
    """MAE's fixed table (1, 1+side^2, dim): zero CLS row, per cell [w-block | h-block], each [sin | cos]."""
    quarter = dim // 4
    nu = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows = [np.zeros(dim)]
    for h in range(side):
        for w in range(side):
            rows.append(np.concatenate([np.sin(w * nu), np.cos(w * nu), np.sin(h * nu), np.cos(h * nu)]))
    return torch.tensor(np.stack(rows)[None], dtype=torch.float32)


def synthetic_mae(width: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with timm MAE ViT-B/16 key names and (scaled-down) shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": torch.randn(1, 1, width, generator=g),
        "pos_embed": mae_2d_table(14, width),
        "patch_embed.proj.weight": torch.randn(width, 3, 16, 16, generator=g),
        "patch_embed.proj.bias": torch.randn(width, generator=g),
        "norm.weight": torch.randn(width, generator=g),
        "norm.bias": torch.randn(width, generator=g),
    }
    shapes = {
        "norm1": [width],
        "attn.qkv": [3 * width, width],
        "attn.proj": [width, width],
        "norm2": [width],
        "mlp.fc1": [2 * width, width],
        "mlp.fc2": [width, 2 * width],
    }
    for i in range(depth):
        for name, shape in shapes.items():
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(shape, generator=g)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(shape[0], generator=g)
    return sd
