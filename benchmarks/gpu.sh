#!/usr/bin/env bash
# GPU check: fast vs general path on CUDA (float64, float32) and the ratio tables.
# Usage, from the repository root:  bash benchmarks/gpu.sh [--quick]
# Exits 0 with a message when no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
exec "$PY" benchmarks/gpu_check.py "$@"
