"""Fetching video_url: private targets refused (also after redirects), limits enforced,
cancel obeyed, and the runner's processing slots never held by a download."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.errors import PipelineCanceled
from pipelines.progress import CancelToken
from serve_app.access.keys import new_id
from serve_app.delivery.fetch import (
    FetchError,
    FetchLimits,
    UrlPolicy,
    fetch_to_file,
    resolve_checked,
)
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner, fetch_input
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

_GZIPPED = gzip.compress(b"\0" * 5_000_000)  # 5 MB of zeros in ~5 KB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_hosts: list[str] = []
    seen_encodings: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, *, length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if length:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 65536):
                part = body[i : i + 65536]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        _Handler.seen_hosts.append(self.headers.get("Host", ""))
        path, _, query = self.path.partition("?")
        if path == "/video":
            self._send(b"v" * 1000)
        elif path == "/big":
            self._send(b"b" * 2_000_000)
        elif path == "/big-chunked":
            self._send(b"b" * 2_000_000, length=False)
        elif path == "/slow":
            time.sleep(3)
            self._send(b"late")
        elif path == "/drip":
            # Declares 100 MB, then sends a byte every 0.2 s: each read is quick, the
            # whole download would take months.
            self.send_response(200)
            self.send_header("Content-Length", "100000000")
            self.end_headers()
            for _ in range(150):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif path == "/gzip":
            _Handler.seen_encodings.append(self.headers.get("Accept-Encoding", ""))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(_GZIPPED)))
            self.end_headers()
            self.wfile.write(_GZIPPED)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect-nowhere":
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that abort on purpose (size limits, timeouts) break the pipe


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, tmp_path: Path, policy: UrlPolicy, **limits: float) -> Path:
    destination = tmp_path / "input"
    asyncio.run(
        fetch_to_file(
            url,
            destination,
            policy=policy,
            limits=FetchLimits(
                max_bytes=int(limits.pop("max_bytes", 10**7)),
                read_timeout=limits.pop("timeout", 5),
                **limits,
            ),
        )
    )
    return destination


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/v.mp4",
        "http://10.0.0.1/v.mp4",
        "http://172.16.5.4/v.mp4",
        "http://192.168.1.1/v.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/v.mp4",
        "http://[fd00::1]/v.mp4",
        "http://[::ffff:127.0.0.1]/v.mp4",
        "http://localhost/v.mp4",
        "http://224.0.0.1/v.mp4",
        "http://0.0.0.0/v.mp4",
    ],
)
def test_private_and_special_addresses_are_refused(url: str, tmp_path: Path):
    with pytest.raises(FetchError, match=r"non-public.*RETROIVA_ALLOW_PRIVATE_URLS=true"):
        _fetch(url, tmp_path, UrlPolicy())
    assert not (tmp_path / "input").exists()


@pytest.mark.parametrize("url", ["ftp://example.com/v.mp4", "file:///etc/passwd", "http:///nohost"])
def test_only_http_urls(url: str, tmp_path: Path):
    with pytest.raises(FetchError, match="only http and https"):
        _fetch(url, tmp_path, UrlPolicy(allow_private=True))


def test_allowed_server_fetches(server: str, tmp_path: Path):
    path = _fetch(f"http://{server}/video", tmp_path, UrlPolicy(allowlist=frozenset({server})))
    assert path.read_bytes() == b"v" * 1000


def test_redirect_to_a_private_address_is_refused(server: str, tmp_path: Path):
    policy = UrlPolicy(allowlist=frozenset({server}))
    port = server.split(":")[1]
    for target in (
        f"http://127.0.0.2:{port}/video",
        "http://10.0.0.7/video",
        "http://169.254.169.254/latest",
    ):
        with pytest.raises(FetchError, match="non-public"):
            _fetch(f"http://{server}/redirect?to={target}", tmp_path, policy)
        assert not (tmp_path / "input").exists()
    # The same redirect within the allowed server is followed.
    path = _fetch(f"http://{server}/redirect?to=/video", tmp_path, policy)
    assert path.read_bytes() == b"v" * 1000


def test_redirect_without_location_is_a_clear_error(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="without a Location"):
        _fetch(f"http://{server}/redirect-nowhere", tmp_path, UrlPolicy(allow_private=True))


def test_redirect_loops_stop(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _fetch(f"http://{server}/loop", tmp_path, UrlPolicy(allow_private=True))


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_size_limit_aborts_and_leaves_nothing(server: str, tmp_path: Path, path: str):
    with pytest.raises(FetchError, match="limit"):
        _fetch(
            f"http://{server}{path}", tmp_path, UrlPolicy(allow_private=True), max_bytes=1_000_000
        )
    assert not (tmp_path / "input").exists()


def test_timeout_aborts_and_leaves_nothing(server: str, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        _fetch(f"http://{server}/slow", tmp_path, UrlPolicy(allow_private=True), timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert not (tmp_path / "input").exists()


def test_http_errors_are_reported(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="HTTP 404"):
        _fetch(f"http://{server}/missing", tmp_path, UrlPolicy(allow_private=True))


def test_connection_goes_to_the_checked_address(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A name resolved once and pinned: the client never resolves it again."""
    port = int(server.split(":")[1])
    real = socket.getaddrinfo
    calls = []

    def resolver(host: str, *args: object, **kwargs: object):
        calls.append(host)
        if host == "videos.example":
            return real("127.0.0.1", port, type=socket.SOCK_STREAM)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    _Handler.seen_hosts.clear()
    policy = UrlPolicy(allowlist=frozenset({f"videos.example:{port}"}))
    path = _fetch(f"http://videos.example:{port}/video", tmp_path, policy)
    assert path.read_bytes() == b"v" * 1000
    assert calls.count("videos.example") == 1
    assert _Handler.seen_hosts == [f"videos.example:{port}"]


def test_resolve_checked_returns_the_address():
    assert (
        str(asyncio.run(resolve_checked("https://93.184.215.14/x", UrlPolicy()))) == "93.184.215.14"
    )


# The forms (all accepted before), then Teredo and local-use NAT64.
_EMBEDDED_PRIVATE = [
    "::127.0.0.1",
    "::7f00:1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "::ffff:0:7f00:1",
    "fec0::1",
    "2002:a00:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "64:ff9b:1::a00:1",
    "::ffff:169.254.169.254",
    "2002:a9fe:a9fe::",
]


@pytest.mark.parametrize("address", _EMBEDDED_PRIVATE)
def test_ipv6_forms_embedding_private_ipv4_are_refused(address: str, tmp_path: Path):
    with pytest.raises(FetchError, match="non-public"):
        asyncio.run(resolve_checked(f"http://[{address}]/v.mp4", UrlPolicy()))


@pytest.mark.parametrize("address", ["64:ff9b::5db8:d70e", "2002:5db8:d70e::1"])
def test_ipv6_forms_embedding_a_public_ipv4_pass(address: str):
    """NAT64 and 6to4 reach 93.184.215.14 here: judged by that address, they pass."""
    assert str(asyncio.run(resolve_checked(f"http://[{address}]/v.mp4", UrlPolicy()))) == address


def test_total_deadline_stops_a_trickling_server(server: str, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"1\.5 s deadline"):
        _fetch(
            f"http://{server}/drip",
            tmp_path,
            UrlPolicy(allow_private=True),
            max_bytes=10**9,
            deadline=1.5,
            min_rate=0,
        )
    assert time.monotonic() - started < 3
    assert not (tmp_path / "input").exists()


def test_minimum_average_rate_stops_a_trickling_server(server: str, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(FetchError, match="below the minimum of 1000"):
        _fetch(
            f"http://{server}/drip",
            tmp_path,
            UrlPolicy(allow_private=True),
            max_bytes=10**9,
            min_rate=1000,
            rate_grace=1.0,
        )
    assert time.monotonic() - started < 2.5
    assert not (tmp_path / "input").exists()


def test_cancel_interrupts_a_fetch_within_a_second(server: str, tmp_path: Path):
    cancel = CancelToken()
    destination = tmp_path / "input"

    async def fetch_then_cancel() -> float:
        task = asyncio.create_task(
            fetch_to_file(
                f"http://{server}/drip",
                destination,
                policy=UrlPolicy(allow_private=True),
                limits=FetchLimits(max_bytes=10**9, min_rate=0),
                cancel=cancel,
            )
        )
        await asyncio.sleep(1.0)
        assert not task.done()
        canceled_at = time.monotonic()
        cancel.cancel()
        with pytest.raises(PipelineCanceled):
            await task
        return time.monotonic() - canceled_at

    assert asyncio.run(fetch_then_cancel()) < 1.0
    assert not destination.exists()


def test_compressed_bodies_are_stored_as_sent(server: str, tmp_path: Path):
    _Handler.seen_encodings.clear()
    path = _fetch(
        f"http://{server}/gzip", tmp_path, UrlPolicy(allow_private=True), max_bytes=1_000_000
    )
    assert _Handler.seen_encodings == ["identity"]
    assert path.read_bytes() == _GZIPPED  # not the 5 MB it would inflate to


# The runner's fetch stage: outside the processing slots, and cancelable.
def _copy_input(
    job: JobRecord, settings: Settings, on_progress: object, cancel: CancelToken
) -> Path:
    scratch = settings.scratch_dir / job.id
    output = scratch / "output.mp4"
    output.write_bytes((scratch / "input").read_bytes())
    return output


def _queued(url: str) -> JobRecord:
    return JobRecord(
        id=new_id("job"),
        key_id="key_t",
        status=JobStatus.QUEUED,
        input_url=url,
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
    )


def test_a_trickling_input_neither_blocks_other_jobs_nor_ignores_cancel(
    server: str, tmp_path: Path
):
    # One processing slot, and no minimum rate: only the cancel can end the slow fetch.
    settings = Settings(
        data_dir=tmp_path,
        runner_concurrency=1,
        poll_seconds=0.05,
        allow_private_urls=True,
        fetch_min_bytes_per_second=0,
    )
    store = SqliteStore(settings.sqlite_path)

    async def scenario() -> tuple[float, JobRecord, JobRecord, float]:
        await store.init()
        slow, _ = await store.insert_job(_queued(f"http://{server}/drip"), time.time())
        fast, _ = await store.insert_job(_queued(f"http://{server}/video"), time.time())
        runner = JobRunner(store, settings, process=_copy_input, fetch=fetch_input)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        started = time.monotonic()
        try:
            while (await store.get_job(fast.id)).status != JobStatus.COMPLETED:
                assert time.monotonic() - started < 10, "the fast job waited on the slow one"
                await asyncio.sleep(0.05)
            fast_done = time.monotonic() - started
            assert (await store.get_job(slow.id)).status == JobStatus.PROCESSING
            await store.request_cancel(slow.id, time.time())
            asked = time.monotonic()
            while not (await store.get_job(slow.id)).status.is_terminal:
                assert time.monotonic() - asked < 5, "cancel did not reach the fetch"
                await asyncio.sleep(0.05)
            return (
                fast_done,
                await store.get_job(slow.id),
                await store.get_job(fast.id),
                time.monotonic() - asked,
            )
        finally:
            stop.set()
            await task

    fast_done, slow, fast, cancel_took = asyncio.run(scenario())
    assert fast.status == JobStatus.COMPLETED and fast_done < 10
    assert slow.status == JobStatus.CANCELED
    assert cancel_took < 2.0, cancel_took
    assert not (tmp_path / "scratch" / slow.id).exists()


def test_reading_the_settings_does_not_import_the_fetcher():
    """UrlPolicy and FetchLimits are plain values (fetch_rules): the settings build them
    without pulling in the HTTP client."""
    probe = (
        "import sys, serve_app.settings as s; s.Settings().url_policy;"
        "print(sorted(m for m in ('serve_app.delivery.fetch', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
