"""One key must not stall the others (issue 16 item 5): fair claims and queue limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serve_app.access.keys import new_id
from serve_app.api.app import create_api
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from tests.stored_keys import add_key, bearer
from vocabulary import JobStatus

VIDEO = "https://93.184.215.14/raw.mp4"  # a public literal address: no DNS needed


def _job(key_id: str) -> JobRecord:
    return JobRecord(
        id=new_id("job"),
        key_id=key_id,
        status=JobStatus.QUEUED,
        input_url=VIDEO,
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
        engine="classical",
    )


def _quick(job, settings, on_progress, cancel) -> Path:
    output = settings.scratch_dir / job.id / "output.mp4"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"v")
    return output


def test_key_b_starts_before_key_a_s_third_job(tmp_path: Path):
    """Key A queues 50, then key B queues 1: a runner starts B's before A's 3rd."""

    async def scenario() -> tuple[list[JobRecord], JobRecord]:
        store = SqliteStore(tmp_path / "s.db")
        await store.init()
        a_jobs = [(await store.insert_job(_job("key_a"), time.time()))[0] for _ in range(50)]
        b_job, _ = await store.insert_job(_job("key_b"), time.time())
        runner = JobRunner(store, Settings(data_dir=tmp_path, poll_seconds=0.01), process=_quick)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        deadline = time.monotonic() + 60
        while not (await store.get_job(b_job.id)).status.is_terminal:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "key B's job never ran"
            await asyncio.sleep(0.05)
        # B's may end before A's next one is claimed: wait for that one too, or the
        # turns below would see only two starts (a race, not unfairness).
        while (await store.get_job(a_jobs[1].id)).started_at is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "key A's second job never ran"
            await asyncio.sleep(0.05)
        stop.set()
        await task
        return [await store.get_job(j.id) for j in a_jobs], await store.get_job(b_job.id)  # type: ignore[return-value]

    a_jobs, b_job = asyncio.run(scenario())
    assert b_job.status == JobStatus.COMPLETED
    assert a_jobs[2].started_at is None or b_job.started_at < a_jobs[2].started_at
    started = sorted((j.started_at, j.key_id) for j in [*a_jobs, b_job] if j.started_at)
    assert [key for _, key in started[:3]] == ["key_a", "key_b", "key_a"]  # turns


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(data_dir=tmp_path, max_queued_per_key=3, signing_secret="fair")
    return TestClient(
        create_api(settings, SqliteStore(settings.sqlite_path)), raise_server_exceptions=False
    )


def test_a_key_past_its_queue_limit_gets_429_naming_it(tmp_path: Path, client: TestClient):
    store = SqliteStore(tmp_path / "retroiva.sqlite3")
    flooder, _ = add_key(store)
    other, _ = add_key(store)
    for _ in range(3):
        assert (
            client.post(
                "/v2/enhance", json={"video_url": VIDEO}, headers=bearer(flooder)
            ).status_code
            == 200
        )
    refused = client.post("/v2/enhance", json={"video_url": VIDEO}, headers=bearer(flooder))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "queue_limit_error"
    assert error["param"] == "max_queued_per_key" and "3 queued jobs" in error["message"]
    assert refused.headers["x-ratelimit-remaining"]  # still an authenticated answer
    assert (
        client.post("/v2/enhance", json={"video_url": VIDEO}, headers=bearer(other)).status_code
        == 200
    )  # others unaffected


def test_a_key_s_own_queue_limit_overrides_the_setting(tmp_path: Path, client: TestClient):
    store = SqliteStore(tmp_path / "retroiva.sqlite3")
    key, record = add_key(store)
    asyncio.run(store.set_key_limits(record.id, 5, None))
    codes = [
        client.post("/v2/enhance", json={"video_url": VIDEO}, headers=bearer(key)).status_code
        for _ in range(6)
    ]
    assert codes == [200] * 5 + [429]
