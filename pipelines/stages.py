"""Ray Data stage callables: thin shells around plain functions and operators.

Each batch is exactly one chunk (``batch_size=1``): the columns of
:meth:`pipelines.chunk_plan.Chunk.as_row` plus ``frames`` (in the job's
:class:`~vocabulary.FrameLayout`: RGB ``(n, H, W, 3)`` or planar 4:2:0; look-ahead
last), ``n_lookahead`` and ``nodes`` (the Ray node id of each stage so
far, comma-separated: where the chunk was decoded, processed and encoded).  Every
stage polls the job's :class:`CancelSignal` between small groups of frames and raises
:class:`~pipelines.errors.PipelineCanceled`, which fails the Ray Data execution and
makes it release its actors.  Stages also report the frames they have handled, and
the seconds that took, to the same actor (:class:`WorkReport`); the driver turns the
tally into progress and an ETA (:class:`~pipelines.progress.ProgressMeter`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models.operator import FrameFilter, FrameInterpolator
from models.registry import build_operator
from models.runtime import ModelOptions
from pipelines.chunk_plan import Chunk
from pipelines.colour import ColourSpec
from pipelines.decode import chunk_frames, decode_chunk
from pipelines.encode import EncoderSettings, SegmentEncoder, encode_segment, frame_size
from pipelines.errors import PipelineCanceled
from pipelines.presets import OperatorSpec
from pipelines.retime import retime_chunk
from vocabulary import FrameLayout

__all__ = [
    "CancelCheck",
    "CancelSignal",
    "JobSignals",
    "OperatorStage",
    "WorkReport",
    "chunk_stage",
    "decode_stage",
    "encode_stage",
    "operator_stage",
]

Batch = dict[str, Any]

log = logging.getLogger(__name__)

# Frames an operator processes between two cancellation checks.
_FRAMES_PER_CHECK = 4


# Restarted if its process dies, calls retried meanwhile: a restart loses the tallies so
# far (progress then counts from there) but never fails or strands a job.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class JobSignals:
    """One per driver process, shared by its jobs: the driver sets a job's cancel flag,
    its stages poll the flag and report their work.  Shared because an actor per job
    cost each job an actor process's start (1.7 CPU-s, and its first chunk waited for
    it, on 2 cores).  State is per job key, from :meth:`start` until :meth:`forget`;
    after that only the key is kept, among the last :attr:`ENDED_KEPT` ended jobs."""

    # Ended jobs remembered so that their straggler tasks read them as canceled.
    ENDED_KEPT = 4096

    def __init__(self) -> None:
        self._canceled: set[str] = set()
        self._work: dict[str, dict[int, tuple[float, float]]] = {}
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()

    def start(self, job: str) -> None:
        self._work[job] = {}

    def set(self, job: str) -> None:
        if job not in self._ended:
            self._canceled.add(job)

    def is_set(self, job: str) -> bool:
        """Whether the job was canceled, or has ended: a task still running for an ended
        job (a failed one's other chunks) stops at its next check."""
        return job in self._canceled or job in self._ended

    def report(self, job: str, stage: int, frames: float, seconds: float) -> None:
        # A straggler task of an ended job adds nothing; a job unknown here (the actor
        # restarted) is taken up again from its next report.
        if job not in self._ended:
            work = self._work.setdefault(job, {})
            done, spent = work.get(stage, (0.0, 0.0))
            work[stage] = (done + frames, spent + seconds)

    def tally(self, job: str) -> dict[int, tuple[float, float]]:
        """Per stage: input frames handled and seconds spent, since the job started."""
        return dict(self._work.get(job, {}))

    def jobs(self) -> int:
        """Jobs it holds state for: only those not yet ended."""
        return len(self._work)

    def forget(self, job: str) -> None:
        self._canceled.discard(job)
        self._work.pop(job, None)
        self._ended[job] = None
        if len(self._ended) > self.ENDED_KEPT:
            self._ended.popitem(last=False)


@dataclass(frozen=True)
class CancelSignal:
    """One job's part of its process's :class:`JobSignals` actor: what the driver and
    the stages hold (it pickles into tasks as the actor handle and the job's key)."""

    actor: ray.actor.ActorHandle
    job: str

    @classmethod
    def for_new_job(cls) -> CancelSignal:
        """A new job's signal; :meth:`forget` it when the job ends."""
        signal = cls(_shared_signals(), uuid.uuid4().hex)
        signal.actor.start.remote(signal.job)
        return signal

    def set(self) -> None:
        self.actor.set.remote(self.job)

    def ask_is_set(self) -> ray.ObjectRef:
        return self.actor.is_set.remote(self.job)

    def report(self, stage: int, frames: float, seconds: float) -> None:
        self.actor.report.remote(self.job, stage, frames, seconds)

    def ask_tally(self) -> ray.ObjectRef:
        return self.actor.tally.remote(self.job)

    def forget(self) -> None:
        self.actor.forget.remote(self.job)


_signals: tuple[str, ray.actor.ActorHandle] | None = None
_signals_lock = threading.Lock()


def _shared_signals() -> ray.actor.ActorHandle:
    """This process's :class:`JobSignals`, started on first use (again after Ray was
    shut down and started anew: the old handle belongs to the old Ray job)."""
    global _signals
    context = ray.get_runtime_context()
    # A new local Ray has a new node id (its job ids start again from the first one).
    ray_job = f"{context.get_node_id()}/{context.get_job_id()}"
    with _signals_lock:
        if _signals is None or _signals[0] != ray_job:
            # On the driver's node, whose process owns it and lives and dies with it.
            here = NodeAffinitySchedulingStrategy(context.get_node_id(), soft=True)
            # @ray.remote makes JobSignals an actor class; Ray's annotations keep the class.
            _signals = (ray_job, JobSignals.options(scheduling_strategy=here).remote())  # type: ignore[attr-defined]
        return _signals[1]


class WorkReport:
    """Tells the job's :class:`CancelSignal` what one stage has done, as it goes.

    Call it with the input frames just handled; it measures the seconds since the
    previous call and sends both, batched to one actor call every ``interval``
    seconds, and whatever is left at :meth:`flush`.
    """

    def __init__(self, signal: CancelSignal | None, stage: int, interval: float = 0.25) -> None:
        self._signal = signal
        self._stage = stage
        self._interval = interval
        self._last = self._sent = time.monotonic()
        self._frames = self._seconds = 0.0

    def start(self) -> None:
        """The stage starts working now: the next call counts the seconds from here (when
        several stages take turns in one task, each counts only its own turns)."""
        self._last = time.monotonic()

    def __call__(self, frames: float) -> None:
        now = time.monotonic()
        self._frames += frames
        self._seconds += now - self._last
        self._last = now
        if now - self._sent >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._signal is not None and self._frames > 0:
            # Fire and forget: progress must never slow the stage down.
            self._signal.report(self._stage, self._frames, self._seconds)
        self._sent = time.monotonic()
        self._frames = self._seconds = 0.0


class CancelCheck:
    """Callable that raises :class:`PipelineCanceled` once the job's signal is set.

    Asks the signal actor at most every ``interval`` seconds and waits at most ``wait``
    seconds for the answer: an answer is always fresh (a stale one, read a group of
    frames later, let a slow model stage run two or three groups past a cancel), and a
    chunk that starts before the job's signal actor is up (its process takes a second
    or two on the first job) goes on and reads the answer at a later call.
    """

    def __init__(
        self, signal: CancelSignal | None, interval: float = 0.25, wait: float = 0.05
    ) -> None:
        self._signal = signal
        self._interval = interval
        self._wait = wait
        self._next_poll = 0.0
        self._asked: ray.ObjectRef | None = None

    def __call__(self) -> None:
        if self._signal is None:
            return
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self._interval
        if self._asked is None:
            self._asked = self._signal.ask_is_set()
        ready, _ = ray.wait([self._asked], timeout=self._wait)
        if not ready:
            return  # the actor is not up yet: this question is read at a later call
        self._asked = None
        if ray.get(ready[0]):
            raise PipelineCanceled("job was canceled")


def _one(batch: Batch, column: str) -> Any:
    value = batch[column][0]
    return value.item() if isinstance(value, np.generic) else value


def _with(batch: Batch, **columns: Any) -> Batch:
    out = {k: v for k, v in batch.items() if k not in columns}
    for name, value in columns.items():
        if isinstance(value, np.ndarray):
            out[name] = value[None]
        else:
            out[name] = np.array([value], dtype=object if isinstance(value, bytes) else None)
    return out


def _here(batch: Batch | None = None) -> str:
    """The chunk's ``nodes`` column with this stage's node appended: where each stage
    ran, in stage order, comma-separated (the driver logs and returns the placement)."""
    node = ray.get_runtime_context().get_node_id()
    if batch is None or "nodes" not in batch:
        return node
    return f"{_one(batch, 'nodes')},{node}"


def _own_frames(batch: Batch) -> int:
    """The chunk's input frames (its look-ahead belongs to the next chunk)."""
    return int(_one(batch, "end_frame")) - int(_one(batch, "start_frame"))


def decode_stage(
    batch: Batch,
    *,
    path: str,
    rotation: int,
    colour: ColourSpec,
    signal: CancelSignal | None,
    stage: int = 0,
    layout: FrameLayout = FrameLayout.RGB,
    job: str | None = None,
) -> Batch:
    _log_here(job)
    report = WorkReport(signal, stage)
    chunk = Chunk.from_row({k: _one(batch, k) for k in batch})
    frames, n_lookahead = decode_chunk(
        path, chunk, rotation, colour, CancelCheck(signal), layout=layout
    )
    report(_own_frames(batch))
    report.flush()
    return _with(batch, frames=frames, n_lookahead=n_lookahead, nodes=_here())


def _log_here(job: str | None) -> None:
    """Show our INFO lines (which runtime a model got and why, each chunk's end) in this
    Ray worker's log, which Ray also forwards to the driver's console, each prefixed
    with the job it belongs to (the dataset's name: the service's job id), so an
    operator can go from a job id to its lines in any worker's log.  A worker runs one
    stage call at a time, so one label per process is exact."""
    global _job_label
    _job_label = job
    for name in ("models", "pipelines"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        if not logging.getLogger().handlers and not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "labels_jobs", False):

        def labelled(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            if _job_label and record.name.startswith(("models", "pipelines")):
                record.msg = f"job {_job_label.replace('%', '%%')}: {record.msg}"
            return record

        labelled.labels_jobs = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(labelled)


_job_label: str | None = None


@functools.lru_cache(maxsize=4)
def _cached_operator(
    kind: str, engine: str, params: tuple[tuple[str, Any], ...], models: ModelOptions
) -> FrameFilter | FrameInterpolator:
    return build_operator(kind, engine, dict(params), models)


class OperatorStage:
    """Applies one operator to a chunk: a filter to every frame, or a retime.

    Used as an actor class (the operator built once per actor: GPU stages) and,
    through :func:`operator_stage`, inside plain tasks (the operator taken from the
    worker process's cache).
    """

    def __init__(
        self,
        spec: OperatorSpec,
        ratio: Fraction,
        signal: CancelSignal | None,
        models: ModelOptions | None = None,
        *,
        cached: bool = False,
        stage: int = 1,
        layout: FrameLayout = FrameLayout.RGB,
        job: str | None = None,
    ) -> None:
        models = models or ModelOptions()
        _log_here(job)
        self._operator = (
            _cached_operator(spec.kind, spec.backend, tuple(sorted(spec.params.items())), models)
            if cached
            else build_operator(spec.kind, spec.backend, spec.params, models)
        )
        self._ratio = ratio
        self._check = CancelCheck(signal)
        self._signal = signal
        self._stage = stage
        self._planar = layout == FrameLayout.YUV420
        if self._planar and not getattr(self._operator, "accepts_yuv420", False):
            raise TypeError(f"{self._operator!r} can't filter planar 4:2:0 frames")

    def filter(self, frames: np.ndarray) -> np.ndarray:
        """One group of frames through this stage's filter, in the job's layout."""
        operator = self._operator
        if not isinstance(operator, FrameFilter):
            raise TypeError(f"{operator!r} is not a filter")
        if self._planar:
            # Planar frames hold codes (10-bit ones in uint16), not a full scale: every
            # operator that takes planes takes them at any depth.
            return operator.filter_yuv420(frames)  # type: ignore[attr-defined]
        if frames.dtype == np.uint16 and not getattr(operator, "accepts_uint16", False):
            # Deep (10-bit) RGB travels as uint16; operators that work in 8 bits get it
            # rounded, and their output is widened back (so the output stays 10-bit).
            return operator(_to_uint8(frames)).astype(np.uint16) * 257
        return operator(frames)

    def __call__(self, batch: Batch) -> Batch:
        frames = _one(batch, "frames")
        report = WorkReport(self._signal, self._stage)
        if isinstance(self._operator, FrameInterpolator):
            out = self._retime(self._operator, frames, batch)
            report(_own_frames(batch))
            report.flush()
            return _with(batch, frames=out, n_lookahead=0, nodes=_here(batch))
        # Look-ahead frames are filtered too; count each group as its share of the
        # chunk's own frames so the stage's total is the video's frame count.
        share = _own_frames(batch) / len(frames) if len(frames) else 0.0
        parts = []
        for i in range(0, len(frames), _FRAMES_PER_CHECK):
            self._check()
            group = frames[i : i + _FRAMES_PER_CHECK]
            parts.append(self.filter(group))
            report(len(group) * share)
        report.flush()
        return _with(batch, frames=np.concatenate(parts), nodes=_here(batch))

    def _retime(self, operator: FrameInterpolator, frames: np.ndarray, batch: Batch) -> np.ndarray:
        # Deep RGB is rounded for 8-bit interpolators and widened back, as in filter().
        narrow = frames.dtype == np.uint16 and not getattr(operator, "accepts_uint16", False)
        out = retime_chunk(
            _to_uint8(frames) if narrow else frames,
            len(frames) - int(_one(batch, "n_lookahead")),
            _one(batch, "start_frame"),
            _one(batch, "out_start"),
            _one(batch, "out_end"),
            self._ratio,
            operator,
            self._check,
        )
        return out.astype(np.uint16) * 257 if narrow else out


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return ((frames.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def operator_stage(
    batch: Batch,
    *,
    spec: OperatorSpec,
    ratio: Fraction,
    signal: CancelSignal | None,
    models: ModelOptions | None = None,
    stage: int = 1,
    layout: FrameLayout = FrameLayout.RGB,
    job: str | None = None,
) -> Batch:
    """An operator as a plain task.  Ray reuses worker processes, and each keeps the
    operators it built (weights included), so a model loads once per worker, not per
    chunk."""
    return OperatorStage(
        spec, ratio, signal, models, cached=True, stage=stage, layout=layout, job=job
    )(batch)


def _log_chunk(batch: Batch, what: str, started: float) -> None:
    log.info(
        "chunk %d (frames %d–%d) %s in %.1f s",
        _one(batch, "index"),
        _one(batch, "start_frame"),
        _one(batch, "end_frame") - 1,
        what,
        time.monotonic() - started,
    )


def _segment_row(batch: Batch, segment: bytes, output_frames: int, nodes: str) -> Batch:
    return {
        "index": batch["index"],
        "out_start": batch["out_start"],
        "input_frames": np.array([_one(batch, "end_frame") - _one(batch, "start_frame")]),
        "output_frames": np.array([output_frames]),
        "segment": np.array([segment], dtype=object),
        "nodes": np.array([nodes], dtype=object),
    }


def encode_stage(
    batch: Batch,
    *,
    fps: Fraction,
    settings: EncoderSettings,
    colour: ColourSpec,
    signal: CancelSignal | None,
    stage: int = 2,
    layout: FrameLayout = FrameLayout.RGB,
    job: str | None = None,
) -> Batch:
    _log_here(job)
    CancelCheck(signal)()
    started = time.monotonic()
    report = WorkReport(signal, stage)
    frames = _one(batch, "frames")
    n_own = len(frames) - int(_one(batch, "n_lookahead"))
    segment = encode_segment(frames[:n_own], fps, settings, colour, layout)
    report(_own_frames(batch))
    report.flush()
    _log_chunk(batch, "encoded", started)
    return _segment_row(batch, segment, n_own, _here(batch))


def chunk_stage(
    batch: Batch,
    *,
    path: str,
    rotation: int,
    colour: ColourSpec,
    chain: tuple[OperatorSpec, ...],
    models: ModelOptions | None,
    fps: Fraction,
    settings: EncoderSettings,
    layout: FrameLayout,
    signal: CancelSignal | None,
    job: str | None = None,
    threads: int = 0,
) -> Batch:
    """Decode, every filter and the encode of one chunk in one task, streaming: frames
    go from the decoder through the filters to the encoder a few at a time, so a chunk
    holds only those few, whatever its length (chunks can then be long: fewer keyframes
    and tasks).  For jobs whose stages would all run as tasks on one node anyway (no
    actor, no interpolator, no placement), where Ray Data would fuse the per-stage
    callables into one task but keep every stage's whole output.  Reports each stage's
    work as the stages would.  ``threads``: the decoder's and the encoder's
    (:attr:`JobPlan.threads`)."""
    _log_here(job)
    started = time.monotonic()
    check = CancelCheck(signal)
    chunk = Chunk.from_row({k: _one(batch, k) for k in batch})
    if chunk.lookahead:
        raise ValueError("a streamed chunk has no look-ahead (it has no interpolator)")
    reports = [WorkReport(signal, stage) for stage in range(len(chain) + 2)]
    decoded = chunk_frames(path, chunk, rotation, colour, check, layout, threads)
    filters = [
        OperatorStage(spec, Fraction(1), signal, models, cached=True, layout=layout, job=job)
        for spec in chain
    ]
    with ExitStack() as stack:
        # Closed here, not when collected: it holds the input open while it decodes.
        stack.enter_context(contextlib.closing(decoded))
        encoder: SegmentEncoder | None = None
        for _ in range(0, chunk.frame_count, _FRAMES_PER_CHECK):
            check()
            reports[0].start()
            group = np.stack(list(itertools.islice(decoded, _FRAMES_PER_CHECK)))
            n = len(group)
            reports[0](n)
            for stage, report in zip(filters, reports[1:], strict=False):
                report.start()
                group = stage.filter(group)
                report(n)
            reports[-1].start()
            if encoder is None:
                size = frame_size(group, layout)
                encoder = stack.enter_context(
                    SegmentEncoder(size, fps, settings, colour, layout, threads)
                )
            encoder.add(group)
            reports[-1](n)
        assert encoder is not None  # a chunk has at least one frame
        segment = encoder.finish()
    for report in reports:
        report.flush()
    _log_chunk(batch, "decoded, filtered and encoded", started)
    return _segment_row(batch, segment, chunk.frame_count, ",".join([_here()] * len(reports)))
