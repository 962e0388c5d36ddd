"""Map a chunk's input frames to its output frames at a new frame rate.

Output frame ``j`` shows input position ``p = j / ratio`` (input-frame units).  When
``p`` falls between frames ``i`` and ``i + 1`` the interpolator synthesises it at
``t = p - i``, unless the pair straddles a scene cut, where the nearer frame is repeated.
After the last input frame there is nothing to interpolate towards, so it is repeated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from itertools import groupby

import numpy as np

from models.operator import FrameInterpolator

__all__ = ["output_positions", "retime_chunk"]


def output_positions(
    start_frame: int, out_start: int, out_end: int, ratio: Fraction
) -> list[tuple[int, Fraction]]:
    """``(local index i, fraction t)`` for each output frame ``out_start..out_end-1``."""
    positions = []
    for j in range(out_start, out_end):
        local = Fraction(j) / ratio - start_frame
        i = math.floor(local)
        positions.append((i, local - i))
    return positions


def retime_chunk(
    frames: np.ndarray,
    n_own: int,
    start_frame: int,
    out_start: int,
    out_end: int,
    ratio: Fraction,
    interpolator: FrameInterpolator,
    check_canceled: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Output frames of one chunk; ``frames[n_own:]`` is look-ahead (0 or 1 frame)."""
    out: list[np.ndarray] = []
    for i, group in groupby(
        output_positions(start_frame, out_start, out_end, ratio), key=lambda pos: pos[0]
    ):
        check_canceled()
        times = [t for _, t in group]
        current = frames[min(i, n_own - 1)]
        following = frames[i + 1] if i + 1 < len(frames) else None
        needs_synthesis = [t for t in times if t]
        if following is None or not needs_synthesis:
            out.extend(current for _ in times)
            continue
        if interpolator.is_scene_cut(current, following):
            out.extend(current if t < Fraction(1, 2) else following for t in times)
            continue
        synthesised = iter(
            interpolator.interpolate(current, following, [float(t) for t in needs_synthesis])
        )
        out.extend(next(synthesised) if t else current for t in times)
    if not out:
        return np.empty((0, *frames.shape[1:]), dtype=np.uint8)
    return np.stack(out)
