"""The job runner: claims queued jobs under a lease, runs them, records the outcome.

A runner holds each job by a lease it renews every second (writing progress and ETA
at the same time).  If the runner dies, its leases expire and any runner re-queues
those jobs (or fails them after ``max_attempts``), so no job stays ``processing``.
A cancel request reaches the running pipeline, or the input's download, at the next
heartbeat.  A job whose API key has been revoked is canceled instead of run.

The store may fail for a while (locked, failing over, unreachable).  The heartbeat
retries with backoff for as long as its last renewal's lease lasts; a runner that can
no longer renew stops its pipeline before the lease runs out, so no second runner ever
works on the same job.  Recording the end of a job is retried the same way, with the
heartbeat still renewing, so a finished output is neither orphaned nor made twice.

A runner that stops on purpose (a Serve redeploy or shutdown, Ctrl-C) hands its jobs
back at once instead of letting their leases run out: they are queued again and the
claim is not counted as an attempt, so an operator's restart costs a job its progress
but never one of its ``max_attempts``.

Each job's life is logged at INFO under ``serve_app.jobs.runner`` (claimed with its attempt,
input fetched, pipeline started, and how it ended, with the error type), the job id
first on every line, so ``grep job_…`` on the runner's log follows one job.

Run one in the foreground with ``python -m serve_app.jobs.runner`` (the Serve deployment
does the same inside a replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.enhance import (
    PipelineConfig,
    end_stale_datasets,
    enhance_video,
    joins_ray_if_running,
    running_datasets,
)
from pipelines.errors import PipelineCanceled, PipelineError
from pipelines.job_plan import EnhanceRequest
from pipelines.progress import CancelToken, Progress
from serve_app.access.keys import new_id
from serve_app.access.private_files import private_dir
from serve_app.api.schemas import Job, job_from_record
from serve_app.delivery.fetch import FetchError, fetch_to_file
from serve_app.delivery.output_storage import (
    OutputStorage,
    download_link,
    open_segments,
    open_storage,
    segment_job_ids,
)
from serve_app.delivery.upload_storage import UploadStorage, open_upload_storage
from serve_app.delivery.webhooks import WebhookDispatcher
from serve_app.jobs.records import JobRecord
from serve_app.jobs.store import JobStore, StoreUnavailable, open_store
from serve_app.jobs.upload_lifecycle import drop_job_upload, sweep_uploads
from serve_app.metrics import record_job_counts, record_progress
from serve_app.settings import Settings
from vocabulary import JobErrorType, JobStatus, Phase

__all__ = ["JobRunner", "fetch_input", "pipeline_config", "process_job"]

log = logging.getLogger(__name__)

# The most a job's progress shows before it completes.
_LAST_STEP_PROGRESS = 0.99
# A download that has run this long no longer counts against a processing slot.
SLOW_FETCH_SECONDS = 2.0
# How often the store gauges are set: under Ray's export interval (10 s), since Ray
# stops exporting a gauge that is not set again.
GAUGE_SECONDS = 5.0

ProcessJob = Callable[[JobRecord, Settings, Callable[[Progress], None], CancelToken], Path]
FetchInput = Callable[[JobRecord, Settings, CancelToken], Awaitable[None]]


def pipeline_config(settings: Settings, scratch: Path, job_id: str | None = None) -> PipelineConfig:
    """How the service runs a job's pipeline: the settings' part of it, passed down,
    with the Ray Data dataset named by the job id."""
    return PipelineConfig(
        scratch_dir=scratch,
        max_chunk_frames=settings.chunk_frames,
        model_runtime=settings.model_runtime,
        model_cache=settings.model_cache,
        dataset_name=job_id,
        accelerator_resource=settings.accelerator_resource,
        encode_resource=settings.encode_resource or None,
    )


async def fetch_input(job: JobRecord, settings: Settings, cancel: CancelToken) -> None:
    """Download the job's input to ``<scratch>/<job id>/input``, where
    :func:`process_job` reads it; bounded by the settings' fetch limits."""
    scratch = settings.scratch_dir / job.id
    await asyncio.to_thread(private_dir, scratch)
    await fetch_to_file(
        job.input_url,
        scratch / "input",
        limits=settings.fetch_limits,
        policy=settings.url_policy,
        cancel=cancel,
    )


def process_job(
    job: JobRecord, settings: Settings, on_progress: Callable[[Progress], None], cancel: CancelToken
) -> Path:
    """Enhance the input :func:`fetch_input` left in the job's scratch; returns the output
    there.

    The runner hands the output to storage and then deletes the whole scratch
    directory, however the job ended.
    """
    scratch = settings.scratch_dir / job.id
    source = scratch / "input"
    cancel.raise_if_canceled()
    output = scratch / "output.mp4"
    enhance_video(
        source,
        output,
        EnhanceRequest(preset=job.preset, upscale_factor=job.upscale_factor, engine=job.engine),
        replace(
            pipeline_config(settings, scratch, job.id), segments=open_segments(settings, job.id)
        ),
        on_progress=on_progress,
        cancel=cancel,
    )
    source.unlink()  # zero retention: the input goes as soon as it is not needed
    return output


@dataclass
class _Running:
    cancel: CancelToken = field(default_factory=CancelToken)
    progress: float = 0.0
    eta_seconds: float | None = None
    phase: Phase = Phase.FETCHING
    frames_done: int = 0
    lease_lost: bool = False
    lease_until: float = 0.0  # when the last renewal's lease ends (this host's clock)
    key_revoked: bool = False
    deadline_exceeded: bool = False


class JobRunner:
    """Polls the store, runs up to ``runner_concurrency`` jobs at once.

    A claimed job first downloads its input (``fetch``), then waits for one of the
    ``runner_concurrency`` processing slots.  A download counts against a slot only
    for its first :data:`SLOW_FETCH_SECONDS`: a slower one stops counting, so the
    runner claims another job to use the slot, and a slow input server delays only
    its own job (at most ``fetch_concurrency`` downloads at once).  Fast downloads
    keep the old behaviour: no job is claimed before a slot can take it, so a queued
    job stays ``queued`` (and cancelable at once) until then.
    ``fetch`` defaults to :func:`fetch_input` with the real :func:`process_job`, and to
    no fetch stage with a stand-in ``process`` (tests).
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        process: ProcessJob = process_job,
        fetch: FetchInput | None = None,
        owner: str | None = None,
        storage: OutputStorage | None = None,
        uploads: UploadStorage | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.uploads = uploads or open_upload_storage(settings)
        self.webhooks = WebhookDispatcher(store, settings, self._job_object)
        self._next_reap = 0.0
        self._next_gauges = 0.0
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id('runner')}"
        self._process = process
        self._fetch = fetch if fetch is not None or process is not process_job else fetch_input
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(settings.runner_concurrency)
        self._fetching: dict[str, float] = {}  # job id -> when its download started

    def __repr__(self) -> str:
        return f"JobRunner(owner={self.owner!r}, running={len(self._tasks)})"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.store.init()
                break
            except StoreUnavailable as exc:
                log.warning("job store unavailable at start (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        outage = False
        while not stop.is_set():
            try:
                await self.tick()
                if outage:
                    log.warning("job store available again")
                    outage = False
            except StoreUnavailable as exc:
                if not outage:  # one line per outage, not one per poll
                    log.warning(
                        "job store unavailable (%s); running jobs keep going, claims wait", exc
                    )
                    outage = True
            except Exception:
                log.exception("runner tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_seconds)
        await self.release_all()
        await self.webhooks.drain()

    async def release_all(self) -> None:
        """Hand every running job back to the queue (a graceful stop).

        The store first, so nothing this runner still does can finish the job: its
        ``finish`` and heartbeat find the lease gone.  Then the pipelines are stopped.
        """
        tasks = dict(self._tasks)
        for job_id in tasks:
            try:
                released = await self.store.release_lease(job_id, self.owner)
            except Exception as exc:  # the lease's expiry re-queues it (as an attempt)
                log.warning(
                    "job %s: could not release its lease on shutdown (%s); it is "
                    "re-queued when the lease expires",
                    job_id,
                    exc,
                )
                continue
            if released:
                log.info(
                    "job %s: runner stopping; lease released, job re-queued "
                    "(this attempt is not counted)",
                    job_id,
                )
        for job_id, task in tasks.items():
            if (state := self._running.get(job_id)) is not None:
                state.lease_lost = True
                state.cancel.cancel()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks.values(), timeout=10)

    async def tick(self) -> None:
        """Recover and clean up after dead runners, reap old outputs, claim new jobs."""
        await self.store.requeue_expired(time.time(), self.settings.max_attempts)
        overdue = await self.store.cancel_overdue(time.time())
        await self.webhooks.tick()
        if overdue or time.monotonic() >= self._next_reap:
            # Canceled past their deadline while queued: their uploads go now.
            await sweep_uploads(self.store, self.uploads, time.time())
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.settings.reap_interval_seconds
            await self.reap()
            await self.remove_stale_scratch()
            await self.end_dead_pipelines()
        if time.monotonic() >= self._next_gauges:
            self._next_gauges = time.monotonic() + GAUGE_SECONDS
            oldest = await self.store.oldest_queued_at()
            record_job_counts(
                await self.store.count_jobs_by_status(),
                0.0 if oldest is None else time.time() - oldest,
            )
        while self._room():
            job = await self.store.claim_next(
                self.owner,
                time.time(),
                self.settings.lease_seconds,
                self.settings.max_running_per_key,
            )
            if job is None:
                return
            log.info(
                "job %s: claimed by %s, attempt %d of %d (key %s, preset %s, x%d, %s)",
                job.id,
                self.owner,
                job.attempts,
                self.settings.max_attempts,
                job.key_id,
                job.preset,
                job.upscale_factor,
                job.engine,
            )
            task = asyncio.create_task(self._execute(job))
            self._tasks[job.id] = task
            task.add_done_callback(functools.partial(self._forget_done, job.id))

    def _room(self) -> bool:
        """Whether to claim another job now: a slot is free once slow downloads are
        left out, and there is room for one more download."""
        if len(self._fetching) >= self.settings.fetch_concurrency:
            return False
        now = time.monotonic()
        slow = sum(now - started > SLOW_FETCH_SECONDS for started in self._fetching.values())
        return len(self._tasks) - slow < self.settings.runner_concurrency

    def _forget_done(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._running.pop(job_id, None)
        self._fetching.pop(job_id, None)

    async def _job_object(self, job: JobRecord) -> Job:
        """The job object for webhook events, with a download link while one exists."""
        link = await asyncio.to_thread(
            download_link,
            job,
            self.storage,
            self.settings.retention_seconds,
            self.settings.public_base_url,
        )
        return job_from_record(job, link.url if link else None)

    async def reap(self) -> int:
        """Delete outputs past retention; the job records stay, without an output."""
        cutoff = time.time() - self.settings.retention_seconds
        reaped = 0
        while batch := await self.store.expired_outputs(cutoff, 100):
            for job in batch:
                assert job.output_path is not None
                await asyncio.to_thread(self.storage.delete, job.output_path)
                await self.store.clear_output(job.id)
                reaped += 1
        if reaped:
            log.info("reaped %d outputs past retention", reaped)
        return reaped

    async def end_dead_pipelines(self) -> list[str]:
        """Mark failed, in Ray's Data view, the pipelines Ray still lists as running for
        jobs that are no longer processing: attempts killed with their process, whose
        job then ran out of attempts or was canceled (a job that is re-claimed has its
        new attempt do this).  Only tidies the dashboard: errors are logged, not raised."""
        try:
            if not await asyncio.to_thread(joins_ray_if_running):
                return []  # no Ray yet: no pipeline of ours can be listed there
            names = set((await asyncio.to_thread(running_datasets)).values())
            dead: list[str] = []
            for name in sorted(names):
                if not name.startswith("job_") or name in self._running:
                    continue
                job = await self.store.get_job(name)
                # Not in our store: another service's (or a CLI run's) pipeline.
                if job is not None and job.status != JobStatus.PROCESSING:
                    dead.append(name)
            ended = await asyncio.to_thread(end_stale_datasets, *dead) if dead else []
        except Exception as exc:  # Ray's stats actor is internal; the runner goes on
            log.warning("could not tidy dead pipelines in Ray's Data view: %s", exc)
            return []
        for tag in ended:
            log.info("pipeline %s of a job no longer processing marked failed", tag)
        return ended

    def _clear_segments(self, job_id: str) -> None:
        try:
            open_segments(self.settings, job_id).clear()
        except Exception:  # a store outage; local ones are swept again later
            log.warning("could not delete the saved segments of %s", job_id, exc_info=True)

    async def remove_stale_scratch(self) -> None:
        """Scratch of jobs nobody is processing: left behind by a runner that died.
        Saved segments of jobs that ended without a runner (canceled while re-queued,
        out of attempts) go too; a queued job's stay, for the runner that resumes it."""
        for job_id in await asyncio.to_thread(segment_job_ids, self.settings):
            job = await self.store.get_job(job_id)
            if job is None or job.status.is_terminal:
                await asyncio.to_thread(self._clear_segments, job_id)
        if not self.settings.scratch_dir.is_dir():
            return
        for entry in self.settings.scratch_dir.iterdir():
            if entry.name in self._tasks:
                continue
            job = await self.store.get_job(entry.name)
            if job is None or job.status != JobStatus.PROCESSING:
                await asyncio.to_thread(shutil.rmtree, entry, True)

    async def _heartbeat(self, job: JobRecord, state: _Running) -> None:
        """Renew the lease until cancelled; on failure retry while the lease lasts.

        The pipeline is stopped (``lease_lost``) when the store says another runner
        holds the job, or when no renewal got through and the lease is about to end:
        from then on another runner may claim the job, and two must never run it.
        """
        # Renewing at most once a second is also how often progress reaches the store.
        interval = min(1.0, self.settings.lease_seconds / 3)
        # Stop before the lease ends, leaving room for one store call that hangs for
        # its whole timeout and for the pipeline to notice the cancel.
        margin = interval + self.settings.store_timeout_seconds
        state.lease_until = job.lease_expires_at or time.time() + self.settings.lease_seconds
        failures = 0
        while True:
            await asyncio.sleep(interval if not failures else min(interval, 0.1 * 2**failures))
            now = time.time()
            try:
                record = await self.store.renew_lease(
                    job.id,
                    self.owner,
                    now,
                    self.settings.lease_seconds,
                    state.progress,
                    state.eta_seconds,
                    phase=state.phase,
                )
            except Exception as exc:  # any failure: the heartbeat must outlive it
                failures += 1
                if failures == 1:
                    log.warning("could not renew the lease on %s (%s); retrying", job.id, exc)
                if time.time() + margin < state.lease_until:
                    continue
                log.error(
                    "lease on %s ends in under %.1f s and the store has not answered "
                    "for %d tries; stopping the job so another runner can take it",
                    job.id,
                    margin,
                    failures,
                )
                record = None
            else:
                if failures:
                    log.warning("renewed the lease on %s after %d failed tries", job.id, failures)
                failures = 0
            if record is None:
                state.lease_lost = True
                state.cancel.cancel()
                return
            state.lease_until = now + self.settings.lease_seconds
            if record.cancel_requested:
                state.cancel.cancel()

    async def _check_key(self, job: JobRecord, state: _Running) -> None:
        """Cancel the job if its API key has been revoked.

        Revoking a key stops its work: queued jobs are canceled when claimed, running
        ones within two seconds (README, "Revoking a key").  A missing key is not
        revocation (keys are never deleted; test fixtures often have none).
        """
        key = await self.store.get_key(job.key_id)
        if key is not None and key.revoked_at is not None:
            state.key_revoked = True
            state.cancel.cancel()

    async def _watch_key(self, job: JobRecord, state: _Running) -> None:
        while not state.cancel.canceled:
            await asyncio.sleep(2.0)
            try:
                await self._check_key(job, state)
            except Exception as exc:  # a store outage: the heartbeat deals with those
                log.debug("could not check the key of %s: %s", job.id, exc)

    @staticmethod
    async def _watch_deadline(job: JobRecord, state: _Running) -> None:
        """Cancel the job when its ``cancel_after`` deadline passes."""
        assert job.deadline_at is not None
        await asyncio.sleep(max(0.0, job.deadline_at - time.time()))
        if not state.cancel.canceled:
            state.deadline_exceeded = True
            state.cancel.cancel()

    async def _take_slot(self, cancel: CancelToken) -> None:
        """Wait for a processing slot, in claim order; stop waiting if canceled."""
        acquire = asyncio.ensure_future(self._slots.acquire())
        while not acquire.done() and not cancel.canceled:
            await asyncio.wait({acquire}, timeout=0.25)
        if cancel.canceled:
            if acquire.done() and not acquire.cancelled():
                self._slots.release()
            acquire.cancel()
            cancel.raise_if_canceled()

    async def _finish(
        self, job: JobRecord, state: _Running, status: JobStatus, outcome: dict[str, str | None]
    ) -> bool:
        """Record the end of the job, retrying store failures while the lease holds.

        ``finish`` only succeeds for the lease's owner, so trying again is always safe.
        """
        failures = 0
        while True:
            try:
                return await self.store.finish(job.id, self.owner, status, time.time(), **outcome)
            except Exception as exc:
                failures += 1
                if state.lease_lost:
                    log.error(
                        "could not record the end of %s (%s) and the lease is gone", job.id, exc
                    )
                    return False
                if failures == 1:
                    log.warning("could not record the end of %s (%s); retrying", job.id, exc)
                await asyncio.sleep(min(1.0, 0.1 * 2**failures))

    async def _execute(self, job: JobRecord) -> None:
        state = self._running[job.id] = _Running()
        started = time.monotonic()

        def on_progress(progress: Progress) -> None:
            state.phase = progress.phase
            if progress.phase == Phase.FETCHING:  # no frame count yet
                return
            record_progress(progress.frames_done - state.frames_done, progress.fps)
            state.frames_done = progress.frames_done
            # 1.0 is for completed jobs only: assembling and uploading still take time.
            state.progress = min(progress.fraction, _LAST_STEP_PROGRESS)
            state.eta_seconds = progress.eta_seconds

        heartbeat = asyncio.create_task(self._heartbeat(job, state))
        key_watch = asyncio.create_task(self._watch_key(job, state))
        deadline = (
            None
            if job.deadline_at is None
            else asyncio.create_task(self._watch_deadline(job, state))
        )
        try:
            status, outcome = await self._run_pipeline(job, state, on_progress)
            # The heartbeat goes on while the end is recorded: a store outage right now
            # must not let the lease lapse under a finished job.
            finished = not state.lease_lost and await self._finish(job, state, status, outcome)
        finally:
            heartbeat.cancel()  # however this ends, even cancelled by a stopping runner
            key_watch.cancel()
            if deadline is not None:
                deadline.cancel()
        if finished:
            # Zero retention: the job has ended, so its upload goes (a job whose lease
            # was lost is another runner's to finish, and its upload with it), and so
            # do its saved segments.
            await asyncio.to_thread(self._clear_segments, job.id)
            try:
                await drop_job_upload(self.store, self.uploads, job)
            except Exception as exc:  # the sweep in tick() retries it
                log.warning("could not delete the upload of %s yet: %s", job.id, exc)
        if not finished:
            log.warning("job %s: lost the lease; leaving it to its new owner", job.id)
            if (output_path := outcome.get("output_path")) is not None:
                await asyncio.to_thread(self.storage.delete, output_path)
            return
        took = time.monotonic() - started
        if status == JobStatus.COMPLETED:
            log.info("job %s: completed in %.1f s", job.id, took)
        elif status == JobStatus.CANCELED:
            log.info(
                "job %s: canceled after %.1f s%s",
                job.id,
                took,
                f" ({outcome['error_type']})" if outcome.get("error_type") else "",
            )
        else:
            log.info(
                "job %s: failed after %.1f s: %s: %s",
                job.id,
                took,
                outcome.get("error_type"),
                outcome.get("error_message"),
            )

    async def _run_pipeline(
        self, job: JobRecord, state: _Running, on_progress: Callable[[Progress], None]
    ) -> tuple[JobStatus, dict[str, str | None]]:
        """Process the job and store its output; the status and fields to record."""
        outcome: dict[str, str | None] = {}
        try:
            with contextlib.suppress(StoreUnavailable):  # the key watch checks again
                await self._check_key(job, state)
            state.cancel.raise_if_canceled()
            if job.upload_id is not None:  # the input is already here: no fetch
                scratch = self.settings.scratch_dir / job.id
                await asyncio.to_thread(private_dir, scratch)
                await asyncio.to_thread(self.uploads.materialize, job.upload_id, scratch / "input")
            elif self._fetch is not None:
                self._fetching[job.id] = time.monotonic()
                try:
                    await self._fetch(job, self.settings, state.cancel)
                finally:
                    fetched_in = time.monotonic() - self._fetching.pop(job.id)
                log.info("job %s: input fetched in %.1f s", job.id, fetched_in)
            state.phase = Phase.PROCESSING
            await self._take_slot(state.cancel)
            log.info("job %s: pipeline started (Ray Data dataset %s)", job.id, job.id)
            try:
                output = await asyncio.to_thread(
                    self._process, job, self.settings, on_progress, state.cancel
                )
            finally:
                self._slots.release()
            state.phase, state.eta_seconds = Phase.UPLOADING, None
            key = await asyncio.to_thread(self.storage.put, job.id, output)
            status, outcome["output_path"] = JobStatus.COMPLETED, key
        except PipelineCanceled:
            status = JobStatus.CANCELED
            if state.key_revoked:
                outcome.update(
                    error_type=JobErrorType.KEY_REVOKED,
                    error_message="the job's API key was revoked",
                )
            elif state.deadline_exceeded:
                seconds = (job.deadline_at or job.created_at) - job.created_at
                outcome.update(
                    error_type=JobErrorType.DEADLINE_EXCEEDED,
                    error_message=f"the job ran past its cancel_after "
                    f"deadline ({seconds:.0f} s after creation)",
                )
        except (PipelineError, FetchError) as exc:
            status = JobStatus.FAILED
            outcome.update(error_type=exc.type, error_message=str(exc))
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            status = JobStatus.FAILED
            outcome.update(
                error_type=JobErrorType.PROCESSING_ERROR,
                error_message="processing failed unexpectedly; the operator "
                "has the details in the runner log",
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, self.settings.scratch_dir / job.id, True)
        return status, outcome


async def _main() -> None:
    settings = Settings()
    stop = asyncio.Event()
    # SIGTERM and Ctrl-C stop gracefully: running jobs go back to the queue at once.
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await JobRunner(open_store(settings), settings).run(stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main())
