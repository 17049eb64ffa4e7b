"""What the parsed training flags resolve to for this process: run name and folder, effective precision, splits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reaf import dist
from reaf.training.flags import TrainFlags, report_targets


@dataclass(frozen=True)
class RunSettings:
    """What the flags resolve to for this process (the argparse namespace itself is never changed)."""

    name: str
    run_dir: str
    precision: str  # the effective one: fp32, fp16 (autocast + GradScaler) or bf16 (autocast)
    device: str
    world_size: int
    global_batch: int  # volumes per optimiser step over all ranks and micro-batches
    report_to: tuple[str, ...]
    train_data: str
    val_data: str | None
    zeroshot_data: str | None
    resume_from: str | None


def effective_precision(flag: str, device: torch.device) -> str:
    """--precision -> fp32|fp16|bf16: `amp` is fp16 on a GPU but fp32 on a CPU (no fast half path there)."""
    if flag == "fp32":
        return "fp32"
    if flag == "amp_bf16":
        return "bf16"
    return "fp32" if device.type == "cpu" else "fp16"


def find_data(args: TrainFlags) -> tuple[str, str | None, str | None]:
    """(train, val, zero-shot) sources: the flags, or with no --train-data the splits found under --data-root; the
    per-epoch zero-shot takes the val split where there is one (a held-out test split is never looked at in training)."""
    if args.train_data:
        return args.train_data, args.val_data, args.zeroshot_ct_rate
    from reaf.data.readers import find_splits

    found = find_splits(args.data_root)
    if not found.get("train"):
        raise FileNotFoundError(f"--data-root {args.data_root}: no training split found (layout A: CT-RATE, or B: split folders; see README.md)")
    return found["train"], args.val_data or found.get("val"), args.zeroshot_ct_rate or found.get("val") or found.get("test")


def auto_name(args: TrainFlags, world: int) -> str:
    """The reference's auto name: <date>-model_<m>-lr_<lr>-b_<global batch>-j_<workers>-p_<precision>."""
    stamp = dist.broadcast_object(time.strftime("%Y_%m_%d-%H_%M_%S"))
    model = Path(args.model).stem
    return f"{stamp}-model_{model}-lr_{args.lr}-b_{args.batch_size * args.accum_freq * world}-j_{args.workers}" \
           f"-p_{args.precision}"


def resolve(args: TrainFlags, env: dist.DistEnv, resume: Path | None,
            resume_name: str | None) -> RunSettings:
    """Derive the run's settings from the flags (and the checkpoint being resumed, for its run name)."""
    name = args.name or resume_name or auto_name(args, env.world_size)
    train, val, zeroshot = find_data(args)
    return RunSettings(
        name=name, run_dir=str(Path(args.logs) / name), precision=effective_precision(args.precision, env.device),
        device=str(env.device), world_size=env.world_size,
        global_batch=args.batch_size * args.accum_freq * env.world_size, report_to=report_targets(args.report_to),
        train_data=train, val_data=val, zeroshot_data=zeroshot, resume_from=str(resume) if resume else None)
