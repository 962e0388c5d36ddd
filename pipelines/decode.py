"""Decode one chunk of a video into frames, independently of every other chunk."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import av
import numpy as np

from pipelines.chunk_plan import Chunk
from pipelines.colour import ColourSpec, frame_to_rgb, frame_to_yuv420
from pipelines.errors import InvalidInputError
from vocabulary import FrameLayout

__all__ = ["DecodedChunk", "chunk_frames", "decode_chunk", "to_display_rgb"]

DecodedChunk = tuple[np.ndarray, int]
"""Frames (``n_own + n_lookahead`` of them, in the job's layout) and ``n_lookahead`` (0 or 1)."""


def to_display_rgb(frame: av.VideoFrame, rotation: int, colour: ColourSpec) -> np.ndarray:
    """RGB pixels of ``frame`` (see :mod:`pipelines.colour`) rotated clockwise by
    ``rotation`` degrees for display."""
    rgb = frame_to_rgb(frame, colour)
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))
    return rgb


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
        container.seek(chunk.seek_pts, stream=stream, backward=True)
        try:
            for i, frame in enumerate(container.decode(stream)):
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
