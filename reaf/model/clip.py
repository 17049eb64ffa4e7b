"""The REAF CLIP model: vision tower + text tower + learnable logit scale, and `create_model`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

import reaf.model.timm_models  # noqa: F401  (registers the encoder in timm's registry)
from reaf.model.config import ModelConfig, apply_overrides, load_model_config
from reaf.model.text import TextTower, build_tokenizer, tokenize_memoized
from reaf.model.vision import VisionTower

LOGIT_SCALE_MAX = math.log(100.0)


class ReafCLIP(nn.Module):
    """encode_image: (B, 1, D, H, W) -> (B, E); encode_text: (B, L) ids + mask -> (B, E); both unit norm.

    forward returns (image_features, text_features, logit_scale.exp()). State-dict keys equal the reference's
    (`logit_scale`, `visual.trunk.*`, `visual.head.proj.weight`, `text.transformer.*`, `text.proj.weight`).
    """

    def __init__(self, cfg: ModelConfig, bert_path: str | None = None, bert: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert_path = bert_path
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, cfg.embed_dim, bert_path, bert=bert)
        self._tokenizer = None  # built on first use: a random-init CXR-BERT tower has no tokenizer files
        self._token_memo: dict[str, Tensor] = {}  # text -> its token ids (tokenize_memoized)
        if cfg.text.lock:
            self.text.lock(whole=cfg.text.lock == "all")

    def encode_image(self, volume: Tensor) -> Tensor:
        return self.visual(volume)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids, attention_mask)

    def forward(self, volume: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(volume), self.encode_text(input_ids, attention_mask), self.logit_scale.exp()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.cfg.text, self.bert_path)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """N strings -> (input_ids, attention_mask) (N, L) long, with this model's tokenizer and context length
        (each distinct text tokenised once per process: tokenize_memoized)."""
        return tokenize_memoized(self.tokenizer, texts, self.cfg.text.context_length, self._token_memo)

    def set_reference_compat(self, enabled: bool) -> None:
        """The vision trunk's reference quirks on or off; `cfg` is replaced to say so (no config changes in place)."""
        self.visual.trunk.set_reference_compat(enabled)
        self.cfg = dataclasses.replace(self.cfg, vision=self.visual.trunk.cfg)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint each ViT block, and the BERT layers when the text tower is trainable."""
        self.visual.trunk.set_grad_checkpointing(enabled)
        self.text.set_grad_checkpointing(enabled)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)


def create_model(name_or_path: str | ModelConfig, cxr_bert_path: str | None = None, **overrides: Any) -> ReafCLIP:
    """Build a model from a configs/ name, a JSON path or a ModelConfig; `overrides` replace config fields.

    `cxr_bert_path` is a local folder holding a BERT (weights, config, tokenizer); without it the text tower is the
    config's BERT, randomly initialised, with the config's tokenizer.
    """
    if isinstance(name_or_path, ModelConfig):
        cfg = apply_overrides(name_or_path, **overrides)
    else:
        cfg = load_model_config(name_or_path, **overrides)
    return ReafCLIP(cfg, bert_path=cxr_bert_path)
