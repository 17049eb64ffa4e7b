"""Training checkpoints: atomic epoch_K.pt + latest.pt, RNG states, sampler position, and exact resume.

Resume restores the weights, AdamW moments, GradScaler, schedule position (= optimiser steps done), the epoch and
the micro-batches already trained in it (the rest of the epoch's sampler order is replayed without loading the
skipped volumes), and every rank's python/numpy/torch(/CUDA) RNG state, so a run killed mid-epoch continues on the
loss trajectory it would have followed.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reaf import atomic
from reaf.model.checkpoint import is_training_checkpoint

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"


@dataclass(frozen=True)
class Position:
    """Where training stands: completed epochs, micro-batches done in the current epoch, optimiser steps done."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors/lists/ints only (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `capture_rng`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_payload(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                       pos: Position, *, name: str, config: dict[str, Any], rng: list[dict[str, Any]],
                       sampler: dict[str, int]) -> dict[str, Any]:
    """The checkpoint dict (docs/architecture.md lists its keys); `model` is the bare model (no `module.` prefix),
    `rng` holds one entry per rank."""
    return {
        "epoch": pos.epoch,
        "step": pos.step,
        "batches_done": pos.batches_done,
        "name": name,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler_step": pos.step,
        "config": config,
        "rng": rng,
        "sampler": dict(sampler),
    }


def write_checkpoint(payload: dict[str, Any], run_dir: Path, *, epoch_file: bool) -> Path:
    """Write epoch_<epoch>.pt (when `epoch_file`) and latest.pt under <run_dir>/checkpoints; returns latest.pt."""
    folder = run_dir / CHECKPOINT_DIR
    latest = folder / LATEST
    if epoch_file:
        epoch_path = folder / f"epoch_{payload['epoch']}.pt"
        atomic.torch_save(payload, epoch_path)
        atomic.link_or_copy(epoch_path, latest)
    else:
        atomic.torch_save(payload, latest)
    return latest


def find_resume(resume: str, logs: Path, name: str | None) -> Path | None:
    """--resume PATH -> PATH; 'latest' -> <logs>/<name>/checkpoints/latest.pt, or with no --name the newest
    latest.pt of any run under <logs>; None when 'latest' finds nothing (a fresh start)."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
        return path
    pattern = f"{name}/{CHECKPOINT_DIR}/{LATEST}" if name else f"*/{CHECKPOINT_DIR}/{LATEST}"
    found = sorted(logs.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# flags a resumed run must keep: they set the learning-rate schedule (its length, warm-up, peak), the optimiser's
# hyper-parameters (AdamW's state restores its own), the micro-batches per step or the data order and text drawn
SCHEDULE_FLAGS = ("batch_size", "accum_freq", "epochs", "lr", "warmup", "warmup_epochs", "wd", "beta1", "beta2",
                  "eps", "seed", "sample_unit", "text_sampling", "report_epochs", "sentence_share")


def check_resume_flags(resume: Path, ckpt: dict[str, Any], flags: dict[str, Any]) -> None:
    """ValueError naming each SCHEDULE_FLAGS flag whose value differs from the one the checkpoint's run recorded
    (config["args"]): resuming with another --epochs or --batch-size would silently bend the schedule (steps past
    the recorded end at lr 0). A changed world size is not a flag: batches_to_skip converts it."""
    saved = ckpt.get("config", {}).get("args")
    if not isinstance(saved, dict):
        return
    changed = [f"--{key.replace('_', '-')} was {saved[key]!r}, now {flags[key]!r}" for key in SCHEDULE_FLAGS
               if key in saved and saved[key] != flags[key]]
    if changed:
        raise ValueError(f"--resume {resume}: {'; '.join(changed)}: a resumed run keeps its schedule; start a new "
                         f"run with --load-checkpoint {resume} to train on with other settings")


def restore_training(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> Position:
    """Load weights, optimiser and scaler from our checkpoint into the bare model; returns the saved position."""
    model.load_state_dict(ckpt["state_dict"], strict=True)
    saved_names = [g.get("param_names") for g in ckpt["optimizer"]["param_groups"]]
    names = [g.get("param_names") for g in optimizer.param_groups]
    if saved_names != names:
        raise ValueError("--resume: the checkpoint's optimiser covers other trainable parameters than this model "
                         "(different --lock-text or model config?); use --load-checkpoint to load weights only")
    # AdamW's kernel (fused on CUDA, foreach elsewhere) is this run's device's choice, not the checkpoint's; given
    # before loading, torch also places each "step" counter where that kernel wants it (device or host)
    kernel = [{key: group[key] for key in ("fused", "foreach") if key in group} for group in optimizer.param_groups]
    saved_groups = [{**group, **ours} for group, ours in zip(ckpt["optimizer"]["param_groups"], kernel)]
    optimizer.load_state_dict({**ckpt["optimizer"], "param_groups": saved_groups})
    saved = ckpt.get("config", {}).get("run", {}).get("precision", "unknown")
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    elif ckpt.get("scaler"):
        log.warning("--resume: the checkpoint was trained with precision %s and its fp16 loss-scaler state; this run "
                    "has no loss scaler (fp32/bf16), so that state is dropped", saved)
    elif scaler.is_enabled():
        log.warning("--resume: the checkpoint was trained with precision %s (no loss-scaler state); this run uses "
                    "fp16, so the loss scaler starts from its initial scale", saved)
    return Position(epoch=int(ckpt["epoch"]), batches_done=int(ckpt.get("batches_done", 0)), step=int(ckpt["step"]))


def batches_to_skip(ckpt: dict[str, Any], batch_size: int, world: int) -> int:
    """Micro-batches of the current epoch already trained; converted by samples when the geometry changed."""
    done = int(ckpt.get("batches_done", 0))
    saved = ckpt.get("sampler", {})
    old = (saved.get("batch_size", batch_size), saved.get("world_size", world))
    if done == 0 or old == (batch_size, world):
        return done
    samples = done * old[0] * old[1]
    log.warning("resuming with batch %d x %d ranks instead of %d x %d: skipping %d samples' worth of batches; "
                "the data order of this epoch differs from the interrupted run", batch_size, world, *old, samples)
    return samples // (batch_size * world)


def skip_batches(loader: DataLoader, n: int) -> DataLoader:
    """`loader` itself, set so that its next pass (its sampler's current epoch) starts after the first `n` batches;
    the skipped batches are never loaded and no second DataLoader is built. Call after `sampler.set_epoch`."""
    loader.sampler.skip_next(n * loader.batch_size)
    return loader


def _reference_decays(name: str, shape: tuple[int, ...]) -> bool:
    """The reference's group rule (group 1 = decayed): not (ndim < 2 or bn/ln/bias/logit_scale in the name)."""
    return not (len(shape) < 2 or any(key in name for key in ("bn", "ln", "bias", "logit_scale")))


def _reference_trainable(name: str) -> bool:
    """The reference's trainable set under its default flags (text locked but its LayerNorms, frozen 3-D posemb)."""
    if name.endswith("spatial_posemb"):
        return False
    return not name.startswith("text.transformer.") or "LayerNorm" in name


def reference_optimizer_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Optimiser index -> parameter name of a reference checkpoint (shared/reference/reaf_optimizer_index_map.tsv):
    group 0 (no decay) then group 1, each in state-dict order over the trainable parameters."""
    names = [k.removeprefix("module.") for k in state_dict if _reference_trainable(k.removeprefix("module."))]
    shapes = {k.removeprefix("module."): tuple(v.shape) for k, v in state_dict.items()}
    return [n for n in names if not _reference_decays(n, shapes[n])] + \
           [n for n in names if _reference_decays(n, shapes[n])]


def restore_reference(path: Path, ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> Position:
    """--resume of a reference-format file: weights (through reaf.load_checkpoint, which switches the model to
    reference_compat), the completed epochs, and AdamW's moments mapped by parameter name. Raises when this
    run trains another parameter set than the reference did."""
    from reaf import load_checkpoint

    load_checkpoint(model, path)
    ref_names = reference_optimizer_names(ckpt["state_dict"])
    ref_state = ckpt["optimizer"]["state"]
    hint = "; use --load-checkpoint to start from its weights with a fresh optimiser"
    if len(ref_names) != sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]):
        raise ValueError(f"--resume {path}: its optimiser does not hold the reference's default trainable set{hint}")
    ours = [n for g in optimizer.param_groups for n in g["param_names"]]
    if sorted(ours) != sorted(ref_names):
        diff = sorted(set(ours) ^ set(ref_names))[:8]
        raise ValueError(f"--resume {path}: this run trains other parameters than the reference run ({diff}...){hint}")
    index = {name: i for i, name in enumerate(ref_names)}
    state = {i: ref_state[index[name]] for i, name in enumerate(ours) if index[name] in ref_state}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    start = 0
    for group in groups:
        group["params"] = list(range(start, start + len(group["param_names"])))
        start += len(group["param_names"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    steps = [int(s["step"]) for s in state.values() if "step" in s]
    return Position(epoch=int(ckpt.get("epoch", 0)), batches_done=0, step=max(steps, default=0))


def restore_run(resume: Path, resumed: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, *, batch_size: int, world_size: int,
                rank: int) -> tuple[Position, dict | None]:
    """Restore a --resume checkpoint: our format fully (RNG when the world size matches), the reference's via
    `restore_reference`. Returns the position (batches to skip in the current geometry) and this rank's RNG."""
    if not is_training_checkpoint(resumed):
        return restore_reference(resume, resumed, model, optimizer), None
    pos = restore_training(resumed, model, optimizer, scaler)
    skip = batches_to_skip(resumed, batch_size, world_size)
    states = resumed["rng"]
    if len(states) != world_size:
        log.warning("resuming %d saved ranks on %d ranks: RNG streams restart from the seed", len(states), world_size)
    rng = states[rank] if len(states) == world_size else None
    return Position(pos.epoch, skip, pos.step), rng
