"""How noisy, and how compressed, is the whole input?  Measured once per job, before planning.

Deciding per chunk (NL-means strength, SPAN or a denoising model) made chunk seams
visible when neighbouring chunks fell on either side of a threshold, so the decision is
made once for the job from frames spread over the whole video: a few frames after each
of up to ``_SAMPLES`` keyframes, decoded as the pipeline decodes them.  The encoder's
quantiser (:mod:`pipelines.quantiser`) is read over a few more frames per place, since
a keyframe is quantised more finely than the frames that follow it and decoding alone
costs little.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from models.noise_estimate import estimate_chroma_noise, estimate_noise
from pipelines.colour import frame_to_rgb
from pipelines.decode import frames_from
from pipelines.probe import VideoInfo
from pipelines.quantiser import enable_quantiser_export, frame_quantiser

__all__ = ["NoiseLevel", "measure_noise"]

_SAMPLES = 4  # places in the video
_FRAMES_PER_SAMPLE = 2  # for the noise estimate
_QUANTISER_FRAMES_PER_SAMPLE = 8  # a keyframe and the P/B frames after it


@dataclass(frozen=True)
class NoiseLevel:
    """The input's noise σ in 8-bit levels, luma and chroma (Cr/Cb), and its encoder's
    mean quantiser on H.264's QP scale (``None`` where the codec exports none)."""

    luma: float
    chroma: float
    quantiser: float | None = None


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
    quantisers: list[float] = []
    with av.open(info.path) as container:
        stream = container.streams.video[0]
        enable_quantiser_export(stream)
        for pts in picks:
            got = 0
            for frame in frames_from(container, stream, pts, pts):
                if frame.pts is not None and frame.pts < pts:
                    continue
                if got < _FRAMES_PER_SAMPLE:
                    frames.append(frame_to_rgb(frame, info.colour))
                quantiser = frame_quantiser(frame)
                if quantiser is not None:
                    quantisers.append(quantiser)
                got += 1
                if got == _QUANTISER_FRAMES_PER_SAMPLE:
                    break
    quantiser = float(np.mean(quantisers)) if quantisers else None
    if not frames:
        return NoiseLevel(0.0, 0.0, quantiser)
    stack = np.stack(frames)
    return NoiseLevel(estimate_noise(stack), estimate_chroma_noise(stack), quantiser)
