"""Scene-cut detection shared by every interpolator: never blend across a cut.

Two cues, either of which marks a cut: the colour distribution changes (histogram
distance) or the coarse layout changes (low correlation of heavily blurred greyscale
thumbnails).  Motion within a shot moves detail around but keeps both cues close;
the thumbnail cue catches cuts between shots with similar colours.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "DEFAULT_CUT_THRESHOLD",
    "histogram_distance",
    "is_scene_cut",
    "layout_correlation",
]

# Bhattacharyya distance between coarse colour histograms; 0 = identical, 1 = disjoint.
DEFAULT_CUT_THRESHOLD = 0.45
# Below this correlation of 8×8 thumbnails the two frames do not show the same layout.
_MIN_LAYOUT_CORRELATION = 0.3

_THUMB_WIDTH = 64


def _thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return cv2.resize(frame, (width, max(1, h * width // w)), interpolation=cv2.INTER_AREA)


def _colour_histogram(frame: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(_thumbnail(frame, _THUMB_WIDTH), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 8, 8], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist).flatten()


def histogram_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Bhattacharyya distance between the two frames' HSV histograms, in [0, 1]."""
    return float(
        cv2.compareHist(
            _colour_histogram(first), _colour_histogram(second), cv2.HISTCMP_BHATTACHARYYA
        )
    )


def layout_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of 8-pixel-wide greyscale thumbnails; 1 for a flat pair."""
    a, b = (
        cv2.cvtColor(_thumbnail(f, 8), cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
        for f in (first, second)
    )
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    # Flat thumbnails carry no layout; leave the decision to the histogram cue.
    return 1.0 if denom < 1e-6 else float((a * b).sum() / denom)


def is_scene_cut(
    first: np.ndarray, second: np.ndarray, threshold: float = DEFAULT_CUT_THRESHOLD
) -> bool:
    """True when ``second`` starts a new shot, so nothing should be blended across."""
    return (
        histogram_distance(first, second) > threshold
        or layout_correlation(first, second) < _MIN_LAYOUT_CORRELATION
    )
