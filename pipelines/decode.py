"""Decode one chunk of a video into frames, independently of every other chunk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator

import av
import numpy as np

from pipelines.chunk_plan import Chunk
from pipelines.colour import ColourSpec, frame_to_rgb, frame_to_yuv420
from pipelines.errors import InvalidInputError
from vocabulary import FrameLayout

__all__ = ["DecodedChunk", "chunk_frames", "decode_chunk", "frames_from", "to_display_rgb"]

log = logging.getLogger(__name__)

_WARN_AFTER_SECONDS = 64  # a backoff step (1, 2, 4, … s) this long is no GOP's length

DecodedChunk = tuple[np.ndarray, int]
"""Frames (``n_own + n_lookahead`` of them, in the job's layout) and ``n_lookahead`` (0 or 1)."""


def to_display_rgb(frame: av.VideoFrame, rotation: int, colour: ColourSpec) -> np.ndarray:
    """RGB pixels of ``frame`` (see :mod:`pipelines.colour`) rotated clockwise by
    ``rotation`` degrees for display."""
    rgb = frame_to_rgb(frame, colour)
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))
    return rgb


def frames_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    seek_pts: int,
    start_pts: int,
) -> Iterator[av.VideoFrame]:
    """Decoded frames from a seek to the keyframe at ``seek_pts``, the first of them at
    or before ``start_pts`` (the caller drops what comes before it).

    MPEG-TS and MPEG-PS have no index: their demuxers find a timestamp by searching the
    byte stream, and a seek to a keyframe's own pts lands on the *next* keyframe, a GOP
    late (every chunk of such an input decoded none of its own frames).  So when the
    first frame is past ``start_pts``, this seeks again further back, a second, then
    twice as far each time, and at last to the stream's start.
    """
    second = max(1, round(1 / stream.time_base)) if stream.time_base else 1
    step, target = 0, seek_pts
    while True:
        container.seek(target, stream=stream, backward=True)
        frames = container.decode(stream)
        first = next(frames, None)
        # Nothing at all: the seek landed past the last keyframe.
        overshot = first is None or (first.pts is not None and first.pts > start_pts)
        if not overshot or target < 0:
            if first is not None:
                yield first
                yield from frames
            return
        step = 2 * step if step else second
        if step == _WARN_AFTER_SECONDS * second:
            # Each chunk of such a stream now decodes a minute or more it does not own.
            log.warning(
                "seeking to pts %d landed past it again; decoding from %d s before it",
                seek_pts,
                _WARN_AFTER_SECONDS,
            )
        # Last, a negative target: a backward seek there lands on the first keyframe,
        # negative timestamps (edit lists) included.
        target = seek_pts - step if seek_pts - step > 0 else -1


def _decoded(
    path: str,
    chunk: Chunk,
    pixels: Callable[[av.VideoFrame], np.ndarray],
    check_canceled: Callable[[], None],
    threads: int = 0,
) -> Iterator[tuple[np.ndarray, bool]]:
    """``(pixels, is_lookahead)`` of the frames ``chunk`` owns as they decode, then the
    next chunk's first frame if it asks for one.  Frames are selected by pts, so leading
    frames of an open GOP and frames decoded only to reach a mid-GOP start are dropped.
    A stream that breaks after some frames just ends; one in which nothing decodes
    raises :class:`InvalidInputError`."""
    owned = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        try:
            frames = frames_from(container, stream, chunk.seek_pts, chunk.start_pts)
            for i, frame in enumerate(frames):
                if i % 8 == 0:
                    check_canceled()
                if frame.pts is None or frame.pts < chunk.start_pts:
                    continue
                if chunk.end_pts is not None and frame.pts >= chunk.end_pts:
                    if chunk.lookahead:
                        yield pixels(frame), True
                    break
                owned += 1
                yield pixels(frame), False
                if owned == chunk.frame_count and not chunk.lookahead:
                    break
        except av.error.FFmpegError as exc:
            if not owned:
                raise InvalidInputError(
                    f"frames {chunk.start_frame}–{chunk.end_frame - 1} do not decode "
                    f"({exc.strerror})",
                    reason="undecodable",
                ) from None
    if not owned:
        raise InvalidInputError(
            f"frames {chunk.start_frame}–{chunk.end_frame - 1} do not decode", reason="undecodable"
        )


def _pixels(
    rotation: int, colour: ColourSpec, layout: FrameLayout
) -> Callable[[av.VideoFrame], np.ndarray]:
    if layout == FrameLayout.YUV420:
        return lambda frame: frame_to_yuv420(frame, colour, rotation)
    return lambda frame: to_display_rgb(frame, rotation, colour)


def chunk_frames(
    path: str,
    chunk: Chunk,
    rotation: int,
    colour: ColourSpec,
    check_canceled: Callable[[], None] = lambda: None,
    layout: FrameLayout = FrameLayout.RGB,
    threads: int = 0,
) -> Generator[np.ndarray, None, None]:
    """Exactly the ``chunk.frame_count`` frames ``chunk`` owns, one at a time as they
    decode (no look-ahead frame), so a caller that streams them on holds none together.
    If a damaged stream yields fewer frames than the probe counted, the last frame is
    repeated so output timing stays exact.  ``threads``: the decoder's (0: its own
    choice)."""
    last: np.ndarray | None = None
    count = 0
    pixels = _pixels(rotation, colour, layout)
    for frame, lookahead in _decoded(path, chunk, pixels, check_canceled, threads):
        if lookahead or count == chunk.frame_count:
            break
        last = frame
        count += 1
        yield frame
    for _ in range(chunk.frame_count - count):
        yield last  # type: ignore[misc]  # _decoded raised if no frame decoded


def decode_chunk(
    path: str,
    chunk: Chunk,
    rotation: int,
    colour: ColourSpec,
    check_canceled: Callable[[], None] = lambda: None,
    layout: FrameLayout = FrameLayout.RGB,
) -> DecodedChunk:
    """The frames ``chunk`` owns (as :func:`chunk_frames` gives them), plus the next
    chunk's first frame if it asks for one, held together."""
    own: list[np.ndarray] = []
    extra: list[np.ndarray] = []
    decoded = _decoded(path, chunk, _pixels(rotation, colour, layout), check_canceled)
    for frame, lookahead in decoded:
        (extra if lookahead else own).append(frame)
    own = own[: chunk.frame_count]
    own.extend([own[-1]] * (chunk.frame_count - len(own)))
    return np.stack(own + extra), len(extra)
