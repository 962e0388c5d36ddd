"""What revoking a key does: its queued and running jobs are canceled, its webhook
events are not sent, and download links already handed out work until they expire."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pipelines.progress import CancelToken
from serve_app.access.keys import new_id
from serve_app.api.app import create_api
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from tests.stored_keys import add_key, bearer
from vocabulary import JobStatus


class _Counting(http.server.BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self) -> None:
        _Counting.received.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Counting.received.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()


def _until_canceled(
    job: JobRecord, settings: Settings, on_progress: object, cancel: CancelToken
) -> Path:
    while not cancel.wait(0.05):
        pass
    cancel.raise_if_canceled()
    raise AssertionError("unreachable")


def test_revoking_a_key_stops_its_jobs_and_webhooks_but_not_its_links(
    tmp_path: Path, receiver: str
):
    settings = Settings(
        data_dir=tmp_path,
        poll_seconds=0.05,
        allow_private_urls=True,
        runner_concurrency=1,
        webhook_retry_base_seconds=0.05,
    )
    store = SqliteStore(settings.sqlite_path)
    key, record = add_key(store)

    def job(status: JobStatus = JobStatus.QUEUED) -> JobRecord:
        return JobRecord(
            id=new_id("job"),
            key_id=record.id,
            status=status,
            input_url="http://127.0.0.1:9/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=time.time(),
            created_seq=time.time_ns(),
            webhook_url=receiver,
        )

    with TestClient(create_api(settings, store)) as client:
        # A finished job with an output, and the link its owner was given.
        done = job()
        asyncio.run(store.insert_job(done, time.time()))
        asyncio.run(store.claim_next("runner", time.time(), 30))
        (tmp_path / "outputs").mkdir()
        (tmp_path / "outputs" / f"{done.id}.mp4").write_bytes(b"video" * 100)
        asyncio.run(
            store.finish(
                done.id, "runner", JobStatus.COMPLETED, time.time(), output_path=f"{done.id}.mp4"
            )
        )
        link = client.get(f"/v2/jobs/{done.id}/download", headers=bearer(key)).json()["url"]

        async def scenario() -> tuple[JobRecord, JobRecord, float]:
            running, queued = job(), job()
            await store.insert_job(running, time.time())
            await store.insert_job(queued, time.time())
            runner = JobRunner(store, settings, process=_until_canceled)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            try:
                while (await store.get_job(running.id)).status != JobStatus.PROCESSING:
                    await asyncio.sleep(0.05)
                # The finished job's event has gone out: the key was live then.
                while (await store.get_job(done.id)).webhook_status != "delivered":
                    await asyncio.sleep(0.05)
                assert await store.revoke_key(record.id, time.time())
                revoked = time.monotonic()
                while True:
                    rows = [await store.get_job(j.id) for j in (running, queued)]
                    if all(r.webhook_status == "failed" for r in rows):
                        return rows[0], rows[1], time.monotonic() - revoked
                    assert time.monotonic() - revoked < 10, rows
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task

        running, queued, took = asyncio.run(scenario())
        for ended in (running, queued):
            assert ended.status == JobStatus.CANCELED
            assert ended.error_type == "key_revoked"
        assert queued.started_at is not None and queued.progress == 0  # never ran
        assert took < 4
        assert _Counting.received == ["/hooks"]  # only the finished job's event
        attempts = asyncio.run(store.webhook_attempts(queued.id))
        assert [a.error for a in attempts] == ["refused: the job's API key was revoked"]
        # The key itself is refused; the link handed out before still downloads.
        assert client.get("/v2/jobs", headers=bearer(key)).status_code == 401
        download = client.get(link)
        assert (download.status_code, download.content) == (200, b"video" * 100)
