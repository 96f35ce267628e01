#!/usr/bin/env bash
# One prepared GPU check, for a session that is lent a CUDA machine with torch and triton preinstalled and no
# network: the fused Triton/Inductor paths against the reference (tests/qfocal/ops/test_triton.py's CUDA cases), then
# the GPU benchmark (qfocal fused vs a device-to-device copy's bandwidth, issue 3's 80 % target at 40000x1203).
# Runs from the repository root without installing qfocal (PYTHONPATH=src); providers whose packages are not
# installed there are skipped by the benchmark. Results and logs go to $OUT (default: gpu_out/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
if python -c "import pytest" 2>/dev/null; then
  timeout 240 python -m pytest -q -p no:cacheprovider tests/qfocal/ops/test_triton.py 2>&1 | tee "$OUT/tests.log"
else
  echo "pytest not installed: skipping tests/qfocal/ops/test_triton.py" | tee "$OUT/tests.log"
fi
timeout 300 python -m qfocal bench --device cuda --no-progress \
  --providers qfocal-fused,qfocal-inductor,qfocal-reference,torchvision-focal,bce,copy \
  --shapes 40000x1203 134400x80 --dtypes float32,bfloat16 \
  --out-dir "$OUT" --name RESULTS_GPU 2>&1 | tee "$OUT/bench.log"
