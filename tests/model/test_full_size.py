"""The paper config at full size: reference parameter counts, reference keys, a CPU forward, reaf.pt-format loading."""

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from reaf import create_model, load_checkpoint
from reaf.model.config import load_model_config
from reaf.model.vision import VisionTower

PAPER = "vit_base_singlescan_h2_token2744"

TSV = Path(__file__).resolve().parents[1] / "data" / "reaf_checkpoint_keys.tsv"  # the reference's list, see data/README.md


def reference_keys() -> dict[str, tuple[tuple[int, ...], bool]]:
    """key -> (shape, requires_grad) from the reference's key list (tests/data, copied from shared/reference)."""
    out = {}
    with TSV.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            shape = () if row["shape"] == "scalar" else tuple(int(s) for s in row["shape"].split("x"))
            out[row["key"]] = (shape, row["requires_grad"] == "True")
    return out


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return create_model(PAPER).eval()


def test_parameter_counts_match_the_reference(paper_model):
    assert sum(p.numel() for p in paper_model.visual.parameters()) == 92_277_504
    assert sum(p.numel() for p in paper_model.text.parameters()) == 109_284_864


def test_state_dict_equals_the_reference_key_list(paper_model):
    ref = reference_keys()
    ours = {k: (tuple(v.shape), None) for k, v in paper_model.state_dict().items()}
    assert list(ours) == list(ref)  # same names, same order
    assert {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in ref.items()}
    grads = {n: p.requires_grad for n, p in paper_model.named_parameters()}
    assert grads == {k: v[1] for k, v in ref.items()}  # lock-text default, frozen position table


def expected_keep(token_norms: np.ndarray, k: int = 3, r: int = 3) -> np.ndarray:
    """(14, 14, 14) token saliency -> the keep mask, by hand: the k largest sums over the r^3 sub-blocks starting at
    0, 3, 6, 9, 12 on every axis (the last ones 2 wide: the default model covers the whole grid)."""
    starts = range(0, token_norms.shape[0], r)
    sums = {(a, b, c): token_norms[a:a + r, b:b + r, c:c + r].sum() for a, b, c in itertools.product(starts, repeat=3)}
    keep = np.zeros(token_norms.shape, dtype=bool)
    for a, b, c in sorted(sums, key=sums.get, reverse=True)[:k]:
        keep[a:a + r, b:b + r, c:c + r] = True
    return keep


def test_full_size_forward_on_cpu(paper_model):
    """One forward at the paper's size, read through hooks: the token grid, and at both levels the regions the
    enhancer keeps and the vector it pools, each recomputed here from the hooked fused map."""
    trunk = paper_model.visual.trunk
    cfg = trunk.cfg
    assert (cfg.region_size, cfg.top_k, cfg.suppression, cfg.temperature) == ((3, 3, 3), 3, 0.1, 1.0)
    assert not cfg.reference_compat and cfg.saliency_norm == "raw"
    grids, pooled = [], []
    hooks = [trunk.patch_embed.register_forward_hook(lambda m, args, out: grids.append(tuple(out.shape))),
             trunk.saliency.register_forward_hook(lambda m, args, out: pooled.append((*args, out)))]
    with torch.no_grad():
        emb = paper_model.encode_image(torch.randn(1, 1, 112, 336, 336, generator=torch.Generator().manual_seed(0)))
    for hook in hooks:
        hook.remove()
    assert emb.shape == (1, 512) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    assert grids == [(1, 2744, 768)] and trunk.grid == (14, 14, 14)  # 2744 tokens
    assert len(pooled) == 2  # the scan level and the slice level
    for fused, last, out in pooled:
        assert fused.shape == last.shape == (1, 1 + 2744, 768) and out.shape == (1, 768)
        norms = fused[0].double().norm(dim=-1)  # the fused CLS's norm, then the 2744 patch tokens' norms
        patch = norms[1:].reshape(14, 14, 14)
        keep = expected_keep(patch.numpy())
        _, mask = trunk.saliency.token_weights(fused)
        assert np.array_equal(mask[0].numpy(), keep)  # exactly 3 whole 3x3x3 regions, the 3 with the largest sums
        assert 3 * 2**3 <= keep.sum() <= 3 * 3**3  # 3 regions, each 3x3x3 or a smaller one at the far edges
        slots = torch.cat([norms[:1], torch.where(torch.from_numpy(keep), patch, 0.1 * patch).reshape(-1)])
        weights = (slots / 1.0).softmax(0)
        torch.testing.assert_close(out[0].double(), weights @ last[0].double(), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def narrow():
    """The paper's input size, patch size and so its 14^3 grid, its region size and k, at width 48 and depth 3
    (slice, slice, scan): the geometry of the full-size model at a fraction of its cost."""
    cfg = load_model_config(PAPER, width=48, num_heads=2, depth=3, scan_blocks=[2]).vision
    assert cfg.grid == (14, 14, 14) and cfg.fusion_saliency
    torch.manual_seed(0)
    return VisionTower(cfg, 64).eval()


def test_full_grid_is_deterministic_batch_independent_and_sees_every_slab(narrow):
    x = torch.randn(1, 1, 112, 336, 336, generator=torch.Generator().manual_seed(1))
    bumped = x.clone()
    bumped[:, :, 40:48] += 1.0  # the voxels of slab 5 only (patch depth 8)
    blocks, fused = {}, []
    hooks = [narrow.trunk.blocks[i].register_forward_hook(lambda m, args, out, i=i: blocks.setdefault(i, out))
             for i in (0, 2)]
    hooks.append(narrow.trunk.saliency.register_forward_hook(lambda m, args, out: fused.append(args[0])))
    with torch.no_grad():
        batch = narrow(torch.cat([x, bumped]))
        for hook in hooks:
            hook.remove()
        alone = narrow(x), narrow(x), narrow(bumped)
    assert torch.equal(alone[0], alone[1])  # the same input twice: the identical output
    torch.testing.assert_close(batch, torch.cat([alone[0], alone[2]]), atol=1e-5, rtol=0)  # each as if alone
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(2))
    assert (alone[0] - alone[2]).abs().max() > 1e-3  # a change confined to one slab reaches the embedding
    # slice-level block 0 (14 slabs of 1 + 196 tokens each): the other 13 slabs untouched; scan-level block 2: all
    slabs = blocks[0].reshape(2, 14, 197, 48)[:, :, 1:]
    others = [s for s in range(14) if s != 5]
    assert torch.allclose(slabs[0, others], slabs[1, others], atol=1e-6) and not torch.allclose(slabs[0, 5], slabs[1, 5])
    scan = blocks[2][:, 1:].reshape(2, 14, 196, 48)
    assert min((scan[0, s] - scan[1, s]).abs().max().item() for s in range(14)) > 1e-5
    assert len(fused) == 2  # both levels: each volume of the batch keeps its own 3 regions
    for level in fused:
        _, mask = narrow.trunk.saliency.token_weights(level)
        for b in range(2):
            token_norms = level[b, 1:].double().norm(dim=-1).reshape(14, 14, 14).numpy()
            assert np.array_equal(mask[b].numpy(), expected_keep(token_norms))


def test_reference_format_file_loads_strictly(paper_model, tmp_path):
    ref = reference_keys()
    g = torch.Generator().manual_seed(3)
    state = {f"module.{k}": torch.randn(shape, generator=g) for k, (shape, _) in ref.items()}
    state["module.text.transformer.embeddings.position_ids"] = torch.arange(512)[None]  # transformers <= 4.30
    path = tmp_path / "reaf.pt"
    torch.save({"epoch": 10, "name": "ref", "state_dict": state, "optimizer": {}, "scaler": {"scale": 1.0}}, path)
    assert not paper_model.visual.trunk.reference_compat
    load_checkpoint(paper_model, path)
    assert paper_model.visual.trunk.reference_compat
    loaded = paper_model.state_dict()
    for key in ("visual.trunk.spatial_posemb", "visual.head.proj.weight", "text.proj.weight", "logit_scale"):
        torch.testing.assert_close(loaded[key], state[f"module.{key}"])
    del state["module.text.proj.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="1 missing"):
        load_checkpoint(paper_model, path)
