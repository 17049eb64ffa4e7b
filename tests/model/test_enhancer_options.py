"""The enhancer's options past the paper: a zero-initialised scale on the added vector, a scale-free saliency
softmax and a parameter-free norm on the pooled vectors; their defaults are the reference's math and keys."""

import pytest
import torch

from reaf import create_model
from reaf.model.layers import RegionalSaliency

OPTIONS = {"fusion_scale_init": 0.0, "saliency_norm": "mean", "temperature": 0.1, "pool_norm": True}


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("tiny", **overrides)


def volume(batch=2, seed=1):
    return torch.randn(batch, 1, 32, 96, 96, generator=torch.Generator().manual_seed(seed))


def test_defaults_add_no_keys_and_the_scale_adds_exactly_one():
    paper = {"fusion_saliency": True, "fusion_scale_init": None, "saliency_norm": "raw", "pool_norm": False}
    keys = set(tiny(**paper).state_dict())
    assert set(tiny(**{**paper, "saliency_norm": "mean", "pool_norm": True}).state_dict()) == keys
    assert set(tiny(**OPTIONS, fusion_saliency=True).state_dict()) - keys == {"visual.trunk.fusion_scale"}


def test_zero_initialised_scale_gives_exactly_the_plain_hierarchy_at_init():
    plain = tiny(fusion_saliency=False)
    reaf = tiny(fusion_saliency=True, **OPTIONS)
    missing, unexpected = plain.load_state_dict(reaf.state_dict(), strict=False)
    assert not missing and set(unexpected) == {
        f"visual.trunk.{k}" for k in ("fusion_scale", "fusion_layer.weight", "fusion_layer.bias")
    }
    x = volume()
    with torch.no_grad():
        assert torch.equal(plain.encode_image(x), reaf.encode_image(x))
        reaf.visual.trunk.fusion_scale.fill_(0.5)  # once the scale moves, the enhancer contributes
        assert not torch.allclose(plain.encode_image(x), reaf.encode_image(x))


def test_zero_initialised_scale_still_learns():
    reaf = tiny(fusion_saliency=True, **OPTIONS)
    reaf.encode_image(volume()).sum().backward()
    assert reaf.visual.trunk.fusion_scale.grad.abs().sum() > 0


@pytest.mark.parametrize("compat", [False, True])
def test_mean_saliency_norm_is_invariant_to_the_feature_scale(compat):
    sal = RegionalSaliency((2, 4, 4), (1, 2, 2), 2, 0.1, 0.1, reference_compat=compat, norm="mean")
    raw = RegionalSaliency((2, 4, 4), (1, 2, 2), 2, 0.1, 0.1, reference_compat=compat)
    fused = torch.randn(3, 1 + 32, 8, generator=torch.Generator().manual_seed(0))
    weights, keep = sal.token_weights(fused)
    for factor in (1e-3, 7.0, 1e3):
        scaled, scaled_keep = sal.token_weights(fused * factor)
        torch.testing.assert_close(scaled, weights)
        assert torch.equal(scaled_keep, keep)
    assert not torch.allclose(raw.token_weights(fused * 7.0)[0], raw.token_weights(fused)[0])  # the paper's is not


def test_pool_norm_is_a_parameter_free_layer_norm_of_each_pooled_vector(monkeypatch):
    """added = fusion_layer([n(scan); n(slice)]) with n(v) = (v - mean v) / sqrt(var v + 1e-6), var the biased
    variance over the 48 channels. Hand case: the ramp v_i = a*i + b has mean a*23.5 + b and variance
    a^2 * (48^2 - 1) / 12, so n(v)_i = a * (i - 23.5) / sqrt(a^2 * 191.91666 + 1e-6), whatever b."""
    width = 48
    i = torch.arange(width, dtype=torch.float64)
    scan, slc = 3.0 * i - 40.0, -0.5 * i + 7.0  # two ramps: scales 3 and -0.5, offsets that the norm removes
    expected = {name: a * (i - 23.5) / (a * a * (width * width - 1) / 12 + 1e-6) ** 0.5
                for name, a in (("scan", 3.0), ("slice", -0.5))}
    for pool_norm in (True, False):
        trunk = tiny(fusion_saliency=True, pool_norm=pool_norm).visual.trunk.double()
        monkeypatch.setattr(trunk, "pooled_levels", lambda outputs: {"scan": scan[None], "slice": slc[None]})
        with torch.no_grad():  # fusion_layer = [I | 2I], no bias: the added vector is n(scan) + 2 n(slice)
            trunk.fusion_layer.weight.copy_(torch.cat([torch.eye(width), 2 * torch.eye(width)], dim=1))
            trunk.fusion_layer.bias.zero_()
            added = trunk.added_vector({})[0]
        want = expected["scan"] + 2 * expected["slice"] if pool_norm else scan + 2 * slc
        torch.testing.assert_close(added, want, rtol=1e-9, atol=1e-9)


def test_pool_norm_makes_the_added_vector_independent_of_the_trunk_scale_not_of_the_volume():
    reaf = tiny(fusion_saliency=True, saliency_norm="mean", pool_norm=True)
    trunk = reaf.visual.trunk
    normed = []  # fusion_layer's input: the two normalised pooled vectors side by side
    trunk.fusion_layer.register_forward_pre_hook(lambda module, args: normed.append(args[0]))
    with torch.no_grad():
        _, outputs = trunk.run_blocks(trunk.embed(volume()))
        added = trunk.added_vector(outputs)
        scaled = {lvl: [o * 10.0 for o in outs] for lvl, outs in outputs.items()}
        torch.testing.assert_close(trunk.added_vector(scaled), added, atol=1e-4, rtol=1e-4)
    halves = normed[0].reshape(2, 2, 48)  # (volume, level, channel)
    torch.testing.assert_close(halves.mean(-1), torch.zeros(2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(halves.var(-1, unbiased=False), torch.ones(2, 2), atol=1e-4, rtol=0)
    # two different volumes: different pooled vectors at each level, and different added vectors
    assert (halves[0] - halves[1]).abs().amax(-1).min() > 1e-2
    assert (added[0] - added[1]).abs().max() > 1e-3


def test_unknown_saliency_norm_is_an_error():
    with pytest.raises(ValueError, match="saliency_norm"):
        tiny(saliency_norm="softmax")


def test_paper_config_leaves_every_option_at_the_reference():
    """(Its 352 keys themselves are checked against the reference list in test_full_size.py.)"""
    from reaf.model.config import load_model_config

    vision = load_model_config("vit_base_singlescan_h2_token2744").vision
    assert (vision.fusion_scale_init, vision.saliency_norm, vision.pool_norm) == (None, "raw", False)
