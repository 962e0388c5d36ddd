"""The dashboard over issue 17's webhook API: deliveries, redelivery and secret
rotation, in process (no Ray), through the API's own handlers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_client import ADMIN, WEBHOOK, dashboard_client, dashboard_store
from dashboard_client import signed_in as _signed_in
from starlette.testclient import TestClient
from stored_keys import add_key, bearer

from serve_app.access.keys import digest_key
from serve_app.jobs.records import WebhookAttempt
from serve_app.jobs.sqlite_store import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return dashboard_store(tmp_path)


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore) -> Iterator[TestClient]:
    yield from dashboard_client(tmp_path, store)


def test_deliveries_redeliver_and_rotation(client: TestClient, store: SqliteStore):
    key, _ = add_key(store)
    job_id = client.post(
        "/v2/enhance",
        headers=bearer(key),
        json={"video_url": "https://93.184.215.14/raw.mp4", "webhook_url": WEBHOOK},
    ).json()["id"]
    assert client.post(f"/v2/jobs/{job_id}/cancel", headers=bearer(key)).status_code == 200
    job = asyncio.run(store.get_job(job_id))
    assert job is not None and job.webhook_status == "pending"
    asyncio.run(
        store.record_webhook_attempt(
            WebhookAttempt(job_id, 1, time.time(), 503, "HTTP 503", 42),
            status="failed",
            next_at=None,
            body="{}",
        )
    )

    csrf = _signed_in(client, key)
    page = client.get(f"/dashboard/jobs/{job_id}")
    assert page.status_code == 200
    deliveries = page.text[page.text.index('id="deliveries"') :]
    assert ">503<" in deliveries and "42 ms" in deliveries
    assert 'id="delivery-status">failed<' in page.text
    redeliver = f"/dashboard/jobs/{job_id}/events/{job.event_id}/redeliver"
    assert client.post(redeliver, data={}).status_code == 403  # no CSRF token
    assert client.post(redeliver, data={"csrf": csrf}).status_code == 303
    events = client.get(f"/v2/jobs/{job_id}/events", headers=bearer(key)).json()["data"]
    assert events[0]["delivery_status"] == "pending"  # queued for delivery again
    # Still being delivered: the API's 409, on the dashboard's error page.
    assert client.post(redeliver, data={"csrf": csrf}).status_code == 409

    rotated = client.post("/dashboard/account/webhook-secret", data={"csrf": csrf})
    assert rotated.status_code == 200
    secret = re.search(r'id="new-webhook-secret">(whsec_[^<]+)<', rotated.text).group(1)
    stored = asyncio.run(store.key_by_digest(digest_key(key)))
    assert stored is not None and stored.webhook_secret == secret
    assert secret not in client.get("/dashboard/account").text  # shown once


def test_operator_rotation_keeps_the_previous_secret_for_the_overlap(
    client: TestClient, store: SqliteStore
):
    _, record = add_key(store)
    csrf = _signed_in(client, ADMIN)
    rotated = client.post(
        f"/dashboard/operator/keys/{record.id}/rotate-webhook-secret", data={"csrf": csrf}
    )
    assert rotated.status_code == 200
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', rotated.text).group(1)
    stored = asyncio.run(store.get_key(record.id))
    assert stored is not None and stored.webhook_secret == secret
    assert stored.previous_webhook_secret == record.webhook_secret
