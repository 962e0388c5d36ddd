"""The web dashboard in process (no Ray): sign-in, sessions, CSRF, tenancy, operator keys.

The browser test (tests/test_dashboard_browser.py) drives the same pages in Chromium
against the real service; these pin the security rules one by one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from stored_keys import add_key, bearer

from serve_app.api.app import create_api
from serve_app.dashboard.sessions import SessionSigner, load_admin_token
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

VIDEO = "https://93.184.215.14/raw.mp4"  # a public literal address: no DNS needed
ADMIN = "adm_test-admin-token-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.sqlite3")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, default_rate_limit=1000, admin_token=ADMIN)


@pytest.fixture
def client(settings: Settings, store: SqliteStore) -> Iterator[TestClient]:
    with TestClient(
        create_api(settings, store), raise_server_exceptions=False, follow_redirects=False
    ) as client:
        yield client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _sign_in(client: TestClient, token: str):
    page = client.get("/dashboard/login")
    assert page.status_code == 200
    return client.post("/dashboard/login", data={"token": token, "csrf": _csrf(page.text)})


def test_key_holder_signs_in_with_a_strict_httponly_cookie_that_is_not_the_key(
    client: TestClient, store: SqliteStore
):
    key, record = add_key(store)
    response = _sign_in(client, key)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/jobs"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("retroiva_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/dashboard/" in cookie and "Max-Age=" in cookie
    assert key not in cookie and key[8:20] not in cookie
    jobs = client.get("/dashboard/jobs")
    assert jobs.status_code == 200
    assert record.prefix in jobs.text
    assert "default-src 'self'" in jobs.headers["content-security-policy"]
    assert jobs.headers["cache-control"] == "no-store"
    # Page loads count against the key like API calls, and the page says what is left.
    assert re.search(r'id="rate-remaining">99[0-9]<', jobs.text)


def test_bad_key_and_missing_csrf_are_refused(client: TestClient, store: SqliteStore):
    key, _ = add_key(store)
    assert _sign_in(client, "sk_live_wrong").status_code == 401
    assert _sign_in(client, "adm_wrong").status_code == 401
    # No CSRF token (a login-CSRF attempt): refused even with a valid key.
    response = client.post("/dashboard/login", data={"token": key})
    assert response.status_code == 403 and "retroiva_session" not in response.headers.get(
        "set-cookie", ""
    )
    asyncio.run(store.revoke_key(_sign_in_record(store, key), time.time()))
    assert _sign_in(client, key).status_code == 401


def _sign_in_record(store: SqliteStore, key: str) -> str:
    from serve_app.access.keys import digest_key

    record = asyncio.run(store.key_by_digest(digest_key(key)))
    assert record is not None
    return record.id


def test_submit_goes_through_job_intake_with_csrf_and_idempotency(
    client: TestClient, store: SqliteStore
):
    key, _ = add_key(store)
    _sign_in(client, key)
    page = client.get("/dashboard/jobs").text
    form = {
        "video_url": VIDEO,
        "preset": "archive",
        "upscale_factor": "3",
        "engine": "classical",
        "webhook_url": "",
        "idempotency": "form-1",
    }
    assert client.post("/dashboard/jobs", data=form).status_code == 403  # no CSRF token
    assert client.post("/dashboard/jobs", data={**form, "csrf": "0" * 64}).status_code == 403
    assert (
        client.post(
            "/dashboard/jobs",
            data={**form, "csrf": _csrf(page)},
            headers={"Origin": "https://evil.example"},
        ).status_code
        == 403
    )
    assert client.get("/v2/jobs", headers=bearer(key)).json()["data"] == []

    created = client.post("/dashboard/jobs", data={**form, "csrf": _csrf(page)})
    assert created.status_code == 303, created.text
    job_id = created.headers["location"].rsplit("/", 1)[1]
    job = client.get(f"/v2/jobs/{job_id}", headers=bearer(key)).json()
    assert (job["status"], job["preset"], job["upscale_factor"], job["engine"]) == (
        "queued",
        "archive",
        3,
        "classical",
    )
    again = client.post("/dashboard/jobs", data={**form, "csrf": _csrf(page)})
    assert again.headers["location"] == created.headers["location"]  # resubmitted form
    assert len(client.get("/v2/jobs", headers=bearer(key)).json()["data"]) == 1
    # The API's own validation and message, shown on the page.
    bad = client.post(
        "/dashboard/jobs",
        data={**form, "idempotency": "form-2", "video_url": "ftp://x", "csrf": _csrf(page)},
    )
    assert bad.status_code == 400 and "video_url must be an http or https URL" in bad.text

    page = client.get(f"/dashboard/jobs/{job_id}")
    assert page.status_code == 200 and VIDEO in page.text
    assert client.get(f"/dashboard/api/jobs/{job_id}").json()["status"] == "queued"
    canceled = client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": _csrf(page.text)})
    assert canceled.status_code == 303
    assert client.get(f"/v2/jobs/{job_id}", headers=bearer(key)).json()["status"] == "canceled"


def test_another_keys_job_is_404(client: TestClient, store: SqliteStore):
    mine, _ = add_key(store)
    theirs, _ = add_key(store)
    job_id = client.post("/v2/enhance", json={"video_url": VIDEO}, headers=bearer(theirs)).json()[
        "id"
    ]
    _sign_in(client, mine)
    page = client.get("/dashboard/jobs")
    assert client.get(f"/dashboard/jobs/{job_id}").status_code == 404
    assert client.get(f"/dashboard/api/jobs/{job_id}").status_code == 404
    assert client.get("/dashboard/jobs/job_nope").status_code == 404
    assert (
        client.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": _csrf(page.text)}).status_code
        == 404
    )
    assert client.get(f"/dashboard/jobs?starting_after={job_id}").status_code == 400
    assert job_id not in client.get("/dashboard/api/jobs").text
    assert client.get(f"/v2/jobs/{job_id}", headers=bearer(theirs)).json()["status"] == "queued"


def test_sign_out_roles_and_revocation_end_sessions(client: TestClient, store: SqliteStore):
    key, record = add_key(store)
    _sign_in(client, key)
    assert client.get("/dashboard/operator/keys").status_code == 404  # not the operator
    page = client.get("/dashboard/jobs")
    signed_out = client.post("/dashboard/logout", data={"csrf": _csrf(page.text)})
    assert signed_out.status_code == 303
    assert client.get("/dashboard/jobs").headers["location"] == "/dashboard/login"
    assert client.get("/dashboard/api/jobs").status_code == 401

    _sign_in(client, key)
    assert client.get("/dashboard/jobs").status_code == 200
    asyncio.run(store.revoke_key(record.id, time.time()))
    assert client.get("/dashboard/jobs").status_code == 303  # revoked: signed out at once


def test_sessions_expire_and_cannot_be_forged(monkeypatch: pytest.MonkeyPatch):
    signer = SessionSigner(ADMIN, lifetime_seconds=60)
    cookie, session = signer.issue("key", "key_abc")
    assert signer.verify(cookie) == session
    payload, _, signature = cookie.partition(".")
    assert signer.verify(payload + "." + signature[:-2] + "AA") is None
    assert SessionSigner("adm_other", 60).verify(cookie) is None  # new admin token
    forged = SessionSigner(ADMIN, 60).issue("operator", None)[0]
    assert signer.verify(forged) is not None  # same token, same keys
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 61)
    assert signer.verify(cookie) is None


def test_admin_token_is_generated_once_per_data_dir(tmp_path: Path):
    token, created = load_admin_token(None, tmp_path)
    assert created and token.startswith("adm_") and len(token) > 40
    assert load_admin_token(None, tmp_path) == (token, False)
    assert (tmp_path / "admin.token").stat().st_mode & 0o077 == 0
    assert load_admin_token("adm_set", tmp_path) == ("adm_set", False)


def test_operator_creates_rotates_and_revokes_keys(client: TestClient, store: SqliteStore):
    holder, _ = add_key(store)
    assert _sign_in(client, ADMIN).headers["location"] == "/dashboard/operator/jobs"
    assert client.get("/dashboard/jobs").status_code == 404  # the operator has no jobs page
    page = client.get("/dashboard/operator/keys")
    assert page.status_code == 200
    assert (
        client.post(
            "/dashboard/operator/keys", data={"name": "partner", "rate_limit": "7"}
        ).status_code
        == 403
    )
    created = client.post(
        "/dashboard/operator/keys",
        data={"name": "partner", "rate_limit": "7", "csrf": _csrf(page.text)},
    )
    assert created.status_code == 201
    new_key = re.search(r'id="new-key">(sk_live_[^<]+)<', created.text).group(1)
    secret = re.search(r'id="new-webhook-secret">(whsec_[^<]+)<', created.text).group(1)
    listed = client.get("/v2/jobs", headers=bearer(new_key))
    assert listed.status_code == 200 and listed.headers["x-ratelimit-limit"] == "7"
    keys_page = client.get("/dashboard/operator/keys").text
    assert new_key not in keys_page and secret not in keys_page  # shown once

    new_id = _sign_in_record(store, new_key)
    rotated = client.post(
        f"/dashboard/operator/keys/{new_id}/rotate-webhook-secret", data={"csrf": _csrf(page.text)}
    )
    assert rotated.status_code == 200
    rotated_secret = re.search(r'id="new-secret">(whsec_[^<]+)<', rotated.text).group(1)
    assert asyncio.run(store.get_key(new_id)).webhook_secret == rotated_secret

    revoked = client.post(
        f"/dashboard/operator/keys/{new_id}/revoke", data={"csrf": _csrf(page.text)}
    )
    assert revoked.status_code == 303
    refused = client.get("/v2/jobs", headers=bearer(new_key))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert (
        client.post(
            "/dashboard/operator/keys/key_nope/revoke", data={"csrf": _csrf(page.text)}
        ).status_code
        == 404
    )

    client.post("/v2/enhance", json={"video_url": VIDEO}, headers=bearer(holder))
    jobs = client.get("/dashboard/operator/jobs?status=queued")
    assert jobs.status_code == 200 and VIDEO in jobs.text
    assert re.search(r'id="queue-depth">1<', jobs.text)
    assert VIDEO not in client.get("/dashboard/operator/jobs?status=completed").text
    assert client.get("/dashboard/operator/jobs?status=bogus").status_code == 400

    # A job's phase shows while it processes, not after (its record keeps the last one).
    now = time.time()
    claimed = asyncio.run(store.claim_next("runner-1", now, 30))
    assert claimed is not None
    asyncio.run(store.renew_lease(claimed.id, "runner-1", now, 30, 0.5, None, "assembling"))
    assert "<td>assembling</td>" in client.get("/dashboard/operator/jobs").text
    asyncio.run(store.finish(claimed.id, "runner-1", JobStatus.COMPLETED, now))
    assert "assembling" not in client.get("/dashboard/operator/jobs").text


def test_behind_a_tls_proxy_the_public_origin_is_ours(tmp_path: Path, store: SqliteStore):
    """The browser's Origin is the proxy's (public_url), not the address we listen on."""
    settings = Settings(
        data_dir=tmp_path,
        default_rate_limit=1000,
        admin_token=ADMIN,
        public_url="https://retroiva.example",
    )
    # The proxy speaks HTTPS to browsers, so the cookies are Secure: the test client
    # talks HTTPS too, to the address the server sees (testserver), not the public one.
    with TestClient(
        create_api(settings, store),
        raise_server_exceptions=False,
        follow_redirects=False,
        base_url="https://testserver",
    ) as client:
        key, _ = add_key(store)
        page = client.get("/dashboard/login")
        form = {"token": key, "csrf": _csrf(page.text)}
        for other in ("https://evil.example", "http://retroiva.example"):
            assert (
                client.post("/dashboard/login", data=form, headers={"Origin": other}).status_code
                == 403
            )
        signed_in = client.post(
            "/dashboard/login", data=form, headers={"Origin": "https://retroiva.example"}
        )
        assert signed_in.status_code == 303, signed_in.text


def _ledger(settings: Settings, batch: str, rows: list[tuple[str | None, str]]) -> None:
    import json

    folder = settings.data_dir / "batches"
    folder.mkdir(exist_ok=True)
    ledger = {
        "id": batch,
        "object": "batch",
        "manifest": "/data/reels.csv",
        "key_id": "key_x",
        "created_at": time.time(),
        "finished_at": time.time(),
        "rows": [
            {"line": i + 2, "video_url": VIDEO, "job_id": job_id, "status": status}
            for i, (job_id, status) in enumerate(rows)
        ],
    }
    (folder / f"{batch}.json").write_text(json.dumps(ledger))


def test_operator_sees_a_partial_batch_apart_from_a_failed_one_and_cancels_one(
    client: TestClient, store: SqliteStore, settings: Settings
):
    from serve_app.jobs.records import JobRecord

    _, key = add_key(store)

    def job(job_id: str, status: JobStatus) -> str:
        record = JobRecord(
            id=job_id,
            key_id=key.id,
            status=status,
            input_url=VIDEO,
            preset="general",
            upscale_factor=2,
            created_at=time.time(),
            created_seq=time.time_ns(),
        )
        asyncio.run(store.insert_job(record, time.time()))
        return job_id

    # The ledger says the jobs were queued; the store has moved on (the dashboard reads it).
    _ledger(
        settings,
        "batch_partial",
        [
            (job("job_a", JobStatus.COMPLETED), "queued"),
            (job("job_b", JobStatus.FAILED), "queued"),
            (None, "rejected"),
        ],
    )
    _ledger(
        settings, "batch_failed", [(job("job_c", JobStatus.FAILED), "failed"), (None, "rejected")]
    )
    _ledger(settings, "batch_running", [(job("job_d", JobStatus.QUEUED), "queued")])
    (settings.data_dir / "batches" / "broken.json").write_text("{not json")  # skipped

    assert client.get("/dashboard/api/batches").status_code == 401
    csrf = _sign_in(client, ADMIN) and _csrf(client.get("/dashboard/operator/batches").text)
    listed = client.get("/dashboard/api/batches")
    assert listed.status_code == 200
    outcomes = {b["id"]: b["outcome"] for b in listed.json()["data"]}
    assert outcomes == {
        "batch_partial": "partial",
        "batch_failed": "failed",
        "batch_running": "running",
    }
    partial = next(b for b in listed.json()["data"] if b["id"] == "batch_partial")
    assert partial["counts"] == {"completed": 1, "failed": 1, "rejected": 1}
    page = client.get("/dashboard/operator/batches").text
    assert re.search(r'data-batch="batch_partial".*?data-field="outcome">partial<', page, re.S)

    shown = client.get("/dashboard/operator/batches/batch_running")
    assert shown.status_code == 200 and 'id="cancel-batch"' in shown.text
    assert client.get("/dashboard/operator/batches/nope").status_code == 404
    # CSRF is checked, then every unfinished job of the batch is canceled.
    assert client.post("/dashboard/operator/batches/batch_running/cancel").status_code == 403
    done = client.post("/dashboard/operator/batches/batch_running/cancel", data={"csrf": csrf})
    assert done.status_code == 200 and "Cancel requested for 1 job" in done.text
    assert asyncio.run(store.get_job("job_d")).status == JobStatus.CANCELED
    assert asyncio.run(store.get_job("job_a")).status == JobStatus.COMPLETED
