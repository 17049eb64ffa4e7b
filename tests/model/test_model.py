"""Model invariants on the tiny config: hierarchy, fusion, saliency, grad checkpointing, gradients, locking."""

import math

import pytest
import torch

from reaf import create_model
from reaf.model.config import load_model_config
from reaf.model.layers import LayerFusion, RegionalSaliency, to_scan, to_slices

TEXTS = ["bilateral pleural effusion.", "no nodule is seen in the lungs."]


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("tiny", **overrides)


def volume(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 32, 96, 96, generator=g)


def test_encode_shapes_and_unit_norm():
    model = tiny().eval()
    ids, mask = model.tokenize(TEXTS)
    img, txt, scale = model(volume(), ids, mask)
    assert img.shape == (2, 64) and txt.shape == (2, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_grid_derives_from_config():
    cfg = load_model_config("tiny", img_size=[40, 64, 80], patch_size=[8, 16, 16])
    assert cfg.vision.grid == (5, 4, 5)
    model = create_model(cfg)
    assert model.visual.trunk.spatial_posemb.shape == (1, 5, 4, 5, 48)
    assert model.encode_image(torch.randn(1, 1, 40, 64, 80)).shape == (1, 64)
    with pytest.raises(ValueError, match="not a multiple"):
        load_model_config("tiny", img_size=[33, 96, 96])
    with pytest.raises(ValueError, match="unknown config keys"):
        from reaf.model.config import config_from_dict

        config_from_dict({"vision": {"no_such_field": 1}})


def test_regroup_round_trip_and_cls_rules():
    grid = (3, 2, 2)
    x = torch.randn(2, 1 + 12, 5)
    slices = to_slices(x, grid)
    assert slices.shape == (6, 5, 5)
    torch.testing.assert_close(to_scan(slices, grid), x)
    slices[1, 0] += 3.0  # change the CLS copy of slab 1 of sample 0
    torch.testing.assert_close(to_scan(slices, grid)[0, 0], x[0, 0] + 1.0)  # averaged over 3 slabs
    torch.testing.assert_close(to_scan(slices, grid, cls_from_first_slab=True)[0, 0], x[0, 0])


def test_patch_embedding_is_the_conv3d_of_its_weights(monkeypatch):
    """One matrix product over flattened patches: the Conv3d's output and gradients, tokens in (d, h, w) order; the
    patches are not kept for the backward but cut again from the volume (once in the forward, once after)."""
    from reaf.model.vision import PatchEmbed3d

    torch.manual_seed(0)
    embed = PatchEmbed3d((2, 3, 4), 6)
    cuts = []
    monkeypatch.setattr(embed, "patches", lambda v, cut=embed.patches: cuts.append(v.shape) or cut(v))
    vol = torch.randn(2, 1, 4, 9, 8)
    tokens = embed(vol)
    assert tokens.shape == (2, 2 * 3 * 2, 6) and len(cuts) == 1
    probe = torch.randn_like(tokens)
    (tokens * probe).sum().backward()
    assert len(cuts) == 2
    grads = embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone()
    embed.zero_grad()
    conv = embed.proj(vol).flatten(2).transpose(1, 2)  # (B, d*h*w, C)
    torch.testing.assert_close(tokens, conv)
    (conv * probe).sum().backward()
    torch.testing.assert_close(grads, (embed.proj.weight.grad, embed.proj.bias.grad))
    vol.requires_grad_(True)  # a gradient for the volume too (saliency by gradient): the patches are kept as usual
    (volume_grad,) = torch.autograd.grad((embed(vol) * probe).sum(), vol)
    (conv_grad,) = torch.autograd.grad((embed.proj(vol).flatten(2).transpose(1, 2) * probe).sum(), vol)
    torch.testing.assert_close(volume_grad, conv_grad)
    cuts.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = embed(vol.detach())
    low.float().sum().backward()  # the patches cut again, in the dtype the product used
    assert low.dtype == torch.bfloat16 and embed.proj.weight.grad.dtype == torch.float32 and len(cuts) == 2


def test_patch_embed_conv_computes_the_same_as_the_matrix_product():
    """config vision.patch_embed "conv" (the demo's) runs the Conv3d itself: the same tokens and weight gradients as
    "matmul" from the same weights, the same state-dict keys; an unknown choice is refused."""
    from reaf.model.config import load_model_config
    from reaf.model.vision import PatchEmbed3d

    torch.manual_seed(0)
    product, conv = PatchEmbed3d((2, 3, 4), 6), PatchEmbed3d((2, 3, 4), 6, conv=True)
    conv.load_state_dict(product.state_dict())
    vol, probe = torch.randn(2, 1, 4, 9, 8), torch.randn(2, 12, 6)
    for embed in (product, conv):
        (embed(vol) * probe).sum().backward()
    torch.testing.assert_close(conv(vol), product(vol))
    torch.testing.assert_close(conv.proj.weight.grad, product.proj.weight.grad)
    torch.testing.assert_close(conv.proj.bias.grad, product.proj.bias.grad)
    assert create_model("demo").visual.trunk.patch_embed.conv and not create_model("tiny").visual.trunk.patch_embed.conv
    with pytest.raises(ValueError, match="patch_embed 'fft' is not one of"):
        load_model_config("tiny", patch_embed="fft").vision.validate()


def test_slice_blocks_do_not_mix_slabs_scan_blocks_do():
    model = tiny(drop_path_rate=0.0).eval()
    trunk = model.visual.trunk
    assert trunk.levels == ["slice", "slice", "scan"]
    vol = volume(1)
    bumped = vol.clone()
    bumped[:, :, 8:16] += 1.0  # voxels of slab 1 only (patch depth 8)
    d, h, w = trunk.grid
    with torch.no_grad():
        _, out_a = trunk.run_blocks(trunk.embed(vol))
        _, out_b = trunk.run_blocks(trunk.embed(bumped))
    for level, changed_elsewhere in (("slice", False), ("scan", True)):
        a = out_a[level][-1][:, 1:].reshape(1, d, h * w, -1)
        b = out_b[level][-1][:, 1:].reshape(1, d, h * w, -1)
        assert not torch.allclose(a[:, 1], b[:, 1])
        others = [0, 2, 3]
        assert torch.allclose(a[:, others], b[:, others], atol=1e-6) is not changed_elsewhere


@pytest.mark.parametrize("method", ["weighted_mean", "mean", "max", "inverse_weighted_mean", "learned"])
def test_fusion_methods_equal_direct_computation(method):
    torch.manual_seed(0)
    outs = [torch.randn(2, 4, 3) for _ in range(3)]
    fusion = LayerFusion(3, method)
    e = [math.exp(i) for i in range(3)]
    if method == "learned":
        with torch.no_grad():
            fusion.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
        e = [math.exp(v) for v in (0.5, -1.0, 2.0)]
    if method == "max":
        expected = torch.maximum(torch.maximum(outs[0], outs[1]), outs[2])
    elif method == "mean":
        expected = (outs[0] + outs[1] + outs[2]) / 3
    else:
        w = [v / sum(e) for v in e]
        if method == "inverse_weighted_mean":
            w = w[::-1]
        expected = w[0] * outs[0] + w[1] * outs[1] + w[2] * outs[2]
    torch.testing.assert_close(fusion(outs), expected)


def test_fusion_method_reaches_the_model():
    vol = volume(1)
    results = {}
    for method in ("weighted_mean", "max"):
        model = tiny(fusion_method=method).eval()
        assert {f.method for f in model.visual.trunk.fusion.values()} == {method}
        with torch.no_grad():
            results[method] = model.encode_image(vol)
    assert not torch.allclose(results["weighted_mean"], results["max"])


def region_ids(grid, region):
    """Which region each token belongs to, counted per axis (reference-free helper)."""
    axes = [torch.arange(g) // r for g, r in zip(grid, region)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@pytest.mark.parametrize("compat", [False, True])
def test_saliency_keeps_exactly_k_regions(compat):
    grid, region, k = (14, 14, 14), (3, 3, 3), 3
    sal = RegionalSaliency(grid, region, k, 0.1, 1.0, reference_compat=compat)
    assert sal.region_grid == ((4, 4, 4) if compat else (5, 5, 5))
    torch.manual_seed(0)
    saliency = torch.rand(2, *grid)
    saliency[0, 12:, 12:, 12:] = 50.0  # a hot spot in the far corner, outside the reference's 12^3 coverage
    keep = sal.keep_mask(saliency)
    ids = region_ids(grid, region)
    for b in range(2):
        kept_regions = {tuple(v.tolist()) for v in ids[keep[b]]}
        assert len(kept_regions) == k
        for r in kept_regions:  # a kept region is kept whole
            assert keep[b][(ids == torch.tensor(r)).all(-1)].all()
    assert keep[0, 13, 13, 13].item() is (not compat)


@pytest.mark.parametrize("compat", [False, True])
def test_saliency_coverage(compat):
    grid, region = (14, 14, 14), (3, 3, 3)
    regions = 64 if compat else 125
    sal = RegionalSaliency(grid, region, regions, 0.1, 1.0, reference_compat=compat)
    keep = sal.keep_mask(torch.rand(1, *grid))
    assert keep.sum().item() == (12**3 if compat else 14**3)
    assert keep[0, :12, :12, :12].all()


@pytest.mark.parametrize("compat", [False, True])
def test_saliency_weights_and_pooling_equal_direct_computation(compat):
    grid, region = (2, 2, 2), (1, 1, 1)
    sal = RegionalSaliency(grid, region, 2, 0.1, 2.0, reference_compat=compat)
    fused = torch.zeros(1, 9, 4)
    norms = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0, 0.5, 0.25, 6.0, 0.0])  # CLS, then 8 patches
    fused[0, :, 0] = norms
    last = torch.randn(1, 9, 4)
    kept = {7, 4}  # patches with the two largest norms (6.0, 4.0): indices 1+6, 1+3
    slots = [norms[1].item() if compat else norms[0].item()]
    slots += [norms[i].item() * (1.0 if i in kept else 0.1) for i in range(1, 9)]
    expected = torch.tensor(slots).div(2.0).softmax(0)
    weights, _ = sal.token_weights(fused)
    torch.testing.assert_close(weights[0], expected)
    torch.testing.assert_close(sal(fused, last)[0], (expected[:, None] * last[0]).sum(0))


def test_grad_checkpointing_same_outputs_and_gradients():
    vol = volume(2)
    results = []
    for enabled in (False, True):
        model = tiny(lock=False)
        model.set_grad_checkpointing(enabled)
        ids, mask = model.tokenize(TEXTS)
        img, txt, scale = model(vol, ids, mask)
        (scale * img @ txt.T).logsumexp(0).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((img.detach(), txt.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][2].keys() == results[1][2].keys()
    for name in results[0][2]:
        torch.testing.assert_close(results[0][2][name], results[1][2][name], msg=name)


def test_gradients_reach_both_towers_and_lock_text():
    model = tiny(lock=True)
    trainable = [n for n, p in model.text.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("LayerNorm" in n for n in trainable)
    frozen = [n for n, p in model.text.transformer.named_parameters() if not p.requires_grad]
    assert any("word_embeddings" in n for n in frozen) and any("attention.self.query" in n for n in frozen)
    ids, mask = model.tokenize(TEXTS)
    img, txt, scale = model(volume(), ids, mask)
    (scale * img @ txt.T).diag().sum().backward()
    named = dict(model.named_parameters())
    for name in (
        "visual.trunk.patch_embed.proj.weight",
        "visual.trunk.fusion_layer.weight",
        "text.proj.weight",
        "text.transformer.embeddings.LayerNorm.weight",
        "logit_scale",
    ):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert named["visual.trunk.spatial_posemb"].grad is None
    assert named["text.transformer.embeddings.word_embeddings.weight"].grad is None


def block0_slabs(trunk, vol):
    """The patch tokens after block 0 as (B, d, h*w, C), read by a forward hook whatever the block's layout:
    (B*d, 1+h*w, C) for a slice-level block, (B, 1+d*h*w, C) for a scan-level one."""
    seen = []
    handle = trunk.blocks[0].register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        trunk(vol)
    handle.remove()
    b, (d, h, w) = vol.shape[0], trunk.grid
    out = seen[0]
    if out.shape[0] == b * d:
        return out.reshape(b, d, 1 + h * w, -1)[:, :, 1:]
    return out[:, 1:].reshape(b, d, h * w, -1)


def by_hand(trunk, vol, levels):
    """The plain hierarchy's last tokens (1, 1+N, C) composed in the test: at slice level the slabs are separate
    sequences, each with its own copy of the CLS token (kept across consecutive slice-level blocks), and the copies
    are averaged going back to scan level."""
    d, h, w = trunk.grid
    x = trunk.embed(vol)  # (1, 1+N, C)
    slabs = None  # (d, 1+h*w, C) while at slice level
    for block, level in zip(trunk.blocks, levels):
        if level == "slice":
            if slabs is None:
                slabs = torch.cat([x[0, :1].expand(d, 1, -1), x[0, 1:].reshape(d, h * w, -1)], dim=1)
            slabs = block(slabs)
        else:
            if slabs is not None:
                x = torch.cat([slabs[:, 0].mean(0, keepdim=True), slabs[:, 1:].reshape(d * h * w, -1)])[None]
                slabs = None
            x = block(x)
    assert slabs is None, "these variants end at scan level"
    return x


def test_plain_hierarchy_and_full_attention_variants():
    vol = volume(1)
    bumped = vol.clone()
    bumped[:, :, 8:16] += 1.0  # the voxels of slab 1 only (patch depth 8)
    plain = tiny(fusion_saliency=False).eval()
    assert not hasattr(plain.visual.trunk, "fusion_layer")
    full = tiny(fusion_saliency=False, scan_blocks=[0, 1, 2]).eval()
    assert full.visual.trunk.levels == ["scan"] * 3
    reaf = tiny().eval()
    n_params = {m: sum(p.numel() for p in m.visual.parameters()) for m in (plain, full, reaf)}
    assert n_params[plain] == n_params[full] == n_params[reaf] - (2 * 48 * 48 + 48)
    # the same weights in all three (seeded alike, and the plain/full ones copied from REAF's to be sure)
    for model in (plain, full):
        missing, unexpected = model.load_state_dict(reaf.state_dict(), strict=False)
        assert not missing and set(unexpected) == {"visual.trunk.fusion_layer.weight", "visual.trunk.fusion_layer.bias"}

    # block 0: slice level in the hierarchy (slabs 0, 2, 3 untouched by slab 1's voxels), scan level in the full one
    others = [0, 2, 3]
    a, b = block0_slabs(plain.visual.trunk, torch.cat([vol, bumped]))
    assert not torch.allclose(a[1], b[1]) and torch.allclose(a[others], b[others], atol=1e-6)
    a, b = block0_slabs(full.visual.trunk, torch.cat([vol, bumped]))
    assert min((a[s] - b[s]).abs().max().item() for s in range(4)) > 1e-4  # every slab moved

    with torch.no_grad():
        emb = {name: m.encode_image(vol) for name, m in (("plain", plain), ("full", full), ("reaf", reaf))}
        # each variant equals its own composition written out here
        for name, model, levels in (("plain", plain, ["slice", "slice", "scan"]), ("full", full, ["scan"] * 3)):
            trunk = model.visual.trunk
            tokens = by_hand(trunk, vol, levels)
            expected = torch.nn.functional.normalize(model.visual.head.proj(trunk.norm(tokens)[:, 0]), dim=-1)
            torch.testing.assert_close(emb[name], expected, atol=1e-5, rtol=1e-5, msg=name)
        # REAF without its enhancer's contribution (the added vector zeroed) is exactly the plain hierarchy
        reaf.visual.trunk.fusion_layer.weight.zero_()
        reaf.visual.trunk.fusion_layer.bias.zero_()
        assert torch.equal(reaf.encode_image(vol), emb["plain"])
    # the same weights, three different models: the attention pattern and the enhancer each change the embedding
    for x, y in (("plain", "full"), ("plain", "reaf"), ("full", "reaf")):
        assert (emb[x] - emb[y]).abs().max() > 1e-3, (x, y)
    with pytest.raises(ValueError, match="need at least one scan-level and one slice-level"):
        tiny(scan_blocks=[0, 1, 2])
