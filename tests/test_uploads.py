"""Resumable uploads (tus 1.0) over real HTTP, spoken by a maintained tus client (tuspy),
and jobs made from them: their input, zero retention, and cancel_after deadlines."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from local_http import free_port
from stored_keys import add_key, bearer
from tusclient.client import TusClient

from pipelines.progress import CancelToken
from serve_app.api.app import create_api
from serve_app.delivery.upload_storage import (
    LocalUploadStorage,
    S3UploadStorage,
    UploadOutOfStep,
    UploadStorage,
)
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.jobs.upload_lifecycle import sweep_uploads
from serve_app.settings import Settings

CHUNK = 256 * 1024


@dataclass
class Server:
    base: str
    settings: Settings
    store: SqliteStore
    storage: UploadStorage
    new_key: Callable[[], dict[str, str]]

    def tus(self, auth: dict[str, str]) -> TusClient:
        return TusClient(f"{self.base}/v2/uploads", headers=auth)


def _serve(
    settings: Settings, store: SqliteStore, storage: UploadStorage
) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(settings, store, uploads=storage),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(storage: UploadStorage | None = None, **overrides: Any) -> Server:
        settings = Settings(
            data_dir=tmp_path, default_rate_limit=1000, poll_seconds=0.05, **overrides
        )
        store = SqliteStore(settings.sqlite_path)
        storage = storage or LocalUploadStorage(settings.uploads_dir)
        base, server, thread = _serve(settings, store, storage)
        running.append((server, thread))

        def new_key() -> dict[str, str]:
            key, _ = add_key(store)
            return bearer(key)

        return Server(base, settings, store, storage, new_key)

    yield make
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


def _source(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(size))
    return path


def _upload_id(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def _kill_midway(url: str, auth: dict[str, str], offset: int, body: bytes) -> None:
    """A PATCH that sends half its body and drops the connection."""
    parts = urlsplit(url)
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {auth['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)  # let the server read what was sent before the drop
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _offset(server: Server, url: str, auth: dict[str, str]) -> int:
    response = httpx.head(url, headers={**auth, "Tus-Resumable": "1.0.0"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["upload-offset"])


def test_discovery_says_what_the_server_speaks(server: Server):
    response = httpx.options(f"{server.base}/v2/uploads")
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-extension"] == "creation,expiration,termination"
    assert response.headers["tus-max-size"] == str(server.settings.max_input_bytes)


def test_chunk_sent_twice_and_resume_after_a_killed_connection_is_byte_identical(
    server: Server, tmp_path: Path
):
    auth = server.new_key()
    source = _source(tmp_path, 3 * CHUNK)
    data = source.read_bytes()
    uploader = server.tus(auth).uploader(
        file_path=str(source),
        chunk_size=CHUNK,
        retries=1,
        retry_delay=0,
        metadata={"filename": "clip.mp4"},
    )
    uploader.upload_chunk()
    assert uploader.offset == CHUNK
    # The first chunk again (a client that never saw the answer): refused with 409,
    # which sends tuspy to HEAD for the real offset, and on to the second chunk.
    uploader.offset = 0
    uploader.upload_chunk()
    assert uploader.offset == 2 * CHUNK
    url = uploader.url
    assert _offset(server, url, auth) == 2 * CHUNK

    _kill_midway(url, auth, 2 * CHUNK, data[2 * CHUNK :])
    deadline = time.monotonic() + 5
    while _offset(server, url, auth) == 2 * CHUNK and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = _offset(server, url, auth)
    assert 2 * CHUNK < kept <= 2 * CHUNK + CHUNK // 2  # what arrived was kept

    resumed = server.tus(auth).uploader(file_path=str(source), url=url, chunk_size=CHUNK)
    assert resumed.offset == kept  # tuspy asked HEAD
    resumed.upload()
    upload_id = _upload_id(url)
    assert hashlib.sha256(server.storage.read(upload_id)).digest() == hashlib.sha256(data).digest()
    body = httpx.get(url, headers=auth).json()
    assert {
        k: body[k] for k in ("id", "object", "status", "size", "offset", "filename", "upload_url")
    } == {
        "id": upload_id,
        "object": "upload",
        "status": "complete",
        "size": len(data),
        "offset": len(data),
        "filename": "clip.mp4",
        "upload_url": url,
    }
    created, expires = (datetime.fromisoformat(body[k]) for k in ("created_at", "expires_at"))
    expiry = timedelta(seconds=server.settings.upload_expiry_seconds)
    assert abs(expires - created - expiry) < timedelta(seconds=1)
    assert body["created_at"].endswith("Z") and created.tzinfo is not None


class TransportBroke(Exception):
    """Stands for Ray Serve's TaskCancelledError: what a replica's ``receive`` raises
    when the proxy drops the request mid-body, instead of ``http.disconnect``."""


def test_a_body_that_breaks_off_with_a_foreign_error_keeps_what_arrived(
    server: Server, tmp_path: Path
):
    """The CI failure of session 4: behind Serve the cut PATCH's receive raised Ray's own
    exception, which the handler let through, and the bytes that had arrived were lost."""
    auth = server.new_key()
    source = _source(tmp_path, 2 * CHUNK)
    data = source.read_bytes()
    uploader = server.tus(auth).uploader(file_path=str(source), chunk_size=CHUNK)
    uploader.upload_chunk()
    url = urlsplit(uploader.url)
    app = create_api(server.settings, server.store, uploads=server.storage)
    sent: list[dict[str, Any]] = []
    pieces = [data[CHUNK : CHUNK + 1000], data[CHUNK + 1000 : CHUNK + 3000]]

    async def receive() -> dict[str, Any]:
        if pieces:
            return {"type": "http.request", "body": pieces.pop(0), "more_body": True}
        raise TransportBroke("Task was cancelled.")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"authorization", auth["Authorization"].encode()),
        (b"tus-resumable", b"1.0.0"),
        (b"content-type", b"application/offset+octet-stream"),
        (b"upload-offset", str(CHUNK).encode()),
        (b"content-length", str(CHUNK).encode()),
        (b"host", url.netloc.encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": url.path,
        "raw_path": url.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", url.port),
    }
    asyncio.run(app(scope, receive, send))
    assert _offset(server, uploader.url, auth) == CHUNK + 3000  # both pieces were kept
    resumed = server.tus(auth).uploader(file_path=str(source), url=uploader.url, chunk_size=CHUNK)
    resumed.upload()
    assert server.storage.read(_upload_id(uploader.url)) == data


def test_json_creation_and_tus_errors(make_server: Callable[..., Server]):
    server = make_server(max_input_bytes=1000)
    auth = server.new_key()
    created = httpx.post(
        f"{server.base}/v2/uploads", json={"size": 10, "filename": "a.mp4"}, headers=auth
    )
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    assert created.json()["upload_url"] == url and url.startswith(server.base)
    assert created.headers["tus-resumable"] == "1.0.0" and created.headers["upload-expires"]
    tus = {**auth, "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}

    def patch(body: bytes, offset: int, **headers: str) -> httpx.Response:
        return httpx.patch(
            url, content=body, headers={**tus, "Upload-Offset": str(offset), **headers}
        )

    too_big = httpx.post(
        f"{server.base}/v2/uploads",
        headers={**auth, "Tus-Resumable": "1.0.0", "Upload-Length": "1001"},
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["param"] == "Upload-Length"
    assert patch(b"abc", 5).status_code == 409
    assert patch(b"x" * 11, 0).status_code == 413
    assert patch(b"abc", 0, **{"Content-Type": "application/json"}).status_code == 415
    old = patch(b"abc", 0, **{"Tus-Resumable": "0.2.2"})
    assert old.status_code == 412 and old.headers["tus-version"] == "1.0.0"
    first = patch(b"01234", 0)
    assert (first.status_code, first.headers["upload-offset"]) == (204, "5")
    assert _offset(server, url, auth) == 5

    unfinished = httpx.post(
        f"{server.base}/v2/enhance", json={"upload_id": _upload_id(url)}, headers=auth
    )
    assert unfinished.status_code == 400
    assert unfinished.json()["error"]["param"] == "upload_id"
    both = httpx.post(
        f"{server.base}/v2/enhance",
        headers=auth,
        json={"upload_id": _upload_id(url), "video_url": "https://93.184.215.14/a.mp4"},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "video_url"

    assert httpx.delete(url, headers=tus).status_code == 204
    assert not server.storage.exists(_upload_id(url))
    assert httpx.get(url, headers=auth).status_code == 404


def test_another_keys_upload_is_404_everywhere(server: Server, tmp_path: Path):
    owner, other = server.new_key(), server.new_key()
    uploader = server.tus(owner).uploader(file_path=str(_source(tmp_path, 100)))
    uploader.upload()
    url, upload_id = uploader.url, _upload_id(uploader.url)
    tus = {**other, "Tus-Resumable": "1.0.0"}
    responses = [
        httpx.head(url, headers=tus),
        httpx.get(url, headers=other),
        httpx.patch(
            url,
            content=b"x",
            headers={
                **tus,
                "Upload-Offset": "100",
                "Content-Type": "application/offset+octet-stream",
            },
        ),
        httpx.delete(url, headers=tus),
        httpx.post(f"{server.base}/v2/enhance", json={"upload_id": upload_id}, headers=other),
    ]
    assert [r.status_code for r in responses] == [404] * 5
    assert responses[-1].json()["error"] == {
        "type": "not_found_error",
        "message": f"no such upload: {upload_id}",
        "param": "upload_id",
    }
    assert httpx.get(url, headers=owner).json()["status"] == "complete"
    assert server.storage.exists(upload_id)


def test_an_expired_upload_is_refused_and_its_bytes_are_gone(
    make_server: Callable[..., Server], tmp_path: Path
):
    server = make_server(upload_expiry_seconds=1)
    auth = server.new_key()
    source = _source(tmp_path, 2 * CHUNK)
    unfinished = server.tus(auth).uploader(file_path=str(source), chunk_size=CHUNK)
    unfinished.upload_chunk()
    finished = server.tus(auth).uploader(file_path=str(source), chunk_size=CHUNK)
    finished.upload()
    ids = [_upload_id(unfinished.url), _upload_id(finished.url)]
    assert all(server.storage.exists(i) for i in ids)
    time.sleep(1.2)

    head = httpx.head(unfinished.url, headers={**auth, "Tus-Resumable": "1.0.0"})
    assert head.status_code == 410
    assert not server.storage.exists(ids[0])
    assert httpx.get(unfinished.url, headers=auth).status_code == 404
    enhance = httpx.post(f"{server.base}/v2/enhance", json={"upload_id": ids[1]}, headers=auth)
    assert enhance.status_code == 410, enhance.text
    # Nobody asked about the finished one again: the runner's sweep deletes it.
    assert server.storage.exists(ids[1])
    assert asyncio.run(sweep_uploads(server.store, server.storage, time.time())) == 1
    assert not server.storage.exists(ids[1])
    assert asyncio.run(server.store.get_upload(ids[1])) is None


def _copy_input(job, settings, on_progress, cancel: CancelToken) -> Path:
    """Stand-in pipeline: the output is the input the runner gave it."""
    scratch = settings.scratch_dir / job.id
    output = scratch / "output.mp4"
    output.write_bytes((scratch / "input").read_bytes())
    return output


def _hangs(job, settings, on_progress, cancel: CancelToken) -> Path:
    while not cancel.wait(0.05):
        pass
    cancel.raise_if_canceled()
    raise AssertionError("unreachable")


async def _run_until_ended(
    server: Server, auth: dict[str, str], job_id: str, process: Any, timeout: float = 20
) -> dict[str, Any]:
    """Run a runner (with a stand-in pipeline) until the job ends; the job object."""
    runner = JobRunner(
        SqliteStore(server.settings.sqlite_path),
        server.settings,
        process=process,
        storage=None,
        uploads=server.storage,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = await server.store.get_job(job_id)
            if job is not None and job.status.is_terminal:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{server.base}/v2/jobs/{job_id}", headers=auth)).json()


def test_a_job_from_an_upload_completes_and_the_upload_is_deleted(server: Server, tmp_path: Path):
    auth = server.new_key()
    source = _source(tmp_path, CHUNK + 123)
    uploader = server.tus(auth).uploader(file_path=str(source), chunk_size=CHUNK)
    uploader.upload()
    upload_id = _upload_id(uploader.url)
    created = httpx.post(
        f"{server.base}/v2/enhance",
        headers={**auth, "Idempotency-Key": "k1"},
        json={"upload_id": upload_id, "engine": "classical"},
    )
    assert created.status_code == 200, created.text
    job = created.json()
    assert (job["upload_id"], job["input_url"]) == (upload_id, f"upload:{upload_id}")
    replay = httpx.post(
        f"{server.base}/v2/enhance",
        headers={**auth, "Idempotency-Key": "k1"},
        json={"upload_id": upload_id, "engine": "classical"},
    )
    assert (replay.status_code, replay.json()["id"]) == (200, job["id"])
    reuse = httpx.post(f"{server.base}/v2/enhance", headers=auth, json={"upload_id": upload_id})
    assert reuse.status_code == 400 and reuse.json()["error"]["param"] == "upload_id"
    busy = httpx.delete(uploader.url, headers={**auth, "Tus-Resumable": "1.0.0"})
    assert busy.status_code == 409

    ended = asyncio.run(_run_until_ended(server, auth, job["id"], _copy_input))
    assert ended["status"] == "completed", ended
    output = httpx.get(f"{server.base}/v2/jobs/{job['id']}/download", headers=auth).json()
    assert httpx.get(output["url"]).content == source.read_bytes()  # the upload was the input
    assert not server.storage.exists(upload_id)
    assert asyncio.run(server.store.get_upload(upload_id)) is None
    assert httpx.get(uploader.url, headers=auth).status_code == 404


def test_canceling_a_queued_upload_job_deletes_the_upload(server: Server, tmp_path: Path):
    auth = server.new_key()
    uploader = server.tus(auth).uploader(file_path=str(_source(tmp_path, 500)))
    uploader.upload()
    upload_id = _upload_id(uploader.url)
    job = httpx.post(
        f"{server.base}/v2/enhance", headers=auth, json={"upload_id": upload_id}
    ).json()
    canceled = httpx.post(f"{server.base}/v2/jobs/{job['id']}/cancel", headers=auth).json()
    assert canceled["status"] == "canceled"
    assert not server.storage.exists(upload_id)


def test_cancel_after_ends_a_running_job_with_deadline_exceeded(server: Server):
    auth = server.new_key()
    created = httpx.post(
        f"{server.base}/v2/enhance",
        headers=auth,
        json={"video_url": "https://93.184.215.14/raw.mp4", "cancel_after": 1},
    )
    assert created.status_code == 200, created.text
    started = time.monotonic()
    ended = asyncio.run(_run_until_ended(server, auth, created.json()["id"], _hangs))
    assert ended["status"] == "canceled"
    assert ended["error"]["type"] == "deadline_exceeded"
    assert time.monotonic() - started < 10


def test_cancel_after_cancels_a_job_still_queued_at_its_deadline(server: Server):
    auth = server.new_key()
    created = httpx.post(
        f"{server.base}/v2/enhance",
        headers=auth,
        json={"video_url": "https://93.184.215.14/raw.mp4", "cancel_after": 1},
    )
    time.sleep(1.1)  # no runner yet: the job waits in the queue past its deadline
    ended = asyncio.run(_run_until_ended(server, auth, created.json()["id"], _hangs))
    assert (ended["status"], ended["error"]["type"]) == ("canceled", "deadline_exceeded")
    assert ended["started_at"] is None
    bad = httpx.post(
        f"{server.base}/v2/enhance",
        headers=auth,
        json={"video_url": "https://93.184.215.14/raw.mp4", "cancel_after": 0},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cancel_after"


@pytest.fixture
def s3_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3UploadStorage]:
    """Upload storage on a real S3 HTTP endpoint on 127.0.0.1 (moto's server mode)."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    s3.start()
    endpoint = f"http://127.0.0.1:{s3._port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="uploads-test"
    )
    try:
        yield S3UploadStorage(
            "uploads-test",
            "uploads",
            endpoint_url=endpoint,
            region="us-east-1",
            part_bytes=5 * 1024 * 1024,
        )
    finally:
        s3.stop()


def test_s3_multipart_upload_with_odd_chunks_is_byte_identical(
    make_server: Callable[..., Server], s3_uploads: S3UploadStorage, tmp_path: Path
):
    server = make_server(storage=s3_uploads)
    auth = server.new_key()
    source = _source(tmp_path, 11 * 1024 * 1024 + 77)  # two whole parts and a short one
    uploader = server.tus(auth).uploader(
        file_path=str(source), chunk_size=3 * 1024 * 1024, retries=1, retry_delay=0
    )
    uploader.upload_chunk()
    uploader.offset = 0  # one chunk twice
    uploader.upload_chunk()
    uploader.upload()
    upload_id = _upload_id(uploader.url)
    assert s3_uploads.read(upload_id) == source.read_bytes()
    s3_uploads.delete(upload_id)
    assert not s3_uploads.exists(upload_id)


def test_s3_a_stale_write_never_picks_up_another_requests_tail(s3_uploads: S3UploadStorage):
    """A stalled PATCH that finishes after the client resumed elsewhere is refused,
    and the upload's bytes stay exactly the client's."""
    mib = 1024 * 1024
    data = os.urandom(7 * mib)
    upload_id = "upl_stale"
    s3_uploads.create(upload_id, len(data))
    s3_uploads.write(upload_id, len(data), 0, data[:mib])
    s3_uploads.write(upload_id, len(data), mib, data[mib : 2 * mib])  # the resumed request
    with pytest.raises(UploadOutOfStep):  # the stalled one, late, from its old offset
        s3_uploads.write(upload_id, len(data), mib, data[mib : 2 * mib])
    s3_uploads.write(upload_id, len(data), 2 * mib, data[2 * mib :])
    assert s3_uploads.read(upload_id) == data
    s3_uploads.delete(upload_id)
    assert not s3_uploads.exists(upload_id)


def test_a_key_holds_at_most_max_open_uploads(make_server: Callable[..., Server]):
    """Each open upload may hold MAX_INPUT_BYTES for a day: one key can't open endless
    ones and fill the disk for every tenant."""
    server = make_server(max_open_uploads=2)
    auth, other = server.new_key(), server.new_key()

    def create(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.base}/v2/uploads", json={"size": 10}, headers=headers)

    first, second = create(auth), create(auth)
    assert (first.status_code, second.status_code) == (201, 201)
    refused = create(auth)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "queue_limit_error"
    assert refused.json()["error"]["param"] == "max_open_uploads"
    assert create(other).status_code == 201  # another key's allowance is its own
    assert (
        httpx.delete(
            first.headers["location"], headers={**auth, "Tus-Resumable": "1.0.0"}
        ).status_code
        == 204
    )
    assert create(auth).status_code == 201  # room again once one is gone
