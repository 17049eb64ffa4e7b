"""The volume encoder in timm's registry (the reference's name plus a tiny test variant), so that
`timm.create_model` and open_clip's `TimmModel` build it; importing this module registers them."""

from __future__ import annotations

import dataclasses
from typing import Any

from timm.models import register_model

from reaf.model.config import VisionConfig, load_model_config
from reaf.model.vision import VolumeEncoder

# timm name -> configs/ name whose vision section the encoder is built from
REGISTERED = {"vit_base_singlescan_h2_token2744": "vit_base_singlescan_h2_token2744", "reaf_tiny": "tiny"}
POOLS = (None, "", "token")  # the trunk returns the CLS feature; there is no other pooling to switch to


class TimmVolumeEncoder(VolumeEncoder):
    """VolumeEncoder with timm's classifier interface: (B, 1, D, H, W) -> (B, C) CLS feature, no classifier.

    State-dict keys are VolumeEncoder's, so `visual.trunk.*` of a REAF checkpoint loads into it unchanged.
    """

    def __init__(self, cfg: VisionConfig, name: str) -> None:
        super().__init__(cfg)
        self.num_features = self.embed_dim = cfg.width
        self.num_classes = 0
        self.global_pool = "token"
        self.pretrained_cfg = self.default_cfg = {
            "architecture": name, "input_size": (1, *cfg.img_size), "num_classes": 0, "mean": (0.449,),
            "std": (0.226,), "first_conv": "patch_embed.proj", "classifier": None,
        }

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Only the head-less form exists (open_clip's TimmModel asks for it and adds its own projection)."""
        _check_head(num_classes, global_pool)

    def get_classifier(self) -> None:
        return None


def _check_head(num_classes: int | None, global_pool: str | None) -> None:
    if num_classes not in (None, 0):
        raise ValueError(f"the REAF volume encoder has no classifier head (num_classes={num_classes}); use 0")
    if global_pool not in POOLS:
        raise ValueError(f"the REAF volume encoder returns its CLS feature: global_pool must be 'token' or '', "
                         f"got {global_pool!r} (open_clip: set timm_pool to '')")


def create_encoder(name: str, pretrained: bool = False, **kwargs: Any) -> TimmVolumeEncoder:
    """Build the registered encoder `name`; kwargs replace VisionConfig fields (e.g. drop_path_rate)."""
    if pretrained:
        raise ValueError(f"{name}: no weights are downloaded; build it with pretrained=False and load a local "
                         "checkpoint (reaf.load_checkpoint, or the visual.trunk.* keys of one)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    _check_head(kwargs.pop("num_classes", None), kwargs.pop("global_pool", None))
    cfg = load_model_config(REGISTERED[name]).vision
    fields = {f.name for f in dataclasses.fields(VisionConfig)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(f"{name}: unknown arguments {unknown}; VisionConfig fields are {sorted(fields)}")
    cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    cfg.validate()
    return TimmVolumeEncoder(cfg, name)


@register_model
def vit_base_singlescan_h2_token2744(pretrained: bool = False, **kwargs: Any) -> TimmVolumeEncoder:
    """The paper's encoder: ViT-B on (112, 336, 336) volumes, 14^3 tokens, scan/slice blocks, fusion + saliency."""
    return create_encoder("vit_base_singlescan_h2_token2744", pretrained, **kwargs)


@register_model
def reaf_tiny(pretrained: bool = False, **kwargs: Any) -> TimmVolumeEncoder:
    """configs/tiny.json's encoder (width 48, depth 3, (32, 96, 96) volumes), for tests."""
    return create_encoder("reaf_tiny", pretrained, **kwargs)
