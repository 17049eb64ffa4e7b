"""The contrastive loss leaves ln(B) early (issue #12): the demo's vision tower, REAF and plain, against fixed and
distinct text features (what the frozen pretrained text tower gives) on real synthetic volumes.

It starts on the plateau (image embeddings of random volumes are near-constant at init: the chests share most of
their voxels and the CLS starts as an average over tokens) and must leave it within a few steps; a tower that
cannot tell volumes apart (a constant output, a readout cut off from the patches) stays at ln(B) and fails."""

import math

import pytest
import torch
import torch.nn.functional as F

from reaf import create_model
from reaf.model.loss import local_contrastive_loss
from tests.support.training import make_dataset

STEPS = 40


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """The 8 training volumes of the tiny synthetic cache, at the tiny model's input: (8, 1, D, H, W)."""
    from reaf.data.input_spec import InputSpec
    from reaf.data.loader import VolumeDataset
    from reaf.data.readers import find_splits, read_split

    root = make_dataset(tmp_path_factory.mktemp("data"))
    split = read_split(find_splits(root)["train"], data_root=str(root), fmt="cache")
    dataset = VolumeDataset(split, InputSpec.from_args(["-1150", "350", "resize"], (32, 96, 96)))
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def train_image_side(model, volumes: torch.Tensor) -> list[float]:
    """The vision tower against a fixed, distinct text feature per volume (what a frozen pretrained text tower
    gives), AdamW at the demo's lr, the whole batch each step; returns the losses."""
    text = F.normalize(
        torch.randn(len(volumes), model.cfg.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    opt = torch.optim.AdamW(list(model.visual.parameters()) + [model.logit_scale], lr=1e-3, weight_decay=0.05)
    losses = []
    for _ in range(STEPS):
        loss = local_contrastive_loss(model.encode_image(volumes), text, model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("fusion_saliency", [False, True])
def test_demo_vision_tower_leaves_ln_b_within_a_few_steps(volumes, fusion_saliency):
    torch.manual_seed(0)
    model = create_model("demo", fusion_saliency=fusion_saliency)
    losses = train_image_side(model, volumes)
    ln_b = math.log(len(volumes))
    assert losses[0] > 0.9 * ln_b  # it does start at the plateau: near-constant image embeddings
    assert min(losses[-5:]) < 0.5 * ln_b, f"loss stayed near ln(B)={ln_b:.2f}: {losses[::5]}"


def test_a_tower_blind_to_the_patches_stays_on_the_plateau(volumes):
    """The check above can fail: with the patch embedding zeroed and frozen every volume gives the same tokens."""
    torch.manual_seed(0)
    model = create_model("demo", fusion_saliency=False)
    torch.nn.init.zeros_(model.visual.trunk.patch_embed.proj.weight)
    model.visual.trunk.patch_embed.proj.weight.requires_grad_(False)
    losses = train_image_side(model, volumes)
    assert min(losses) > 0.99 * math.log(len(volumes))
