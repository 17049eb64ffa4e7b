"""Every attention call of the volume encoder goes through F.scaled_dot_product_attention (the fused kernels on a
GPU), counted, so that a change cannot fall back to the explicit softmax path unnoticed."""

import torch
import torch.nn.functional as F

from reaf import create_model


def count_sdpa(monkeypatch) -> list[tuple[int, ...]]:
    calls, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: calls.append(tuple(q.shape)) or
                        real(q, *a, **k))
    return calls


def test_each_block_attends_once_through_sdpa_at_its_level(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    trunk, calls = model.visual.trunk, count_sdpa(monkeypatch)
    volume = torch.randn(2, 1, *model.cfg.vision.img_size)
    with torch.no_grad():
        model.encode_image(volume)
    d, h, w = trunk.grid
    heads, width = model.cfg.vision.num_heads, model.cfg.vision.width
    expected = [(2, heads, 1 + d * h * w, width // heads) if level == "scan" else (2 * d, heads, 1 + h * w, width // heads)
                for level in trunk.levels]  # (batch or batch*slabs, heads, tokens, head dim) per block
    assert calls == expected


def test_the_fused_path_holds_even_when_timm_is_told_otherwise(monkeypatch):
    monkeypatch.setenv("TIMM_FUSED_ATTN", "0")
    model = create_model("tiny").eval()
    assert all(block.attn.fused_attn for block in model.visual.trunk.blocks)
    calls = count_sdpa(monkeypatch)
    model.visual.trunk.blocks[0].attn.fused_attn = False  # the explicit path: one call fewer, so the count can fail
    with torch.no_grad():
        model.encode_image(torch.randn(1, 1, *model.cfg.vision.img_size))
    assert len(calls) == model.cfg.vision.depth - 1
