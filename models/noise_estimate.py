"""How noisy is this footage?  A per-chunk estimate of the noise's standard deviation.

Immerkær's operator (``[[1,-2,1],[-2,4,-2],[1,-2,1]]``, "Fast Noise Variance Estimation",
1996) cancels planes and linear ramps, so on flat areas what it leaves is noise:
``σ = √(π/2) / 6 · mean |I ∗ M|``.  Texture and edges add to that mean, so the estimate
is taken per 16×16 block and the footage's noise is a low percentile of the blocks: every
block has the noise, the flattest blocks have little else.  Luma only, in 8-bit levels,
from at most a few frames spread over the chunk.

A low percentile of block estimates reads low by a near-constant factor; calibrated on
Gaussian noise (σ 2–12) added to three real clips (carphone, bikes, Big Buck Bunny),
the raw estimate is 0.61–0.65 σ, hence ``_CALIBRATION``.  Clean footage reads 0.2–1.3.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["NOISY_CHROMA_SIGMA", "NOISY_SIGMA", "estimate_chroma_noise", "estimate_noise"]

# Where footage counts as noisy for choosing a denoising upscaler; the measured ranges
# behind them are in models/neural_upscale.py.
NOISY_SIGMA = 1.8
NOISY_CHROMA_SIGMA = 0.28

_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_BLOCK = 16
_PERCENTILE = 15
_FRAMES = 4
_CALIBRATION = 1.6


def _plane_sigma(plane: np.ndarray) -> float:
    response = np.abs(cv2.filter2D(plane, cv2.CV_32F, _KERNEL))[1:-1, 1:-1]
    h, w = (s - s % _BLOCK for s in response.shape)
    if h == 0 or w == 0:
        return float(response.mean()) * math.sqrt(math.pi / 2) / 6
    blocks = response[:h, :w].reshape(h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK).mean(axis=(1, 3))
    return float(np.percentile(blocks, _PERCENTILE)) * math.sqrt(math.pi / 2) / 6


def _ycrcb(rgb: np.ndarray) -> np.ndarray:
    scale = 255.0 / float(np.iinfo(rgb.dtype).max)
    return cv2.cvtColor(rgb.astype(np.float32) * scale, cv2.COLOR_RGB2YCrCb)


def _picks(frames: np.ndarray) -> np.ndarray:
    return np.linspace(0, len(frames) - 1, min(_FRAMES, len(frames))).round().astype(int)


def estimate_noise(frames: np.ndarray) -> float:
    """Noise σ of ``frames`` (N, H, W, 3) RGB, in 8-bit luma levels."""
    sigmas = [_plane_sigma(_ycrcb(frames[i])[..., 0]) for i in _picks(frames)]
    return _CALIBRATION * float(np.median(sigmas))


def estimate_chroma_noise(frames: np.ndarray) -> float:
    """The same measure on the Cr and Cb planes (8-bit levels).

    Chroma of clean video is smooth (4:2:0 halves its resolution), while sensor noise
    and added noise reach it, so it separates noisy from clean footage where luma
    texture blurs the line: per 12-frame chunk decoded as the pipeline decodes, clean
    copies of carphone, bikes and Big Buck Bunny (degraded and original) read
    0.01–0.26 and noisy ones 0.29–0.38.
    """
    sigmas = [_plane_sigma(_ycrcb(frames[i])[..., c]) for i in _picks(frames) for c in (1, 2)]
    return _CALIBRATION * float(np.median(sigmas))
