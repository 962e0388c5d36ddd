"""The operator interfaces every frame model implements, classical or neural.

Frame contract, written once:

* A batch of frames is a ``numpy.ndarray`` of dtype ``uint8`` and shape ``(N, H, W, 3)``,
  RGB, C-contiguous.  ``N`` may be 1.
* A :class:`FrameFilter` maps each frame independently.  It declares its ``scale`` up
  front, so the encoder can be configured before the first frame: output frames are
  exactly ``(N, H * scale, W * scale, 3)``.
* A :class:`FrameInterpolator` synthesises frames at times ``ts`` in ``(0, 1)`` between
  two frames of equal size, returning ``(len(ts), H, W, 3)``; it estimates motion once
  per pair, however many times are asked for.  It needs one frame of look-ahead
  (``temporal_context``), which the pipeline supplies across chunk boundaries.
* Inputs deeper than 8 bits travel as RGB ``uint16`` (full 0–65535 scale).  An operator
  that sets ``accepts_uint16 = True`` gets them as they are and returns the same dtype;
  every other operator is handed them rounded to ``uint8`` by the pipeline.
* Planar frames: a :class:`FrameFilter` that sets ``accepts_yuv420 = True`` also has
  ``filter_yuv420(frames)``, which takes Y'CbCr 4:2:0 frames as they were decoded,
  ``(N, H * 3 // 2, W)`` with even ``H`` and ``W``: the Y plane's ``H`` rows, then the Cb
  and the Cr plane (``H/2 × W/2`` each) packed after it, as FFmpeg lays out ``yuv420p``
  (``uint8``; ``uint16`` holding 10-bit codes for ``yuv420p10le``), and returns the same
  layout at ``scale``.  A chain made only of such filters never leaves Y'CbCr, so the
  pipeline skips both colour conversions (:class:`vocabulary.FrameLayout`).
* ``needs_gpu`` says whether the operator wants a GPU when one exists; it must still run
  on CPU (the pipeline requests ``num_gpus`` only where CUDA is present).

Neural models (later) adapt their ``(N, C, H, W)`` float tensors to this contract inside
their own adapter, so the pipeline never sees a tensor type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FrameFilter",
    "FrameInterpolator",
    "check_frames",
    "check_pair",
    "check_yuv420",
    "yuv420_size",
]


@runtime_checkable
class FrameFilter(Protocol):
    """Maps each frame of a batch independently (denoise, upscale, sharpen)."""

    name: ClassVar[str]
    scale: int
    needs_gpu: bool

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class FrameInterpolator(Protocol):
    """Synthesises in-between frames; ``temporal_context`` frames of look-ahead needed."""

    name: ClassVar[str]
    temporal_context: int
    needs_gpu: bool

    def interpolate(
        self, first: np.ndarray, second: np.ndarray, ts: Sequence[float]
    ) -> np.ndarray: ...

    def is_scene_cut(self, first: np.ndarray, second: np.ndarray) -> bool: ...


def check_frames(frames: np.ndarray, *, wide: bool = False) -> None:
    """Raise ``ValueError`` unless ``frames`` follows the frame contract above
    (``wide``: ``uint16`` frames are accepted too)."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8 and not (wide and frames.dtype == np.uint16):
        raise ValueError(f"frames must be uint8{' or uint16' if wide else ''}, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {frames.shape}")


def yuv420_size(frames: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of planar 4:2:0 frames ``(N, H * 3 // 2, W)``."""
    return frames.shape[2], frames.shape[1] * 2 // 3


def check_yuv420(frames: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``frames`` are planar 4:2:0 frames as described above."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frames must be uint8 or uint16, got {frames.dtype}")
    if frames.ndim != 3 or frames.shape[1] % 3:
        raise ValueError(f"planar 4:2:0 frames have shape (N, H * 3 / 2, W), got {frames.shape}")
    width, height = yuv420_size(frames)
    if width % 2 or height % 2:
        raise ValueError(f"planar 4:2:0 frames need an even size, got {width}×{height}")


def check_pair(first: np.ndarray, second: np.ndarray, ts: Sequence[float]) -> None:
    """Raise ``ValueError`` unless ``interpolate(first, second, ts)`` is well-formed."""
    check_frames(first[None])
    check_frames(second[None])
    if first.shape != second.shape:
        raise ValueError(f"frame shapes differ: {first.shape} vs {second.shape}")
    for t in ts:
        if not 0.0 < t < 1.0:
            raise ValueError(f"interpolation time must be in (0, 1), got {t}")
