"""Frames to and from the GPU through pinned, double-buffered host memory.

On an H200 an upscaler spent 80 ms a 1080p → 2160p frame on the wall with the GPU busy
44 of them (README, "Measured on a GPU"): a copy from pageable memory makes the host
wait for the GPU, so each batch's upload waited for the previous batch's kernels, and
the result's 25 MB a frame came back synchronously, the GPU idle meanwhile.  From pinned
memory both copies are queued on the GPU's stream and the host goes on: it queues batch
*i+1* (upload, kernels, copy back), then copies batch *i*'s result into the caller's
array while the GPU computes.  Two slots per direction, used alternately.

A slot is never overwritten in flight: before the host writes an upload slot it waits
for the copy that last read it, and a download slot is handed to the caller only once
its copy has finished, and written again two batches later.  An instance is used by one
thread at a time (one per model stage actor).

On the CPU there is nothing to stage (``pinned`` false): uploads are plain tensors and
downloads are ready at once, the operator's one code path on both.  ``pinned=False`` on
a GPU gives the synchronous copies of before, for A/B measurements.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["HostStaging"]

SLOTS = 2


class HostStaging:
    def __init__(self, device: torch.device, pinned: bool | None = None) -> None:
        self.device = device
        self.pinned = device.type == "cuda" if pinned is None else pinned
        # Per direction and slot, the latest buffer: reused while the frame size holds.
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._uploaded: dict[int, torch.cuda.Event] = {}  # per slot: its last upload copied

    def _buffer(self, direction: str, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        key = (direction, slot)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._buffers[key] = buffer
        return buffer[: shape[0]]

    def _recorded(self) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def upload(self, frames: np.ndarray, slot: int) -> torch.Tensor:
        """``frames`` (N, H, W, C uint8) as a tensor on the device; on a GPU the copy is
        queued, not waited for."""
        if not self.pinned:
            # A copy: frames from Ray's object store are read-only, which torch warns of.
            return torch.from_numpy(frames.copy()).to(self.device)
        slot %= SLOTS
        previous = self._uploaded.pop(slot, None)
        if previous is not None:
            previous.synchronize()  # the last copy out of this buffer has been made
        staged = self._buffer("up", slot, frames.shape)
        staged.numpy()[...] = frames
        on_device = staged.to(self.device, non_blocking=True)
        self._uploaded[slot] = self._recorded()
        return on_device

    def download(self, pixels: torch.Tensor, slot: int) -> Callable[[], np.ndarray]:
        """Queue the copy of ``pixels`` (uint8) to the host; the returned call waits for
        it and gives the array, valid until ``slot`` is downloaded into again."""
        if not self.pinned:
            ready = pixels.cpu().numpy()
            return lambda: ready
        staged = self._buffer("down", slot % SLOTS, tuple(pixels.shape))
        staged.copy_(pixels.contiguous(), non_blocking=True)
        copied = self._recorded()

        def wait() -> np.ndarray:
            copied.synchronize()
            return staged.numpy()

        return wait
