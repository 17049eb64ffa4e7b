"""LayerFusion: fixed weights in a non-persistent buffer that follows the module, out of the state dict; the slice
level fused in its own layout."""

import pytest
import torch

from reaf import create_model
from reaf.model.layers import LayerFusion, to_scan


@pytest.mark.parametrize("method", ["weighted_mean", "mean", "inverse_weighted_mean"])
def test_fixed_weights_are_a_buffer_that_moves_with_the_module(method):
    fusion = LayerFusion(4, method)
    assert fusion.weights() is fusion.weights()  # built once, not per forward
    assert dict(fusion.named_buffers()).keys() == {"fixed_weights"} and fusion.state_dict() == {}
    assert fusion.weights().sum().item() == pytest.approx(1.0)
    fusion.to(torch.float64)
    assert fusion.weights().dtype == torch.float64
    outs = [torch.randn(1, 3, 2, dtype=torch.float64) for _ in range(4)]
    assert fusion(outs).dtype == torch.float64


def test_state_dict_keys_are_unchanged_and_load_strictly():
    torch.manual_seed(0)
    model = create_model("tiny")
    keys = [k for k in model.state_dict() if ".fusion." in k or "fixed_weights" in k]
    assert keys == []  # weighted_mean: no fusion tensors in the checkpoint, as in the reference
    learned = create_model("tiny", fusion_method="learned").state_dict()
    assert [k for k in learned if ".fusion." in k] == ["visual.trunk.fusion.scan.logits",
                                                        "visual.trunk.fusion.slice.logits"]
    other = create_model("tiny")
    other.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(other.visual.trunk.fusion["scan"].weights(), torch.arange(1.0).softmax(0))
    torch.testing.assert_close(other.visual.trunk.fusion["slice"].weights(), torch.arange(2.0).softmax(0))


@pytest.mark.parametrize("method", ["weighted_mean", "max", "learned"])
@pytest.mark.parametrize("first_slab", [False, True])
def test_slice_level_fusion_regroups_once_and_equals_regrouping_each_output(method, first_slab):
    """Fused in slice layout, one regroup after: the map of regrouping every block output first (up to rounding)."""
    grid = (3, 2, 2)
    torch.manual_seed(0)
    outs = [torch.randn(2 * 3, 1 + 4, 5) for _ in range(4)]  # (B*d, 1+h*w, C), B = 2
    sliced, scanned = LayerFusion(4, method, grid=grid), LayerFusion(4, method)
    sliced.cls_from_first_slab = first_slab
    if method == "learned":
        with torch.no_grad():
            sliced.logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
            scanned.logits.copy_(sliced.logits)
    fused = sliced(outs)
    assert fused.shape == (2, 1 + 12, 5)
    expected = scanned([to_scan(o, grid, cls_from_first_slab=first_slab) for o in outs])
    torch.testing.assert_close(fused, expected)
