"""The training step (contrastive loss, accumulation with feature caching, AMP, clipping) and `train_one_epoch`.

Between logging points a step never waits for the GPU: no `.item()`, `.cpu()` or branch on a tensor's value. The
loss stays on the device (reaf.training.loss_window) and is read and checked for NaN/inf at the logging interval,
before each checkpoint and at the epoch end. bf16 and fp32 have no loss scaler. fp16's GradScaler reads found_inf
on the host in `scaler.step` by design, unless the optimiser is fused (build_optimizer's choice on CUDA), which
takes found_inf on the device. Paths that do synchronise: `--skip-bad` (the ranks agree on each batch's size,
skips.equalize), `--positives shared` (the mask is checked for its diagonal) and a wholly frozen text tower (its
feature cache is keyed by the token ids on the host)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reaf import dist
from reaf.model.loss import contrastive_loss, shared_positives
from reaf.training.loss_window import LossWindow, NonFiniteLossError
from reaf.training.optim import CosineSchedule
from reaf.training.run_log import RunLogger
from reaf.training.state import Position

Batch = dict[str, Any]
__all__ = ["NonFiniteLossError", "StepContext", "autocast_factory", "to_device", "train_one_epoch", "train_step"]


@dataclass
class StepContext:
    """Everything one optimiser step needs. `model` may be DDP-wrapped; `autocast` returns a fresh context."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: CosineSchedule
    autocast: Callable[[], contextlib.AbstractContextManager]
    device: torch.device
    accum_freq: int = 1
    grad_clip_norm: float | None = None
    positives: str = "own"  # "own": each text's own volume (CLIP); "shared": every volume its text is true of


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of autocast contexts for `precision` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move the tensors of a loader batch to `device`, non-blocking (the loader pins its batches when training on
    a GPU, so the copy overlaps the step before)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _forward(ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with ctx.autocast():
        return ctx.model(batch["image"], batch["input_ids"], batch["attention_mask"])


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _cache_features(ctx: StepContext, micro: list[Batch]) -> tuple[list, list, list]:
    """No-grad features of every micro-batch plus the RNG state before each, so the re-forward with gradient
    draws the same drop-path masks and reproduces the cached features."""
    imgs, txts, states = [], [], []
    with torch.no_grad():
        for batch in micro:
            states.append(_rng_state(ctx.device))
            img, txt, _ = _forward(ctx, batch)
            imgs.append(img)
            txts.append(txt)
    return imgs, txts, states


def _positives(ctx: StepContext, micro: list[Batch]) -> torch.Tensor | None:
    """--positives shared: the (N, N) text-is-true-of-volume mask of the whole global batch, in the order the loss
    gathers features (rank by rank, each rank's micro-batches in turn); None for CLIP's own pairs."""
    if ctx.positives == "own":
        return None
    local = [(text, report) for b in micro for text, report in zip(b["text"], b["report"])]
    pairs = [pair for rank_pairs in dist.all_gather_object(local) for pair in rank_pairs]
    mask = shared_positives([text for text, _ in pairs], [report for _, report in pairs])
    return torch.from_numpy(mask).to(ctx.device, non_blocking=True)


def train_step(ctx: StepContext, micro: list[Batch], step: int) -> tuple[torch.Tensor, float]:
    """One optimiser step over `accum_freq` micro-batches; returns (the global batch's loss, a 0-dim tensor on the
    device that may be NaN/inf: the caller checks it, see LossWindow; lr).

    Accumulation follows open_clip's feature caching: the loss of every micro-step is the contrastive loss of the
    whole accumulated batch (negatives span all micro-batches and ranks), only that micro-batch's features carry
    gradient, so the summed gradients equal those of one big batch. Unlike open_clip, the logit scale keeps its
    gradient in the last micro-step only (open_clip counts it accum_freq times).
    """
    lr = ctx.schedule.apply(step)
    ctx.optimizer.zero_grad(set_to_none=True)
    cached = _cache_features(ctx, micro) if len(micro) > 1 else None
    positives = _positives(ctx, micro)
    for j, batch in enumerate(micro):
        last = j == len(micro) - 1
        if cached is not None:
            _set_rng_state(cached[2][j], ctx.device)
        with dist.no_sync(ctx.model, skip=not last):
            img, txt, scale = _forward(ctx, batch)
            if cached is not None:
                img = torch.cat(cached[0][:j] + [img] + cached[0][j + 1:])
                txt = torch.cat(cached[1][:j] + [txt] + cached[1][j + 1:])
            with ctx.autocast():
                loss = contrastive_loss(img, txt, scale if last else scale.detach(), positives)
            if last:
                total = dist.mean_over_ranks(loss.detach())  # NaN on any rank makes it NaN on every rank
            ctx.scaler.scale(loss).backward()
    if ctx.grad_clip_norm is not None:
        ctx.scaler.unscale_(ctx.optimizer)
        params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip_norm)
    ctx.scaler.step(ctx.optimizer)  # fp16 with an unfused optimiser: found_inf is read on the host here
    ctx.scaler.update()
    dist.unwrap(ctx.model).clamp_logit_scale()  # to [0, ln 100]
    return total, lr


def train_one_epoch(ctx: StepContext, batches: Iterable[Batch], pos: Position, *, steps_per_epoch: int,
                    logger: RunLogger, log_every: int, save_every: int = 0,
                    on_save: Callable[[Position], None] | None = None) -> Position:
    """Train until `steps_per_epoch` optimiser steps of epoch `pos.epoch` are done, starting at `pos` (whose
    batches_done micro-batches the caller already skipped in `batches`); returns the position at the epoch end.
    `on_save(pos)` runs after every `save_every`-th step before the epoch end (mid-epoch checkpoints). The losses
    are checked for NaN/inf (NonFiniteLossError names the first bad step) at every `log_every`-th step, before
    `on_save` and at the epoch end; the steps between never synchronise with the device."""
    ctx.model.train()
    world = dist.world_size()
    logger.progress(steps_per_epoch, pos.batches_done // ctx.accum_freq, desc=f"epoch {pos.epoch}")
    micro: list[Batch] = []
    window = LossWindow()
    samples, tic = 0, time.perf_counter()
    for batch in batches:
        if pos.batches_done // ctx.accum_freq >= steps_per_epoch:
            break  # resumed at the very end of an epoch
        micro.append(to_device(batch, ctx.device))
        if len(micro) < ctx.accum_freq:
            continue
        live = [b for b in micro if b["name"]]  # --skip-bad can empty a batch (on every rank alike, reaf.training.skips)
        if not live:
            pos, micro = Position(pos.epoch, pos.batches_done + len(micro), pos.step), []
            continue
        loss, lr = train_step(ctx, live, pos.step)
        window.record(loss, pos.step, [name for b in live for name in b["name"]])
        pos = Position(pos.epoch, pos.batches_done + len(micro), pos.step + 1)
        samples += world * sum(len(b["name"]) for b in micro)
        micro = []
        end = pos.batches_done // ctx.accum_freq >= steps_per_epoch
        if pos.step % log_every == 0 or end:
            postfix = _log_interval(ctx, window, logger, pos, lr, samples, tic)
            samples, tic = 0, time.perf_counter()
            logger.advance(postfix)
        else:
            logger.advance()
        if on_save is not None and save_every and pos.step % save_every == 0 and not end:
            window.check()  # a checkpoint is never written from weights a non-finite loss has updated
            on_save(pos)
        if end:
            break  # leftover micro-batches (< accum_freq) are not trained
    window.check()
    logger.close_bar()
    return pos


def _log_interval(ctx: StepContext, window: LossWindow, logger: RunLogger, pos: Position, lr: float, samples: int,
                  tic: float) -> dict[str, float]:
    """Log the mean loss and the rate of the steps since the last log, `samples` volumes since `tic`; returns the
    progress bar's postfix. Reading the losses waits for those steps to finish, so the rate is the device's."""
    losses = window.take()
    rate = samples / (time.perf_counter() - tic)
    scale = dist.unwrap(ctx.model).logit_scale.exp().item()
    loss = sum(losses) / len(losses)
    logger.log({"train/loss": loss, "train/lr": lr, "train/logit_scale": scale, "train/samples_per_s": rate,
                "epoch": pos.epoch}, pos.step)
    return {"loss": loss, "lr": lr, "samples/s": rate}
