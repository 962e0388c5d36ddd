"""How noisy is the whole input?  Measured once per job, before planning.

Deciding per chunk (NL-means strength, SPAN or a denoising model) made chunk seams
visible when neighbouring chunks fell on either side of a threshold, so the decision is
made once for the job from frames spread over the whole video: a few frames after each
of up to ``_SAMPLES`` keyframes, decoded as the pipeline decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from models.noise_estimate import estimate_chroma_noise, estimate_noise
from pipelines.colour import frame_to_rgb
from pipelines.decode import frames_from
from pipelines.probe import VideoInfo

__all__ = ["NoiseLevel", "measure_noise"]

_SAMPLES = 4  # places in the video
_FRAMES_PER_SAMPLE = 2


@dataclass(frozen=True)
class NoiseLevel:
    """The input's noise σ in 8-bit levels: luma, and chroma (Cr/Cb)."""

    luma: float
    chroma: float


def measure_noise(info: VideoInfo) -> NoiseLevel:
    keyframes = info.keyframe_pts
    picks = sorted(
        {
            keyframes[i]
            for i in np.linspace(0, len(keyframes) - 1, min(_SAMPLES, len(keyframes)))
            .round()
            .astype(int)
        }
    )
    frames: list[np.ndarray] = []
    with av.open(info.path) as container:
        stream = container.streams.video[0]
        for pts in picks:
            got = 0
            for frame in frames_from(container, stream, pts, pts):
                if frame.pts is not None and frame.pts < pts:
                    continue
                frames.append(frame_to_rgb(frame, info.colour))
                got += 1
                if got == _FRAMES_PER_SAMPLE:
                    break
    if not frames:
        return NoiseLevel(0.0, 0.0)
    stack = np.stack(frames)
    return NoiseLevel(estimate_noise(stack), estimate_chroma_noise(stack))
