#!/usr/bin/env bash
# Every CPU benchmark that fits a 2-core machine, one after the other, each writing bench/results/*.json.
# (The GPU benchmark is bench/gpu.sh, for a machine with a GPU.) About 10-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python bench/bench_encoder.py --steps 3          # REAF vs plain hierarchy vs full attention, reduced size
python bench/bench_encoder.py --size 112 336 336 --depth 3 --steps 2 --out bench/results/encoder_cpu_2744tokens.json
python bench/bench_loader.py                     # ori / stage1 / stage2 / cache at 112x336x336
python bench/bench_preprocess.py --no-scipy      # our preprocessing vs a CT-CLIP-style pipeline
python bench/bench_eval.py                       # encode-once evaluation vs per-class re-encoding
