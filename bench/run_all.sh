#!/usr/bin/env bash
# The five CPU benchmarks, one after the other, each with the command its result file records:
#   bench/results/encoder_cpu.json, encoder_cpu_2744tokens.json, loader.json, preprocess.json, eval.json.
# Not run here: bench.bench_positives, which reads a finished demo folder's reports
#   (python -m bench.bench_positives --demo-dir demo_runs/demo), the GPU benchmark, bench/gpu.sh, and
#   bench.bench_reference, which needs the reference's checkout and venv (its docstring says how to make them).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m bench.bench_encoder --steps 6           # REAF vs plain hierarchy vs full attention, 686 tokens, 6 blocks
python -m bench.bench_encoder --size 112 336 336 --depth 3 --steps 2 --out bench/results/encoder_cpu_2744tokens.json
python -m bench.bench_loader                      # ori / stage1 / stage2 / cache at 112x336x336
python -m bench.bench_preprocess                  # our preprocessing vs a CT-CLIP-style pipeline (with scipy's)
python -m bench.bench_eval                        # encode-once evaluation vs per-class re-encoding
