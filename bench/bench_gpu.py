"""The REAF train step on one GPU at full size: samples/s, peak memory and model FLOP utilisation in bf16 and in
fp16 + GradScaler, with and without gradient checkpointing; whether the steps between logging points synchronise
with the host (run under torch.cuda.set_sync_debug_mode("error")); whether 8 loader workers on the cache format keep
up; the reference encoder beside ours when it is importable.

The steps are reaf.training.step's own (train_step on pinned batches copied by to_device, fused AdamW, the loss
kept on the device in a LossWindow and read once after the timed steps, as train_one_epoch does at its logging
step). `--budget-s` is a deadline: a part that would not finish before it is recorded as not run. The JSON is
rewritten after every part, so a run stopped by gpu.sh's `timeout` keeps what it measured.

    bash bench/gpu.sh                                        # CUDA, full size, batch 16
    python -m bench.bench_gpu --device cpu --model tiny      # the same path on a CPU in seconds (tests)
"""

from __future__ import annotations

import argparse
import gc as garbage
import os
import shlex
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import RESULTS, machine_info, write_result
from bench.gpu_parts import loader_rate, reference_side_by_side
from reaf import create_model
from reaf.training.loss_window import LossWindow
from reaf.training.optim import CosineSchedule, build_optimizer
from reaf.training.step import StepContext, autocast_factory, to_device, train_step

FULL_MODEL = "vit_base_singlescan_h2_token2744"
# dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets; the first name contained wins
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0, "H200": 989.0,
               "A100": 312.0, "L40S": 362.0}
REPORT_TOKENS = 320  # CT-RATE reports run to about 300 WordPiece tokens
SYNC_STEPS = 2
MACHINE_NOTE = ("step time: mean of the timed steps after warm-up, ended by one loss read (the logging step's "
                "sync); the loader's files sit in the page cache (decode cost, not disk reads)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model", default=FULL_MODEL, help="configs/ name (tiny with --device cpu)")
    p.add_argument("--batch", type=int, help="volumes per step (default 16 on CUDA, 2 on the CPU)")
    p.add_argument("--steps", type=int, help="timed steps per case (default 10 on CUDA, 2 on the CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each case's FLOP count and timing")
    p.add_argument("--workers", type=int, help="loader processes (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--loader-volumes", type=int, default=64, help="volumes the loader reads (16 distinct files)")
    p.add_argument("--budget-s", type=float, default=420.0, help="deadline from the start: later parts not run")
    p.add_argument("--reference-root", default=os.environ.get("REAF_REFERENCE_ROOT"),
                   help="a checkout of the reference code (HiLab-git/REAF) whose model.visual_encoder imports")
    p.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (16 if cuda else 2)
    args.steps = args.steps or (10 if cuda else 2)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    return args


def cases(device: torch.device) -> list[tuple[str, bool]]:
    """(precision, grad checkpointing) in the order run: bf16 and fp16 + GradScaler on CUDA, fp32 on a CPU."""
    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16", "fp16"]
    return [(precision, gc) for precision in precisions for gc in (False, True)]


def gpu_record() -> dict | None:
    """The GPU's name, memory, capability, driver and CUDA versions (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        driver = None
    return {"name": props.name, "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
            "driver": driver, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "peak_tflops_bf16_dense": peak_tflops(props.name)}


def peak_tflops(name: str) -> float | None:
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def synthetic_batch(model: torch.nn.Module, n: int, device: torch.device) -> dict:
    """n random volumes and token ids of report-like lengths, padded to the longest as the tokenizer pads (random
    ids: the full config's tokenizer needs a CXR-BERT folder), in pinned memory on CUDA."""
    gen = torch.Generator().manual_seed(0)
    context, vocab = model.cfg.text.context_length, model.text.transformer.config.vocab_size
    lengths = torch.tensor([min(context, 32 + (61 * i) % REPORT_TOKENS) for i in range(n)])
    ids = torch.randint(5, vocab, (n, int(lengths.max())), generator=gen)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    batch = {"image": torch.randn(n, 1, *model.cfg.vision.img_size, generator=gen), "input_ids": ids * mask,
             "attention_mask": mask}
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return {**batch, "name": [f"synthetic_{i}" for i in range(n)]}


def step_runner(model_name: str, precision: str, gc: bool, batch_size: int, device: torch.device):
    """A closure running one training step as train_one_epoch does between logging points, and its LossWindow."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device).train()
    model.set_grad_checkpointing(gc)
    optimizer = build_optimizer(model, lr=1e-5, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    ctx = StepContext(model, optimizer, torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                      CosineSchedule(optimizer, 1e-5, 0, 10**6), autocast_factory(precision, device), device)
    batch, window, count = synthetic_batch(model, batch_size, device), LossWindow(), [0]

    def step() -> None:
        loss, _ = train_step(ctx, [to_device(batch, device)], count[0])
        window.record(loss, count[0], batch["name"])
        count[0] += 1

    return step, window


def sync_check(step, device: torch.device) -> dict:
    """SYNC_STEPS steps (to_device, train_step, LossWindow.record: all train_one_epoch does between logging points)
    with every synchronising CUDA call an error; on a CPU the steps run, the check does not."""
    if device.type != "cuda":
        for _ in range(SYNC_STEPS):
            step()
        return {"result": "not applicable on CPU", "steps": SYNC_STEPS}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(SYNC_STEPS):
            step()
    except RuntimeError as err:
        return {"result": "fail", "steps": SYNC_STEPS, "message": str(err).splitlines()[0][:400]}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"result": "pass", "steps": SYNC_STEPS, "message": "no synchronising CUDA call in the steps"}


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS (CPU)"


def measure(args: argparse.Namespace, precision: str, gc: bool, device: torch.device, model_flops: dict) -> dict:
    """Warm-up, one FLOP-counted step, `args.steps` timed steps ended by the loss read, then the sync check."""
    step, window = step_runner(args.model, precision, gc, args.batch, device)
    for _ in range(args.warmup):
        step()
    window.check()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if not gc:
        model_flops.setdefault("flops", flops)  # checkpointing recomputes: its count is hardware FLOPs
    window.check()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    window.check()  # the logging step's read: it waits for the timed steps to finish
    step_s = (time.perf_counter() - t0) / args.steps
    peak, kind = peak_memory_gib(device)
    sync = sync_check(step, device)  # last: a failed check may leave the step half done
    peak_tf = peak_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    useful = model_flops.get("flops")
    return {"status": "ok", "step_s": step_s, "samples_per_s": args.batch / step_s, "peak_mem_gib": peak,
            "peak_mem_kind": kind, "flops_per_step": flops, "model_flops_per_step": useful,
            "achieved_tflops": useful / step_s / 1e12 if useful else None,
            "mfu": useful / step_s / 1e12 / peak_tf if useful and peak_tf else None,
            "mfu_note": "model FLOPs (no recomputation; torch.utils.flop_counter) / step time / dense bf16 peak"
            if peak_tf else "no peak FLOP/s known for this device", "sync_check": sync}


def run_case(args, precision: str, gc: bool, device: torch.device, model_flops: dict) -> dict:
    try:
        return measure(args, precision, gc, device, model_flops)
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    finally:
        garbage.collect()  # the case's model and optimiser state, before the next case allocates its own
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    start = time.monotonic()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device (use --device cpu --model tiny to check the script on a CPU)")
    torch.backends.cuda.matmul.allow_tf32 = True

    result = {"command": "python -m bench.bench_gpu " + shlex.join(sys.argv[1:] if argv is None else argv),
              "settings": vars(args), "machine": {**machine_info(), "gpu": gpu_record(), "note": MACHINE_NOTE}, "cases": [],
              "budget": {"budget_s": args.budget_s, "not_run": []}}
    model_flops: dict = {}
    longest = 0.0

    def due(part: str, estimate: float) -> bool:
        """False, and `part` listed as not run, when it would end past the deadline."""
        if time.monotonic() - start + estimate <= args.budget_s:
            return True
        result["budget"]["not_run"].append(part)
        return False

    for precision, gc in cases(device):
        name = f"{precision}{' + grad checkpointing' if gc else ''}"
        record = {"case": name, "precision": precision, "grad_checkpointing": gc, "batch": args.batch}
        if device.type != "cuda" and precision != "fp32":
            record["status"] = "skipped: no CUDA"
        elif not due(name, longest):
            record["status"] = "not run: time budget"
        else:
            tic = time.monotonic()
            record.update(run_case(args, precision, gc, device, model_flops))
            longest = max(longest, time.monotonic() - tic)
        result["cases"].append(record)
        print(f"{name:26s} {record['status']:>22s} {record.get('samples_per_s', 0):8.2f} samples/s", flush=True)
        write_result("gpu", result, args.out)
    best = max((c["samples_per_s"] for c in result["cases"] if c["status"] == "ok"), default=None)
    result["loader"] = loader_rate(args, best) if due("loader", 60.0) else {"status": "not run: time budget"}
    write_result("gpu", result, args.out)
    result["reference"] = (reference_side_by_side(args, device) if due("reference", 90.0)
                           else {"status": "not run: time budget"})
    result["budget"]["elapsed_s"] = time.monotonic() - start
    write_result("gpu", result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
