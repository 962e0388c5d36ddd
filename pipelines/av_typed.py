"""Typed access to PyAV where its stubs are looser than its behaviour: the time base of a
stream, packet or frame (``Fraction | None`` in the stubs), and the concrete stream type
that ``add_stream`` returns for a codec named at run time."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Protocol

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

__all__ = ["add_audio_stream", "add_video_stream", "time_base"]


class _HasTimeBase(Protocol):
    @property
    def time_base(self) -> Fraction | None: ...


def time_base(item: _HasTimeBase) -> Fraction:
    """``item.time_base``; every demuxed stream and packet has one, so None is a bug."""
    value = item.time_base
    if value is None:
        raise ValueError(f"{item!r} has no time base")
    return Fraction(value)


def add_video_stream(
    container: av.container.OutputContainer, codec: str, rate: Fraction | int | None = None
) -> VideoStream:
    stream = container.add_stream(codec, rate=rate)
    if not isinstance(stream, VideoStream):
        raise ValueError(f"{codec} is not a video encoder")
    return stream


def add_audio_stream(
    container: av.container.OutputContainer, codec: str, rate: int | None = None, **options: Any
) -> AudioStream:
    stream = container.add_stream(codec, rate=rate, **options)
    if not isinstance(stream, AudioStream):
        raise ValueError(f"{codec} is not an audio encoder")
    return stream
