"""Progress reports and cancellation tokens: how a caller watches and stops a job."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.errors import PipelineCanceled

__all__ = ["CancelToken", "Progress", "ProgressCallback", "ProgressMeter"]


@dataclass(frozen=True)
class Progress:
    frames_done: int
    frames_total: int
    fps: float  # input frames per second, measured since processing started
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return self.frames_done / self.frames_total if self.frames_total else 1.0


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Thread-safe flag a caller sets to stop a running pipeline."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __repr__(self) -> str:
        return f"CancelToken(canceled={self.canceled})"

    def cancel(self) -> None:
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def raise_if_canceled(self) -> None:
        if self._event.is_set():
            raise PipelineCanceled("job was canceled")


class ProgressMeter:
    """Turns "n more frames done" into :class:`Progress` reports with fps and ETA."""

    def __init__(self, total: int, callback: ProgressCallback | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._clock = clock
        self._started = clock()

    def advance(self, frames: int) -> Progress:
        self.done = min(self.total, self.done + frames)
        elapsed = self._clock() - self._started
        fps = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / fps if fps > 0 else None
        report = Progress(self.done, self.total, fps, eta)
        if self._callback is not None:
            self._callback(report)
        return report
