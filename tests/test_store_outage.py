"""The store unavailable: locked by another process, deleted, or a MongoDB server that
isn't there.  Store calls fail fast with StoreUnavailable; the API, served by uvicorn on
127.0.0.1, answers 503 with Retry-After within 2 s, says so on /readyz, keeps /healthz
green, and recovers by itself when the store is back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import uvicorn

from serve_app.api.app import create_api
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.jobs.store import JobStore, StoreUnavailable
from serve_app.settings import Settings
from tests.stored_keys import add_key, bearer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Locked:
    """Another process's view: an exclusive transaction held on the store's file."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


def test_a_locked_store_fails_fast_and_recovers(tmp_path: Path):
    path = tmp_path / "s.sqlite3"

    async def scenario() -> float:
        store = SqliteStore(path, timeout=0.5)
        await store.init()
        await store.ping()
        locked = _Locked(path)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"locked|answer"):
            await store.count_request("key_a", 1)
        took = time.monotonic() - started
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert await store.get_job("job_x") is None  # WAL: readers still read
        locked.release()
        await store.ping()
        assert await store.count_request("key_a", 1) == 1
        await store.close()
        return took

    assert asyncio.run(scenario()) < 1.0  # the old busy timeout was 30 s


def test_calls_queued_behind_a_stuck_one_share_its_deadline(tmp_path: Path):
    """Twenty concurrent writes during a lock all fail within about one timeout,
    not one timeout each, one after the other."""
    path = tmp_path / "s.sqlite3"

    async def scenario() -> float:
        store = SqliteStore(path, timeout=0.5)
        await store.init()
        locked = _Locked(path)
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.count_request("key_a", 1) for _ in range(20)), return_exceptions=True
        )
        took = time.monotonic() - started
        locked.release()
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        await store.close()
        return took

    assert asyncio.run(scenario()) < 2.0


def test_a_deleted_store_is_not_ready(tmp_path: Path):
    path = tmp_path / "s.sqlite3"

    async def scenario() -> None:
        store = SqliteStore(path, timeout=0.5)
        await store.init()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await store.close()

    asyncio.run(scenario())


# The API over a real HTTP server.
@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings, store: JobStore | None = None) -> str:
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_api(settings, store), host="127.0.0.1", port=port, log_level="error"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def _get(url: str, key: str | None = None) -> tuple[int, Message, dict[str, object], float]:
    request = urllib.request.Request(url, headers=bearer(key) if key else {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, exc.headers, exc.read()
    return status, headers, json.loads(body), time.monotonic() - started


def test_api_answers_503_while_sqlite_is_locked_and_recovers(tmp_path: Path, serve):
    settings = Settings(data_dir=tmp_path, signing_secret="outage")
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    base = serve(settings)
    assert _get(f"{base}/v2/jobs", key)[0] == 200
    assert _get(f"{base}/readyz")[0] == 200
    locked = _Locked(settings.sqlite_path)
    try:
        for path in ("/v2/jobs", "/readyz"):
            status, headers, body, took = _get(f"{base}{path}", key)
            assert status == 503, (path, body)
            assert took < 2.0, (path, took)
            assert int(headers["Retry-After"]) >= 1
            assert body["error"]["type"] == "service_unavailable_error"  # type: ignore[index]
        assert _get(f"{base}/healthz")[0] == 200  # liveness: the process is fine
    finally:
        locked.release()
    status, _, body, _ = _get(f"{base}/v2/jobs", key)  # recovered, nothing restarted
    assert status == 200, body
    assert _get(f"{base}/readyz")[2] == {"status": "ready"}


def test_api_answers_503_while_the_data_directory_is_gone(tmp_path: Path, serve):
    """The data directory removed under the running API: 503s (never a fresh empty
    store that would 401 every key), until the file is restored from a backup."""
    import shutil

    data = tmp_path / "data"
    settings = Settings(data_dir=data, signing_secret="outage")
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    base = serve(settings)
    assert _get(f"{base}/v2/jobs", key)[0] == 200
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(settings.sqlite_path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    shutil.rmtree(data)
    for path in ("/v2/jobs", "/readyz"):
        status, headers, body, took = _get(f"{base}{path}", key)
        assert (status, took < 2.0) == (503, True), (path, body, took)
        assert int(headers["Retry-After"]) >= 1
    assert not data.exists()  # nothing recreated in its place
    data.mkdir()
    shutil.copy(backup, settings.sqlite_path)
    assert _get(f"{base}/v2/jobs", key)[0] == 200  # back by itself
    assert _get(f"{base}/readyz")[0] == 200


def test_api_answers_503_without_a_mongodb_server(tmp_path: Path, serve):
    """Issue 21 item 2 with a MongoDB URI on a closed port: no 30 s hang, no 500."""
    from serve_app.jobs.mongo_store import MongoStore

    settings = Settings(data_dir=tmp_path, signing_secret="outage", store_timeout_seconds=1.0)
    store = MongoStore(f"mongodb://127.0.0.1:{_free_port()}", "retroiva_none", timeout=1.0)
    base = serve(settings, store)
    for path in ("/readyz", "/v2/jobs", "/v2/jobs"):
        status, headers, body, took = _get(f"{base}{path}", "sk_live_unknown")
        assert status == 503, (path, body)
        assert took < 2.0, (path, took)
        assert int(headers["Retry-After"]) >= 1
    assert _get(f"{base}/healthz")[0] == 200


def test_a_send_whose_record_failed_is_resent_with_the_same_body(tmp_path: Path):
    """Issue 21 item 7: the dispatcher sends, then the store fails as it records the
    attempt.  The retry sends the body that was sent (frozen first), not a rebuilt one
    with a fresh download link."""
    import http.server

    from serve_app.access.keys import new_api_key, new_id
    from serve_app.api.schemas import job_from_record
    from serve_app.delivery.webhooks import WebhookDispatcher
    from serve_app.jobs.records import JobRecord
    from vocabulary import JobStatus

    bodies: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    links = iter(range(100))

    async def job_object(job: JobRecord):  # a new signed link each time, as in service
        return job_from_record(job, f"https://files.example.com/o.mp4?sig={next(links)}")

    class RecordFails:  # the store goes away right after the send
        def __init__(self, store: SqliteStore) -> None:
            self.store, self.fail = store, True

        def __getattr__(self, name: str) -> object:
            return getattr(self.store, name)

        async def record_webhook_attempt(self, *args: object, **kwargs: object) -> None:
            if self.fail:
                raise StoreUnavailable("MongoDB is unavailable (AutoReconnect)")
            await self.store.record_webhook_attempt(*args, **kwargs)  # type: ignore[arg-type]

    async def scenario() -> JobRecord:
        store = SqliteStore(tmp_path / "s.db")
        await store.init()
        _, key = new_api_key("hooks", 10)
        await store.add_key(key)
        job = JobRecord(
            id=new_id("job"),
            key_id=key.id,
            status=JobStatus.QUEUED,
            input_url="https://example.com/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=time.time(),
            created_seq=time.time_ns(),
            webhook_url=hook,
        )
        await store.insert_job(job, time.time())
        await store.claim_next("r", time.time(), 30)
        await store.finish(job.id, "r", JobStatus.COMPLETED, time.time(), output_path="o")
        flaky = RecordFails(store)
        settings = Settings(data_dir=tmp_path, allow_private_urls=True)
        dispatcher = WebhookDispatcher(flaky, settings, job_object)  # type: ignore[arg-type]
        [due] = await store.claim_due_webhooks(time.time(), 0.1, 10)
        with pytest.raises(StoreUnavailable):
            await dispatcher.deliver(due)
        flaky.fail = False
        [again] = await store.claim_due_webhooks(time.time() + 1, 0.1, 10)  # lease lapsed
        await dispatcher.deliver(again)
        return await store.get_job(job.id)  # type: ignore[return-value]

    try:
        done = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same bytes, same signature
    assert (done.webhook_status, done.webhook_attempts) == ("delivered", 1)
