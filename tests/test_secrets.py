"""Secrets (API keys, webhook secrets, the signing secret, the MongoDB URI) never appear
in logs, error bodies, job objects or the objects' reprs."""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serve_app.api import create_api
from serve_app.keys import new_api_key
from serve_app.runner import JobRunner
from serve_app.settings import Settings
from serve_app.sqlite_store import SqliteStore
from tests.stored_keys import bearer
from tests.test_webhooks import _fake_process

SIGNING_SECRET = "signing-secret-4f1d9a7c2e"
MONGO_PASSWORD = "mongo-password-93b1"


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_secrets_stay_out_of_logs_errors_and_job_objects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, failing_receiver: str):
    settings = Settings(data_dir=tmp_path, signing_secret=SIGNING_SECRET, poll_seconds=0.05,
                        allow_private_urls=True, webhook_retry_base_seconds=0.05,
                        webhook_max_retries=1)
    store = SqliteStore(settings.sqlite_path)
    key, record = new_api_key("secrets", 1000)
    asyncio.run(store.init())
    asyncio.run(store.add_key(record))
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)

    with TestClient(create_api(settings, store)) as client:
        def call(method: str, url: str, **kwargs: object) -> None:
            response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
            seen.append(response.text)
            seen.extend(f"{k}: {v}" for k, v in response.headers.items())

        for video in ("ok.mp4", "broken.mp4"):
            call("POST", "/v2/enhance", headers=bearer(key),
                 json={"video_url": f"http://127.0.0.1:9/{video}",
                       "webhook_url": failing_receiver})
        # Wrong, malformed and near-miss keys: the error must not echo what was sent.
        for presented in (key[:-1] + "x", key + key, f"Basic {key}"):
            call("GET", "/v2/jobs", headers={"Authorization": presented})
            call("GET", "/v2/jobs", headers=bearer(presented))

        async def run_jobs() -> None:
            runner = JobRunner(store, settings, process=_fake_process)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            deadline = time.monotonic() + 30
            while True:
                jobs = await store.recent_jobs(10)
                if len(jobs) == 2 and all(j.webhook_status == "failed" for j in jobs):
                    break
                assert time.monotonic() < deadline, [j.webhook_status for j in jobs]
                await asyncio.sleep(0.05)
            stop.set()
            await task

        asyncio.run(run_jobs())
        listed = client.get("/v2/jobs", headers=bearer(key)).json()["data"]
        assert len(listed) == 2
        for job in listed:
            for path in ("", "/events", "/download"):
                call("GET", f"/v2/jobs/{job['id']}{path}", headers=bearer(key))

    mongo_settings = Settings(data_dir=tmp_path, mongodb_uri=(
        f"mongodb://retroiva:{MONGO_PASSWORD}@127.0.0.1:9/"), signing_secret=SIGNING_SECRET)
    seen += [caplog.text, repr(settings), str(settings), repr(mongo_settings), repr(record)]
    assert "webhook" in caplog.text  # the failed deliveries were logged, and checked
    everything = "\n".join(seen)
    for name, secret in (("API key", key), ("API key digest", record.digest),
                         ("webhook secret", record.webhook_secret),
                         ("signing secret", SIGNING_SECRET), ("MongoDB password",
                                                              MONGO_PASSWORD)):
        assert secret not in everything, f"the {name} leaked"
