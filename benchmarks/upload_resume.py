"""A resumable upload through the real server: tuspy sends a file in chunks, the
connection is killed in the middle of a chunk, tuspy resumes from HEAD's offset, and
the stored bytes are compared with the source (SHA-256).

The server is the Serve app (``retroiva serve``'s deployments: proxy → API replica →
SQLite, bytes in the data directory), or with ``--server uvicorn`` our Starlette app
under plain uvicorn.

    .venv/bin/python -m benchmarks.upload_resume [--mb 50] [--chunk-mb 8] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tusclient.client import TusClient

from benchmarks.api_latency import OUR_APP, _free_port, _wait_ready
from serve_app.access.keys import new_api_key
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings


def _kill_midway(url: str, auth: dict[str, str], offset: int, body: bytes) -> int:
    """PATCH ``body`` at ``offset`` but drop the connection halfway; bytes sent."""
    parts = urlsplit(url)
    sent = len(body) // 2
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {auth['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(head + body[:sent])
        time.sleep(0.5)  # the server reads what arrived before the reset
        # SO_LINGER 0: close sends a reset, as a dropped link or a killed client does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return sent


def _offset(url: str, auth: dict[str, str]) -> int:
    response = httpx.head(url, headers={**auth, "Tus-Resumable": "1.0.0"}, timeout=30)
    response.raise_for_status()
    return int(response.headers["upload-offset"])


def run(base: str, settings: Settings, auth: dict[str, str], source: Path, chunk: int) -> None:
    size = source.stat().st_size
    data = source.read_bytes()
    started = time.perf_counter()
    uploader = TusClient(f"{base}/v2/uploads", headers=auth).uploader(
        file_path=str(source), chunk_size=chunk, metadata={"filename": source.name}
    )
    half = size // 2 // chunk * chunk or chunk
    while uploader.offset < half:
        uploader.upload_chunk()
    url = uploader.url
    before_kill = time.perf_counter()
    sent = _kill_midway(url, auth, uploader.offset, data[uploader.offset : uploader.offset + chunk])
    killed_at = time.perf_counter()
    time.sleep(1.0)  # a client reconnects after a pause; the server finishes the cut PATCH
    offset = _offset(url, auth)
    resumed = TusClient(f"{base}/v2/uploads", headers=auth).uploader(
        file_path=str(source), url=url, chunk_size=chunk, retries=3, retry_delay=1
    )
    resumed.upload()
    finished = time.perf_counter()
    upload_id = urlsplit(url).path.rsplit("/", 1)[-1]
    stored = (settings.uploads_dir / upload_id).read_bytes()
    identical = hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    kept = offset - uploader.offset
    print(f"  file: {size / 2**20:.1f} MiB in {chunk / 2**20:.0f} MiB chunks")
    print(f"  before the kill: {uploader.offset / 2**20:.1f} MiB in {before_kill - started:.2f} s")
    print(
        f"  killed mid-chunk after sending {sent / 2**20:.1f} MiB; the server kept "
        f"{kept / 2**20:.2f} MiB of them (resume offset {offset})"
    )
    print(
        f"  resume (HEAD + the rest, after a 1 s reconnect pause): "
        f"{finished - killed_at - 1.0:.2f} s"
    )
    print(
        f"  total wall time: {finished - started:.2f} s "
        f"(pauses included: 0.5 s at the kill, 1 s before the resume)"
    )
    print(f"  byte-identical: {identical}")
    if not identical:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="file size in MiB")
    parser.add_argument("--chunk-mb", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="5 MiB in 1 MiB chunks")
    parser.add_argument("--server", choices=["serve", "uvicorn"], default="serve")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.chunk_mb = 5.0, 1.0
    data = Path(tempfile.mkdtemp(prefix="retroiva-upload-bench-"))
    settings = Settings(data_dir=data, port=_free_port(), default_rate_limit=10**6)
    store = SqliteStore(settings.sqlite_path)
    key, record = new_api_key("bench", 10**6)

    async def seed() -> None:
        await store.init()
        await store.add_key(record)

    asyncio.run(seed())
    auth = {"Authorization": f"Bearer {key}"}
    source = data / "source.bin"
    source.write_bytes(os.urandom(int(args.mb * 2**20)))
    base = f"http://127.0.0.1:{settings.port}"
    chunk = int(args.chunk_mb * 2**20)
    print(f"{args.server}: {base}")
    if args.server == "serve":
        from ray import serve

        from pipelines.enhance import ensure_ray
        from serve_app.deployments import build_app

        ensure_ray()
        serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
        serve.run(build_app(settings), name="retroiva", route_prefix="/")
        try:
            _wait_ready(f"{base}/healthz")
            run(base, settings, auth, source, chunk)
        finally:
            serve.shutdown()
        return
    env = {
        **os.environ,
        "RETROIVA_DATA_DIR": str(data),
        "PYTHONPATH": os.getcwd(),
        "RETROIVA_DEFAULT_RATE_LIMIT": str(10**6),
    }
    (data / "bench_app.py").write_text(OUR_APP)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(data),
            "bench_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        _wait_ready(f"{base}/healthz")
        run(base, settings, auth, source, chunk)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
