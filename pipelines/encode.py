"""Encode one chunk's processed frames into a self-contained video segment.

Segments are MP4 bytes starting with an IDR frame and timestamps from zero.  Every
segment of a job is encoded with identical settings and geometry, so their parameter
sets match and :mod:`pipelines.assemble` can join them without re-encoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from pipelines.errors import InvalidOptionsError

__all__ = ["CODECS", "EncoderSettings", "encode_segment", "even_size"]

Codec = Literal["h264", "hevc"]

# Our codec names → (FFmpeg encoder, private-options key).
CODECS: dict[str, tuple[str, str]] = {
    "h264": ("libx264", "x264-params"),
    "hevc": ("libx265", "x265-params"),
}


@dataclass(frozen=True)
class EncoderSettings:
    codec: Codec = "h264"
    crf: int = 20
    speed: str = "veryfast"  # x264/x265 preset
    pixel_format: str = "yuv420p"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InvalidOptionsError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise InvalidOptionsError(f"crf must be in 0..51, got {self.crf}")


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: odd ones lose their last column/row."""
    return width - width % 2, height - height % 2


def encode_segment(frames: np.ndarray, fps: Fraction, settings: EncoderSettings) -> bytes:
    """MP4 bytes of ``frames`` (N, H, W, 3) RGB at ``fps``, cropped to even size."""
    height, width = frames.shape[1:3]
    width, height = even_size(width, height)
    encoder, _ = CODECS[settings.codec]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = settings.pixel_format
        stream.time_base = 1 / fps
        options = {"crf": str(settings.crf), "preset": settings.speed}
        if settings.codec == "hevc":
            options["x265-params"] = "log-level=error"
        stream.options = options
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(pixels[:height, :width]), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / fps
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()
