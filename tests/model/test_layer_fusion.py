"""LayerFusion's fixed weights: a non-persistent buffer that follows the module, out of the state dict."""

import pytest
import torch

from reaf import create_model
from reaf.model.layers import LayerFusion


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
