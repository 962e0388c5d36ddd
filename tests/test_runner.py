"""The job runner: outcomes, progress, cancel, and recovery when a runner dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from pipelines.errors import InvalidInputError
from pipelines.progress import CancelToken, Progress
from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.access.keys import new_id
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.jobs.store import StoreUnavailable
from serve_app.settings import Settings
from tests.local_http import serve_directory
from vocabulary import JobStatus

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _job(url: str = "http://127.0.0.1:1/v.mp4") -> JobRecord:
    # Classical operators: these tests are about the runner, and CPU time is scarce.
    return JobRecord(
        id=new_id("job"),
        key_id="key_t",
        status=JobStatus.QUEUED,
        input_url=url,
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
        engine="classical",
    )


async def _run_until(
    store: SqliteStore,
    runner: JobRunner,
    job_id: str,
    *states: Callable[[JobRecord], bool],
    timeout: float = 20,
) -> list[JobRecord]:
    """Run ``runner`` until the job has passed through each state in turn."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout
    seen: list[JobRecord] = []
    try:
        while time.monotonic() < deadline:
            job = await store.get_job(job_id)
            if job is not None and states[len(seen)](job):
                seen.append(job)
                if len(seen) == len(states):
                    return seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"job never reached the expected state: {job}")
    finally:
        stop.set()
        await task


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, Any] = {"lease_seconds": 3, **overrides}
    return Settings(data_dir=tmp_path, poll_seconds=0.05, **values)


# Fake pipelines, one per failure mode.
def _succeeds(job, settings, on_progress, cancel) -> Path:
    on_progress(Progress(5, 10, 2.0, 2.5))
    time.sleep(1.5)  # long enough for a heartbeat to carry the progress
    output = settings.scratch_dir / job.id / "output.mp4"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"video")
    return output


def _rejects_input(job, settings, on_progress, cancel) -> Path:
    raise InvalidInputError("input is audio-only: nothing to enhance", reason="no_video")


def _crashes(job, settings, on_progress, cancel) -> Path:
    raise RuntimeError("segfault-ish secret sk_live_abc")


def _waits_for_cancel(job, settings, on_progress, cancel: CancelToken) -> Path:
    while not cancel.wait(0.05):
        pass
    cancel.raise_if_canceled()
    raise AssertionError("unreachable")


async def test_completed_job_records_output_and_progress(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    runner = JobRunner(store, _settings(tmp_path), process=_succeeds)
    seen, done = await _run_until(
        store, runner, job.id, lambda j: j.progress == 0.5, lambda j: j.status.is_terminal
    )
    assert (seen.status, seen.eta_seconds) == (JobStatus.PROCESSING, 2.5)
    assert (done.status, done.progress, done.output_path) == (
        JobStatus.COMPLETED,
        1.0,
        f"{job.id}.mp4",
    )
    assert (tmp_path / "outputs" / f"{job.id}.mp4").read_bytes() == b"video"
    assert not (tmp_path / "scratch" / job.id).exists()


async def test_invalid_input_fails_with_its_type(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    [done] = await _run_until(
        store,
        JobRunner(store, _settings(tmp_path), process=_rejects_input),
        job.id,
        lambda j: j.status.is_terminal,
    )
    assert (done.status, done.error_type) == (JobStatus.FAILED, "invalid_input")
    assert "audio-only" in done.error_message


async def test_unexpected_errors_fail_without_details(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    [done] = await _run_until(
        store,
        JobRunner(store, _settings(tmp_path), process=_crashes),
        job.id,
        lambda j: j.status.is_terminal,
    )
    assert (done.status, done.error_type) == (JobStatus.FAILED, "processing_error")
    assert "sk_live" not in done.error_message and "segfault" not in done.error_message


async def test_cancel_request_reaches_the_running_pipeline(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    runner = JobRunner(store, _settings(tmp_path), process=_waits_for_cancel)

    async def cancel_soon() -> None:
        await asyncio.sleep(0.5)
        await store.request_cancel(job.id, time.time())

    asyncio.get_running_loop().create_task(cancel_soon())
    started = time.monotonic()
    [done] = await _run_until(store, runner, job.id, lambda j: j.status.is_terminal)
    assert done.status == JobStatus.CANCELED
    assert time.monotonic() - started < 5


# A real runner process, killed mid-job.
@pytest.fixture
def video_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    write_sample_video(root / "long.mp4", SampleSpec(width=320, height=240, seconds=6))
    base, server = serve_directory(root)
    yield f"{base}/long.mp4"
    server.shutdown()


def _start_runner(tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETROIVA_DATA_DIR": str(tmp_path),
        "RETROIVA_LEASE_SECONDS": "3",
        "RETROIVA_ALLOW_PRIVATE_URLS": "true",
        "RETROIVA_CHUNK_FRAMES": "12",
        "RETROIVA_POLL_SECONDS": "0.2",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.jobs.runner"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.usefixtures("ray_session")
async def test_killed_runner_job_is_recovered_by_another(tmp_path: Path, video_server: str):
    store = SqliteStore(tmp_path / "retroiva.sqlite3")
    await store.init()
    job, _ = await store.insert_job(_job(video_server), time.time())
    first = _start_runner(tmp_path)
    try:
        deadline = time.monotonic() + 60
        while (await store.get_job(job.id)).progress == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await store.get_job(job.id)).status == JobStatus.PROCESSING
        os.killpg(first.pid, signal.SIGKILL)  # no goodbye, no finish()
    finally:
        first.wait()
    second = _start_runner(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (await store.get_job(job.id)).status.is_terminal:
            assert time.monotonic() < deadline, "job stuck after the runner died"
            await asyncio.sleep(0.5)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait()
    done = await store.get_job(job.id)
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
    assert (tmp_path / "outputs" / done.output_path).stat().st_size > 0
    assert not (tmp_path / "scratch" / job.id).exists()  # the dead attempt's files too


# The store unavailable in the middle of a job (issue 21 item 1).
class _Outage:
    """When the shared store is down: every call through a :class:`_FlakyStore` raises."""

    def __init__(self) -> None:
        self.down_from = self.down_until = 0.0

    def schedule(self, start_in: float, seconds: float) -> None:
        self.down_from = time.monotonic() + start_in
        self.down_until = self.down_from + seconds

    @property
    def down(self) -> bool:
        return self.down_from <= time.monotonic() < self.down_until


class _FlakyStore:
    """A real SqliteStore behind a switch: what a runner sees while MongoDB fails over."""

    def __init__(self, store: SqliteStore, outage: _Outage) -> None:
        self._store, self._outage = store, outage

    def __getattr__(self, name: str) -> object:
        method = getattr(self._store, name)

        async def call(*args: object, **kwargs: object) -> object:
            if self._outage.down:
                await asyncio.sleep(0.05)
                raise StoreUnavailable("MongoDB is unavailable: AutoReconnect")
            return await method(*args, **kwargs)

        return call


def _timed_pipeline(seconds: float, runs: list[tuple[float, float, str]]):
    """A cancel-aware pipeline that works ``seconds`` and logs (start, end, how)."""

    def process(job, settings, on_progress, cancel: CancelToken) -> Path:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if cancel.wait(0.05):
                runs.append((started, time.monotonic(), "canceled"))
                cancel.raise_if_canceled()
        output = settings.scratch_dir / job.id / "output.mp4"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"video")
        runs.append((started, time.monotonic(), "done"))
        return output

    return process


async def _two_runners_until_done(
    store: SqliteStore, outage: _Outage, settings: Settings, process, job_id: str, timeout: float
) -> JobRecord:
    """Runners A and B on one store, both behind the outage, until the job ends."""
    flaky: Any = _FlakyStore(store, outage)
    runners = [JobRunner(flaky, settings, process=process, owner=name) for name in "AB"]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    deadline = time.monotonic() + timeout
    try:
        while True:
            job = await store.get_job(job_id)
            if job is not None and job.status.is_terminal:
                return job
            assert time.monotonic() < deadline, f"job never ended: {job}"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_store_down_10s_mid_job_neither_loses_nor_duplicates_it(tmp_path: Path):
    """Done criterion: 10 s without a store, inside the lease; the job runs once."""
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    runs: list[tuple[float, float, str]] = []
    outage = _Outage()
    outage.schedule(start_in=1.5, seconds=10)
    settings = _settings(tmp_path, lease_seconds=12, store_timeout_seconds=0.2)
    done = await _two_runners_until_done(
        store, outage, settings, _timed_pipeline(16, runs), job.id, timeout=40
    )
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    assert [how for *_, how in runs] == ["done"]  # one run: no second runner took it
    assert (tmp_path / "outputs" / f"{job.id}.mp4").read_bytes() == b"video"


async def test_store_down_past_the_lease_stops_the_pipeline_before_another_runs(tmp_path: Path):
    """A runner that can't renew stops its pipeline before its lease ends; the job
    runs again once the store is back, and the two runs never overlap."""
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    runs: list[tuple[float, float, str]] = []
    outage = _Outage()
    outage.schedule(start_in=1.0, seconds=6)
    settings = _settings(tmp_path, lease_seconds=3, store_timeout_seconds=0.2)
    done = await _two_runners_until_done(
        store, outage, settings, _timed_pipeline(4, runs), job.id, timeout=40
    )
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
    assert [how for *_, how in runs] == ["canceled", "done"]
    (first_start, first_end, _), (second_start, _, _) = runs
    assert first_end < first_start + 3  # stopped before its lease could run out
    assert first_end < second_start  # never two at once
    assert (tmp_path / "outputs" / f"{job.id}.mp4").read_bytes() == b"video"


async def test_finish_is_retried_while_the_store_is_down(tmp_path: Path):
    """The store goes down as the pipeline ends: the end is recorded when it is back,
    the output is kept, and the job does not run again."""
    store = SqliteStore(tmp_path / "s.db")
    await store.init()
    job, _ = await store.insert_job(_job(), time.time())
    runs: list[tuple[float, float, str]] = []
    outage = _Outage()
    outage.schedule(start_in=1.9, seconds=3)
    settings = _settings(tmp_path, lease_seconds=8, store_timeout_seconds=0.2)
    done = await _two_runners_until_done(
        store, outage, settings, _timed_pipeline(2, runs), job.id, timeout=30
    )
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    assert [how for *_, how in runs] == ["done"]
    assert (tmp_path / "outputs" / done.output_path).read_bytes() == b"video"
