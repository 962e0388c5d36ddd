"""Frames to and from the GPU through pinned, double-buffered host memory.

On an H200 an upscaler spent 80 ms a 1080p → 2160p frame on the wall with the GPU busy
44 of them (README, "Measured on a GPU"): copies from pageable memory are synchronous,
so each batch's upload waited for the GPU to finish the previous batch, and its 25 MB a
frame download (8 ms) and numpy copy ran while the GPU sat idle.  From pinned memory
both copies are asynchronous: batch *i*'s result is copied out while batch *i+1*
computes.  Two slots per direction, used alternately: a slot is written again only after
the batch that last used it has been waited for, so nothing is overwritten in flight.

On the CPU there is nothing to stage: uploads are plain tensors and downloads are ready
at once, so the operator has one code path on both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["HostStaging"]

SLOTS = 2


class HostStaging:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        # Per direction and slot, the latest buffer: reused while the frame size holds.
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}

    def _buffer(self, direction: str, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        key = (direction, slot % SLOTS)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._buffers[key] = buffer
        return buffer[: shape[0]]

    def upload(self, frames: np.ndarray, slot: int) -> torch.Tensor:
        """``frames`` (N, H, W, C uint8) as a tensor on the device; on a GPU the copy is
        queued, not waited for."""
        if not self.pinned:
            # A copy: frames from Ray's object store are read-only, which torch warns of.
            return torch.from_numpy(frames.copy()).to(self.device)
        staged = self._buffer("up", slot, frames.shape)
        staged.numpy()[...] = frames
        return staged.to(self.device, non_blocking=True)

    def download(self, pixels: torch.Tensor, slot: int) -> Callable[[], np.ndarray]:
        """Start copying ``pixels`` (uint8) to the host; the returned call waits for the
        copy and gives the array, valid until ``slot`` is used again."""
        if not self.pinned:
            ready = pixels.cpu().numpy()
            return lambda: ready
        staged = self._buffer("down", slot, tuple(pixels.shape))
        staged.copy_(pixels.contiguous(), non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def wait() -> np.ndarray:
            copied.synchronize()
            return staged.numpy()

        return wait
