#!/usr/bin/env bash
# The checks that need CUDA, in one run on a GPU machine after the README's set-up (plus `pip install deepspeed`):
# accelerate runs FSDP and DeepSpeed on CUDA devices only, so sharded training is tested here, not in CI.
#   scripts/gpu_checks.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_checks}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpus.csv"
# FSDP2 and ZeRO-2 on up to two GPUs against one process: the same loss curve, and the saved model is the gathered one
.venv/bin/python -m pytest -m slow -q -rs tests/test_scaleout.py -k sharded_training 2>&1 | tee "$out/sharded_training.txt"
# stage-2 throughput and MFU of the 7B shape (docs/performance.md)
.venv/bin/python benchmarks/train_throughput.py --backbone-shape llama2-7b --mode lora ft --grad-checkpointing \
    2>&1 | tee "$out/train_throughput.txt"
