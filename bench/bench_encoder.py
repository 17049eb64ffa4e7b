"""Encoder train step (fwd+bwd): REAF vs the plain scan/slice hierarchy vs a full-attention ViT; time and peak memory.

Each variant runs in its own subprocess so its peak RSS (CPU) or peak allocated memory (GPU) is its own.
CPU default: a reduced size (ViT-B width, 6 blocks, 112x168x168 input = 14x7x7 = 686 tokens). Writes JSON
(bench/results/encoder_cpu.json unless --out); step time is the median of the timed steps (statistics.median: with
an even count, the mean of the middle two).

    python -m bench.bench_encoder --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS, machine_info

VARIANTS = {
    "reaf": {},
    "plain_hierarchy": {"fusion_saliency": False},
    "full_attention": {"fusion_saliency": False, "scan_blocks": "all"},
}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """Child process: build the encoder, time `--steps` train steps after one warm-up, report peak memory."""
    import resource

    import torch

    from reaf.model.config import load_model_config
    from reaf.model.vision import VisionTower

    overrides = dict(VARIANTS[variant])
    if overrides.get("scan_blocks") == "all":
        overrides["scan_blocks"] = list(range(args.depth))
    elif args.depth != 12:
        overrides["scan_blocks"] = [i for i in range(args.depth) if i % 3 == 2]
    cfg = load_model_config(args.model, img_size=args.size, depth=args.depth, **overrides).vision
    device = torch.device(args.device)
    torch.manual_seed(0)
    tower = VisionTower(cfg, 512).to(device)
    tower.trunk.set_grad_checkpointing(args.grad_checkpointing)
    opt = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-5)
    volume = torch.randn(args.batch, 1, *cfg.img_size, device=device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=args.bf16):
            loss = tower(volume).square().sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    )
    return {
        "variant": variant,
        "tokens": cfg.grid[0] * cfg.grid[1] * cfg.grid[2],
        "step_s_median": statistics.median(times),
        "step_s_all": times,
        "peak_mem_mib": peak,
        "peak_mem_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "params": sum(p.numel() for p in tower.parameters()),
    }


def machine() -> dict:
    """The shared machine description (bench/common.py), with this benchmark's own timing note."""
    return {
        **machine_info(),
        "note": "each variant in its own process; step time = median of timed steps after one "
        "warm-up step; other jobs may share the cores (see load_average_at_start)",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_base_singlescan_h2_token2744")
    parser.add_argument("--size", type=int, nargs=3, default=[112, 168, 168], help="input D H W (CPU: reduced)")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "encoder_cpu.json"))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(args.child, args)))
        return
    passthrough = [
        "--model",
        args.model,
        "--size",
        *map(str, args.size),
        "--depth",
        str(args.depth),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    passthrough += ["--bf16"] * args.bf16 + ["--grad-checkpointing"] * args.grad_checkpointing
    results = []
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_encoder", *passthrough, "--child", variant],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{variant:16s} step {results[-1]['step_s_median']:.3f} s  peak {results[-1]['peak_mem_mib']:.0f} MiB")
    base = {r["variant"]: r for r in results}
    report = {
        "command": " ".join(["python -m bench.bench_encoder", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": machine(),
        "results": results,
        "ratios_vs_full_attention": {
            v: base[v]["step_s_median"] / base["full_attention"]["step_s_median"] for v in base
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
