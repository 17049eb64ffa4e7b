"""bench_gpu's parts beside the train step: the cache loader's rate against the step's, and the reference encoder."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reaf.data.formats import load_volume, save_cache
from reaf.data.input_spec import InputSpec
from reaf.model.config import load_model_config

DISTINCT_FILES = 16
REFERENCE_MODULE = "model.visual_encoder"  # importing it registers the reference encoder in timm (its README)
REFERENCE_NAME = "vit_base_singlescan_h2_token2744"


class CacheFiles(torch.utils.data.Dataset):
    """Item i -> the (1, D, H, W) volume of files[i % len(files)], decoded from the cache format."""

    def __init__(self, files: list[Path], spec: InputSpec, count: int) -> None:
        self.files, self.spec, self.count = files, spec, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_volume(self.files[i % len(self.files)], "cache", self.spec)


def loader_rate(args: argparse.Namespace, step_samples_per_s: float | None) -> dict:
    """Volumes/s of `args.workers` loader processes decoding cache files at the model's input size, per worker, and
    whether they keep up with the fastest train step measured (files in the page cache: decode, not disk)."""
    spec = InputSpec(size=load_model_config(args.model).vision.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(0)
        base = torch.rand(1, 1, *(max(1, s // 4) for s in spec.size), generator=gen)
        files = []
        for i in range(DISTINCT_FILES):
            smooth = F.interpolate(base.roll(i, dims=-1), size=spec.size, mode="trilinear")[0, 0]
            files.append(Path(tmp) / f"v{i}.vol.zst")
            save_cache(files[-1], (smooth + 0.02 * torch.randn(spec.size, generator=gen)).clamp(0, 1), spec)
        loader = torch.utils.data.DataLoader(CacheFiles(files, spec, args.loader_volumes), batch_size=args.batch,
                                             num_workers=args.workers, pin_memory=torch.cuda.is_available())
        t0 = time.perf_counter()
        count = sum(len(batch) for batch in loader)  # worker start-up included, as at an epoch's start
        rate = count / (time.perf_counter() - t0)
    per_worker = rate / max(args.workers, 1)
    out = {"status": "ok", "format": "cache", "size": list(spec.size), "workers": args.workers, "volumes": count,
           "volumes_per_s": rate, "volumes_per_s_per_worker": per_worker, "step_samples_per_s": step_samples_per_s}
    if step_samples_per_s:
        out["loader_keeps_up"] = rate >= step_samples_per_s
        out["workers_needed"] = math.ceil(step_samples_per_s / per_worker)
    return out


def reference_side_by_side(args: argparse.Namespace, device: torch.device) -> dict:
    """Encoder fwd+bwd (bf16, no optimiser) of ours and of the reference's timm encoder, at args.batch, when the
    reference imports from --reference-root; else why not."""
    if device.type != "cuda":
        return {"status": "skipped: the reference encoder is full size; CPU mode runs the tiny config"}
    if not args.reference_root:
        return {"status": "skipped: not installed (pass --reference-root, a checkout of HiLab-git/REAF, or set "
                          "REAF_REFERENCE_ROOT)"}
    sys.path.insert(0, str(args.reference_root))
    try:
        build = getattr(importlib.import_module(REFERENCE_MODULE), REFERENCE_NAME)
    except Exception as err:  # any import failure of foreign code is a finding to record, not a crash
        return {"status": f"skipped: {REFERENCE_MODULE} does not import from {args.reference_root} "
                          f"({type(err).__name__}: {err})"}
    from reaf.model.timm_models import create_encoder

    out = {"status": "ok", "batch": args.batch, "precision": "bf16", "what": "encoder forward + backward"}
    for name, make in (("reaf", lambda: create_encoder(REFERENCE_NAME)), ("reference", lambda: build(False))):
        try:
            out[name] = time_encoder(make, args, device)
        except Exception as err:  # the reference's forward may want other inputs; say so and go on
            out[name] = {"status": f"error: {type(err).__name__}: {str(err)[:300]}"}
        torch.cuda.empty_cache()
    if "step_s" in out["reaf"] and "step_s" in out["reference"]:
        out["speedup_reaf_vs_reference"] = out["reference"]["step_s"] / out["reaf"]["step_s"]
    return out


def time_encoder(make, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    encoder = make().to(device).train()
    volume = torch.randn(args.batch, 1, *load_model_config(REFERENCE_NAME).vision.img_size, device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = encoder(volume).float().square().mean()
        loss.backward()
        encoder.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps
    return {"status": "ok", "step_s": step_s, "samples_per_s": args.batch / step_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
