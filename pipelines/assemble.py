"""Join encoded segments without re-encoding and bring the source's audio back in.

Video packets are copied from each segment with their timestamps shifted by the
segment's first output frame.  Audio (and subtitle) streams of the source are copied
where the output container accepts the codec, else audio is transcoded to AAC and
subtitles are dropped with a warning.  Audio keeps its timing relative to the first
video frame, so sync is what it was in the source.  Packets from all streams are
interleaved by decode time, and MP4/MOV get ``faststart`` (index first) so players
can start before the download ends.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from pipelines.av_typed import add_audio_stream, time_base
from pipelines.errors import InvalidInputError, InvalidOptionsError
from pipelines.probe import VideoInfo

__all__ = ["OUTPUT_FORMATS", "Segment", "assemble", "output_format"]

log = logging.getLogger(__name__)

# suffix → (FFmpeg muxer, audio codecs it takes as-is, subtitle codecs it takes as-is)
OUTPUT_FORMATS: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {
    ".mp4": (
        "mp4",
        frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}),
        frozenset({"mov_text"}),
    ),
    ".mov": (
        "mov",
        frozenset({"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"}),
        frozenset({"mov_text"}),
    ),
    ".mkv": (
        "matroska",
        frozenset(
            {
                "aac",
                "mp3",
                "opus",
                "vorbis",
                "flac",
                "ac3",
                "eac3",
                "pcm_s16le",
                "pcm_s24le",
                "alac",
            }
        ),
        frozenset({"subrip", "srt", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle"}),
    ),
}


# FFmpeg's default layout per channel count, which the AAC encoder accepts.
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _aac_layout(channels: int) -> str:
    try:
        return _AAC_LAYOUTS[channels]
    except KeyError:
        raise InvalidInputError(
            f"audio with {channels} channels cannot be transcoded to AAC; "
            "choose .mkv output to keep it as-is",
            reason="unsupported_audio",
        ) from None


@dataclass(frozen=True)
class Segment:
    path: Path
    first_frame: int  # index of its first frame in the output


def output_format(path: str | Path) -> str:
    """The muxer for ``path``'s suffix; raises :class:`InvalidOptionsError` if unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InvalidOptionsError(
            f"output must end in one of {', '.join(OUTPUT_FORMATS)}, got {suffix or 'nothing'!r}"
        )
    return OUTPUT_FORMATS[suffix][0]


def _reorder_delay(path: Path) -> Fraction:
    """How far decode time runs ahead of presentation time at the segment's start (s)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size and packet.dts is not None:
                return max(Fraction(0), -packet.dts * time_base(stream))
    return Fraction(0)


def _video_packets(
    segments: Sequence[Segment], fps: Fraction, out_stream: av.video.VideoStream, stack: ExitStack
) -> Iterator[tuple[float, int, av.Packet]]:
    """Segment packets with pts shifted into place and dts rewritten for the whole file.

    Each segment's encoder chose its own B-frame delay (a two-frame segment has none),
    so shifted dts could run backwards at a seam.  Rewriting the k-th packet's dts as
    ``(k - D) / fps`` with D the largest delay keeps dts strictly increasing and never
    past pts, because every segment reorders by at most D frames.
    """
    delay_frames = max(math.ceil(_reorder_delay(s.path) * fps) for s in segments)
    decoded = 0
    for segment in segments:
        container = stack.enter_context(av.open(str(segment.path)))
        stream = container.streams.video[0]
        tb = time_base(stream)
        shift = round(Fraction(segment.first_frame) / fps / tb)
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packet.pts = None if packet.pts is None else packet.pts + shift
            packet.dts = round(Fraction(decoded - delay_frames) / fps / tb)
            decoded += 1
            packet.stream = out_stream
            packet.time_base = tb
            yield float(packet.dts * tb), 0, packet
        container.close()


def _copied_packets(
    source: av.container.InputContainer,
    in_stream: av.stream.Stream,
    out_stream: av.stream.Stream,
    start: Fraction,
    order: int,
) -> Iterator[tuple[float, int, av.Packet]]:
    tb = time_base(in_stream)
    shift = round(start / tb)
    for packet in source.demux(in_stream):
        if packet.size == 0 or packet.pts is None:
            continue
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        if packet.pts + (packet.duration or 0) <= 0:
            continue  # wholly before the first video frame
        packet.stream = out_stream
        packet.time_base = tb
        yield float((packet.dts if packet.dts is not None else packet.pts) * tb), order, packet


def _transcoded_audio(
    source: av.container.InputContainer,
    in_stream: av.audio.AudioStream,
    out_stream: av.audio.AudioStream,
    start: Fraction,
    order: int,
) -> Iterator[tuple[float, int, av.Packet]]:
    def encoded() -> Iterator[av.Packet]:
        for frame in source.decode(in_stream):
            if frame.pts is None:
                continue
            frame.pts -= round(start / time_base(frame))
            if frame.pts + frame.samples * Fraction(1, frame.sample_rate) / time_base(frame) <= 0:
                continue
            yield from out_stream.encode(frame)
        yield from out_stream.encode(None)

    for packet in encoded():
        tb = Fraction(packet.time_base)
        ts = packet.dts if packet.dts is not None else packet.pts
        yield float((ts or 0) * tb), order, packet


def assemble(
    segments: Sequence[Segment],
    fps: Fraction,
    source: VideoInfo,
    output: str | Path,
    *,
    faststart: bool = True,
) -> None:
    """Write ``output``: the segments' video joined in order plus the source's other streams."""
    if not segments:
        raise ValueError("no segments to assemble")
    fmt = output_format(output)
    _, audio_ok, subtitles_ok = OUTPUT_FORMATS[Path(output).suffix.lower()]
    options = {"movflags": "+faststart"} if faststart and fmt in ("mp4", "mov") else {}
    start = source.start_pts * source.time_base
    with ExitStack() as stack:
        first = stack.enter_context(av.open(str(segments[0].path)))
        src = stack.enter_context(av.open(source.path))
        out = stack.enter_context(av.open(str(output), mode="w", format=fmt, options=options))
        video_out = out.add_stream_from_template(first.streams.video[0])
        video_out.time_base = first.streams.video[0].time_base
        if fmt in ("mp4", "mov") and video_out.codec_context.name == "hevc":
            video_out.codec_tag = "hvc1"  # what Apple players require for HEVC in MP4
        first.close()

        feeds: list[Iterator[tuple[float, int, av.Packet]]] = []
        order = 1
        for in_stream in src.streams.audio:
            # Each copied stream reads the source through its own handle so the
            # demuxers advance independently while packets are interleaved.
            reader = stack.enter_context(av.open(source.path))
            reader_stream = reader.streams.audio[src.streams.audio.index(in_stream)]
            if in_stream.codec_context.name in audio_ok:
                out_stream = out.add_stream_from_template(in_stream)
                out_stream.time_base = in_stream.time_base
                feeds.append(_copied_packets(reader, reader_stream, out_stream, start, order))
            else:
                # The default layout for the channel count: AAC refuses the unordered
                # layouts that PCM in Matroska often declares.
                context = in_stream.codec_context
                out_stream = add_audio_stream(
                    out, "aac", context.sample_rate, layout=_aac_layout(context.channels)
                )
                feeds.append(_transcoded_audio(reader, reader_stream, out_stream, start, order))
            order += 1
        for subtitle in src.streams.subtitles:
            codec = subtitle.codec_context.name
            if codec not in subtitles_ok:
                log.warning(
                    "dropping %s subtitle stream #%d: %s cannot hold it as-is",
                    codec,
                    subtitle.index,
                    fmt,
                )
                continue
            reader = stack.enter_context(av.open(source.path))
            copied = out.add_stream_from_template(subtitle)
            feeds.append(
                _copied_packets(reader, reader.streams[subtitle.index], copied, start, order)
            )
            order += 1

        feeds.insert(0, _video_packets(segments, fps, video_out, stack))
        for _, _, packet in heapq.merge(*feeds, key=lambda item: (item[0], item[1])):
            out.mux(packet)
