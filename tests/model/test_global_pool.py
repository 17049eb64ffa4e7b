"""The vision tower's readout option (timm's global_pool names): the paper's CLS by default, or the mean / per-channel
maximum over the normed patch tokens; no option adds a state-dict key."""

import pytest
import torch

from reaf import create_model


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("tiny", **overrides)


def volume(seed=1):
    return torch.randn(2, 1, 32, 96, 96, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fusion_saliency", [False, True])
def test_each_pool_reads_the_normed_tokens_it_names(fusion_saliency):
    model = tiny(fusion_saliency=fusion_saliency)
    trunk, x = model.visual.trunk, volume()
    captured = {}
    trunk.norm.register_forward_hook(lambda mod, args, out: captured.__setitem__("tokens", out))
    with torch.no_grad():
        cls = trunk(x)
        tokens = captured["tokens"]
        assert torch.equal(cls, tokens[:, 0])
        for pool, expected in (("avg", tokens[:, 1:].mean(1)), ("max", tokens[:, 1:].max(1).values)):
            trunk.cfg.global_pool = pool
            assert torch.equal(trunk(x), expected)
            assert not torch.allclose(trunk(x), cls)


def test_pools_share_the_state_dict_and_the_default_is_the_cls():
    assert create_model("tiny").cfg.vision.global_pool == "token"
    assert create_model("vit_base_singlescan_h2_token2744").cfg.vision.global_pool == "token"
    keys = set(tiny().state_dict())
    assert set(tiny(global_pool="max").state_dict()) == keys == set(tiny(global_pool="avg").state_dict())


def test_max_pool_sees_a_finding_in_one_token_that_the_mean_dilutes():
    model = tiny(fusion_saliency=False).eval()
    x = volume()
    y = x.clone()
    y[:, :, :8, :16, :16] += 3.0  # one token of the 4x6x6 grid changes
    with torch.no_grad():
        change = {}
        for pool in ("avg", "max"):
            model.visual.trunk.cfg.global_pool = pool
            change[pool] = (model.visual.trunk(y) - model.visual.trunk(x)).abs().max().item()
    assert change["max"] > 2 * change["avg"]


def test_unknown_pool_is_refused():
    with pytest.raises(ValueError, match="global_pool 'gem'"):
        tiny(global_pool="gem")
