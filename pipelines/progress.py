"""Progress reports and cancellation tokens: how a caller watches and stops a job.

Progress is measured in work, not in finished chunks.  Every stage of the pipeline
(decode, each operator, encode) reports how many input frames it has handled and how
many seconds that took; a stage's measured seconds per frame prices the frames it has
still to do.  The fraction done is work done over total work, and the ETA is the work
left divided by the throughput measured so far, which already includes however many
chunks run in parallel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipelines.errors import PipelineCanceled
from vocabulary import Phase

__all__ = [
    "PHASES",
    "CancelToken",
    "Progress",
    "ProgressCallback",
    "ProgressMeter",
    "StageTally",
]

PHASES: tuple[Phase, ...] = tuple(Phase)


@dataclass(frozen=True)
class Progress:
    frames_done: int  # input frames' worth of work done, across every stage
    frames_total: int
    fps: float  # input frames per second, measured since processing started
    eta_seconds: float | None
    phase: Phase = Phase.PROCESSING

    @property
    def fraction(self) -> float:
        return self.frames_done / self.frames_total if self.frames_total else 1.0


ProgressCallback = Callable[[Progress], None]

# stage index -> (input frames handled, seconds spent on them)
StageTally = Mapping[int, tuple[float, float]]


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


# The ETA's speed is measured over the recent half of the time worked, or at
# least this many seconds.
RECENT_SECONDS = 3.0


class ProgressMeter:
    """Turns per-stage work reports into :class:`Progress` with fps and ETA.

    ``total`` input frames pass through each of ``stages`` stages.  Reports never go
    backwards: a revised estimate of a stage's cost can lower the computed fraction,
    and the meter then holds the previous value until the work catches up.
    """

    def __init__(
        self,
        total: int,
        callback: ProgressCallback | None,
        stages: int = 1,
        clock: Callable[[], float] = time.monotonic,
        resumed: int = 0,
    ) -> None:
        self.total = total
        self.stages = stages
        # Frames an earlier run finished (a resumed job): done from the start, and
        # the tallies then count only the rest.
        self.resumed = min(resumed, total)
        self.done = self.resumed
        self._fraction = self.resumed / total if total else 0.0
        self._callback = callback
        self._clock = clock
        self._started = clock()
        self._last: Progress | None = None
        self._eta_at: tuple[float, float] | None = None  # (when, ETA then)
        self._working_since: float | None = None
        self._history: list[tuple[float, float]] = []  # (when, fraction) at each step

    def __repr__(self) -> str:
        return f"ProgressMeter(done={self.done}, total={self.total}, stages={self.stages})"

    def update(self, tally: StageTally) -> Progress:
        """Report the work in ``tally`` (cumulative per stage since the job started)."""
        known = {
            stage: seconds / frames
            for stage, (frames, seconds) in tally.items()
            if frames > 0 and seconds > 0
        }
        # A stage that has not reported yet is priced like the dearest one that has:
        # later stages (models) tend to cost more than decoding, and an estimate that
        # is too low would make progress stall once the real cost is known.
        guess = max(known.values(), default=0.0)
        remaining = self.total - self.resumed
        total_work = sum(known.get(stage, guess) for stage in range(self.stages)) * remaining
        done_work = sum(
            min(frames, remaining) * known.get(stage, guess) for stage, (frames, _) in tally.items()
        )
        now = self._clock()
        elapsed = now - self._started
        if self._working_since is None and done_work > 0:
            # Ray Data's start-up (worker processes, imports) can take longer than the
            # work itself on a small job; throughput counts from when work began.
            self._working_since = max(self._started, now - done_work)
            self._history.append((self._working_since, self.resumed / self.total))
        fraction = (
            (self.resumed + remaining * done_work / total_work) / self.total
            if total_work > 0
            else 0.0
        )
        if fraction > self._fraction:
            self._fraction = min(1.0, fraction)
            self._history.append((now, self._fraction))
            self._eta_at = None
            # Until every stage has a measured cost the total is a guess: no ETA yet.
            if len(known) == self.stages:
                self._eta_at = self._estimate(now)
        self.done = min(self.total, int(self._fraction * self.total))
        # Between two pieces of finished work the estimate counts down with the clock.
        eta = None if self._eta_at is None else max(0.0, self._eta_at[1] - (now - self._eta_at[0]))
        fps = (self._fraction * self.total - self.resumed) / elapsed if elapsed > 0 else 0.0
        return self._report(Progress(self.done, self.total, fps, eta))

    def _estimate(self, now: float) -> tuple[float, float] | None:
        """(now, seconds left) from the recent speed of the fraction done.

        The speed is measured over the more recent half of the time worked (at least
        ``RECENT_SECONDS``): the first chunks of a job pay one-time costs (imports,
        warm-up) that the rest don't, and the chunks in flight at any moment already
        run in parallel, so the recent speed is the best forecast of the rest.
        """
        started = self._history[0][0]
        since = max(started, min(now - RECENT_SECONDS, (now + started) / 2))
        then_at, then = next((at, f) for at, f in self._history if at >= since)
        if then_at == now:  # the only step is this one: measure from the start of work
            then_at, then = self._history[0]
        speed = (self._fraction - then) / (now - then_at) if now > then_at else 0.0
        return (now, (1.0 - self._fraction) / speed) if speed > 0 else None

    def advance(self, frames: int) -> Progress:
        """Report ``frames`` more frames done by a single-stage job."""
        self.done = min(self.total, self.done + frames)
        self._fraction = self.done / self.total if self.total else 1.0
        elapsed = self._clock() - self._started
        fps = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / fps if fps > 0 else None
        return self._report(Progress(self.done, self.total, fps, eta))

    def phase(self, phase: Phase, eta_seconds: float | None = None) -> Progress:
        """Report that the job moved on to ``phase`` with the work done so far."""
        last = self._last or Progress(self.done, self.total, 0.0, None)
        done, fps = last.frames_done, last.fps
        if phase in (Phase.ASSEMBLING, Phase.UPLOADING):  # every frame has been processed
            self._fraction, self.done = 1.0, self.total
            done = self.total
            if fps <= 0:  # every stage finished before a report reached the meter
                elapsed = self._clock() - self._started
                fps = self.total / elapsed if elapsed > 0 else 0.0
        return self._report(Progress(done, last.frames_total, fps, eta_seconds, phase))

    def _report(self, report: Progress) -> Progress:
        self._last = report
        if self._callback is not None:
            self._callback(report)
        return report
