#!/usr/bin/env bash
# GPU check: fast vs general path on CUDA (float64, float32) and the ratio tables, then the
# CNN table of the general (vmap) engine (benchmarks/bench_cnn.py) on the same device.
# Usage, from the repository root:  bash benchmarks/gpu.sh [--quick] [--device cuda:N]
# Exits 0 with a message when no CUDA device is present (unless --device names one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" benchmarks/gpu_check.py "$@"
if [[ " $* " == *" --device "* ]] || \
        "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo
    "$PY" benchmarks/bench_cnn.py --device cuda "$@"
fi
