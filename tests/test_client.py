"""retroiva_client against the real service (Ray Serve on 127.0.0.1), its retry logic
against a scripted local server, and verify_webhook against the standardwebhooks
package (the Standard Webhooks spec's own Python library) as the oracle."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import math
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import httpx
import pytest
from service_fixture import Service
from stored_keys import add_key

from retroiva_client import (
    APIConnectionError,
    AuthenticationError,
    Client,
    ConflictError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    QueueLimitError,
    RateLimitError,
    RetryPolicy,
    WebhookVerificationError,
    verify_webhook,
)
from serve_app.jobs.sqlite_store import SqliteStore

REPO = Path(__file__).resolve().parents[1]


def _key(service: Service, rate_limit: int = 1000) -> tuple[str, str]:
    """A new API key and its webhook secret."""
    key, record = add_key(SqliteStore(service.settings.sqlite_path), rate_limit)
    return key, record.webhook_secret


def _decoded(path: Path) -> tuple[int, int, int]:
    """(frames, width, height), counting frames by decoding every one."""
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


class _Recorder:
    """httpx event hooks that keep every request and response the client makes."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            timeout=60,
            event_hooks={"request": [self.requests.append], "response": [self.responses.append]},
            **kwargs,
        )  # type: ignore[arg-type]


# The real service ------------------------------------------------------------------


def test_enhance_wait_with_progress_then_download(service: Service, tmp_path: Path):
    key, _ = _key(service)
    seen: list[tuple[str, str | None, float]] = []
    with Client(key, service.base) as client:
        job = client.enhance(f"{service.media}/clip.mp4", preset="general", upscale_factor=2)
        assert job.status == "queued" and job.id.startswith("job_")
        job.wait(timeout=240, on_progress=lambda j: seen.append((j.status, j.phase, j.progress)))
        assert job.status == "completed", job.error
        output = job.download(tmp_path / "out.mp4")
    assert seen[-1] == ("completed", None, 1.0)
    assert [p for _, _, p in seen] == sorted(p for _, _, p in seen)  # never goes back
    assert len(seen) >= 2
    assert not (tmp_path / "out.mp4.part").exists()
    assert _decoded(output) == (24, 192, 128)  # the 1 s 96×64 clip at 24 fps, ×2


def test_jobs_list_follows_every_page(service: Service):
    key, _ = _key(service)
    recorder = _Recorder()
    with Client(key, service.base, http_client=recorder.client()) as client:
        created = []
        for _ in range(5):
            job = client.enhance(f"{service.media}/missing.mp4")
            created.append(job.cancel().id)  # queued jobs cancel at once: no runner time
        listed = [job.id for job in client.jobs.list(page_size=2)]
        assert listed == created[::-1]  # newest first, every page
        pages = [r for r in recorder.requests if r.url.path == "/v2/jobs"]
        assert [r.url.params.get("starting_after") for r in pages] == [None, created[3], created[1]]
        assert [j.id for j in client.jobs.list(page_size=2, limit=3)] == created[:1:-1]


def test_creates_carry_an_idempotency_key(service: Service):
    key, _ = _key(service)
    recorder = _Recorder()
    with Client(key, service.base, http_client=recorder.client()) as client:
        first = client.enhance(f"{service.media}/missing.mp4")
        second = client.enhance(f"{service.media}/missing.mp4")
        assert first.id != second.id  # a fresh key per call: two calls, two jobs
        replay = client.enhance(
            f"{service.media}/missing.mp4",
            idempotency_key=recorder.requests[0].headers["idempotency-key"],
        )
        assert replay.id == first.id
        for job in (first, second):
            job.cancel()
    posts = [r for r in recorder.requests if r.method == "POST" and r.url.path == "/v2/enhance"]
    keys = [r.headers.get("idempotency-key") for r in posts]
    assert all(keys) and len(set(keys)) == 2
    replayed = [
        r.headers.get("idempotent-replayed")
        for r in recorder.responses
        if r.request.url.path == "/v2/enhance"
    ]
    assert replayed == [None, None, "true"]


def test_typed_errors_carry_the_request_id(service: Service):
    key, _ = _key(service)
    recorder = _Recorder()
    with Client(key, service.base, http_client=recorder.client()) as client:
        with pytest.raises(InvalidRequestError) as bad:
            client.enhance("ftp://example.com/a.mp4")
        assert bad.value.status == 400 and bad.value.param == "video_url"
        assert bad.value.type == "invalid_request_error"
        assert bad.value.request_id
        assert bad.value.request_id == recorder.responses[-1].headers["x-request-id"]
        assert bad.value.request_id in str(bad.value)

        with pytest.raises(NotFoundError) as missing:
            client.jobs.get("job_doesnotexist")
        assert missing.value.status == 404 and missing.value.param == "job_id"
        assert missing.value.request_id == recorder.responses[-1].headers["x-request-id"]

        job = client.enhance(f"{service.media}/missing.mp4").cancel()
        with pytest.raises(ConflictError) as early:
            job.download(Path(os.devnull + ".never"))
        assert early.value.status == 409 and early.value.request_id

    with (
        Client("sk_live_not_a_key", service.base) as client,
        pytest.raises(AuthenticationError) as unauthenticated,
    ):
        client.jobs.get("job_x")
    assert unauthenticated.value.status == 401 and unauthenticated.value.request_id


# Retries: a scripted server on 127.0.0.1 -----------------------------------------

_JOB = {
    "id": "job_stub",
    "status": "queued",
    "progress": 0,
    "input_url": "https://x/a.mp4",
    "output_url": None,
    "created_at": 1,
    "started_at": None,
    "completed_at": None,
    "error": None,
    "eta_seconds": None,
    "phase": None,
    "preset": "general",
    "upscale_factor": 2,
    "engine": "neural",
}


class _Scripted(http.server.ThreadingHTTPServer):
    """Answers requests from a script of (status, headers, body); the last one repeats."""

    def __init__(self, script: list[tuple[int, dict[str, str], object]]) -> None:
        self.script = list(script)
        self.seen: list[tuple[float, str, str, dict[str, str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def answer(self) -> None:
                server: _Scripted = self.server  # type: ignore[assignment]
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.seen.append(
                    (
                        time.monotonic(),
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                    )
                )
                status, headers, body = (
                    server.script.pop(0) if len(server.script) > 1 else server.script[0]
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {
                    "Content-Type": "application/json",
                    "X-Request-Id": f"req_stub{len(server.seen)}",
                    **headers,
                }.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = answer

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[type[_Scripted]]:
    servers: list[_Scripted] = []

    class Tracked(_Scripted):
        def __init__(self, script: list[tuple[int, dict[str, str], object]]) -> None:
            super().__init__(script)
            servers.append(self)

    yield Tracked
    for server in servers:
        server.shutdown()
        server.server_close()


def _error(kind: str, message: str = "slow down") -> dict[str, object]:
    return {"error": {"type": kind, "message": message}}


def test_429_waits_for_retry_after_then_retries_with_the_same_idempotency_key(scripted):
    server = scripted([(429, {"Retry-After": "1"}, _error("rate_limit_error")), (200, {}, _JOB)])
    with Client("sk_live_test", server.base) as client:
        job = client.enhance("https://example.com/a.mp4")
    assert job.id == "job_stub"
    (first, *_, first_key), (second, *_, second_key) = server.seen
    assert second - first >= 0.95  # Retry-After: 1, honoured (not the 0.25–0.5 s backoff)
    assert first_key["idempotency-key"] == second_key["idempotency-key"]
    assert first_key["idempotency-key"].startswith("retroiva-py-")


def test_5xx_without_retry_after_backs_off_then_gives_up_with_the_typed_error(scripted):
    server = scripted(
        [(503, {}, _error("service_unavailable_error")), (500, {}, _error("api_error", "boom"))]
    )
    retry = RetryPolicy(max_retries=2, base_delay=0.2)
    with (
        Client("sk_live_test", server.base, retry=retry) as client,
        pytest.raises(InternalError) as failed,
    ):
        client.jobs.get("job_stub")
    assert len(server.seen) == 3
    gaps = [b[0] - a[0] for a, b in zip(server.seen, server.seen[1:], strict=False)]
    assert 0.1 <= gaps[0] <= 0.5 and 0.2 <= gaps[1] <= 0.9  # 0.2 then 0.4 s, jittered
    assert failed.value.request_id == "req_stub3" and failed.value.message == "boom"


def test_a_retry_after_beyond_max_wait_and_queue_limits_are_not_waited_for(scripted):
    server = scripted([(429, {"Retry-After": "3600"}, _error("rate_limit_error"))])
    with Client("sk_live_test", server.base) as client, pytest.raises(RateLimitError) as limited:
        client.enhance("https://example.com/a.mp4")
    assert limited.value.retry_after == 3600 and len(server.seen) == 1
    queue = scripted([(429, {}, _error("queue_limit_error", "10 queued jobs"))])
    with Client("sk_live_test", queue.base) as client, pytest.raises(QueueLimitError):
        client.enhance("https://example.com/a.mp4")
    assert len(queue.seen) == 1


def test_no_connection_is_an_api_connection_error_after_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    retry = RetryPolicy(max_retries=2, base_delay=0.01)
    with (
        Client("sk_live_test", f"http://127.0.0.1:{port}", retry=retry) as client,
        pytest.raises(APIConnectionError),
    ):
        client.jobs.get("job_x")


# Webhooks: both schemes -------------------------------------------------------------


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


_BODY = '{"id":"evt_1","type":"job.completed","created_at":1795914910,"data":{"id":"job_1"}}'


def _standard_headers(
    secret: str, body: str, at: datetime, event_id: str = "evt_1"
) -> dict[str, str]:
    from standardwebhooks.webhooks import Webhook

    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body),
    }


def test_verify_webhook_accepts_what_standardwebhooks_signs_and_agrees_with_it():
    from standardwebhooks.webhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError as OracleError

    secret, other = _whsec(), _whsec()
    now = datetime.now(tz=UTC)
    headers = _standard_headers(secret, _BODY, now)
    assert verify_webhook(_BODY.encode(), headers, secret)["id"] == "evt_1"
    assert Webhook(secret).verify(_BODY, headers)["id"] == "evt_1"
    upper = {name.title(): value for name, value in headers.items()}
    assert verify_webhook(_BODY, upper, secret)["type"] == "job.completed"

    cases = {
        "wrong secret": (_BODY, headers, other),
        "tampered body": (_BODY.replace("job_1", "job_2"), headers, secret),
        "stale": (_BODY, _standard_headers(secret, _BODY, now - timedelta(minutes=6)), secret),
        "future": (_BODY, _standard_headers(secret, _BODY, now + timedelta(minutes=6)), secret),
        "other id": (_BODY, {**headers, "webhook-id": "evt_2"}, secret),
    }
    for name, (body, case_headers, key) in cases.items():
        with pytest.raises(WebhookVerificationError):
            verify_webhook(body, case_headers, key)
        with pytest.raises(OracleError):  # the spec's library refuses each one too
            Webhook(key).verify(body, case_headers)
        assert name


def test_verify_webhook_accepts_either_secret_while_a_rotation_overlaps():
    from standardwebhooks.webhooks import Webhook

    old, new = _whsec(), _whsec()
    now = datetime.now(tz=UTC)
    both = " ".join(Webhook(s).sign("evt_9", now, _BODY) for s in (old, new))
    headers = {
        "webhook-id": "evt_9",
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": both,
    }
    for secret in (old, new):
        assert verify_webhook(_BODY, headers, secret)["id"] == "evt_1"
        assert Webhook(secret).verify(_BODY, headers)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(_BODY, headers, _whsec())


def test_the_api_key_never_goes_to_another_origin():
    from retroiva_client._http import Transport

    transport = Transport("sk_live_x", "https://retroiva.example", timeout=1, retry=RetryPolicy())
    assert (
        transport.url("https://retroiva.example:443/v2/uploads/upl_1")
        == "https://retroiva.example:443/v2/uploads/upl_1"
    )
    # A Location or upload_url on another host, or downgraded to http, is refused
    # before any request carries the key.
    for elsewhere in (
        "https://evil.example/v2/uploads/upl_1",
        "http://retroiva.example/v2/uploads/upl_1",
    ):
        with pytest.raises(APIConnectionError, match="refusing to send the API key"):
            transport.url(elsewhere)


def test_verify_webhook_checks_x_retroiva_signature_with_the_whole_secret():
    secret = _whsec()
    signature = hmac.new(secret.encode(), _BODY.encode(), hashlib.sha256).hexdigest()
    assert (
        verify_webhook(_BODY, {"X-Retroiva-Signature": signature}, secret, allow_legacy=True)["id"]
        == "evt_1"
    )
    # Alone, it has no timestamp: refused unless asked for (a replay would verify forever).
    with pytest.raises(WebhookVerificationError, match="allow_legacy"):
        verify_webhook(_BODY, {"X-Retroiva-Signature": signature}, secret)
    without_prefix = hmac.new(
        secret.removeprefix("whsec_").encode(), _BODY.encode(), hashlib.sha256
    ).hexdigest()
    for bad in (without_prefix, "0" * 64, ""):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(_BODY, {"X-Retroiva-Signature": bad}, secret, allow_legacy=True)
    # Standard headers present decide: a stale one is refused even beside a valid
    # X-Retroiva-Signature (or stripping the timestamp check would be one header away).
    stale = _standard_headers(secret, _BODY, datetime.now(tz=UTC) - timedelta(hours=1))
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
        verify_webhook(_BODY, {**stale, "X-Retroiva-Signature": signature}, secret)
    with pytest.raises(WebhookVerificationError, match="no webhook-signature"):
        verify_webhook(_BODY, {}, secret)
    # A timestamp too long to be one is a clean rejection, not a ValueError.
    with pytest.raises(WebhookVerificationError, match="Unix seconds"):
        verify_webhook(_BODY, {**stale, "webhook-timestamp": "9" * 5000}, secret)


def test_verify_webhook_derives_the_key_of_older_and_hand_set_secrets():
    raw = secrets.token_bytes(32)
    older = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")  # before v1
    timestamp = str(math.floor(time.time()))
    for secret, key in ((older, raw), ("whsec_not base64!", b"whsec_not base64!")):
        digest = hmac.new(key, f"evt_1.{timestamp}.{_BODY}".encode(), hashlib.sha256).digest()
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }
        assert verify_webhook(_BODY, headers, secret)["id"] == "evt_1"
        with pytest.raises(WebhookVerificationError):
            verify_webhook(
                _BODY,
                {**headers, "webhook-signature": "v2," + base64.b64encode(digest).decode()},
                secret,
            )


class _Inbox(http.server.ThreadingHTTPServer):
    """A webhook receiver that keeps each delivery's raw body and headers."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                inbox: _Inbox = self.server  # type: ignore[assignment]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                inbox.deliveries.append((body, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                inbox.arrived.set()

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_verify_webhook_accepts_a_real_delivery(service: Service):
    key, secret = _key(service)
    inbox = _Inbox()
    try:
        with Client(key, service.base) as client:
            job = client.enhance(
                f"{service.media}/missing.mp4",
                webhook_url=f"http://127.0.0.1:{inbox.server_address[1]}/h",
            )
            job.cancel()  # ends it at once, unless the runner already failed it (404 input)
        assert inbox.arrived.wait(60), "no delivery within 60 s"
    finally:
        inbox.shutdown()
        inbox.server_close()
    body, headers = inbox.deliveries[0]
    event = verify_webhook(body, headers, secret)
    assert event["type"] in ("job.canceled", "job.failed") and event["data"]["id"] == job.id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, _whsec())
    # It came with both schemes; each verifies on its own, the oracle agreeing.
    from standardwebhooks.webhooks import Webhook

    assert {"webhook-id", "webhook-timestamp", "webhook-signature", "x-retroiva-signature"} <= {
        k.lower() for k in headers
    }
    assert Webhook(secret).verify(body, headers)["id"] == event["id"]
    legacy = {k: v for k, v in headers.items() if not k.lower().startswith("webhook-")}
    assert verify_webhook(body, legacy, secret, allow_legacy=True) == event


# `retroiva submit` and the README -------------------------------------------------


def _cli(
    service: Service, key: str | None, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RETROIVA_API_KEY"}
    env.update({"PYTHONPATH": str(REPO), "RETROIVA_BASE_URL": service.base})
    if key is not None:
        env["RETROIVA_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "submit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_retroiva_submit_url_waits_and_downloads(service: Service, tmp_path: Path):
    key, _ = _key(service)
    done = _cli(
        service,
        key,
        f"{service.media}/clip.mp4",
        "--wait",
        "--output",
        "out.mp4",
        "--upscale-factor",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"job_\S+: completed; wrote out.mp4", done.stdout), done.stdout
    assert _decoded(tmp_path / "out.mp4") == (24, 192, 128)


def test_retroiva_submit_refuses_without_a_key(service: Service, tmp_path: Path):
    done = _cli(service, None, f"{service.media}/clip.mp4", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "RETROIVA_API_KEY" in done.stderr
    bad = _cli(service, "sk_live_nope", f"{service.media}/clip.mp4", cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and "authentication_error" in bad.stderr
    assert "request id" in bad.stderr


def _readme_python() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = re.search(r"\n## From Python\n(.*?)\n## ", readme, re.DOTALL)
    assert section, "README has no '## From Python' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), re.DOTALL)


def test_readme_from_python_runs_verbatim(service: Service, tmp_path: Path, make_video):
    blocks = _readme_python()
    assert blocks
    out = tmp_path / "out"
    out.mkdir()
    # Quick start's clip (`retroiva sample out/sample.mp4`, served on port 9000).
    (out / "sample.mp4").write_bytes(make_video("sample.mp4", seconds=1).read_bytes())
    script = "\n".join(b for b in blocks if "upload_file" not in b or _has_uploads(service))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 9000), _quiet_handler(out))
    except OSError:
        pytest.skip("port 9000 is taken on this machine: the README's URL needs it")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key, _ = _key(service)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RETROIVA_API_KEY": key,
        "RETROIVA_BASE_URL": service.base,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    frames, width, height = _decoded(out / "enhanced.mp4")
    assert (width, height) == (192, 128) and frames == 24


def _quiet_handler(root: Path) -> type[http.server.SimpleHTTPRequestHandler]:
    import functools

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    return functools.partial(Quiet, directory=str(root))  # type: ignore[return-value]


# Uploads (tus 1.0, CONTRACTS.md; branch uploads) ------------------------------------


def _has_uploads(service: Service) -> bool:
    response = httpx.options(f"{service.base}/v2/uploads", timeout=30)
    return response.status_code == 204 and response.headers.get("tus-resumable") == "1.0.0"


@pytest.fixture
def uploads(service: Service) -> Service:
    if not _has_uploads(service):
        pytest.skip("this service has no /v2/uploads yet (CONTRACTS.md, branch uploads)")
    return service


_TUS = {"Tus-Resumable": "1.0.0"}
_CHUNK_HEADERS = {**_TUS, "Content-Type": "application/offset+octet-stream"}


def test_upload_file_sends_three_chunks_then_enhances(uploads: Service, make_video):
    key, _ = _key(uploads)
    source = make_video("three_chunks.mp4", seconds=1)
    size = source.stat().st_size
    chunk = math.ceil(size / 3)
    progress: list[int] = []
    recorder = _Recorder()
    with Client(key, uploads.base, http_client=recorder.client()) as client:
        upload = client.upload_file(
            source, chunk_size=chunk, on_progress=lambda sent, total: progress.append(sent)
        )
        assert (upload.status, upload.size, upload.offset) == ("complete", size, size)
        assert upload.filename == source.name and upload.id.startswith("upl_")
        assert progress == [chunk, 2 * chunk, size]
        create, *patches = [r for r in recorder.requests if r.method in ("POST", "PATCH")]
        assert create.headers["upload-length"] == str(size)
        assert create.headers["tus-resumable"] == "1.0.0" and create.headers["idempotency-key"]
        assert [int(r.headers["upload-offset"]) for r in patches] == [0, chunk, 2 * chunk]
        assert b"".join(r.content for r in patches) == source.read_bytes()
        other_key, _ = _key(uploads)
        with Client(other_key, uploads.base) as other, pytest.raises(NotFoundError) as foreign:
            other.enhance(upload_id=upload.id)
        assert foreign.value.request_id
        job = client.enhance(upload_id=upload.id)
        assert job.status == "queued"
        job.cancel()


def test_upload_file_resumes_an_upload_from_the_servers_offset(uploads: Service, make_video):
    key, _ = _key(uploads)
    source = make_video("resume_by_url.mp4", seconds=1)
    data = source.read_bytes()
    half = len(data) // 2
    recorder = _Recorder()
    with Client(key, uploads.base, http_client=recorder.client()) as client:
        created = client.create_upload(source)  # a program keeps upload_url, then dies
        assert (created.status, created.offset, created.size) == ("pending", 0, len(data))
        assert created.upload_url and created.upload_url.endswith(f"/v2/uploads/{created.id}")
        sent = httpx.patch(
            created.upload_url,
            content=data[:half],
            timeout=30,
            headers={"Authorization": f"Bearer {key}", **_CHUNK_HEADERS, "Upload-Offset": "0"},
        )
        assert sent.status_code == 204, sent.text
        with pytest.raises(InvalidRequestError) as unfinished:
            client.enhance(upload_id=created.id)
        assert unfinished.value.param == "upload_id"
        # Restarted, it resumes from the offset the server holds.
        upload = client.upload_file(source, upload_url=created.upload_url)
    assert upload.status == "complete" and upload.offset == len(data)
    patches = [r for r in recorder.requests if r.method == "PATCH"]
    assert [int(r.headers["upload-offset"]) for r in patches] == [half]
    assert b"".join(r.content for r in patches) == data[half:]


class _CuttingProxy:
    """A TCP proxy to the service that drops the connection carrying the client's
    ``cut_after``-th byte (once), as a flaky network would."""

    def __init__(self, target: str, cut_after: int) -> None:
        self.target = httpx.URL(target)
        self.cut_after = cut_after
        self.forwarded = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.target.host, self.target.port))
            threading.Thread(
                target=self._pump, args=(downstream, upstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, downstream, False), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                cut = False
                if counted:
                    with self._lock:
                        if self.cuts == 0 and self.forwarded + len(data) >= self.cut_after:
                            data = data[: self.cut_after - self.forwarded]
                            self.cuts, cut = 1, True
                        self.forwarded += len(data)
                sink.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()


def test_upload_file_resumes_after_a_dropped_connection(
    uploads: Service, make_video, tmp_path: Path
):
    key, _ = _key(uploads)
    source = make_video("dropped.mp4", seconds=1)
    size = source.stat().st_size
    chunk = math.ceil(size / 3)
    proxy = _CuttingProxy(uploads.base, cut_after=chunk + chunk // 2 + 1500)
    recorder = _Recorder()
    try:
        with Client(key, proxy.base, http_client=recorder.client()) as client:
            upload = client.upload_file(source, chunk_size=chunk)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert upload.status == "complete" and upload.offset == size
    methods = [r.method for r in recorder.requests]
    assert methods.count("HEAD") >= 1 and methods.index("HEAD") > methods.index("PATCH")
    with Client(key, uploads.base) as client:
        job = client.enhance(upload_id=upload.id, upscale_factor=2)
        assert job.wait(timeout=240).status == "completed", job.error
        job.download(tmp_path / "out.mp4")
    # The service decoded every frame of the resumed upload: no byte was lost or doubled.
    assert _decoded(tmp_path / "out.mp4") == (24, 192, 128)


def test_retroiva_submit_uploads_a_local_file(uploads: Service, make_video, tmp_path: Path):
    key, _ = _key(uploads)
    local = tmp_path / "local.mp4"
    local.write_bytes(make_video("local.mp4", seconds=1).read_bytes())
    done = _cli(
        uploads,
        key,
        "local.mp4",
        "--wait",
        "--output",
        "out.mp4",
        "--upscale-factor",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"job_\S+: completed; wrote out.mp4", done.stdout), done.stdout
    assert _decoded(tmp_path / "out.mp4") == (24, 192, 128)


def test_retroiva_submit_cancel_after_ends_the_job_past_its_deadline(
    uploads: Service, tmp_path: Path
):
    # cancel_after (issue 17 item 5) arrives with the uploads branch.
    key, _ = _key(uploads)
    done = _cli(
        uploads,
        key,
        f"{uploads.media}/long.mp4",
        "--cancel-after",
        "1",
        "--wait",
        "--upscale-factor",
        "4",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"job_\S+: canceled \(deadline_exceeded: ", done.stderr), done.stderr
