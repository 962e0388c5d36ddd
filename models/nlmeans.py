"""Non-local-means denoising (OpenCV ``fastNlMeansDenoisingColored``) at a given strength.

A fixed strength smooths clean footage (−1 to −2 dB on clean real clips in
``benchmarks/fidelity.py``), so the strength is decided per job, not here: the planner
(:mod:`pipelines.presets`) measures the job's noise σ once and asks for ``gain × σ``, or
plans no denoise at all below :data:`MIN_SIGMA`.  On carphone with added Gaussian noise
the best OpenCV ``h`` was 0.8–1.0 σ (σ 4: h 3–4; σ 8: h 8), hence a gain of 1 for the
presets that aim at PSNR.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from models.operator import check_frames

__all__ = ["MIN_SIGMA", "NonLocalMeansDenoise"]

# Below this noise σ (8-bit levels) denoising costs more detail than it removes noise:
# at σ 4 the best strength gained +1 dB, and clean clips read σ 0.2–1.3.
MIN_SIGMA = 3.0


class NonLocalMeansDenoise:
    """Per-frame colour NL-means; ``strength`` is OpenCV's ``h`` for luma.

    Chroma gets a slightly lower strength because compression noise in old footage is
    mostly in luma, and over-smoothed chroma bleeds across edges.
    """

    name: ClassVar[str] = "nlmeans"
    scale = 1
    needs_gpu = False

    def __init__(self, strength: float) -> None:
        if not 0 < strength <= 30:
            raise ValueError(f"denoise strength must be in (0, 30], got {strength}")
        self.strength = float(strength)

    def __repr__(self) -> str:
        return f"NonLocalMeansDenoise(strength={self.strength})"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames)
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            out[i] = cv2.fastNlMeansDenoisingColored(
                frame,
                None,
                h=self.strength,
                hColor=self.strength * 0.75,
                # 7×7 patches searched over 15×15: FFmpeg nlmeans' defaults, and 40%
                # faster than OpenCV's 21×21 default for no visible difference at these
                # strengths.
                templateWindowSize=7,
                searchWindowSize=15,
            )
        return out
