"""GET /v2/jobs/{id}: latency (p50/p99) and throughput with 64 keep-alive connections.

Three servers in one run, each hit with the same load from this process:

1. the Serve app (``retroiva serve``'s deployments: proxy → API replica → SQLite),
2. our Starlette app under plain uvicorn (same auth, rate limit and store work),
3. a bare uvicorn + Starlette app returning the same JSON bytes (no auth, no store).

1 vs 3 is the ratio the issue asks for; 2 splits it into Serve's share and ours.

    .venv/bin/python -m benchmarks.api_latency [--seconds 10 --connections 64] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serve_app.access.keys import new_api_key
from serve_app.deployments import settings_env
from serve_app.jobs.records import JobRecord
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus

BARE_APP = """
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
BODY = open(sys.argv[1], "rb").read()
async def job(request):
    return Response(BODY, media_type="application/json")
app = Starlette(routes=[Route("/v2/jobs/{job_id}", job)])
"""

OUR_APP = """
from serve_app.api.app import create_api
from serve_app.settings import Settings
app = create_api(Settings())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(
    url: str, headers: dict[str, str], seconds: float, connections: int
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        for _ in range(3):  # warm-up
            await client.get(url)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, errors


def _report(name: str, latencies: list[float], errors: int, seconds: float) -> float:
    cuts = statistics.quantiles(latencies, n=100)
    rps = len(latencies) / seconds
    print(
        f"  {name:<34} {rps:8.0f} req/s   p50 {cuts[49] * 1e3:6.1f} ms   "
        f"p99 {cuts[98] * 1e3:6.1f} ms   errors {errors}"
    )
    return rps


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} never came up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--quick", action="store_true", help="1 s per server, 4 connections: proves it runs (CI)"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections = 1.0, 4
    data = Path(tempfile.mkdtemp(prefix="retroiva-api-bench-"))
    settings = Settings(data_dir=data, port=_free_port(), default_rate_limit=10**9)
    store = SqliteStore(settings.sqlite_path)
    key, record = new_api_key("bench", 10**9)
    job = JobRecord(
        id="job_benchmark",
        key_id=record.id,
        status=JobStatus.PROCESSING,
        input_url="https://example.com/v.mp4",
        preset="general",
        upscale_factor=2,
        created_at=time.time(),
        created_seq=time.time_ns(),
        progress=0.45,
        eta_seconds=120,
    )

    async def seed() -> None:
        await store.init()
        await store.add_key(record)
        await store.insert_job(job, time.time())

    asyncio.run(seed())
    headers = {"Authorization": f"Bearer {key}"}
    path = f"/v2/jobs/{job.id}"
    results: dict[str, float] = {}

    from ray import serve

    from pipelines.enhance import ensure_ray
    from serve_app.deployments import build_app

    ensure_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    serve.run(build_app(settings), name="retroiva", route_prefix="/")
    body = httpx.get(f"http://127.0.0.1:{settings.port}{path}", headers=headers).content
    print(
        f"{args.connections} keep-alive connections, {args.seconds:g} s each, "
        f"{os.cpu_count()} CPU cores; body {len(body)} bytes"
    )
    latencies, errors = asyncio.run(
        _load(f"http://127.0.0.1:{settings.port}{path}", headers, args.seconds, args.connections)
    )
    results["serve"] = _report("Ray Serve + Retroiva API", latencies, errors, args.seconds)
    serve.shutdown()

    (data / "body.json").write_bytes(body)
    (data / "bare_app.py").write_text(BARE_APP)
    (data / "our_app.py").write_text(OUR_APP)
    env = {**os.environ, **settings_env(settings)}
    for name, module, extra in [
        ("uvicorn + Retroiva API", "our_app", []),
        ("uvicorn + bare Starlette (same JSON)", "bare_app", [str(data / "body.json")]),
    ]:
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import sys; sys.argv = ['app'] + {extra!r}; import uvicorn; "
                f"uvicorn.run('{module}:app', host='127.0.0.1', port={port}, "
                f"log_level='warning', app_dir={str(data)!r})",
            ],
            env=env,
        )
        try:
            _wait_ready(f"http://127.0.0.1:{port}{path}")
            latencies, errors = asyncio.run(
                _load(f"http://127.0.0.1:{port}{path}", headers, args.seconds, args.connections)
            )
            results[name] = _report(name, latencies, errors, args.seconds)
        finally:
            server.terminate()
            server.wait()
    bare = results["uvicorn + bare Starlette (same JSON)"]
    print(f"  throughput ratio Serve app / bare uvicorn: {results['serve'] / bare:.3f}")
    print(
        f"  throughput ratio uvicorn + our app / bare uvicorn: "
        f"{results['uvicorn + Retroiva API'] / bare:.3f}"
    )


if __name__ == "__main__":
    main()
