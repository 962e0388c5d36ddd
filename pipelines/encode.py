"""Encode one chunk's processed frames into a self-contained video segment.

Segments are MP4 bytes starting with an IDR frame and timestamps from zero.  Every
segment of a job is encoded with identical settings and geometry, so their parameter
sets match and :mod:`pipelines.assemble` can join them without re-encoding.

Frames become Y'CbCr through :mod:`pipelines.colour` with the input's matrix, range and
bit depth, and the stream carries the input's colour tags; HDR mastering-display and
content-light metadata go into the HEVC bitstream as SEI (x264 has no such option, so
HDR inputs are encoded with HEVC unless the caller asks otherwise).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from pipelines.av_typed import add_video_stream
from pipelines.colour import TRC_PQ, ColourSpec, rgb_to_frame, yuv420_to_frame
from pipelines.errors import InvalidOptionsError
from vocabulary import FrameLayout

__all__ = ["CODECS", "Codec", "EncoderSettings", "as_codec", "encode_segment", "even_size"]

Codec = Literal["h264", "hevc"]

# Our codec names → (FFmpeg encoder, private-options key).
CODECS: dict[str, tuple[str, str]] = {
    "h264": ("libx264", "x264-params"),
    "hevc": ("libx265", "x265-params"),
}


def as_codec(name: str) -> Codec:
    """``name`` as one of our codecs; :class:`InvalidOptionsError` for any other."""
    if name == "h264":
        return "h264"
    if name == "hevc":
        return "hevc"
    raise InvalidOptionsError(f"codec must be one of {sorted(CODECS)}, got {name!r}")


@dataclass(frozen=True)
class EncoderSettings:
    codec: Codec = "h264"
    crf: int = 20
    speed: str = "veryfast"  # x264/x265 preset

    def __post_init__(self) -> None:
        as_codec(self.codec)
        if not 0 <= self.crf <= 51:
            raise InvalidOptionsError(f"crf must be in 0..51, got {self.crf}")


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: odd ones lose their last column/row."""
    return width - width % 2, height - height % 2


def _private_options(settings: EncoderSettings, colour: ColourSpec) -> str | None:
    """x265-params: quiet, and the input's HDR metadata as SEI."""
    if settings.codec != "hevc":
        return None
    params = ["log-level=error"]
    if settings.crf == 0:
        params.append("lossless=1")
    if colour.mastering_display:
        params.append(f"master-display={colour.mastering_display}")
    if colour.content_light:
        params.append(f"max-cll={colour.content_light}")
    if colour.transfer == TRC_PQ:
        params.append("hdr10=1")
    return ":".join(params)


def encode_segment(
    frames: np.ndarray,
    fps: Fraction,
    settings: EncoderSettings,
    colour: ColourSpec,
    layout: FrameLayout = FrameLayout.RGB,
) -> bytes:
    """MP4 bytes of ``frames`` at ``fps``: RGB ``(N, H, W, 3)``, cropped to even size, or
    planar 4:2:0 ``(N, H * 3 // 2, W)`` (even already), encoded as they are."""
    planar = layout == FrameLayout.YUV420
    if planar:
        height, width = frames.shape[1] * 2 // 3, frames.shape[2]
    else:
        height, width = frames.shape[1:3]
    width, height = even_size(width, height)
    encoder, params_key = CODECS[settings.codec]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = add_video_stream(container, encoder, fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = colour.pixel_format
        stream.time_base = 1 / fps
        context = stream.codec_context
        # The encoder writes these into the bitstream's VUI, the muxer into `colr`.
        context.colorspace = colour.space_tag
        context.color_range = colour.range_tag
        context.color_primaries = colour.primaries
        context.color_trc = colour.transfer
        # CRF 0 is lossless only at 8 bits; QP 0 is lossless at any depth.
        quality = ("qp", "0") if settings.crf == 0 else ("crf", str(settings.crf))
        options: dict[str, object] = {quality[0]: quality[1], "preset": settings.speed}
        private = _private_options(settings, colour)
        if private:
            options[params_key] = private
        stream.options = options
        for i, pixels in enumerate(frames):
            frame = (
                yuv420_to_frame(pixels, colour)
                if planar
                else rgb_to_frame(np.ascontiguousarray(pixels[:height, :width]), colour)
            )
            frame.pts = i
            frame.time_base = 1 / fps
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()
