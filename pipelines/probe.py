"""Probe a video with PyAV: streams, geometry, timing, keyframes, rotation.

The probe demuxes every video packet (no decoding), which gives an exact frame count,
the keyframe positions the chunk plan needs, VFR detection and truncation detection in
one sequential read.  Only the first frame is decoded, to prove the stream decodes and
to read its rotation and real pixel format.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from pipelines.colour import ColourSpec, colour_spec
from pipelines.errors import InvalidInputError

__all__ = ["AudioStreamInfo", "SubtitleStreamInfo", "VideoInfo", "probe"]

# A frame interval that differs from the median by more than this is variable frame rate.
_VFR_TOLERANCE = 0.02


@dataclass(frozen=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    start_time: float | None


@dataclass(frozen=True)
class SubtitleStreamInfo:
    index: int
    codec: str


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline knows about an input before decoding it."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    pixel_format: str
    bit_depth: int
    rotation: int  # clockwise degrees to apply for display: 0, 90, 180 or 270
    fps: Fraction  # nominal for CFR, average for VFR
    is_vfr: bool
    frame_count: int
    duration: float  # seconds, first frame to end of last frame
    time_base: Fraction
    start_pts: int
    frame_pts: tuple[int, ...] = field(repr=False)  # every frame's pts, ascending
    keyframe_pts: tuple[int, ...] = field(repr=False)  # ascending
    audio: tuple[AudioStreamInfo, ...] = ()
    subtitles: tuple[SubtitleStreamInfo, ...] = ()
    # Matrix, range, depth and tags, from the first frame.
    colour: ColourSpec = field(default_factory=ColourSpec)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation, as a viewer sees the picture."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise InvalidInputError(f"input file {path} does not exist", reason="missing")
    if path.stat().st_size == 0:
        raise InvalidInputError("input file is empty", reason="empty")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise InvalidInputError(
            "input is not a readable video container; it is truncated or not a video "
            f"({exc.strerror or exc})",
            reason="not_a_video",
        ) from None


def _clockwise_rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix angle counter-clockwise, as FFmpeg does.
    return round(-frame.rotation) % 360


def _fps_and_vfr(
    pts: list[int], time_base: Fraction, nominal: Fraction | None
) -> tuple[Fraction, bool, float]:
    if len(pts) < 2:
        fps = nominal or Fraction(25)
        return fps, False, float(1 / fps)
    deltas = sorted(b - a for a, b in itertools.pairwise(pts))
    median = deltas[len(deltas) // 2]
    # One tick of slack: millisecond time bases (Matroska) round 1/24 s to 41 or 42.
    slack = max(1.0, _VFR_TOLERANCE * median)
    is_vfr = median <= 0 or any(abs(d - median) > slack for d in deltas)
    span = (pts[-1] - pts[0]) * time_base
    if not is_vfr and nominal:
        fps = nominal
    else:
        fps = Fraction(len(pts) - 1) / span if span > 0 else Fraction(25)
        fps = fps.limit_denominator(1001)
    # CFR: n frames last exactly n / fps, whatever the time base rounded.
    duration = float(span + 1 / fps) if is_vfr else float(len(pts) / fps)
    return fps, is_vfr, duration


def _declared_duration(stream: av.video.stream.VideoStream) -> float | None:
    """Video duration the header promises: the stream's own, or Matroska's tag."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _nominal_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The container's frame rate: r_frame_rate when it agrees with the average."""
    guessed, average = stream.guessed_rate, stream.average_rate
    if guessed and average and abs(float(guessed) / float(average) - 1) < 0.01:
        return Fraction(guessed)
    rate = average or guessed
    return Fraction(rate) if rate else None


def probe(path: str | Path) -> VideoInfo:
    """Describe the video at ``path``.

    Raises :class:`InvalidInputError` when the file is missing or empty, is not a media
    container, has no video stream, has no frames, is truncated, or its first frame
    does not decode.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            kind = "audio-only" if container.streams.audio else "has no video stream"
            raise InvalidInputError(f"input {kind}: nothing to enhance", reason="no_video")
        stream = container.streams.video[0]
        if stream.time_base is None:
            raise InvalidInputError("video stream has no time base", reason="corrupt")
        time_base = Fraction(stream.time_base)
        declared = stream.frames
        pts: list[int] = []
        keyframes: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise InvalidInputError("video packet without timestamps", reason="corrupt")
                pts.append(ts)
                if packet.is_keyframe:
                    keyframes.append(ts)
        except av.error.FFmpegError as exc:
            raise InvalidInputError(
                f"input is truncated or corrupt after {len(pts)} frames ({exc.strerror})",
                reason="truncated",
            ) from None
        if not pts:
            raise InvalidInputError("video stream has no frames", reason="no_frames")
        if declared and len(pts) < declared:
            raise InvalidInputError(
                f"input is truncated: header declares {declared} frames, found {len(pts)}",
                reason="truncated",
            )
        pts.sort()
        keyframes.sort()
        declared_seconds = _declared_duration(stream)
        if not keyframes or keyframes[0] > pts[0]:
            # Streams cut mid-GOP: decoding from the first packet is the best we can do.
            keyframes.insert(0, pts[0])

        first = _first_frame(container, stream)
        fps, is_vfr, duration = _fps_and_vfr(pts, time_base, _nominal_rate(stream))
        if declared_seconds is not None and duration < declared_seconds - 1.5 / float(fps):
            raise InvalidInputError(
                f"input is truncated: header declares {declared_seconds:.3f} s of video, "
                f"found {duration:.3f} s",
                reason="truncated",
            )
        pixel_format = first.format.name
        bit_depth = max(c.bits for c in first.format.components)
        audio = tuple(
            AudioStreamInfo(
                index=a.index,
                codec=a.codec_context.name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
                start_time=float(a.start_time * a.time_base)
                if a.start_time is not None and a.time_base
                else None,
            )
            for a in container.streams.audio
        )
        subtitles = tuple(
            SubtitleStreamInfo(index=s.index, codec=s.codec_context.name)
            for s in container.streams.subtitles
        )
        return VideoInfo(
            path=str(path),
            container=container.format.name,
            codec=stream.codec_context.name,
            width=first.width,
            height=first.height,
            pixel_format=pixel_format,
            bit_depth=bit_depth,
            rotation=_clockwise_rotation(first),
            fps=fps,
            is_vfr=is_vfr,
            frame_count=len(pts),
            duration=duration,
            time_base=time_base,
            start_pts=pts[0],
            frame_pts=tuple(pts),
            keyframe_pts=tuple(keyframes),
            audio=audio,
            subtitles=subtitles,
            colour=colour_spec(first, bit_depth),
        )


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> av.VideoFrame:
    try:
        container.seek(0, stream=stream, backward=True)
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InvalidInputError(
            f"first video frame does not decode ({exc.strerror})", reason="undecodable"
        ) from None
    raise InvalidInputError("no video frame decodes", reason="undecodable")
