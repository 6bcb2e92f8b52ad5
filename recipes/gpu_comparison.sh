#!/usr/bin/env bash
# The pretrained comparison on a CUDA machine: MAG-SD against its plain backbone, both fine-tuned from
# ImageNet-pretrained EfficientNet-Lite0, on the full prepared data at 224 px with bf16; the run folders'
# test reports, the comparison table and the images/s of a MAG-SD step and a plain step (bf16).
#
#   python recipes/prepare_data.py out/cxr-full --kermany K/chest_xray --ieee8023 I/covid-chestxray-dataset
#   recipes/gpu_comparison.sh out/cxr-full out/gpu [I/lung_boxes.json]
#
# Every setting of recipes/compare_pretraining.sh can be overridden from the environment (SEEDS, EPOCHS,
# BATCH, LAUNCH="accelerate launch --num_processes 8" on 8 GPUs, ...); DEVICE=cpu TRAIN_ARGS=--cpu
# BENCH_DTYPE=float32 runs the same script on a CPU (the tests do so with a tiny setting).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export CONFIGS="${CONFIGS:-lite0-pretrained lite0-pretrained-baseline}"
export SIZE="${SIZE:-224}" EPOCHS="${EPOCHS:-20}" FREEZE="${FREEZE:-0}" SEEDS="${SEEDS:-0 1 2}" BATCH="${BATCH:-64}"
export TRAIN_ARGS="${TRAIN_ARGS:---mixed-precision bf16}" DEVICE="${DEVICE:-cuda}"
export STEP_BENCH=1 BENCH_DTYPE="${BENCH_DTYPE:-bfloat16}"
exec "$HERE/compare_pretraining.sh" "$@"
