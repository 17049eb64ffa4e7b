"""Full-size REAF train step on one GPU: bf16 autocast, with and without gradient checkpointing; samples/s, peak
memory, model FLOP utilisation (FLOPs counted by torch's FlopCounterMode), and whether the cache loader keeps up.

Run through bench/gpu.sh (`python -m bench.bench_gpu`). Installs nothing, reads nothing from a network; finishes in a few minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import RESULTS, machine_info
from reaf import create_model
from reaf.data.formats import load_volume, save_cache
from reaf.data.input_spec import InputSpec

BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the card (vendor datasheet numbers, no sparsity)."""
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def train_step(model, opt, volume, ids, mask) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        img, txt, scale = model(volume, ids, mask)
        logits = scale * img @ txt.T
        labels = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(batch: int, grad_checkpointing: bool, steps: int, text_len: int) -> dict:
    """samples/s, peak memory and MFU of `steps` timed steps after two warm-up steps."""
    torch.manual_seed(0)
    model = create_model("vit_base_singlescan_h2_token2744").cuda().train()
    model.set_grad_checkpointing(grad_checkpointing)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    volume = torch.randn(batch, 1, 112, 336, 336, device="cuda")
    ids = torch.randint(5, 30000, (batch, text_len), device="cuda")
    mask = torch.ones_like(ids)
    for _ in range(2):
        train_step(model, opt, volume, ids, mask)
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, volume, ids, mask)
    flops = counter.get_total_flops()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, volume, ids, mask)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / steps
    peak = peak_tflops(torch.cuda.get_device_name())
    achieved = flops / step_s / 1e12
    return {
        "batch": batch,
        "grad_checkpointing": grad_checkpointing,
        "step_s": step_s,
        "samples_per_s": batch / step_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "flops_per_step": flops,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "note": "FLOPs include recomputation under grad checkpointing (hardware FLOPs)" if grad_checkpointing else "",
    }


def loader_rate(workers: int, n: int) -> dict:
    """Volumes/s of the fast cache at 112x336x336 through a DataLoader with `workers` processes."""
    spec = InputSpec(size=(112, 336, 336))
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        base = torch.rand(1, 1, 28, 84, 84, generator=g)
        for i in range(n):
            smooth = F.interpolate(base.roll(i, dims=-1), size=spec.size, mode="trilinear")[0, 0]
            save_cache(Path(tmp) / f"v{i}.vol.zst", (smooth + 0.02 * torch.randn(spec.size)).clamp(0, 1), spec)
        files = sorted(Path(tmp).glob("*.vol.zst"))
        ds = [(f,) for f in files] * 4

        def load(item):
            return load_volume(item[0], "cache", spec)

        loader = torch.utils.data.DataLoader(
            ds, batch_size=4, num_workers=workers, collate_fn=lambda b: [load(x) for x in b]
        )
        t0 = time.perf_counter()
        count = sum(len(batch) for batch in loader)
        return {"workers": workers, "volumes_per_s": count / (time.perf_counter() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--text-len", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "machine": machine_info(), "runs": []}
    for gc in (False, True):
        try:
            results["runs"].append(measure(args.batch, gc, args.steps, args.text_len))
        except torch.OutOfMemoryError:
            results["runs"].append({"batch": args.batch, "grad_checkpointing": gc, "error": "out of memory"})
        torch.cuda.empty_cache()
        print(json.dumps(results["runs"][-1]))
    results["loader"] = loader_rate(args.workers, n=16)
    best = max((r["samples_per_s"] for r in results["runs"] if "samples_per_s" in r), default=0.0)
    results["loader_keeps_up"] = results["loader"]["volumes_per_s"] >= best
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
