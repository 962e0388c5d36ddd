"""Split a video into independently decodable chunks, aligned to keyframes.

A chunk is a half-open range of input frames ``[start_frame, end_frame)`` in
presentation order, described by pts so a Ray Data read task can seek and decode it
alone.  Chunks end on keyframes where the GOP structure allows; a GOP longer than the
memory budget allows is split mid-GOP, and that chunk seeks to the keyframe before it
and decodes-and-discards the frames it does not own (slower, but memory stays bounded).

Output frames are assigned to chunks by position: output frame ``j`` shows input time
``j / ratio`` (in input-frame units), so the chunk owning input frames ``[s, e)`` owns
output frames ``[ceil(s * ratio), ceil(e * ratio))``.  That rule makes chunk boundaries
invisible: the same output frames exist whatever the chunking.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from pipelines.probe import VideoInfo

__all__ = ["Chunk", "chunk_plan", "max_chunk_frames"]


@dataclass(frozen=True)
class Chunk:
    index: int
    start_frame: int
    end_frame: int
    start_pts: int
    end_pts: int | None  # the next chunk's first pts; None for the last chunk
    seek_pts: int  # keyframe at or before start_pts
    out_start: int
    out_end: int
    lookahead: bool  # also decode the next chunk's first frame (temporal operators)

    @property
    def frame_count(self) -> int:
        return self.end_frame - self.start_frame

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["end_pts"] = -1 if self.end_pts is None else self.end_pts
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Chunk:
        values = {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in row.items()
            if k in cls.__dataclass_fields__
        }
        if values["end_pts"] == -1:
            values["end_pts"] = None
        values["lookahead"] = bool(values["lookahead"])
        return cls(**values)


def max_chunk_frames(
    out_width: int,
    out_height: int,
    ratio: Fraction,
    budget_bytes: int,
    *,
    floor: int = 4,
    ceiling: int = 300,
    pixel_bytes: float = 3,
) -> int:
    """Largest input-frame count whose processed output fits ``budget_bytes``, a
    processed pixel taking ``pixel_bytes`` (3: RGB ``uint8``)."""
    per_input_frame = out_width * out_height * pixel_bytes * max(Fraction(1), ratio)
    return max(floor, min(ceiling, int(budget_bytes // per_input_frame)))


def chunk_plan(
    info: VideoInfo, *, max_frames: int, ratio: Fraction = Fraction(1), lookahead: bool = False
) -> list[Chunk]:
    """Chunks covering every frame of ``info`` once, in order, each ≤ ``max_frames``."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be ≥ 1, got {max_frames}")
    pts = info.frame_pts
    n = len(pts)
    key_index = sorted({bisect.bisect_left(pts, k) for k in info.keyframe_pts} | {0})
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        limit = start + max_frames
        if limit >= n:
            bounds.append(n)
            continue
        # Furthest keyframe that keeps the chunk within budget; else split mid-GOP.
        pos = bisect.bisect_right(key_index, limit) - 1
        bounds.append(key_index[pos] if key_index[pos] > start else limit)

    chunks = []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        seek_key = key_index[bisect.bisect_right(key_index, start) - 1]
        chunks.append(
            Chunk(
                index=i,
                start_frame=start,
                end_frame=end,
                start_pts=pts[start],
                end_pts=pts[end] if end < n else None,
                seek_pts=pts[seek_key],
                out_start=math.ceil(start * ratio),
                out_end=math.ceil(end * ratio),
                lookahead=lookahead and end < n,
            )
        )
    return chunks
