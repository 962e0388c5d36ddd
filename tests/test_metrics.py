"""The service's custom metrics reach Ray's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from starlette.testclient import TestClient
from stored_keys import add_key, bearer

from pipelines.progress import Progress
from serve_app.access.keys import new_id
from serve_app.api.app import create_api
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

NAMES = [
    "ray_retroiva_jobs",
    "ray_retroiva_queue_depth",
    "ray_retroiva_oldest_queued_job_age_seconds",
    "ray_retroiva_frames_processed_total",
    "ray_retroiva_pipeline_fps",
    "ray_retroiva_webhook_deliveries_total",
    "ray_retroiva_rate_limit_rejections_total",
]


def _process(job, settings, on_progress, cancel) -> Path:
    on_progress(Progress(24, 48, 12.0, 2.0))
    on_progress(Progress(48, 48, 12.0, 0.0))
    output = settings.scratch_dir / job.id / "output.mp4"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"v")
    return output


def test_metrics_are_scrapable(tmp_path: Path, metrics_port: int):
    settings = Settings(
        data_dir=tmp_path, poll_seconds=0.05, allow_private_urls=True, webhook_max_retries=0
    )
    store = SqliteStore(settings.sqlite_path)
    key, record = add_key(store, rate_limit=1)
    with TestClient(create_api(settings, store)) as client:
        assert client.get("/v2/jobs", headers=bearer(key)).status_code == 200
        assert client.get("/v2/jobs", headers=bearer(key)).status_code == 429

    async def run_one_job() -> None:
        job = JobRecord(
            id=new_id("job"),
            key_id=record.id,
            status=JobStatus.QUEUED,
            input_url="http://127.0.0.1:9/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=time.time(),
            created_seq=time.time_ns(),
            webhook_url="http://127.0.0.1:9/hook",
        )  # nothing listens: a failure
        await store.insert_job(job, time.time())
        stop = asyncio.Event()
        runner = JobRunner(store, settings, process=_process)
        task = asyncio.create_task(runner.run(stop))
        while (await store.get_job(job.id)).webhook_status != "failed":
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(run_one_job())
    # Ray exports every few seconds, and a series can appear a flush after its name:
    # wait for every name and for the labels this test produced.
    expected = [f"\n{name}{{" for name in NAMES] + ['outcome="failed"', 'status="completed"']
    deadline = time.monotonic() + 60
    missing = expected
    while missing:
        assert time.monotonic() < deadline, f"never exported: {missing}"
        time.sleep(1)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        missing = [item for item in expected if item not in text]


def test_store_gauges_stay_in_every_scrape(tmp_path: Path, metrics_port: int):
    """Set every few seconds, not once per reap: a scrape never misses them."""
    settings = Settings(data_dir=tmp_path, poll_seconds=0.05)  # reap: every 60 s
    store = SqliteStore(settings.sqlite_path)
    _, record = add_key(store)
    names = ["\nray_retroiva_queue_depth{", "\nray_retroiva_oldest_queued_job_age_seconds{"]

    async def watch() -> list[list[str]]:
        await store.init()
        # A job that stays queued: this runner is told it has no room to claim it.
        queued = JobRecord(
            id=new_id("job"),
            key_id=record.id,
            status=JobStatus.QUEUED,
            input_url="http://127.0.0.1:9/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=time.time() - 120,
            created_seq=time.time_ns(),
        )
        await store.insert_job(queued, time.time())
        runner = JobRunner(store, settings, process=_process)
        runner._room = lambda: False  # type: ignore[method-assign]  # claims nothing
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        scrapes: list[list[str]] = []
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                text = (
                    await asyncio.to_thread(
                        httpx.get, f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                    )
                ).text
                scrapes.append([name for name in names if name not in text])
        finally:
            stop.set()
            await task
        return scrapes

    scrapes = asyncio.run(watch())
    first = next(i for i, missing in enumerate(scrapes) if not missing)
    assert first < 8, scrapes  # exported within ~15 s of the runner starting
    assert all(not missing for missing in scrapes[first:]), scrapes
