#!/usr/bin/env bash
# The paper's recipe at real sizes on one GPU (see benchmarks/gpu_check.py); stops itself at 8 minutes.
# Figures: benchmarks/gpu_check.json. Usage: bash benchmarks/gpu_check.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: running on what torch finds"
timeout 480 python benchmarks/gpu_check.py "$@"
