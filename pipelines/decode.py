"""Decode one chunk of a video into frames, independently of every other chunk."""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np

from pipelines.chunk_plan import Chunk
from pipelines.colour import ColourSpec, frame_to_rgb, frame_to_yuv420
from pipelines.errors import InvalidInputError
from vocabulary import FrameLayout

__all__ = ["DecodedChunk", "decode_chunk", "to_display_rgb"]

DecodedChunk = tuple[np.ndarray, int]
"""Frames (``n_own + n_lookahead`` of them, in the job's layout) and ``n_lookahead`` (0 or 1)."""


def to_display_rgb(frame: av.VideoFrame, rotation: int, colour: ColourSpec) -> np.ndarray:
    """RGB pixels of ``frame`` (see :mod:`pipelines.colour`) rotated clockwise by
    ``rotation`` degrees for display."""
    rgb = frame_to_rgb(frame, colour)
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90)))
    return rgb


def decode_chunk(
    path: str,
    chunk: Chunk,
    rotation: int,
    colour: ColourSpec,
    check_canceled: Callable[[], None] = lambda: None,
    layout: FrameLayout = FrameLayout.RGB,
) -> DecodedChunk:
    """Decode the frames ``chunk`` owns, plus the next chunk's first frame if asked.

    Frames are selected by pts, so leading frames of an open GOP and frames decoded only
    to reach a mid-GOP start are dropped.  If a damaged stream yields fewer frames than
    the probe counted, the last frame is repeated so output timing stays exact; a chunk
    in which nothing decodes raises :class:`InvalidInputError`.
    """

    def pixels(frame: av.VideoFrame) -> np.ndarray:
        if layout == FrameLayout.YUV420:
            return frame_to_yuv420(frame, colour, rotation)
        return to_display_rgb(frame, rotation, colour)

    own: list[np.ndarray] = []
    extra: list[np.ndarray] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(chunk.seek_pts, stream=stream, backward=True)
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % 8 == 0:
                    check_canceled()
                if frame.pts is None or frame.pts < chunk.start_pts:
                    continue
                if chunk.end_pts is not None and frame.pts >= chunk.end_pts:
                    if chunk.lookahead:
                        extra.append(pixels(frame))
                    break
                own.append(pixels(frame))
                if len(own) == chunk.frame_count and not chunk.lookahead:
                    break
        except av.error.FFmpegError as exc:
            if not own:
                raise InvalidInputError(
                    f"frames {chunk.start_frame}–{chunk.end_frame - 1} do not decode "
                    f"({exc.strerror})",
                    reason="undecodable",
                ) from None
    if not own:
        raise InvalidInputError(
            f"frames {chunk.start_frame}–{chunk.end_frame - 1} do not decode", reason="undecodable"
        )
    own = own[: chunk.frame_count]
    own.extend([own[-1]] * (chunk.frame_count - len(own)))
    return np.stack(own + extra), len(extra)
