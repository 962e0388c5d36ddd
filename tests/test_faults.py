"""Faults: the API and the runner killed (SIGKILL) mid-job and mid-webhook-retry, the
store locked for 10 s mid-job.  Afterwards no job or event is lost, none ran twice, and
none stays processing; while the store is locked the API answers 503 with Retry-After.

The API runs under uvicorn and the runner as ``python -m serve_app.jobs.runner``, each in
its own process on the same SQLite store, as they would on one machine; traffic goes
to 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.jobs.sqlite_store import SqliteStore
from tests.stored_keys import add_key, bearer
from vocabulary import JobStatus

pytestmark = pytest.mark.usefixtures("ray_session")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hooks(http.server.BaseHTTPRequestHandler):
    """Fails the first ``fail_first`` deliveries of each event, then accepts."""

    fail_first = 0
    seen: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        event_id = json.loads(body)["id"]
        Hooks.seen.append(event_id)
        self.send_response(200 if Hooks.seen.count(event_id) > Hooks.fail_first else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(video URL, webhook URL) on one local server."""
    root = tmp_path / "www"
    root.mkdir()
    write_sample_video(root / "clip.mp4", SampleSpec(seconds=1))

    class Site(Hooks, http.server.SimpleHTTPRequestHandler):
        pass

    Hooks.seen = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Site, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield f"{base}/clip.mp4", f"{base}/hooks"
    server.shutdown()


def _env(data: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RETROIVA_DATA_DIR": str(data),
        "RETROIVA_LEASE_SECONDS": "3",
        "RETROIVA_ALLOW_PRIVATE_URLS": "true",
        "RETROIVA_POLL_SECONDS": "0.2",
        "RETROIVA_SIGNING_SECRET": "faults",
        "RETROIVA_WEBHOOK_RETRY_BASE_SECONDS": "1",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        **extra,
    }


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _start_api(data: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn; from serve_app.api.app import create_api; "
        "from serve_app.settings import Settings; "
        f"uvicorn.run(create_api(Settings()), host='127.0.0.1', port={port}, "
        "log_level='warning')"
    )
    return _start(["-c", code], _env(data, **extra))


def _start_runner(data: Path, **extra: str) -> subprocess.Popen[bytes]:
    return _start(["-m", "serve_app.jobs.runner"], _env(data, **extra))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _request(
    url: str,
    key: str,
    body: dict[str, object] | None = None,
    timeout: float = 60,
    unavailable: list[float] | None = None,
) -> dict[str, object]:
    """One API call, retried as a client should: while the API is down (connection
    refused), and after a 503 once its Retry-After has passed.  Each 503's response time
    goes to ``unavailable``.  A POST carries an Idempotency-Key, so a retry of a request
    whose answer was lost can't make a second job."""
    deadline = time.monotonic() + timeout
    headers = {**bearer(key), "Content-Type": "application/json"}
    if body is not None:
        headers["Idempotency-Key"] = os.urandom(8).hex()
    while True:
        request = urllib.request.Request(
            url, data=None if body is None else json.dumps(body).encode(), headers=headers
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            if unavailable is not None:
                unavailable.append(time.monotonic() - started)
            time.sleep(int(exc.headers["Retry-After"]))
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _wait_all_ended(store_path: Path, timeout: float = 120) -> list[object]:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(store_path) as db:
            rows = db.execute("SELECT status, webhook_status FROM jobs").fetchall()
        if rows and all(
            JobStatus(s).is_terminal and w in (None, "delivered", "failed") for s, w in rows
        ):
            return rows
        assert time.monotonic() < deadline, f"not settled: {rows}"
        time.sleep(0.3)


def test_api_and_runner_killed_mid_job_lose_nothing(tmp_path: Path, site: tuple[str, str]):
    video, hooks = site
    key, _ = add_key(SqliteStore(tmp_path / "retroiva.sqlite3"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    api, runner = _start_api(tmp_path, port), _start_runner(tmp_path)
    try:
        ids = [
            str(
                _request(
                    f"{base}/v2/enhance",
                    key,
                    {"video_url": video, "webhook_url": hooks, "engine": "classical"},
                )["id"]
            )
            for _ in range(4)
        ]
        _kill(api)  # in the middle of everything
        deadline = time.monotonic() + 60
        with sqlite3.connect(tmp_path / "retroiva.sqlite3") as db:
            while (
                db.execute("SELECT count(*) FROM jobs WHERE status='processing'").fetchone()[0] == 0
            ):
                assert time.monotonic() < deadline, "no job ever started"
                time.sleep(0.1)
        _kill(runner)  # holding a lease, mid-pipeline
        api, runner = _start_api(tmp_path, port), _start_runner(tmp_path)
        rows = _wait_all_ended(tmp_path / "retroiva.sqlite3")
        jobs = [_request(f"{base}/v2/jobs/{job_id}", key) for job_id in ids]
    finally:
        _kill(api)
        _kill(runner)
    assert [job["status"] for job in jobs] == ["completed"] * 4, jobs
    assert [w for _, w in rows] == ["delivered"] * 4
    assert sorted(set(Hooks.seen)) == sorted("evt_" + i.removeprefix("job_") for i in ids)


def test_api_and_runner_killed_during_webhook_retries_still_deliver(
    tmp_path: Path, site: tuple[str, str]
):
    video, hooks = site
    Hooks.fail_first = 3  # 503, 503, 503, then 200: retries at ~1, 2, 4 s
    key, _ = add_key(SqliteStore(tmp_path / "retroiva.sqlite3"))
    port = _free_port()
    api, runner = _start_api(tmp_path, port), _start_runner(tmp_path)
    try:
        job = _request(
            f"http://127.0.0.1:{port}/v2/enhance",
            key,
            {"video_url": video, "webhook_url": hooks, "engine": "classical"},
        )
        deadline = time.monotonic() + 60
        while len(Hooks.seen) < 2:  # mid-retry
            assert time.monotonic() < deadline, "the webhook was never attempted"
            time.sleep(0.1)
        _kill(runner)
        _kill(api)  # the API too: it holds no webhook state, nothing may depend on it
        attempts_before = len(Hooks.seen)
        runner, api = _start_runner(tmp_path), _start_api(tmp_path, port)
        [(status, webhook)] = _wait_all_ended(tmp_path / "retroiva.sqlite3")
    finally:
        Hooks.fail_first = 0
        _kill(api)
        _kill(runner)
    assert (status, webhook) == ("completed", "delivered")
    assert len(Hooks.seen) == 4 > attempts_before  # the count continued, none lost
    assert set(Hooks.seen) == {"evt_" + str(job["id"]).removeprefix("job_")}


def test_store_locked_10s_mid_job_then_everything_recovers(tmp_path: Path, site: tuple[str, str]):
    """Issue 21's done criterion, through real processes: another process holds the
    store exclusively for 10 s while the runner is mid-job.  The API answers 503 with
    Retry-After within 2 s meanwhile and recovers by itself; the job runs once."""
    video, hooks = site
    store_path = tmp_path / "retroiva.sqlite3"
    key, _ = add_key(SqliteStore(store_path))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    lease = {"RETROIVA_LEASE_SECONDS": "15"}  # the outage fits in a lease
    api, runner = _start_api(tmp_path, port, **lease), _start_runner(tmp_path, **lease)
    try:
        first = _request(
            f"{base}/v2/enhance",
            key,
            {"video_url": video, "webhook_url": hooks, "engine": "classical"},
        )
        deadline = time.monotonic() + 60
        with sqlite3.connect(store_path) as db:
            while (status := db.execute("SELECT status FROM jobs").fetchone()[0]) == "queued":
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.02)
        assert status == "processing", status
        # Another process takes the database exclusively (what a stalled disk, a backup
        # or a long migration looks like to the service) for 10 s, mid-job.
        blocker = sqlite3.connect(store_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        unavailable: list[float] = []
        results: list[object] = []
        submit = threading.Thread(
            target=lambda: results.append(
                _request(
                    f"{base}/v2/enhance",
                    key,
                    {"video_url": video, "webhook_url": hooks, "engine": "classical"},
                    unavailable=unavailable,
                )
            )
        )
        submit.start()
        time.sleep(10)
        blocker.execute("ROLLBACK")
        blocker.close()
        submit.join(60)
        assert results, "a request made while the store was locked never succeeded"
        assert time.monotonic() - started >= 10
        assert unavailable and max(unavailable) < 2.0, unavailable  # 503s, each fast
        rows = _wait_all_ended(store_path)
        with sqlite3.connect(store_path) as db:
            attempts = db.execute(
                "SELECT attempts FROM jobs WHERE id = ?", (first["id"],)
            ).fetchone()[0]
    finally:
        _kill(api)
        _kill(runner)
    assert rows == [("completed", "delivered")] * 2
    assert attempts == 1  # the locked-out runner kept its lease: the job ran once
