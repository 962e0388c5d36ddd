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

from models.operator import yuv420_size
from pipelines.av_typed import add_video_stream
from pipelines.colour import TRC_PQ, ColourSpec, rgb_to_frame, yuv420_to_frame
from pipelines.errors import InvalidOptionsError
from vocabulary import FrameLayout

__all__ = [
    "CODECS",
    "Codec",
    "EncoderSettings",
    "SegmentEncoder",
    "as_codec",
    "encode_segment",
    "even_size",
    "frame_size",
]

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


def frame_size(frames: np.ndarray, layout: FrameLayout) -> tuple[int, int]:
    """``(width, height)`` of frames in ``layout``."""
    if layout == FrameLayout.YUV420:
        return yuv420_size(frames)
    return frames.shape[2], frames.shape[1]


class SegmentEncoder:
    """Encodes frames as they come, a few at a time, into one segment's MP4 bytes: RGB
    ``(n, H, W, 3)`` cropped to even size, or planar 4:2:0 ``(n, H * 3 // 2, W)``
    (even already) encoded as they are.  ``threads``: the encoder's threads (0: its
    own choice, about 1.5 per core).  Use as a context manager; :meth:`finish` flushes
    the encoder and returns the bytes."""

    def __init__(
        self,
        size: tuple[int, int],
        fps: Fraction,
        settings: EncoderSettings,
        colour: ColourSpec,
        layout: FrameLayout = FrameLayout.RGB,
        threads: int = 0,
    ) -> None:
        self._width, self._height = even_size(*size)
        self._fps, self._colour = fps, colour
        self._planar = layout == FrameLayout.YUV420
        self._count = 0
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, mode="w", format="mp4")
        try:
            self._stream = self._configure(fps, settings, colour, threads)
        except BaseException:
            self._container.close()
            raise

    def _configure(
        self, fps: Fraction, settings: EncoderSettings, colour: ColourSpec, threads: int
    ) -> av.video.stream.VideoStream:
        encoder, params_key = CODECS[settings.codec]
        stream = add_video_stream(self._container, encoder, fps)
        stream.width, stream.height = self._width, self._height
        stream.pix_fmt = colour.pixel_format
        stream.time_base = 1 / fps
        context = stream.codec_context
        # The encoder writes these into the bitstream's VUI, the muxer into `colr`.
        context.colorspace = colour.space_tag
        context.color_range = colour.range_tag
        context.color_primaries = colour.primaries
        context.color_trc = colour.transfer
        # Frame threads, as the ffmpeg CLI gives x264: PyAV's default, slice threads,
        # splits every frame into a slice per thread (more bits, more CPU).
        context.thread_type = "FRAME"
        if threads:
            context.thread_count = threads
        # CRF 0 is lossless only at 8 bits; QP 0 is lossless at any depth.
        quality = ("qp", "0") if settings.crf == 0 else ("crf", str(settings.crf))
        options: dict[str, object] = {quality[0]: quality[1], "preset": settings.speed}
        private = _private_options(settings, colour)
        if private:
            options[params_key] = private
        stream.options = options
        return stream

    def __enter__(self) -> SegmentEncoder:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self._container.close()
        except av.error.FFmpegError:
            if exc_type is None:
                raise  # else the error already on its way is the one to report

    def add(self, frames: np.ndarray) -> None:
        for pixels in frames:
            frame = (
                yuv420_to_frame(pixels, self._colour)
                if self._planar
                else rgb_to_frame(
                    np.ascontiguousarray(pixels[: self._height, : self._width]), self._colour
                )
            )
            frame.pts = self._count
            frame.time_base = 1 / self._fps
            self._container.mux(self._stream.encode(frame))
            self._count += 1

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._buffer.getvalue()


def encode_segment(
    frames: np.ndarray,
    fps: Fraction,
    settings: EncoderSettings,
    colour: ColourSpec,
    layout: FrameLayout = FrameLayout.RGB,
) -> bytes:
    """MP4 bytes of ``frames`` at ``fps`` (layouts as :class:`SegmentEncoder` takes them)."""
    with SegmentEncoder(frame_size(frames, layout), fps, settings, colour, layout) as encoder:
        encoder.add(frames)
        return encoder.finish()
