"""The dashboard's drag-and-drop uploads in process (no Ray): the API's tus handlers
behind the session and a CSRF header, then a job from the upload."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_client import csrf_of as _csrf
from dashboard_client import dashboard_client, dashboard_store
from dashboard_client import signed_in as _signed_in
from starlette.testclient import TestClient
from stored_keys import add_key, bearer

from serve_app.jobs.sqlite_store import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return dashboard_store(tmp_path)


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore) -> Iterator[TestClient]:
    yield from dashboard_client(tmp_path, store)


def test_upload_through_the_session_then_submit_it(client: TestClient, store: SqliteStore):
    key, _ = add_key(store)
    other, _ = add_key(store)
    csrf = _signed_in(client, key)
    payload = bytes(range(256)) * 40
    tus = {
        "Tus-Resumable": "1.0.0",
        "Upload-Length": str(len(payload)),
        "Upload-Metadata": "filename " + base64.b64encode("clip é.mp4".encode()).decode(),
    }
    assert client.post("/dashboard/api/uploads", headers=tus).status_code == 403  # no CSRF
    assert (
        client.post(
            "/dashboard/api/uploads",
            headers={**tus, "X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        ).status_code
        == 403
    )
    created = client.post("/dashboard/api/uploads", headers={**tus, "X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    upload = created.json()
    assert upload["filename"] == "clip é.mp4" and upload["offset"] == 0
    url = f"/dashboard/api/uploads/{upload['id']}"
    chunk = {
        "X-CSRF-Token": csrf,
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
    }
    first = client.patch(url, content=payload[:4000], headers={**chunk, "Upload-Offset": "0"})
    assert first.status_code == 204 and first.headers["upload-offset"] == "4000"
    # A resend from a stale offset is the API's 409; HEAD says where to resume.
    assert (
        client.patch(url, content=payload[:10], headers={**chunk, "Upload-Offset": "0"}).status_code
        == 409
    )
    assert client.head(url, headers={"X-CSRF-Token": csrf}).headers["upload-offset"] == "4000"
    rest = client.patch(url, content=payload[4000:], headers={**chunk, "Upload-Offset": "4000"})
    assert rest.status_code == 204
    # The same upload seen through the API with the key: one implementation.
    assert (
        client.get(f"/v2/uploads/{upload['id']}", headers=bearer(key)).json()["status"]
        == "complete"
    )
    assert client.get(f"/v2/uploads/{upload['id']}", headers=bearer(other)).status_code == 404

    page = client.get("/dashboard/jobs").text
    submitted = client.post(
        "/dashboard/jobs",
        data={
            "csrf": _csrf(page),
            "idempotency": "drop-1",
            "video_url": "",
            "preset": "general",
            "engine": "classical",
            "upload_id": upload["id"],
        },
    )
    assert submitted.status_code == 303, submitted.text
    job_id = submitted.headers["location"].rsplit("/", 1)[1]
    job = client.get(f"/v2/jobs/{job_id}", headers=bearer(key)).json()
    assert job["input_url"] == f"upload:{upload['id']}" and job["status"] == "queued"


def test_another_keys_upload_is_404_in_the_dashboard(client: TestClient, store: SqliteStore):
    key, _ = add_key(store)
    other, _ = add_key(store)
    upload = client.post("/v2/uploads", json={"size": 10}, headers=bearer(other)).json()
    csrf = _signed_in(client, key)
    assert (
        client.get(
            f"/dashboard/api/uploads/{upload['id']}", headers={"X-CSRF-Token": csrf}
        ).status_code
        == 404
    )
    assert (
        client.patch(
            f"/dashboard/api/uploads/{upload['id']}",
            content=b"0123456789",
            headers={
                "X-CSRF-Token": csrf,
                "Upload-Offset": "0",
                "Tus-Resumable": "1.0.0",
                "Content-Type": "application/offset+octet-stream",
            },
        ).status_code
        == 404
    )
