"""REAF: a CLIP-style vision-language model for chest CT (scan/slice hierarchy, layer fusion, regional saliency)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reaf.evaluation.predictor import Prediction, Predictor
    from reaf.model.checkpoint import load_checkpoint
    from reaf.model.clip import ReafCLIP, create_model
    from reaf.model.pretrained import from_pretrained

__all__ = ["Prediction", "Predictor", "ReafCLIP", "create_model", "from_pretrained", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    """Import torch/transformers only when the model API is used, so data tools (`reaf.synthetic`) start fast."""
    if name == "load_checkpoint":
        from reaf.model.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "from_pretrained":
        from reaf.model.pretrained import from_pretrained

        return from_pretrained
    if name in ("Predictor", "Prediction"):
        from reaf.evaluation import predictor

        return getattr(predictor, name)
    if name in ("ReafCLIP", "create_model"):
        from reaf.model import clip as model

        return getattr(model, name)
    raise AttributeError(f"module 'reaf' has no attribute {name!r}")


if "timm" in sys.modules:  # `import timm, reaf`: register the encoder in timm's registry (torch is loaded already);
    import reaf.model.timm_models  # noqa: E402, F401  # without timm, `import reaf` stays light for the data tools
