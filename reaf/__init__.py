"""REAF: a CLIP-style vision-language model for chest CT (scan/slice hierarchy, layer fusion, regional saliency)."""

from reaf.checkpoint import load_checkpoint  # noqa: I001
from reaf.model import ReafCLIP, create_model

__all__ = ["ReafCLIP", "create_model", "load_checkpoint"]
