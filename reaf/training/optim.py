"""AdamW with decay / no-decay parameter groups, and the cosine learning-rate schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

# Names (substrings) of tensors that are never decayed whatever their rank: the CLS token and position embeddings.
NO_DECAY_NAMES = ("cls_token", "pos_embed", "posemb", "position_embeddings", "logit_scale")


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to matrices/kernels only: not to ndim<2 tensors (biases, norm weights, logit_scale),
    the CLS token or position embeddings.

    The reference decays its 3-D `cls_token` (its rule is only "ndim < 2 or bn/ln/bias/logit_scale in the name");
    we decay neither the CLS token nor the position embeddings (a learned offset, not a feature map).
    """
    if param.ndim < 2 or name.endswith("bias"):
        return False
    return not any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[no-decay group, decay group] over the trainable parameters, each in `named_parameters()` order.

    The group order matches the reference's optimiser (group 0 weight_decay 0, group 1 weight_decay=wd), so
    optimiser state indices run through group 0 first. Each group carries the parameter names under
    "param_names" (torch's own key), so a checkpoint's optimiser state says which tensor each entry belongs to.
    """
    groups = [{"params": [], "param_names": [], "weight_decay": wd} for wd in (0.0, weight_decay)]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = groups[1 if decays(name, param) else 0]
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups[0]["params"] and not groups[1]["params"]:
        raise ValueError("the model has no trainable parameters")
    return groups


def use_fused(params: list[torch.Tensor]) -> bool:
    """AdamW's fused kernel when every parameter is on a CUDA device (one launch per step; GradScaler hands it
    found_inf on the device, so an fp16 step skips an overflow without a host-device sync)."""
    return bool(params) and all(p.device.type == "cuda" for p in params)


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float) -> torch.optim.AdamW:
    """AdamW over `param_groups(model)`, fused on CUDA (`use_fused`), else foreach (torch's default on the CPU is
    one tensor at a time: the same numbers, bit for bit, 1.5-2.5 ms slower per step of the demo's 50 tensors); the
    lr is set every step by `CosineSchedule`."""
    groups = param_groups(model, weight_decay)
    fused = use_fused([p for group in groups for p in group["params"]])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


def warmup_steps(steps: int, epochs: float | None, steps_per_epoch: int) -> int:
    """The warm-up length in optimiser steps: `epochs` x steps per epoch (rounded) when given, else `steps`."""
    return steps if epochs is None else round(epochs * steps_per_epoch)


class CosineSchedule:
    """lr(step): linear warm-up (step+1)/warmup * base over `warmup` steps, then cosine decay to 0 at `total`."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int) -> None:
        if total < 1:
            raise ValueError(f"the schedule needs at least one optimiser step, got total={total}")
        self.optimizer, self.base_lr, self.warmup, self.total = optimizer, base_lr, warmup, total

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * self.base_lr

    def apply(self, step: int) -> float:
        """Set the lr of every group for optimiser step `step` (0-based); returns it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
