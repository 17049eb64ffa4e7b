#!/usr/bin/env bash
# REAF's paper recipe on CT-RATE through torchrun; with no data configured, the embedded synthetic demo instead.
#
#   CT_RATE_ROOT=/data/ct_rate CXR_BERT_PATH=/models/cxr-bert bash train_ghs.sh [extra main.py flags]
#
# Variables (all optional except the two paths):
#   CT_RATE_ROOT     CT-RATE root (layout A: dataset/train_fixed, dataset/valid_fixed, metadata/ ...), or the output
#                    of `python -m reaf.preprocess --format cache` (a complete root of caches; the default type).
#   CXR_BERT_PATH    local microsoft/BiomedVLP-CXR-BERT-specialized folder (nothing is downloaded).
#   INPUT_DATA_TYPE  ori | stage1 | stage2 | cache (default cache; `ori` reads the NIfTIs, slowly).
#   LOGS, NAME       runs go to $LOGS/$NAME (default ./logs/reaf_ct_rate); a rerun resumes from its latest.pt.
#   NPROC            processes (GPUs) per node (default: torch.cuda.device_count(), honouring CUDA_VISIBLE_DEVICES).
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, RDZV_ID   multi-node: torchrun's c10d rendezvous on MASTER_ADDR.
#   MAX_RESTARTS     torchrun restarts of a failed worker group (default 0); restarted workers resume latest.pt.
#   REPORT_TO        none | wandb | tensorboard, comma list (default tensorboard); WANDB_PROJECT (default REAF).
#   BATCH_SIZE, EPOCHS, LR, WARMUP_EPOCHS, WORKERS, ZEROSHOT_FREQUENCY   recipe knobs (defaults below).
#   PYTHON           the interpreter (default python); torchrun runs as `$PYTHON -m torch.distributed.run`.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

if [[ -z "${CT_RATE_ROOT:-}" ]]; then
    echo "train_ghs.sh: CT_RATE_ROOT is not set, so running the embedded synthetic demo (python -m reaf.demo)." >&2
    exec "$PYTHON" -m reaf.demo "$@"
fi
: "${CXR_BERT_PATH:?set CXR_BERT_PATH to a local CXR-BERT folder (microsoft/BiomedVLP-CXR-BERT-specialized)}"

if [[ -z "${NPROC:-}" ]]; then
    NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-1}
if [[ "$NNODES" -gt 1 ]]; then
    : "${MASTER_ADDR:?multi-node runs need MASTER_ADDR (the rendezvous host)}"
    LAUNCH=(--nnodes="$NNODES" --node-rank="${NODE_RANK:-0}" --rdzv-backend=c10d
            --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${RDZV_ID:-reaf}")
else
    LAUNCH=(--standalone --nnodes=1)
fi

# --val-frequency 0: under --data-root the val split is the zero-shot split, whose evaluation includes retrieval.
# `--` ends torchrun's own flags: without it torchrun rejects main.py's --logs as an abbreviation of --logs-specs.
exec "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" --nproc-per-node="$NPROC" --max-restarts="${MAX_RESTARTS:-0}" -- main.py \
    --model vit_base_singlescan_h2_token2744 \
    --data-root "$CT_RATE_ROOT" \
    --input-data-type "${INPUT_DATA_TYPE:-cache}" \
    --input-info -1150 350 crop \
    --batch-size "${BATCH_SIZE:-16}" \
    --epochs "${EPOCHS:-50}" \
    --lr "${LR:-5e-4}" \
    --warmup-epochs "${WARMUP_EPOCHS:-2}" \
    --workers "${WORKERS:-8}" \
    --precision amp \
    --grad-checkpointing \
    --fusion-method weighted_mean \
    --use-cxr-bert \
    --cxr-bert-path "$CXR_BERT_PATH" \
    --lock-text \
    --val-frequency 0 \
    --zeroshot-frequency "${ZEROSHOT_FREQUENCY:-1}" \
    --report-to "${REPORT_TO:-tensorboard}" \
    --wandb-project-name "${WANDB_PROJECT:-REAF}" \
    --logs "${LOGS:-./logs}" \
    --name "${NAME:-reaf_ct_rate}" \
    --resume latest \
    "$@"
