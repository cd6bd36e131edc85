#!/usr/bin/env bash
# The fork's driver, fixed: language models (avg) then vision models of `exhaustive` with each
# model's default pool (cls where it has a class token, as the fork ran ViTs; avg for convnets,
# Swin and SigLIP, which have none).
# Usage: scripts/run_exhaustive_extraction.sh [DATASET] [SUBSET] [BATCH_SIZE] [NUM_SAMPLES] [OUTPUT_DIR]
# DATASET defaults to minhuh/prh (the fork passed `prh`, which featx also accepts as an alias).
set -euo pipefail
DATASET=${1:-minhuh/prh}
SUBSET=${2:-wit_1024}
BATCH_SIZE=${3:-64}
NUM_SAMPLES=${4:-}
OUTPUT_DIR=${5:-./results/features}
FEATX=${FEATX:-featx}

common=(--modelset exhaustive --dataset "$DATASET" --subset "$SUBSET" --batch_size "$BATCH_SIZE" --output_dir "$OUTPUT_DIR")
if [[ -n "$NUM_SAMPLES" ]]; then common+=(--num_samples "$NUM_SAMPLES"); fi

status=0
"$FEATX" extract "${common[@]}" --modality language --pool avg || status=$?
"$FEATX" extract "${common[@]}" --modality vision || status=$?
exit "$status"
