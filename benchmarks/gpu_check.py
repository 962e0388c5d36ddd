"""One-shot GPU check for a lent CUDA machine (see benchmarks/gpu.sh).

For each upscaler and for RIFE: CUDA fp16 output against CPU fp32 on the same real
frame (max and mean absolute error on 0–255), then 1080p frames per second in fp16,
eager and with ``torch.compile`` (upscalers: 1080p → ×2, tiles of 512; RIFE: batch
1 and 4), and a TensorRT attempt that reports its fallback reason when it can't run.
Prints "no CUDA" and exits 0 where there is none, so it can't pretend to have
measured anything.

    python3 -m benchmarks.gpu_check rife|span|waifu2x|realesrgan
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import torch
from skimage import data

from models.neural_upscale import NeuralUpscale
from models.rife import RifeInterpolator

# One wheel per part: the device tool carries at most 64 MiB per call.
UPSCALERS = {"span": ("span-x2", "clearreality-x4"),
             "waifu2x": ("waifu2x-photo-noise3-x2",),
             "realesrgan": ("realesr-animevideov3-x2", "realesrgan-x4plus")}


def _pair(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A natural photo and the same shifted by 6 px: real content, known motion."""
    image = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_CUBIC)
    return image, np.roll(image, 6, axis=1)


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


def _upscale_fps(op: NeuralUpscale, frame: np.ndarray, seconds: float = 5.0) -> float:
    for _ in range(2):
        op(frame[None])
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        op(frame[None])
        count += 1
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def upscalers(names: tuple[str, ...]) -> None:
    small, _ = _pair((256, 256))
    full, _ = _pair((1920, 1080))
    for name in names:
        cpu = NeuralUpscale(name, factor=2, tile=0, device="cpu")(small[None])[0]
        gpu = NeuralUpscale(name, factor=2, tile=0, device="cuda")(small[None])[0]
        diff = np.abs(cpu.astype(np.int16) - gpu)
        line = f"{name}: fp16 vs fp32 max |Δ| {diff.max()}, mean {diff.mean():.3f};"
        for runtime in ("torch", "compile", "tensorrt"):
            op = NeuralUpscale(name, factor=2, tile=512, device="cuda",
                               runtime=runtime)  # type: ignore[arg-type]
            line += f" {runtime} {_upscale_fps(op, full):.1f} fps"
        print(line + " (1080p → ×2)", flush=True)


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "rife"
    if not torch.cuda.is_available():
        print("no CUDA: nothing measured")
        return
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if part != "rife":
        upscalers(UPSCALERS[part])
        return
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
