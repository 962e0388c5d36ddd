"""Non-local-means denoising (OpenCV ``fastNlMeansDenoisingColored``), noise-adaptive.

A fixed strength smooths clean footage (−1 to −2 dB on clean real clips in
``benchmarks/fidelity.py``), so by default the strength follows the footage: the
pipeline hands each chunk to :meth:`NonLocalMeansDenoise.for_footage`, which measures its
noise (:func:`models.noise_estimate.estimate_noise`) and returns a denoiser of strength
``gain × σ``, or None (no denoise at all) below ``MIN_SIGMA``.  On carphone with added
Gaussian noise the best OpenCV ``h`` was 0.8–1.0 σ (σ 4: h 3–4; σ 8: h 8), hence a
gain of 1 for the presets that aim at PSNR.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from models.noise_estimate import estimate_noise
from models.operator import check_frames

__all__ = ["MIN_SIGMA", "NonLocalMeansDenoise"]

# Below this noise σ (8-bit levels) denoising costs more detail than it removes noise:
# at σ 4 the best strength gained +1 dB, and clean clips read σ 0.2–1.3.
MIN_SIGMA = 3.0


class NonLocalMeansDenoise:
    """Per-frame colour NL-means; ``strength`` is OpenCV's ``h`` for luma, or None to
    follow the footage (``gain`` × its measured noise σ).

    Chroma gets a slightly lower strength because compression noise in old footage is
    mostly in luma, and over-smoothed chroma bleeds across edges.
    """

    name: ClassVar[str] = "nlmeans"
    scale = 1
    needs_gpu = False

    def __init__(self, strength: float | None = None, gain: float = 1.0) -> None:
        if strength is not None and not 0 < strength <= 30:
            raise ValueError(f"denoise strength must be in (0, 30], got {strength}")
        if not 0 < gain <= 4:
            raise ValueError(f"denoise gain must be in (0, 4], got {gain}")
        self.strength = None if strength is None else float(strength)
        self.gain = float(gain)

    def __repr__(self) -> str:
        if self.strength is None:
            return f"NonLocalMeansDenoise(adaptive, gain={self.gain})"
        return f"NonLocalMeansDenoise(strength={self.strength})"

    def for_footage(self, frames: np.ndarray) -> NonLocalMeansDenoise | None:
        """The denoiser for ``frames``: this one if its strength is fixed, else one
        sized to their noise, or None where they are clean enough to leave alone."""
        if self.strength is not None:
            return self
        sigma = estimate_noise(frames)
        if sigma < MIN_SIGMA:
            return None
        return NonLocalMeansDenoise(min(30.0, self.gain * sigma))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames)
        if self.strength is None:
            fitted = self.for_footage(frames)
            return frames if fitted is None else fitted(frames)
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
