#!/usr/bin/env bash
# One-GPU benchmark (H100/H200 class), under 8 minutes: the full-size train step at batch 16 in bf16 and in
# fp16 + GradScaler, with and without gradient checkpointing (samples/s, peak memory, MFU), the sync check, the
# cache loader against the step, the reference encoder when --reference-root is given. Arguments go to
# bench.bench_gpu (e.g. --budget-s, --batch). Installs nothing; writes bench/results/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# the script's own deadline (--budget-s, 420 s by default) ends it first; timeout is the backstop
timeout 470 python3 -m bench.bench_gpu "$@"
