"""Lanczos upscaling: the classical baseline for every neural upscaler.

RGB frames are resized with OpenCV's Lanczos-4.  Planar Y'CbCr 4:2:0 frames are resized
plane by plane with swscale's Lanczos (through PyAV), which is what ffmpeg's
``scale=…:flags=lanczos`` runs, and about four times faster than OpenCV on the planes
(15 vs 79 ms per 1080p → 2160p frame on this machine).
"""

from __future__ import annotations

from typing import ClassVar

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from models.operator import check_frames, check_yuv420, yuv420_size

__all__ = ["LanczosUpscale"]


class LanczosUpscale:
    """Resize each frame by an integer factor with a Lanczos-4 kernel."""

    name: ClassVar[str] = "lanczos"
    needs_gpu = False
    accepts_uint16 = True  # OpenCV resizes 16-bit frames natively
    accepts_yuv420 = True

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

    def filter_yuv420(self, frames: np.ndarray) -> np.ndarray:
        check_yuv420(frames)
        if self.scale == 1:
            return frames
        width, height = yuv420_size(frames)
        # Codes are scaled as they are: no range or matrix is involved when the input
        # and output formats are the same, so swscale converts nothing.
        pixel_format = "yuv420p10le" if frames.dtype == np.uint16 else "yuv420p"
        n, rows, _ = frames.shape
        out = np.empty((n, rows * self.scale, width * self.scale), dtype=frames.dtype)
        # One reformatter keeps swscale's context (its filter set-up costs as much as a
        # 4K frame's scaling); one thread, because the pipeline runs a task per chunk
        # on every core already.
        reformatter = self._reformatter = getattr(self, "_reformatter", None) or (
            VideoReformatter()
        )
        for i, planes in enumerate(frames):
            scaled = reformatter.reformat(
                av.VideoFrame.from_ndarray(planes, format=pixel_format),
                width=width * self.scale,
                height=height * self.scale,
                interpolation="LANCZOS",
                threads=1,
            )
            _copy_planes(scaled, out[i])
        return out


def _copy_planes(frame: av.VideoFrame, packed: np.ndarray) -> None:
    """``frame``'s planes into ``packed`` (one frame, planes one after another), once:
    PyAV's ``to_ndarray`` stacks them through two more copies."""
    flat = packed.reshape(-1)
    offset = 0
    for plane in frame.planes:
        row = plane.line_size // packed.itemsize
        width = plane.width
        source = np.frombuffer(memoryview(plane), packed.dtype, count=row * plane.height)
        flat[offset : offset + plane.height * width].reshape(plane.height, width)[:] = (
            source.reshape(plane.height, row)[:, :width]
        )
        offset += plane.height * width
