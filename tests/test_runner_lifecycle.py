"""An operator's view of the runner: a graceful stop hands jobs back without costing an
attempt, and every job's life is in the runner's log at INFO."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from pipelines.progress import CancelToken
from serve_app.access.keys import new_id
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner, pipeline_config
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        poll_seconds=0.05,
        lease_seconds=30,
        public_url="http://127.0.0.1:9",
        signing_secret="s",
    )


def _job(key_id: str = "key_test") -> JobRecord:
    return JobRecord(
        id=new_id("job"),
        key_id=key_id,
        status=JobStatus.QUEUED,
        input_url="http://127.0.0.1:9/v.mp4",
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
    )


def _pipeline(seconds: float, started: list[str]):
    def process(job, settings, on_progress, cancel: CancelToken) -> Path:
        started.append(job.id)
        begun = time.monotonic()
        while time.monotonic() - begun < seconds:
            if cancel.wait(0.05):
                cancel.raise_if_canceled()
        output = settings.scratch_dir / job.id / "output.mp4"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"video")
        return output

    return process


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_graceful_stop_requeues_at_once_without_counting_the_attempt(tmp_path: Path):
    settings = _settings(tmp_path)
    store = SqliteStore(settings.sqlite_path)

    async def scenario() -> tuple[JobRecord, JobRecord, float]:
        await store.init()
        job = _job()
        await store.insert_job(job, time.time())
        started: list[str] = []
        first = JobRunner(store, settings, process=_pipeline(60, started), owner="first")
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop))

        async def running() -> bool:
            return bool(started)

        await _until(running, 30)
        stop.set()  # what Serve's graceful shutdown of the replica does
        await asyncio.wait_for(task, 20)
        handed_back = await store.get_job(job.id)
        # A second runner takes it at once, not after the 30 s lease.
        began = time.monotonic()
        second = JobRunner(store, settings, process=_pipeline(0.1, []), owner="second")
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(second.run(stop2))

        async def done() -> bool:
            return (await store.get_job(job.id)).status == JobStatus.COMPLETED

        await _until(done, 20)
        took = time.monotonic() - began
        stop2.set()
        await task2
        return handed_back, await store.get_job(job.id), took

    handed_back, finished, took = asyncio.run(scenario())
    assert handed_back.status == JobStatus.QUEUED
    assert handed_back.lease_owner is None and handed_back.attempts == 0
    assert finished.attempts == 1  # the operator's restart was not an attempt
    assert took < 10


def test_lifecycle_is_logged_at_info_with_the_job_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    settings = _settings(tmp_path)
    store = SqliteStore(settings.sqlite_path)

    def broken(job, settings, on_progress, cancel) -> Path:
        from pipelines.errors import InvalidInputError

        raise InvalidInputError("not a video", reason="not_video")

    async def scenario() -> tuple[str, str]:
        await store.init()
        good, bad = _job(), _job()
        await store.insert_job(good, time.time())
        for runner_process, job in ((_pipeline(0.1, []), good), (broken, bad)):
            if job is bad:
                await store.insert_job(bad, time.time())
            runner = JobRunner(store, settings, process=runner_process, owner="r")
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))

            async def ended(job_id: str = job.id) -> bool:
                return (await store.get_job(job_id)).status.is_terminal

            await _until(ended, 20)
            stop.set()
            await task
        return good.id, bad.id

    with caplog.at_level(logging.INFO, logger="serve_app.jobs.runner"):
        good, bad = asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "serve_app.jobs.runner"]
    assert any(line.startswith(f"job {good}: claimed by r, attempt 1 of 3") for line in lines)
    assert f"job {good}: pipeline started (Ray Data dataset {good})" in lines
    assert any(line.startswith(f"job {good}: completed in") for line in lines)
    assert any(
        line.startswith(f"job {bad}: failed after") and "invalid_input: not a video" in line
        for line in lines
    )


def test_pipeline_dataset_is_named_by_the_job_id(tmp_path: Path):
    assert pipeline_config(Settings(), tmp_path, "job_abc").dataset_name == "job_abc"


def test_job_object_shows_attempts(tmp_path: Path):
    from starlette.testclient import TestClient

    from serve_app.api.app import create_api
    from tests.stored_keys import add_key, bearer

    settings = _settings(tmp_path)
    store = SqliteStore(settings.sqlite_path)
    key, record = add_key(store)

    async def claimed_twice() -> str:
        await store.init()
        job = _job(record.id)
        await store.insert_job(job, time.time())
        await store.claim_next("a", time.time(), 0.01)
        await asyncio.sleep(0.05)
        await store.requeue_expired(time.time(), 3)  # runner "a" died
        await store.claim_next("b", time.time(), 30)
        return job.id

    job_id = asyncio.run(claimed_twice())
    with TestClient(create_api(settings, store)) as client:
        shown = client.get(f"/v2/jobs/{job_id}", headers=bearer(key))
    assert shown.status_code == 200 and shown.json()["attempts"] == 2
