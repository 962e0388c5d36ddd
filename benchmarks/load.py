"""Bounded load on the whole service: many clients submit jobs and poll them to the end.

Starts the service as `retroiva serve` does (Ray Serve: API replicas + runner, SQLite)
on 127.0.0.1, serves a tiny clip from a local HTTP server, then ``--clients`` async
clients each submit ``--jobs-per-client`` jobs (engine classical, so the runner keeps
up on 2 cores) and poll them every 0.5 s, listing their jobs now and then, until every
job has ended or ``--deadline`` passes.  Reports requests/s, p50/p99 latency per kind
of request, errors (any non-2xx other than the documented 429), and lost jobs (not
terminal by the deadline): the figure that must be 0.

Then, unless ``--skip-abuse``, the same service is measured for isolation: well-behaved
keys (``--tenants`` keys × ``--tenant-jobs`` jobs, each with a webhook to a healthy
receiver) run alone, then again right after one abusive key has flooded the queue
(``--abuse-jobs`` jobs at once, every one with a webhook to a receiver that drips its
answer a byte a second).  Reported for the well-behaved jobs, in both runs: p50/p99
start delay (``started_at - created_at``, from the store), p99 time to completion,
and p99 webhook delay (first attempt - completion).

    .venv/bin/python -m benchmarks.load [--clients 32 --jobs-per-client 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

from benchmarks.api_latency import _free_port, _wait_ready
from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.access.keys import new_api_key
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from tests.local_http import serve_directory, serve_receiver

TERMINAL = {"completed", "failed", "canceled"}


def _serve_clip(root: Path) -> str:
    root.mkdir(parents=True)
    write_sample_video(root / "clip.mp4", SampleSpec(width=96, height=64, seconds=1))
    base, _ = serve_directory(root)
    return f"{base}/clip.mp4"


async def _client(
    http: httpx.AsyncClient,
    video: str,
    jobs: int,
    deadline: float,
    latencies: dict[str, list[float]],
    errors: dict[str, int],
    outcomes: dict[str, str],
) -> None:
    async def call(kind: str, method: str, url: str, **kwargs: object) -> httpx.Response:
        # A well-behaved client: transport errors (a keep-alive connection the server
        # closed as we reused it) are counted and retried; POSTs carry an
        # Idempotency-Key, so a retried submit can never create a second job.
        for attempt in range(4):
            started = time.perf_counter()
            try:
                response = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                errors[f"{kind} {type(exc).__name__} (retried)"] += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            latencies[kind].append(time.perf_counter() - started)
            if response.status_code == 429:
                errors["429 (rate limited, documented)"] += 1
            elif response.status_code >= 300:
                errors[f"{kind} {response.status_code}"] += 1
            return response
        raise RuntimeError(f"{kind}: four transport errors in a row")

    mine = []
    for _ in range(jobs):
        response = await call(
            "POST /v2/enhance",
            "POST",
            "/v2/enhance",
            json={"video_url": video, "engine": "classical"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if response.status_code == 200:
            mine.append(response.json()["id"])
            outcomes[mine[-1]] = "queued"
    polls = 0
    while time.monotonic() < deadline and any(outcomes[j] not in TERMINAL for j in mine):
        await asyncio.sleep(0.5)
        for job_id in [j for j in mine if outcomes[j] not in TERMINAL]:
            response = await call("GET /v2/jobs/{id}", "GET", f"/v2/jobs/{job_id}")
            if response.status_code == 200:
                outcomes[job_id] = response.json()["status"]
        polls += 1
        if polls % 10 == 0:
            await call("GET /v2/jobs", "GET", "/v2/jobs?limit=10")


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _submit(http: httpx.AsyncClient, key: str, body: dict[str, object]) -> str:
    for attempt in range(4):
        try:
            response = await http.post(
                "/v2/enhance",
                json=body,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
            )
        except httpx.TransportError:
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        response.raise_for_status()
        return str(response.json()["id"])
    raise RuntimeError("four transport errors in a row")


async def _tenants_run(
    http: httpx.AsyncClient,
    store: SqliteStore,
    video: str,
    hook: str,
    tenants: list[str],
    jobs: int,
    deadline: float,
) -> dict[str, list[float]]:
    """Submit ``jobs`` per tenant key at once; once all end, their delays in seconds."""
    body = {"video_url": video, "engine": "classical", "webhook_url": hook}
    ids = await asyncio.gather(*(_submit(http, key, body) for key in tenants for _ in range(jobs)))
    while True:
        records = [await store.get_job(job_id) for job_id in ids]
        if all(r is not None and r.webhook_status in ("delivered", "failed") for r in records):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("well-behaved jobs did not all end by the deadline")
        await asyncio.sleep(0.5)
    delays: dict[str, list[float]] = defaultdict(list)
    for record in records:
        assert record is not None and record.completed_at is not None
        delays["start"].append((record.started_at or record.completed_at) - record.created_at)
        delays["completion"].append(record.completed_at - record.created_at)
        attempts = await store.webhook_attempts(record.id)
        if attempts:
            delays["webhook"].append(attempts[0].at - record.completed_at)
    return delays


def _isolation(base: str, store: SqliteStore, video: str, args: argparse.Namespace) -> None:
    """Well-behaved keys alone, then beside one abusive key; prints both."""
    tenants = []
    abuser, abuser_record = new_api_key("abuser", 10**6)

    async def seed() -> None:
        for i in range(args.tenants):
            key, record = new_api_key(f"tenant-{i}", 10**6)
            await store.add_key(record)
            tenants.append(key)
        await store.add_key(abuser_record)

    asyncio.run(seed())
    healthy, healthy_server = serve_receiver()
    dripping, dripping_server = serve_receiver(drip=True)

    async def run() -> dict[str, dict[str, list[float]]]:
        results = {}
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + args.deadline
            results["alone"] = await _tenants_run(
                http, store, video, healthy, tenants, args.tenant_jobs, deadline
            )
            flood = {"video_url": video, "engine": "classical", "webhook_url": dripping}
            await asyncio.gather(*(_submit(http, abuser, flood) for _ in range(args.abuse_jobs)))
            deadline = time.monotonic() + args.deadline
            results["beside the abuser"] = await _tenants_run(
                http, store, video, healthy, tenants, args.tenant_jobs, deadline
            )
        return results

    try:
        results = asyncio.run(run())
    finally:
        healthy_server.shutdown()
        dripping_server.shutdown()
    print(
        f"isolation: {args.tenants} well-behaved keys × {args.tenant_jobs} jobs, alone and "
        f"after one key queued {args.abuse_jobs} jobs whose webhooks drip"
    )
    for label, delays in results.items():
        print(
            f"  {label:18s} start delay p50 {_quantile(delays['start'], 50):6.2f} s  "
            f"p99 {_quantile(delays['start'], 99):6.2f} s   completion p99 "
            f"{_quantile(delays['completion'], 99):6.2f} s   webhook delay p99 "
            f"{_quantile(delays['webhook'], 99):6.2f} s"
        )
    alone, beside = (_quantile(results[k]["start"], 99) for k in results)
    print(f"  p99 start delay beside the abuser / alone: {beside / max(alone, 1e-3):.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--jobs-per-client", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument(
        "--skip-abuse", action="store_true", help="skip the isolation run beside an abusive key"
    )
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--tenant-jobs", type=int, default=2)
    parser.add_argument("--abuse-jobs", type=int, default=30)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 clients × 1 job, no isolation run: proves it runs (CI)",
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.jobs_per_client, args.skip_abuse = 2, 1, True
        args.deadline = min(args.deadline, 120.0)
    data = Path(tempfile.mkdtemp(prefix="retroiva-load-"))
    video = _serve_clip(data / "www")
    settings = Settings(
        data_dir=data / "service",
        port=_free_port(),
        api_replicas=2,
        runner_concurrency=2,
        allow_private_urls=True,
        default_rate_limit=10**6,
    )
    key, record = new_api_key("load", 10**6)
    store = SqliteStore(settings.sqlite_path)

    async def seed() -> None:
        await store.init()
        await store.add_key(record)

    asyncio.run(seed())
    from ray import serve

    from pipelines.enhance import ensure_ray
    from serve_app.deployments import build_app

    ensure_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    serve.run(build_app(settings), name="retroiva", route_prefix="/")
    base = f"http://127.0.0.1:{settings.port}"
    _wait_ready(f"{base}/healthz")

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    outcomes: dict[str, str] = {}

    async def run() -> float:
        limits = httpx.Limits(max_connections=args.clients)
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=limits, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            started = time.monotonic()
            deadline = started + args.deadline
            await asyncio.gather(
                *(
                    _client(
                        http, video, args.jobs_per_client, deadline, latencies, errors, outcomes
                    )
                    for _ in range(args.clients)
                )
            )
            return time.monotonic() - started

    elapsed = asyncio.run(run()) if args.clients else 0.0
    if not args.skip_abuse:
        _isolation(base, store, video, args)
    serve.shutdown()
    if not args.clients:
        return
    requests = sum(len(v) for v in latencies.values())
    print(
        f"{args.clients} clients × {args.jobs_per_client} jobs, {elapsed:.1f} s: "
        f"{requests} requests, {requests / elapsed:.1f} req/s"
    )
    for kind, values in sorted(latencies.items()):
        cuts = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        print(
            f"  {kind:22s} {len(values):6d} requests  p50 {cuts[49] * 1e3:7.1f} ms  "
            f"p99 {cuts[98] * 1e3:7.1f} ms"
        )
    print(f"  errors: {dict(errors) or 0}")
    statuses: dict[str, int] = defaultdict(int)
    for status in outcomes.values():
        statuses[status] += 1
    lost = sum(status not in TERMINAL for status in outcomes.values())
    print(f"  jobs submitted {len(outcomes)}, by final status {dict(statuses)}, lost {lost}")


if __name__ == "__main__":
    main()
