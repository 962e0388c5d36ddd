"""Every endpoint and error of the v2 API, in process (no Ray): status, headers, bodies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from stored_keys import add_key, bearer

from serve_app.api.app import create_api
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

VIDEO = "https://93.184.215.14/raw.mp4"  # a public literal address: no DNS needed


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.sqlite3")


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, default_rate_limit=1000)
    with TestClient(create_api(settings, store), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def make_key(store: SqliteStore) -> Callable[..., dict[str, str]]:
    def make(rate_limit: int = 1000) -> dict[str, str]:
        key, record = add_key(store, rate_limit)
        return {**bearer(key), "X-Key-Id": record.id}

    return make


def _enhance(client: TestClient, auth: dict[str, str], **body: object):
    return client.post("/v2/enhance", json={"video_url": VIDEO, **body}, headers=auth)


def _assert_error(response, status: int, type_: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_
    assert error["message"]
    assert error.get("param") == param
    assert response.headers["x-request-id"]
    assert "Traceback" not in response.text


def test_health_and_openapi_need_no_key(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}
    document = client.get("/v2/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {
        "/v2/enhance",
        "/v2/jobs",
        "/v2/jobs/{job_id}",
        "/v2/jobs/{job_id}/cancel",
        "/v2/jobs/{job_id}/download",
    } <= set(document["paths"])
    assert {"EnhanceBody", "Job", "JobList", "ErrorBody"} <= set(document["components"]["schemas"])


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer ", "Bearer sk_live_wrong"])
def test_bad_credentials_are_401(client: TestClient, header: str | None):
    headers = {"Authorization": header} if header is not None else {}
    response = client.get("/v2/jobs", headers=headers)
    _assert_error(response, 401, "authentication_error")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_is_401(client: TestClient, make_key, store: SqliteStore):
    auth = make_key()
    assert client.get("/v2/jobs", headers=auth).status_code == 200
    asyncio.run(store.revoke_key(auth["X-Key-Id"], time.time()))
    _assert_error(client.get("/v2/jobs", headers=auth), 401, "authentication_error")


def test_create_job_returns_the_job_object(client: TestClient, make_key):
    response = _enhance(
        client, make_key(), preset="cinematic", webhook_url="https://93.184.215.14/hook"
    )
    assert response.status_code == 200
    job = response.json()
    assert job["id"].startswith("job_") and len(job["id"]) > 20
    assert (job["status"], job["input_url"], job["output_url"]) == ("queued", VIDEO, None)
    assert (job["preset"], job["upscale_factor"], job["progress"]) == ("cinematic", 2, 0.0)
    assert job["engine"] == "neural"
    classical = _enhance(client, make_key(), engine="classical").json()
    assert classical["engine"] == "classical"
    assert abs(job["created_at"] - time.time()) < 5
    assert job["completed_at"] is None and job["error"] is None
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert response.headers[header].isdigit()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"video_url": None}, "video_url"),
        ({"video_url": "ftp://example.com/a.mp4"}, "video_url"),
        ({"video_url": "not a url"}, "video_url"),
        ({"preset": "vivid"}, "preset"),
        ({"upscale_factor": 5}, "upscale_factor"),
        ({"upscale_factor": "two"}, "upscale_factor"),
        ({"engine": "tensorrt"}, "engine"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
        ({"colour": "red"}, "colour"),
        ({"video_url": "http://127.0.0.1/a.mp4"}, "video_url"),
        ({"video_url": "http://10.1.2.3/a.mp4"}, "video_url"),
        ({"video_url": "http://169.254.169.254/latest/meta-data"}, "video_url"),
        ({"video_url": "http://[::1]/a.mp4"}, "video_url"),
        ({"webhook_url": "http://192.168.0.5/hook"}, "webhook_url"),
    ],
)
def test_invalid_bodies_name_the_parameter(client: TestClient, make_key, body, param):
    payload = {"video_url": VIDEO, **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    response = client.post("/v2/enhance", json=payload, headers=make_key())
    _assert_error(response, 400, "invalid_request_error", param)
    assert response.headers["x-ratelimit-limit"]


def test_malformed_requests_are_4xx_not_500(client: TestClient, make_key):
    auth = make_key()
    bad_json = client.post(
        "/v2/enhance", content=b"{nope", headers={**auth, "Content-Type": "application/json"}
    )
    _assert_error(bad_json, 400, "invalid_request_error")
    wrong_type = client.post(
        "/v2/enhance", content=b"video_url=x", headers={**auth, "Content-Type": "text/plain"}
    )
    _assert_error(wrong_type, 400, "invalid_request_error")
    not_object = client.post("/v2/enhance", json=[1, 2], headers=auth)
    _assert_error(not_object, 400, "invalid_request_error")
    huge = client.post("/v2/enhance", json={"video_url": VIDEO, "pad": "x" * 70_000}, headers=auth)
    _assert_error(huge, 413, "invalid_request_error")


def test_idempotency_key_replays_or_conflicts(client: TestClient, make_key):
    auth = {**make_key(), "Idempotency-Key": "order-42"}
    first = _enhance(client, auth, preset="archive")
    again = _enhance(client, auth, preset="archive")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    _assert_error(_enhance(client, auth, preset="social"), 409, "conflict_error", "Idempotency-Key")
    other_key = {**make_key(), "Idempotency-Key": "order-42"}
    assert _enhance(client, other_key, preset="archive").json()["id"] != first.json()["id"]


def test_jobs_of_another_key_are_404(client: TestClient, make_key):
    mine, theirs = make_key(), make_key()
    job_id = _enhance(client, mine).json()["id"]
    assert client.get(f"/v2/jobs/{job_id}", headers=mine).json()["id"] == job_id
    for path in (f"/v2/jobs/{job_id}", f"/v2/jobs/{job_id}/download"):
        _assert_error(client.get(path, headers=theirs), 404, "not_found_error", "job_id")
    _assert_error(
        client.post(f"/v2/jobs/{job_id}/cancel", headers=theirs), 404, "not_found_error", "job_id"
    )
    _assert_error(client.get("/v2/jobs/job_nope", headers=mine), 404, "not_found_error", "job_id")
    assert client.get("/v2/jobs", headers=theirs).json()["data"] == []


def test_pagination_has_no_duplicates_or_gaps(client: TestClient, make_key):
    auth = make_key()
    created = [_enhance(client, auth).json()["id"] for _ in range(23)]
    seen, params = [], {"limit": "10"}
    while True:
        page = client.get("/v2/jobs", params=params, headers=auth).json()
        seen += [job["id"] for job in page["data"]]
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        assert page["next_cursor"] == page["data"][-1]["id"]
        params = {"limit": "10", "starting_after": page["next_cursor"]}
    assert seen == created[::-1]  # newest first, each exactly once
    assert len(client.get("/v2/jobs", headers=auth).json()["data"]) == 20  # default limit


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"starting_after": "job_unknown"}, "starting_after"),
    ],
)
def test_bad_list_parameters(client: TestClient, make_key, params, param):
    _assert_error(
        client.get("/v2/jobs", params=params, headers=make_key()),
        400,
        "invalid_request_error",
        param,
    )


def test_cancel_queued_job_and_download_rules(client: TestClient, make_key, store):
    auth = make_key()
    job_id = _enhance(client, auth).json()["id"]
    _assert_error(client.get(f"/v2/jobs/{job_id}/download", headers=auth), 409, "conflict_error")
    canceled = client.post(f"/v2/jobs/{job_id}/cancel", headers=auth).json()
    assert canceled["status"] == "canceled" and canceled["completed_at"] is not None
    assert client.post(f"/v2/jobs/{job_id}/cancel", headers=auth).json() == canceled
    assert asyncio.run(store.claim_next("runner", time.time(), 30)) is None  # never starts

    done_id = _enhance(client, auth).json()["id"]
    job = asyncio.run(store.claim_next("runner", time.time(), 30))
    assert job.id == done_id
    asyncio.run(
        store.finish(
            done_id, "runner", JobStatus.COMPLETED, time.time(), output_path=f"{done_id}.mp4"
        )
    )
    completed = client.post(f"/v2/jobs/{done_id}/cancel", headers=auth).json()
    assert completed["status"] == "completed" and completed["progress"] == 1.0


def _completed_job(
    client: TestClient,
    store: SqliteStore,
    auth: dict[str, str],
    tmp_path: Path,
    content: bytes,
    finished: float | None = None,
) -> str:
    job_id = _enhance(client, auth).json()["id"]
    assert asyncio.run(store.claim_next("runner", time.time(), 30)).id == job_id
    (tmp_path / "outputs").mkdir(exist_ok=True)
    (tmp_path / "outputs" / f"{job_id}.mp4").write_bytes(content)
    asyncio.run(
        store.finish(
            job_id,
            "runner",
            JobStatus.COMPLETED,
            finished or time.time(),
            output_path=f"{job_id}.mp4",
        )
    )
    return job_id


def test_signed_download_with_ranges(client: TestClient, make_key, store, tmp_path: Path):
    auth = make_key()
    content = bytes(range(256)) * 40
    finished = time.time() - 3600
    job_id = _completed_job(client, store, auth, tmp_path, content, finished)
    download = client.get(f"/v2/jobs/{job_id}/download", headers=auth)
    assert download.status_code == 200
    link = download.json()
    assert link["expires_at"] == int(finished + 24 * 3600)  # 24 h after completion
    assert client.get(f"/v2/jobs/{job_id}", headers=auth).json()["output_url"] == link["url"]
    whole = client.get(link["url"])  # no API key: the signature is the credential
    assert (whole.status_code, whole.content) == (200, content)
    assert whole.headers["content-type"] == "video/mp4"
    part = client.get(link["url"], headers={"Range": "bytes=100-199"})
    assert (part.status_code, part.content) == (206, content[100:200])
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"


def test_tampered_and_expired_links_are_403(client: TestClient, make_key, store, tmp_path: Path):
    from serve_app.delivery.signing import load_signing_secret, sign_path

    auth = make_key()
    job_id = _completed_job(client, store, auth, tmp_path, b"x" * 100)
    url = client.get(f"/v2/jobs/{job_id}/download", headers=auth).json()["url"]
    base, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    tampered_sig = params["signature"][:-1] + ("0" if params["signature"][-1] != "0" else "1")
    for bad in (
        f"{base}?expires={params['expires']}&signature={tampered_sig}",
        f"{base}?expires={int(params['expires']) + 60}&signature={params['signature']}",
        f"{base.replace(job_id, 'job_other')}?{query}",
        f"{base}?expires={params['expires']}",
        f"{base}?expires={params['expires']}&signature=%C2%80",
    ):  # was a 500
        _assert_error(client.get(bad), 403, "forbidden_error")
    secret = load_signing_secret(None, tmp_path)
    path = f"/v2/files/{job_id}.mp4"
    past = int(time.time()) - 10
    expired = f"{path}?expires={past}&signature={sign_path(secret, path, past)}"
    _assert_error(client.get(expired), 403, "forbidden_error")


def test_after_retention_download_is_410(client: TestClient, make_key, store, tmp_path: Path):
    auth = make_key()
    old = time.time() - 25 * 3600
    job_id = _completed_job(client, store, auth, tmp_path, b"old", old)
    assert client.get(f"/v2/jobs/{job_id}", headers=auth).json()["output_url"] is None
    _assert_error(client.get(f"/v2/jobs/{job_id}/download", headers=auth), 410, "gone_error")


def test_after_the_reaper_runs_links_are_410_and_the_file_is_gone(
    client: TestClient, make_key, store, tmp_path: Path
):
    from serve_app.delivery.output_storage import LocalStorage
    from serve_app.delivery.signing import load_signing_secret
    from serve_app.jobs.runner import JobRunner

    auth = make_key()
    job_id = _completed_job(client, store, auth, tmp_path, b"video", time.time() - 7200)
    url = client.get(f"/v2/jobs/{job_id}/download", headers=auth).json()["url"]
    assert client.get(url).status_code == 200
    reaper = JobRunner(
        store,
        Settings(data_dir=tmp_path, retention_seconds=3600),
        storage=LocalStorage(tmp_path / "outputs", load_signing_secret(None, tmp_path)),
    )
    assert asyncio.run(reaper.reap()) == 1
    assert not (tmp_path / "outputs" / f"{job_id}.mp4").exists()
    _assert_error(client.get(url), 410, "gone_error")
    _assert_error(client.get(f"/v2/jobs/{job_id}/download", headers=auth), 410, "gone_error")
    job = client.get(f"/v2/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["output_url"]) == ("completed", None)


def test_rate_limit_is_429_with_retry_after(client: TestClient, make_key):
    auth = make_key(rate_limit=3)
    remaining = [
        client.get("/v2/jobs", headers=auth).headers["x-ratelimit-remaining"] for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]
    limited = client.get("/v2/jobs", headers=auth)
    _assert_error(limited, 429, "rate_limit_error")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-ratelimit-limit"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) > time.time()


def test_unknown_routes_and_methods_use_the_error_body(client: TestClient, make_key):
    _assert_error(client.get("/v3/anything"), 404, "not_found_error")
    _assert_error(client.delete("/v2/jobs"), 405, "invalid_request_error")


def test_settings_survive_the_trip_through_replica_environments(monkeypatch):
    from serve_app.deployments import settings_env

    settings = Settings(
        private_url_allowlist=("videos.test:8080",),
        allow_private_urls=True,
        chunk_frames=12,
        data_dir=Path("/srv/retroiva"),
    )
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


class _BrokenStore(SqliteStore):
    async def key_by_digest(self, digest: str):
        raise RuntimeError("disk on fire: sk_live_secret-in-message")


def test_unexpected_errors_are_500_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    app = create_api(Settings(data_dir=tmp_path), _BrokenStore(tmp_path / "s.db"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v2/jobs", headers={"Authorization": "Bearer sk_live_x"})
    _assert_error(response, 500, "api_error")
    assert "fire" not in response.text and "sk_live" not in response.text
    request_id = response.headers["x-request-id"]
    assert any(request_id in r.getMessage() for r in caplog.records)


def test_range_errors_use_the_json_error_format(
    client: TestClient, make_key, store, tmp_path: Path
):
    auth = make_key()
    job_id = _completed_job(client, store, auth, tmp_path, b"x" * 1000)
    url = client.get(f"/v2/jobs/{job_id}/download", headers=auth).json()["url"]
    past_the_end = client.get(url, headers={"Range": "bytes=5000-6000"})
    _assert_error(past_the_end, 416, "invalid_request_error", "Range")
    assert past_the_end.headers["content-range"] == "bytes */1000"
    for malformed in ("bytes=5-1", "pages=1-2", "bytes", "bytes=x-y"):
        _assert_error(
            client.get(url, headers={"Range": malformed}), 400, "invalid_request_error", "Range"
        )
    assert client.get(url, headers={"Range": "bytes=10-19"}).content == b"x" * 10


@pytest.mark.parametrize("value", [True, 2.0, "2", 2.5, "two"])
def test_upscale_factor_is_a_json_integer(client: TestClient, make_key, value: object):
    _assert_error(
        _enhance(client, make_key(), upscale_factor=value),
        400,
        "invalid_request_error",
        "upscale_factor",
    )


# Every IPv6 form the attack got through, in both URL fields (refused at submission).
_EMBEDDED_PRIVATE = [
    "::127.0.0.1",
    "::7f00:1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "::ffff:0:7f00:1",
    "fec0::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]


@pytest.mark.parametrize("field", ["video_url", "webhook_url"])
@pytest.mark.parametrize("address", _EMBEDDED_PRIVATE)
def test_ipv6_forms_embedding_private_ipv4_are_refused(
    client: TestClient, make_key, field: str, address: str
):
    response = _enhance(client, make_key(), **{field: f"http://[{address}]:8080/x"})
    _assert_error(response, 400, "invalid_request_error", field)
    assert "non-public" in response.json()["error"]["message"]
