#!/usr/bin/env bash
# One-GPU benchmark (H100 class): full-size bf16 train step with/without grad checkpointing, MFU, loader check.
# Installs nothing; expects the project's requirements already installed. Writes bench/results/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 540 python3 -m bench.bench_gpu "$@"
