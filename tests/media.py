"""Helpers that measure decoded output: frames, audio timing, PSNR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = ["AudioTiming", "audio_timing", "decode_frames", "luma_psnr", "psnr"]


def decode_frames(path: str | Path) -> np.ndarray:
    """Every video frame of ``path`` as RGB, (N, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@dataclass(frozen=True)
class AudioTiming:
    codec: str
    start: float  # seconds, first decoded sample
    duration: float  # seconds of decoded samples


def audio_timing(path: str | Path) -> AudioTiming | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        start = None
        samples = 0
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            if start is None:
                start = float(frame.pts * frame.time_base)
            samples += frame.samples
        return AudioTiming(stream.codec_context.name, start or 0.0, samples / rate)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the Y channel: what 4:2:0 encoding keeps at full resolution."""

    def luma(image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV)[..., 0]

    return psnr(luma(a), luma(b))
