"""Webhooks: JS-exact bodies, signatures checked by the reference's Node snippet, retries."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import json
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.errors import InvalidInputError
from serve_app.access.keys import new_api_key, new_id
from serve_app.delivery.webhooks import js_json, retry_delay, sign
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

NODE = shutil.which("node")
RECEIVER = Path(__file__).with_name("webhook_receiver.js")
needs_node = pytest.mark.skipif(
    NODE is None,
    reason="node is not installed (apt-get install nodejs); the JS snippet check needs it",
)


@needs_node
def test_bodies_are_byte_identical_to_javascripts_reserialisation():
    rng = random.Random(7)
    floats = [0.45, 1.0, 1e-7, 2.5e-8, 1e16, 1e21, 123456789.125, -0.0, 5e-324]
    floats += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(2000)]
    floats = [f for f in floats if f == f and abs(f) != float("inf")]
    ours = js_json(
        {
            "floats": floats,
            "text": 'vidéo — ファイル 😀 \u2028 \x00 "\\',
            "big": 2**53 - 1,
            "nested": [{"a": None, "b": True}],
        }
    )
    script = (
        "let s='';process.stdin.on('data',d=>s+=d)"
        ".on('end',()=>process.stdout.write(JSON.stringify(JSON.parse(s))))"
    )
    out = subprocess.run(
        [NODE, "-e", script], input=ours.encode(), capture_output=True, check=True
    ).stdout.decode()
    assert out == ours


def test_unsafe_numbers_are_refused():
    with pytest.raises(ValueError, match="JavaScript"):
        js_json({"n": 2**53 + 1})
    with pytest.raises(ValueError):
        js_json({"n": float("nan")})


def test_retry_delays_grow():
    rng = random.Random(3)
    for _ in range(50):
        delays = [retry_delay(n, 1.0, rng) for n in range(1, 6)]
        assert all(a < b for a, b in itertools.pairwise(delays))


# A real receiver running the reference's snippet.
@dataclass
class Receiver:
    url: str
    log: Path
    process: subprocess.Popen[str]

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(mode: str, secret: str, port: int | None = None) -> Receiver:
        assert NODE is not None
        log = tmp_path / f"receiver-{len(started)}.log"
        args = [NODE, str(RECEIVER), mode, str(log)] + ([str(port)] if port else [])
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            text=True,
            env={"WEBHOOK_SECRET": secret, "PATH": "/usr/bin:/bin"},
        )
        assert process.stdout is not None
        bound = int(process.stdout.readline())
        receiver = Receiver(f"http://127.0.0.1:{bound}/hooks", log, process)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.process.kill()
        receiver.process.wait()


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "poll_seconds": 0.05,
        "allow_private_urls": True,
        "webhook_retry_base_seconds": 0.2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _fake_process(job, settings, on_progress, cancel) -> Path:
    if job.input_url.endswith("broken.mp4"):
        raise InvalidInputError(
            "ファイルが壊れています — input is not a video", reason="not_a_video"
        )
    output = settings.scratch_dir / job.id / "output.mp4"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"video")
    return output


async def _add_key(store: SqliteStore) -> ApiKeyRecord:
    _, record = new_api_key("hooks", 1000)
    await store.init()
    await store.add_key(record)
    return record


async def _add_job(
    store: SqliteStore,
    key: ApiKeyRecord,
    webhook: str,
    input_url: str = "http://127.0.0.1:9/vidéo-ñ.mp4",
) -> JobRecord:
    job = JobRecord(
        id=new_id("job"),
        key_id=key.id,
        status=JobStatus.QUEUED,
        input_url=input_url,
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
        webhook_url=webhook,
    )
    await store.insert_job(job, time.time())
    return job


async def _run_until_settled(
    runner: JobRunner, store: SqliteStore, jobs: list[str], timeout: float = 30
) -> list[JobRecord]:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while True:
            records = [await store.get_job(j) for j in jobs]
            if all(r.webhook_status in ("delivered", "failed") for r in records):
                return records
            assert time.monotonic() < deadline, [r.webhook_status for r in records]
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


@needs_node
def test_each_outcome_delivers_one_event_the_snippet_accepts(tmp_path, start_receiver):
    async def scenario() -> tuple[list[JobRecord], ApiKeyRecord]:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        receiver = start_receiver("ok", key.webhook_secret)
        done = await _add_job(store, key, receiver.url)
        broken = await _add_job(store, key, receiver.url, "http://127.0.0.1:9/broken.mp4")
        canceled = await _add_job(store, key, receiver.url)
        await store.request_cancel(canceled.id, time.time())
        runner = JobRunner(store, _settings(tmp_path), process=_fake_process)
        records = await _run_until_settled(runner, store, [done.id, broken.id, canceled.id])
        await asyncio.sleep(0.5)  # nothing further may arrive
        return records, receiver

    records, receiver = asyncio.run(scenario())
    events = receiver.events()
    assert len(events) == 3, events
    assert all(e["valid"] and e["status"] == 200 for e in events)
    by_id = {e["id"]: e for e in events}
    for record, type_ in zip(records, ["job.completed", "job.failed", "job.canceled"], strict=True):
        event = by_id[record.event_id]
        assert (event["type"], event["eventId"]) == (type_, record.event_id)
        assert event["inputUrl"] == record.input_url
        assert int(event["timestamp"]) == int(record.completed_at)
        assert record.webhook_status == "delivered" and record.webhook_attempts == 1
    assert by_id[records[1].event_id]["error"]["message"].startswith("ファイル")


@needs_node
def test_a_wrong_secret_is_rejected_by_the_snippet(tmp_path, start_receiver):
    async def scenario() -> Receiver:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        receiver = start_receiver("ok", "whsec_not_the_right_one")
        job = await _add_job(store, key, receiver.url)
        runner = JobRunner(store, _settings(tmp_path, webhook_max_retries=0), process=_fake_process)
        await _run_until_settled(runner, store, [job.id])
        return receiver

    [event] = asyncio.run(scenario()).events()
    assert (event["valid"], event["status"]) == (False, 401)


@needs_node
def test_failing_three_times_then_delivered_on_the_fourth(tmp_path, start_receiver):
    async def scenario() -> tuple[JobRecord, Receiver]:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        receiver = start_receiver("fail:3", key.webhook_secret)
        job = await _add_job(store, key, receiver.url)
        runner = JobRunner(store, _settings(tmp_path), process=_fake_process)
        [record] = await _run_until_settled(runner, store, [job.id])
        return record, receiver

    record, receiver = asyncio.run(scenario())
    events = receiver.events()
    assert [e["status"] for e in events] == [500, 500, 500, 200]
    assert len({e["id"] for e in events}) == 1 and all(e["valid"] for e in events)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(events)]
    assert all(a < b for a, b in itertools.pairwise(gaps)), gaps
    assert (record.webhook_status, record.webhook_attempts) == ("delivered", 4)


@needs_node
def test_always_failing_receiver_sees_six_attempts(tmp_path, start_receiver):
    async def scenario() -> tuple[JobRecord, Receiver, list]:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        receiver = start_receiver("fail", key.webhook_secret)
        job = await _add_job(store, key, receiver.url)
        runner = JobRunner(
            store, _settings(tmp_path, webhook_retry_base_seconds=0.05), process=_fake_process
        )
        [record] = await _run_until_settled(runner, store, [job.id])
        await asyncio.sleep(0.5)
        return record, receiver, await store.webhook_attempts(job.id)

    record, receiver, attempts = asyncio.run(scenario())
    assert len(receiver.events()) == 6  # 1 + 5 retries
    assert (record.webhook_status, record.webhook_attempts) == ("failed", 6)
    assert [a.status_code for a in attempts] == [500] * 6


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_node
def test_pending_event_survives_a_restart(tmp_path, start_receiver):
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/hooks"

    async def before_restart() -> tuple[ApiKeyRecord, JobRecord]:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        job = await _add_job(store, key, url)
        stop = asyncio.Event()
        runner = JobRunner(store, _settings(tmp_path), process=_fake_process)
        task = asyncio.create_task(runner.run(stop))
        while (await store.get_job(job.id)).webhook_attempts == 0:
            await asyncio.sleep(0.05)
        stop.set()  # the service stops with the event undelivered
        await task
        await store.close()
        return key, await SqliteStore(tmp_path / "s.db").get_job(job.id)

    key, job = asyncio.run(before_restart())
    assert (job.webhook_status, job.webhook_attempts) == ("pending", 1)
    receiver = start_receiver("ok", key.webhook_secret, port)

    async def after_restart() -> JobRecord:
        store = SqliteStore(tmp_path / "s.db")  # a fresh process's view: only the store
        runner = JobRunner(store, _settings(tmp_path), process=_fake_process)
        [record] = await _run_until_settled(runner, store, [job.id])
        return record

    record = asyncio.run(after_restart())
    assert (record.webhook_status, record.webhook_attempts) == ("delivered", 2)
    [event] = receiver.events()
    assert event["valid"] and event["id"] == job.event_id


def test_private_webhook_targets_are_refused_at_delivery(tmp_path):
    async def scenario() -> tuple[JobRecord, list]:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        job = await _add_job(store, key, "http://10.0.0.9/hooks")
        settings = _settings(tmp_path, allow_private_urls=False, webhook_max_retries=0)
        runner = JobRunner(store, settings, process=_fake_process)
        [record] = await _run_until_settled(runner, store, [job.id])
        return record, await store.webhook_attempts(job.id)

    record, [attempt] = asyncio.run(scenario())
    assert record.webhook_status == "failed"
    assert attempt.status_code is None and attempt.error.startswith("refused")


def test_signature_is_hex_hmac_sha256_of_the_body():
    import hashlib
    import hmac

    body = js_json({"id": "evt_1"}).encode()
    assert sign("whsec_x", body) == hmac.new(b"whsec_x", body, hashlib.sha256).hexdigest()


# Hostile receivers, in Python (no node needed): slow, dripping, or answering with
# a huge body.  Each records when requests arrive and how much it managed to send.
class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arrivals: dict[str, list[float]] = {}
    sent: dict[str, int] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Hostile.arrivals.setdefault(self.path, []).append(time.time())
        try:
            if self.path == "/drip-headers":  # the status line, a byte every 0.2 s
                for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 200:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path == "/drip-body":  # 200 at once, then a body byte every 0.2 s
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b".")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path == "/huge":  # 200 with a 200 MB body
                self.send_response(200)
                self.send_header("Content-Length", str(200 * 2**20))
                self.end_headers()
                block = b"x" * 2**20
                for _ in range(200):
                    self.wfile.write(block)
                    _Hostile.sent[self.path] = _Hostile.sent.get(self.path, 0) + len(block)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
        except OSError:
            pass  # the client hung up, as it should


class _HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    _Hostile.arrivals.clear()
    _Hostile.sent.clear()
    server = _HostileServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("drip", ["/drip-headers", "/drip-body"])
def test_dripping_receivers_do_not_delay_another_keys_event(tmp_path, hostile, drip):
    """20 events to a dripping receiver (more than every delivery slot), then one of
    another key's to a healthy one: that one goes out at once, and each dripping
    attempt ends at the deadline."""

    async def scenario() -> tuple[JobRecord, list[JobRecord], list]:
        store = SqliteStore(tmp_path / "s.db")
        abuser, tenant = await _add_key(store), await _add_key(store)
        slow = [await _add_job(store, abuser, hostile + drip) for _ in range(20)]
        settings = _settings(
            tmp_path, webhook_timeout_seconds=2, webhook_max_retries=0, runner_concurrency=4
        )
        runner = JobRunner(store, settings, process=_fake_process)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            while len(_Hostile.arrivals.get(drip, [])) < 4:  # the abuser is being served
                await asyncio.sleep(0.05)
            healthy = await _add_job(store, tenant, hostile + "/ok")
            deadline = time.monotonic() + 8
            while (await store.get_job(healthy.id)).webhook_status != "delivered":
                assert time.monotonic() < deadline, "the healthy receiver's event waited"
                await asyncio.sleep(0.05)
            while True:  # the first dripping attempts end (at their deadline)
                ended = [
                    r
                    for r in [await store.get_job(j.id) for j in slow]
                    if r.webhook_status in ("delivered", "failed")
                ]
                if ended:
                    break
                assert time.monotonic() < deadline + 5, "no dripping attempt ended"
                await asyncio.sleep(0.05)
            return (
                await store.get_job(healthy.id),
                ended,
                await store.webhook_attempts(ended[0].id),
            )
        finally:
            stop.set()
            task.cancel()  # undelivered drips: no need to wait for them
            with contextlib.suppress(asyncio.CancelledError):
                await task

    healthy, slow, attempts = asyncio.run(scenario())
    delay = _Hostile.arrivals["/ok"][0] - healthy.completed_at
    assert delay < 1.5, f"healthy event delivered {delay:.1f} s after the job ended"
    if drip == "/drip-headers":
        [attempt] = attempts
        assert attempt.status_code is None and "deadline" in attempt.error
        assert attempt.duration_ms < 3000
    else:  # the status line came at once; the body is never read
        assert all(j.webhook_status == "delivered" for j in slow)


def test_a_huge_response_body_is_not_read(tmp_path, hostile):
    async def scenario() -> JobRecord:
        store = SqliteStore(tmp_path / "s.db")
        key = await _add_key(store)
        job = await _add_job(store, key, hostile + "/huge")
        runner = JobRunner(store, _settings(tmp_path), process=_fake_process)
        [record] = await _run_until_settled(runner, store, [job.id])
        return record

    record = asyncio.run(scenario())
    assert (record.webhook_status, record.webhook_attempts) == ("delivered", 1)
    time.sleep(0.5)
    # What the socket buffers took before the client hung up: far from 200 MB.
    assert _Hostile.sent.get("/huge", 0) < 32 * 2**20, _Hostile.sent


def test_numbers_and_strings_are_written_as_javascript_writes_them():
    """Without node: the cases where Python's JSON and JSON.stringify differ."""
    value = {"f": [1.0, 1e-7, 1e21, 123456789.125, -0.0, 5e-324, 0.1], "s": "\ud800\u2028é"}
    assert js_json(value) == (
        '{"f":[1,1e-7,1e+21,123456789.125,0,5e-324,0.1],"s":"\\ud800\u2028é"}'
    )
    assert js_json({JobStatus.COMPLETED: (True, None, 2**53 - 1)}) == (
        '{"completed":[true,null,9007199254740991]}'
    )
