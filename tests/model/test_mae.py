"""--vision-init: MAE ViT-B/16 weights inflated to 3-D exactly as shared/reference/mae_inflation.md states."""

import math

import torch
import torch.nn.functional as F

from reaf import create_model
from reaf.model.mae_inflation import inflate_mae, inflate_pos_embed, load_mae_weights
from tests.support.mae import mae_2d_table, synthetic_mae


def test_position_table_formula_and_cls_fold():
    pos = mae_2d_table(14, 48)
    pos[:, 0] = 0.25  # a non-zero CLS row must be folded into the CLS token
    cls_row, spatial = inflate_pos_embed(pos, (3, 14, 14))
    assert spatial.shape == (1, 3, 14, 14, 48)
    torch.testing.assert_close(cls_row, torch.full((1, 1, 48), 0.25))
    for d, h, w in [(0, 0, 0), (2, 5, 9), (1, 13, 0)]:
        depth = [math.sin(d * 10000 ** (-m / 24)) for m in range(24)] + [
            math.cos(d * 10000 ** (-m / 24)) for m in range(24)
        ]
        expected = torch.tensor(depth) + pos[0, 1 + h * 14 + w]
        torch.testing.assert_close(spatial[0, d, h, w], expected, atol=1e-5, rtol=0)


def test_vit_b_table_value_pattern_at_origin():
    _, spatial = inflate_pos_embed(mae_2d_table(14, 768), (14, 14, 14))
    expected = torch.tensor([0.0] * 192 + [1.0] * 192 + [1.0] * 192 + [2.0] * 192)
    torch.testing.assert_close(spatial[0, 0, 0, 0], expected)


def test_patch_kernel_inflation_and_depth_constant_equivalence():
    model = create_model("tiny", img_size=[16, 48, 48], patch_size=[8, 24, 24], region_size=[1, 1, 1])
    mae = synthetic_mae(48, 3)
    out = inflate_mae(dict(mae), model.visual.trunk.cfg)
    kernel = out["patch_embed.proj.weight"]
    assert kernel.shape == (48, 1, 8, 24, 24)
    resized = F.interpolate(mae["patch_embed.proj.weight"], size=(24, 24), mode="bicubic", align_corners=False)
    for k in range(8):
        torch.testing.assert_close(kernel[:, 0, k], resized.sum(1) / 8)
    torch.testing.assert_close(out["cls_token"], mae["cls_token"])  # MAE's CLS row is zero
    # a slab constant in depth behaves as its slice fed to R, G and B of the resized 2-D kernel
    slice_ = torch.randn(1, 1, 24, 24)
    as_3d = F.conv3d(slice_[:, :, None].expand(1, 1, 8, 24, 24), kernel)
    as_2d = F.conv2d(slice_.expand(1, 3, 24, 24), resized)
    torch.testing.assert_close(as_3d[:, :, 0], as_2d, atol=1e-4, rtol=1e-5)


def test_load_mae_weights_into_the_encoder(tmp_path):
    model = create_model("tiny", img_size=[16, 336, 336], patch_size=[8, 24, 24], mlp_ratio=2.0)
    fusion_before = model.visual.trunk.fusion_layer.weight.clone()
    mae = synthetic_mae(48, 3)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": mae}, path)
    load_mae_weights(model, path)
    trunk = model.visual.trunk.state_dict()
    torch.testing.assert_close(trunk["blocks.2.attn.qkv.weight"], mae["blocks.2.attn.qkv.weight"])
    torch.testing.assert_close(trunk["norm.bias"], mae["norm.bias"])
    _, spatial = inflate_pos_embed(mae["pos_embed"], (2, 14, 14))
    torch.testing.assert_close(trunk["spatial_posemb"], spatial)
    torch.testing.assert_close(model.visual.trunk.fusion_layer.weight, fusion_before)
    assert not model.visual.trunk.spatial_posemb.requires_grad


def test_mae_with_wrong_width_is_an_error(tmp_path):
    model = create_model("tiny")
    path = tmp_path / "mae.pth"
    torch.save(synthetic_mae(24, 3), path)
    try:
        load_mae_weights(model, path)
    except ValueError as err:
        assert "mae.pth" in str(err) and "shape" in str(err)
    else:
        raise AssertionError("a width mismatch must be an error")
