"""Secrets (API keys, webhook secrets, the signing secret, the MongoDB URI) never appear
in logs, error bodies, job objects or the objects' reprs; at rest, the data files are
private and webhook secrets are sealed."""

from __future__ import annotations

import asyncio
import http.server
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from starlette.testclient import TestClient

from serve_app.access.keys import new_api_key
from serve_app.access.secret_box import reseal
from serve_app.api.app import create_api
from serve_app.delivery.signing import load_signing_secret
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.jobs.store import open_store
from serve_app.settings import Settings
from tests.stored_keys import bearer
from tests.test_webhooks import _fake_process
from vocabulary import JobStatus

SIGNING_SECRET = "signing-secret-4f1d9a7c2e"
MONGO_PASSWORD = "mongo-password-93b1"
SECRETS_KEY = "S" * 43 + "="  # a well-formed Fernet key; must not leak either


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
    tmp_path: Path, caplog: pytest.LogCaptureFixture, failing_receiver: str
):
    settings = Settings(
        data_dir=tmp_path,
        signing_secret=SIGNING_SECRET,
        poll_seconds=0.05,
        secrets_key=SECRETS_KEY,
        allow_private_urls=True,
        webhook_retry_base_seconds=0.05,
        webhook_max_retries=1,
    )
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
            call(
                "POST",
                "/v2/enhance",
                headers=bearer(key),
                json={"video_url": f"http://127.0.0.1:9/{video}", "webhook_url": failing_receiver},
            )
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

    mongo_settings = Settings(
        data_dir=tmp_path,
        mongodb_uri=(f"mongodb://retroiva:{MONGO_PASSWORD}@127.0.0.1:9/"),
        signing_secret=SIGNING_SECRET,
    )
    seen += [caplog.text, repr(settings), str(settings), repr(mongo_settings), repr(record)]
    assert "webhook" in caplog.text  # the failed deliveries were logged, and checked
    everything = "\n".join(seen)
    for name, secret in (
        ("API key", key),
        ("API key digest", record.digest),
        ("webhook secret", record.webhook_secret),
        ("signing secret", SIGNING_SECRET),
        ("MongoDB password", MONGO_PASSWORD),
        ("secrets key", SECRETS_KEY),
    ):
        assert secret not in everything, f"the {name} leaked"


# At rest: private files, webhook secrets sealed under a key of our own.
def _raw_secrets(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT webhook_secret FROM api_keys")]


def test_data_files_are_private_and_webhook_secrets_sealed(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    store = open_store(settings)
    _, record = new_api_key("sealed", 10)

    async def use() -> ApiKeyRecord | None:
        await store.init()
        await store.add_key(record)
        await store.insert_job(
            JobRecord(
                id="job_1",
                key_id=record.id,
                status=JobStatus.QUEUED,
                input_url="http://x/",
                preset="general",
                upscale_factor=2,
                created_at=0,
                created_seq=0,
            ),
            0,
        )
        return await store.get_key(record.id)

    opened = asyncio.run(use())
    assert opened is not None and opened.webhook_secret == record.webhook_secret
    [stored] = _raw_secrets(settings.sqlite_path)
    assert stored.startswith("fernet:") and record.webhook_secret not in stored
    load_signing_secret(None, settings.data_dir)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in settings.data_dir.iterdir()}
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert modes == {
        "retroiva.sqlite3": 0o600,
        "retroiva.sqlite3-wal": 0o600,
        "retroiva.sqlite3-shm": 0o600,
        "secrets.key": 0o600,
        "signing.key": 0o600,
    }, modes


def test_clear_secrets_from_before_are_sealed_and_keys_rotate(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    old_store = SqliteStore(settings.sqlite_path)  # no sealing: as an earlier version wrote
    _, record = new_api_key("legacy", 10)

    async def legacy() -> None:
        await old_store.init()
        await old_store.add_key(record)
        await old_store.close()

    asyncio.run(legacy())
    assert _raw_secrets(settings.sqlite_path) == [record.webhook_secret]
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    async def open_with(keys: str, *, rotate: bool = False) -> str:
        store = open_store(Settings(data_dir=tmp_path, secrets_key=keys))
        await store.init()
        if rotate:
            assert await reseal(store) == 1
        key = await store.get_key(record.id)
        await store.close()
        assert key is not None
        return key.webhook_secret

    assert asyncio.run(open_with(first)) == record.webhook_secret  # sealed on init
    [sealed_first] = _raw_secrets(settings.sqlite_path)
    assert record.webhook_secret not in sealed_first
    # Rotation: the new key first, the old one after it, then reseal; the old one goes.
    assert asyncio.run(open_with(f"{second},{first}", rotate=True)) == record.webhook_secret
    assert asyncio.run(open_with(second)) == record.webhook_secret
    with pytest.raises(ValueError, match="does not open"):
        asyncio.run(open_with(first))
