"""Issue 17 items 2-3: Standard Webhooks signatures beside ours, secret rotation with an
overlap, redelivery, delivery history and the failed-deliveries list.

The oracle is the ``standardwebhooks`` package from PyPI, the spec's own Python
library, run on what a real receiver on 127.0.0.1 got.  Deliveries are made by the
service's dispatcher; the API runs in process over the same SQLite file.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import itertools
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.testclient import TestClient
from stored_keys import bearer
from typer.testing import CliRunner

from serve_app.access.keys import (
    new_api_key,
    new_id,
    new_webhook_secret,
    rotate_webhook_secret,
    webhook_signing_key,
)
from serve_app.api.app import create_api
from serve_app.api.schemas import job_from_record
from serve_app.delivery.webhooks import WebhookDispatcher, sign, standard_headers
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.store import JobStore, open_store
from serve_app.settings import DEFAULT_WEBHOOK_RETRY_SCHEDULE, Settings
from vocabulary import JobStatus


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every request and answers ``status``."""

    url: str = ""
    status: int = 200
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(
                Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
            )
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield state
    server.shutdown()
    server.server_close()


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "allow_private_urls": True,
        "default_rate_limit": 1000,
        "webhook_retry_schedule": (0.05, 0.05),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def _job_object(job: JobRecord):  # what the runner passes: record -> Job
    return job_from_record(job)


async def _key(store: JobStore, secret: str | None = None) -> tuple[str, ApiKeyRecord]:
    await store.init()
    key, record = new_api_key("hooks", 1000)
    if secret is not None:
        record = ApiKeyRecord(**{**record.__dict__, "webhook_secret": secret})
    await store.add_key(record)
    return key, record


async def _ended_job(
    store: JobStore, key: ApiKeyRecord, url: str, ended_at: float | None = None
) -> JobRecord:
    """A job with a webhook that was canceled while queued: its event is due now."""
    job = JobRecord(
        id=new_id("job"),
        key_id=key.id,
        status=JobStatus.QUEUED,
        input_url="https://93.184.215.14/v.mp4",
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
        webhook_url=url,
    )
    await store.insert_job(job, time.time())
    ended = await store.request_cancel(job.id, ended_at or time.time())
    assert ended is not None and ended.webhook_status == "pending"
    return ended


async def _settle(
    store: JobStore, settings: Settings, job_ids: list[str], timeout: float = 15
) -> list[JobRecord]:
    """Run a dispatcher until every event is delivered or failed."""
    dispatcher = WebhookDispatcher(store, settings, _job_object)
    deadline = time.monotonic() + timeout
    while True:
        await dispatcher.tick()
        await dispatcher.drain()
        jobs = [await store.get_job(j) for j in job_ids]
        if all(j is not None and j.webhook_status in ("delivered", "failed") for j in jobs):
            return jobs  # type: ignore[return-value]
        assert time.monotonic() < deadline, [j.webhook_status for j in jobs if j]
        await asyncio.sleep(0.03)


def _deliver(tmp_path: Path, settings: Settings, job_ids: list[str]) -> list[JobRecord]:
    async def run() -> list[JobRecord]:
        store = open_store(settings)
        try:
            return await _settle(store, settings, job_ids)
        finally:
            await store.close()

    return asyncio.run(run())


def _verifies(secret: str | bytes, request: Received) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


# Secrets
def test_new_secrets_are_standard_base64_of_32_bytes():
    secret = new_webhook_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(raw) == 32 and webhook_signing_key(secret) == raw
    assert Webhook(secret)._whsecret == raw  # the library reads the very same key


def test_secrets_from_before_sign_with_their_own_32_bytes():
    """Old secrets (URL-safe alphabet, no padding) keep working without a rotation."""
    for _ in range(20):
        legacy = "whsec_" + secrets.token_urlsafe(32)
        raw = base64.urlsafe_b64decode(legacy.removeprefix("whsec_") + "=")
        assert len(raw) == 32 and webhook_signing_key(legacy) == raw


# Deliveries
def test_delivery_verifies_with_standardwebhooks_and_keeps_our_signature(
    tmp_path: Path, receiver: Receiver
):
    settings = _settings(tmp_path)

    async def setup() -> tuple[ApiKeyRecord, JobRecord]:
        store = open_store(settings)
        _, key = await _key(store)
        # Ended an hour ago (say the receiver was down): the standard timestamp is the
        # send time, else the library would refuse it as stale.
        job = await _ended_job(store, key, receiver.url, ended_at=time.time() - 3600)
        await store.close()
        return key, job

    key, job = asyncio.run(setup())
    [done] = _deliver(tmp_path, settings, [job.id])
    assert done.webhook_status == "delivered"
    [request] = receiver.requests
    assert Webhook(key.webhook_secret).verify(request.body, request.headers)["id"] == job.event_id
    assert request.headers["webhook-id"] == job.event_id
    assert abs(int(request.headers["webhook-timestamp"]) - request.at) < 5
    assert request.headers["webhook-signature"].count("v1,") == 1
    assert not _verifies(new_webhook_secret(), request)  # a wrong secret does not verify
    # Ours, byte for byte as before: hex HMAC of the body under the whole secret string,
    # and the event's own time.
    assert request.headers["x-retroiva-signature"] == sign(key.webhook_secret, request.body)
    assert request.headers["x-retroiva-event-id"] == job.event_id
    assert int(request.headers["x-retroiva-timestamp"]) == int(done.completed_at or 0)


def test_stale_timestamp_is_rejected_by_the_library():
    key = new_api_key("t", 10)[1]
    body = b'{"id":"evt_1","type":"job.completed"}'
    fresh = standard_headers(key, "evt_1", int(time.time()) - 10, body)
    Webhook(key.webhook_secret).verify(body, fresh)
    stale = standard_headers(key, "evt_1", int(time.time()) - 6 * 60, body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(key.webhook_secret).verify(body, stale)


def test_legacy_secret_delivery_verifies_with_its_bytes(tmp_path: Path, receiver: Receiver):
    settings = _settings(tmp_path)
    legacy = "whsec_" + secrets.token_urlsafe(32)

    async def setup() -> tuple[ApiKeyRecord, JobRecord]:
        store = open_store(settings)
        _, key = await _key(store, legacy)
        job = await _ended_job(store, key, receiver.url)
        await store.close()
        return key, job

    _, job = asyncio.run(setup())
    _deliver(tmp_path, settings, [job.id])
    [request] = receiver.requests
    assert _verifies(base64.urlsafe_b64decode(legacy.removeprefix("whsec_") + "="), request)
    assert request.headers["x-retroiva-signature"] == sign(legacy, request.body)


def test_rotated_secret_both_verify_during_the_overlap(tmp_path: Path, receiver: Receiver):
    settings = _settings(tmp_path)
    store = open_store(settings)
    api_key, key = asyncio.run(_key(store))
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        rotated = client.post("/v2/webhook_secret/rotate", headers=bearer(api_key))
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    new_secret = rotated.json()["webhook_secret"]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", new_secret)
    until = datetime.fromisoformat(rotated.json()["previous_valid_until"])
    assert until.tzinfo is not None
    assert abs(until.timestamp() - (time.time() + 24 * 3600)) < 60  # the default overlap

    async def one_job() -> list[str]:
        s = open_store(settings)
        job = await _ended_job(s, key, receiver.url)
        await s.close()
        return [job.id]

    _deliver(tmp_path, settings, asyncio.run(one_job()))
    [during] = receiver.requests
    assert during.headers["webhook-signature"].count("v1,") == 2
    assert _verifies(new_secret, during) and _verifies(key.webhook_secret, during)
    # Ours signs with the current secret only, as before.
    assert during.headers["x-retroiva-signature"] == sign(new_secret, during.body)

    # Rotating again with no overlap: only the newest secret verifies.
    async def rotate_and_end() -> tuple[str, str]:
        s = open_store(settings)
        result = await rotate_webhook_secret(s, key.id, time.time(), 0)
        assert result is not None
        job = await _ended_job(s, key, receiver.url)
        await s.close()
        return result[0], job.id

    newest, job_id = asyncio.run(rotate_and_end())
    _deliver(tmp_path, settings, [job_id])
    after = receiver.requests[-1]
    assert after.headers["webhook-signature"].count("v1,") == 1
    assert _verifies(newest, after)
    assert not _verifies(new_secret, after) and not _verifies(key.webhook_secret, after)


def test_cli_rotation_keeps_the_previous_secret_for_the_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("RETROIVA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETROIVA_WEBHOOK_SECRET_OVERLAP_SECONDS", "3600")
    runner = CliRunner()
    created = runner.invoke(app_cli(), ["keys", "create", "--name", "ci"])
    assert created.exit_code == 0, created.output
    store = open_store(Settings())
    [before] = asyncio.run(store.list_keys())
    rotated = runner.invoke(app_cli(), ["keys", "rotate-webhook-secret", before.id])
    assert rotated.exit_code == 0, rotated.output
    assert "previous secret also signs deliveries" in rotated.output
    [after] = asyncio.run(store.list_keys())
    assert after.webhook_secret in rotated.output
    assert after.previous_webhook_secret == before.webhook_secret
    assert abs((after.previous_secret_expires_at or 0) - (time.time() + 3600)) < 60


def app_cli():
    from serve_app.cli import app

    return app


# Redelivery and history
def test_redelivery_sends_the_same_event_id_again(tmp_path: Path, receiver: Receiver):
    settings = _settings(tmp_path)
    store = open_store(settings)
    api_key, key = asyncio.run(_key(store))
    other_key, _ = asyncio.run(_key(store))

    async def ended() -> JobRecord:
        s = open_store(settings)
        job = await _ended_job(s, key, receiver.url)
        await s.close()
        return job

    job = asyncio.run(ended())
    redeliver = f"/v2/jobs/{job.id}/events/{job.event_id}/redeliver"
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        # Still pending: nothing to redeliver yet.
        assert client.post(redeliver, headers=bearer(api_key)).status_code == 409
        _deliver(tmp_path, settings, [job.id])
        accepted = client.post(redeliver, headers=bearer(api_key))
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["id"] == job.event_id
        assert accepted.json()["delivery_status"] == "pending"
        assert (
            client.post(
                f"/v2/jobs/{job.id}/events/evt_nope/redeliver", headers=bearer(api_key)
            ).status_code
            == 404
        )
        assert client.post(redeliver, headers=bearer(other_key)).status_code == 404
        _deliver(tmp_path, settings, [job.id])
        events = client.get(f"/v2/jobs/{job.id}/events", headers=bearer(api_key)).json()
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == job.event_id
    assert first.body == second.body  # the frozen body, signed afresh
    assert _verifies(key.webhook_secret, second)
    [event] = events["data"]
    assert (event["id"], event["delivery_status"], event["status"]) == (
        job.event_id,
        "delivered",
        "delivered",
    )
    assert [
        (d["attempt"], d["status_code"], d["redelivery"], d["error"]) for d in event["deliveries"]
    ] == [(1, 200, False, None), (2, 200, True, None)]
    for delivery in event["deliveries"]:
        at = datetime.fromisoformat(delivery["attempted_at"])
        assert at.tzinfo is not None and abs(at.timestamp() - time.time()) < 60
        assert isinstance(delivery["duration_ms"], int) and delivery["duration_ms"] >= 0
    assert len(event["attempts"]) == 2  # the existing field is unchanged


def test_retry_schedule_is_the_setting_and_redelivery_starts_a_new_round(
    tmp_path: Path, receiver: Receiver
):
    receiver.status = 500
    settings = _settings(tmp_path, webhook_retry_schedule=(0.05, 0.1))
    store = open_store(settings)
    api_key, key = asyncio.run(_key(store))

    async def ended() -> JobRecord:
        s = open_store(settings)
        job = await _ended_job(s, key, receiver.url)
        await s.close()
        return job

    job = asyncio.run(ended())
    [failed] = _deliver(tmp_path, settings, [job.id])
    assert failed.webhook_status == "failed" and failed.webhook_attempts == 3  # 1 + 2 retries
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.requests)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.08
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        assert (
            client.post(
                f"/v2/jobs/{job.id}/events/{job.event_id}/redeliver", headers=bearer(api_key)
            ).status_code
            == 202
        )
        [again] = _deliver(tmp_path, settings, [job.id])
        event = client.get(f"/v2/jobs/{job.id}/events", headers=bearer(api_key)).json()["data"][0]
    assert again.webhook_status == "failed" and again.webhook_attempts == 6
    assert [
        (d["attempt"], d["status_code"], d["error"], d["redelivery"]) for d in event["deliveries"]
    ] == [(n, 500, "HTTP 500", n > 3) for n in range(1, 7)]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_default_retry_schedule_ends_before_the_download_link_expires():
    settings = Settings()
    assert settings.retry_schedule == DEFAULT_WEBHOOK_RETRY_SCHEDULE
    longest = (
        1.2 * sum(settings.retry_schedule)
        + (len(settings.retry_schedule) + 1) * settings.webhook_timeout_seconds
    )
    assert 12 * 3600 < longest < settings.retention_seconds
    # The reference's promise: up to 5 retries, with exponential backoff.
    schedule = settings.retry_schedule
    assert len(schedule) == 5
    assert all(b == schedule[1] / schedule[0] * a for a, b in itertools.pairwise(schedule))
    # The legacy knobs still mean what they meant.
    assert Settings(webhook_retry_base_seconds=1).retry_schedule == (1, 2, 4, 8, 16)
    assert Settings(webhook_max_retries=0).retry_schedule == ()


def test_failed_deliveries_are_listed_per_key_and_paginated(tmp_path: Path, receiver: Receiver):
    receiver.status = 500
    settings = _settings(tmp_path, webhook_retry_schedule=())
    store = open_store(settings)
    api_key, key = asyncio.run(_key(store))
    other_api_key, other = asyncio.run(_key(store))

    async def ended(owner: ApiKeyRecord, n: int) -> list[str]:
        s = open_store(settings)
        ids = [(await _ended_job(s, owner, receiver.url)).id for _ in range(n)]
        await s.close()
        return ids

    mine = asyncio.run(ended(key, 3))
    theirs = asyncio.run(ended(other, 1))
    _deliver(tmp_path, settings, mine + theirs)
    receiver.status = 200
    delivered = asyncio.run(ended(key, 1))
    _deliver(tmp_path, settings, delivered)
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        seen: list[dict] = []
        params: dict[str, object] = {"status": "failed", "limit": 2}
        while True:
            page = client.get("/v2/webhook_deliveries", params=params, headers=bearer(api_key))
            assert page.status_code == 200, page.text
            seen += page.json()["data"]
            if not page.json()["has_more"]:
                break
            params["starting_after"] = page.json()["next_cursor"]
        theirs_listed = client.get(
            "/v2/webhook_deliveries?status=failed", headers=bearer(other_api_key)
        ).json()["data"]
        default = client.get("/v2/webhook_deliveries", headers=bearer(api_key)).json()
        bad = client.get("/v2/webhook_deliveries?status=lost", headers=bearer(api_key))
        foreign_cursor = client.get(
            f"/v2/webhook_deliveries?starting_after={theirs_listed[0]['id']}",
            headers=bearer(api_key),
        )
    assert [e["job_id"] for e in seen] == list(reversed(mine))  # newest first, no gaps
    assert all(
        e["delivery_status"] == "failed" and e["deliveries"][0]["status_code"] == 500 for e in seen
    )
    assert [e["job_id"] for e in theirs_listed] == theirs
    assert [e["job_id"] for e in default["data"]] == list(reversed(mine))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    assert foreign_cursor.status_code == 400
    assert foreign_cursor.json()["error"]["param"] == "starting_after"


def test_redelivered_failure_leaves_the_failed_list(tmp_path: Path, receiver: Receiver):
    receiver.status = 500
    settings = _settings(tmp_path, webhook_retry_schedule=())
    store = open_store(settings)
    api_key, key = asyncio.run(_key(store))

    async def ended() -> JobRecord:
        s = open_store(settings)
        job = await _ended_job(s, key, receiver.url)
        await s.close()
        return job

    job = asyncio.run(ended())
    _deliver(tmp_path, settings, [job.id])
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        listed = client.get("/v2/webhook_deliveries", headers=bearer(api_key)).json()
        assert [e["id"] for e in listed["data"]] == [job.event_id]
        receiver.status = 204
        assert (
            client.post(
                f"/v2/jobs/{job.id}/events/{job.event_id}/redeliver", headers=bearer(api_key)
            ).status_code
            == 202
        )
        _deliver(tmp_path, settings, [job.id])
        assert client.get("/v2/webhook_deliveries", headers=bearer(api_key)).json()["data"] == []
        delivered = client.get(
            "/v2/webhook_deliveries?status=delivered", headers=bearer(api_key)
        ).json()["data"]
    assert [e["id"] for e in delivered] == [job.event_id]
    assert delivered[0]["deliveries"][-1]["status_code"] == 204


def test_sqlite_store_from_before_gains_the_webhook_columns(tmp_path: Path):
    """Keys, jobs and attempts written by the previous version read with defaults."""
    import sqlite3

    from serve_app.jobs.sqlite_store import SqliteStore

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT "
        "NULL, digest TEXT UNIQUE NOT NULL, webhook_secret TEXT NOT NULL, rate_limit "
        "INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL, max_queued INTEGER, "
        "max_running INTEGER);"
        "CREATE TABLE webhook_attempts (job_id TEXT NOT NULL, number INTEGER NOT NULL, "
        "at REAL NOT NULL, status_code INTEGER, error TEXT, duration_ms INTEGER NOT NULL, "
        "PRIMARY KEY (job_id, number));"
        "INSERT INTO api_keys VALUES ('key_old', 'old', 'sk_live_abcd', 'd1', 'whsec_x', "
        "10, 1.0, NULL, NULL, NULL);"
        "INSERT INTO webhook_attempts VALUES ('job_old', 1, 2.0, 200, NULL, 5);"
    )
    old.commit()
    old.close()

    async def read() -> tuple[ApiKeyRecord | None, list, bool]:
        store = SqliteStore(path)
        await store.init()
        key = await store.get_key("key_old")
        attempts = await store.webhook_attempts("job_old")
        rotated = await store.rotate_webhook_secret("key_old", "whsec_y", 9.0)
        await store.close()
        return key, attempts, rotated

    key, attempts, rotated = asyncio.run(read())
    assert key is not None and key.previous_webhook_secret is None
    assert [a.redelivery for a in attempts] == [False] and rotated


def test_replicas_get_the_same_retry_schedule():
    """Settings reach Serve replicas as environment variables (settings_env): the
    default schedule must survive that trip, and so must a legacy knob."""
    import os

    from serve_app.deployments import settings_env

    for settings in (
        Settings(),
        Settings(webhook_retry_base_seconds=2),
        Settings(webhook_retry_schedule=(1, 5)),
    ):
        env = settings_env(settings)
        saved = dict(os.environ)
        try:
            os.environ.update(env)
            assert Settings().retry_schedule == settings.retry_schedule
        finally:
            os.environ.clear()
            os.environ.update(saved)
