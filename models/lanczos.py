"""Lanczos upscaling with OpenCV: the classical baseline for every neural upscaler."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from models.operator import check_frames

__all__ = ["LanczosUpscale"]


class LanczosUpscale:
    """Resize each frame by an integer factor with a Lanczos-4 kernel."""

    name: ClassVar[str] = "lanczos"
    needs_gpu = False
    accepts_uint16 = True  # OpenCV resizes 16-bit frames natively

    def __init__(self, factor: int = 2) -> None:
        if factor not in (1, 2, 3, 4):
            raise ValueError(f"upscale factor must be 1, 2, 3 or 4, got {factor}")
        self.scale = factor

    def __repr__(self) -> str:
        return f"LanczosUpscale(factor={self.scale})"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames, wide=True)
        if self.scale == 1:
            return frames
        n, h, w, _ = frames.shape
        out = np.empty((n, h * self.scale, w * self.scale, 3), dtype=frames.dtype)
        for i, frame in enumerate(frames):
            cv2.resize(
                frame,
                (w * self.scale, h * self.scale),
                dst=out[i],
                interpolation=cv2.INTER_LANCZOS4,
            )
        return out
