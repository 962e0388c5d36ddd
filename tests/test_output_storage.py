"""Output storage (local directory, S3 over moto's HTTP server) and the retention reaper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.access.keys import new_id
from serve_app.delivery.output_storage import LocalStorage, OutputStorage, S3Storage
from serve_app.delivery.signing import signature_valid
from serve_app.jobs.records import JobRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import JobStatus


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server mode)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_storage(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"retroiva-{new_id('b').lower().replace('_', '-')[:20]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return S3Storage(bucket, "outputs", endpoint_url=s3_endpoint, region="us-east-1")


def _output(tmp_path: Path, content: bytes = b"mp4 bytes") -> Path:
    source = tmp_path / "scratch_output.mp4"
    source.write_bytes(content)
    return source


def test_local_put_sign_and_delete(tmp_path: Path):
    storage = LocalStorage(tmp_path / "outputs", b"secret")
    key = storage.put("job_x", _output(tmp_path))
    assert key == "job_x.mp4" and storage.exists(key)
    assert not (tmp_path / "scratch_output.mp4").exists()  # moved, not copied
    url = storage.signed_url(key, 2_000_000_000, "http://api.test/")
    assert url.startswith("http://api.test/v2/files/job_x.mp4?expires=2000000000&signature=")
    signature = url.rsplit("=", 1)[1]
    assert signature_valid(b"secret", "/v2/files/job_x.mp4", 2_000_000_000, signature)
    assert not signature_valid(b"other", "/v2/files/job_x.mp4", 2_000_000_000, signature)
    storage.delete(key)
    storage.delete(key)  # idempotent
    assert not storage.exists(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.path("../escape.mp4")


def test_s3_upload_presigned_download_and_delete(s3_storage: S3Storage, tmp_path: Path):
    key = s3_storage.put("job_s3", _output(tmp_path, b"s3 video bytes"))
    assert key == "outputs/job_s3.mp4" and s3_storage.exists(key)
    assert not (tmp_path / "scratch_output.mp4").exists()
    url = s3_storage.signed_url(key, int(time.time()) + 600, "http://unused/")
    assert "Signature=" in url or "X-Amz-Signature=" in url
    response = httpx.get(url)  # plain HTTP, no AWS credentials
    assert (response.status_code, response.content) == (200, b"s3 video bytes")
    s3_storage.delete(key)
    assert not s3_storage.exists(key)


def _completed(job_id: str, key: str, completed_at: float) -> JobRecord:
    return JobRecord(
        id=job_id,
        key_id="key_r",
        status=JobStatus.QUEUED,
        input_url="https://e.com/v.mp4",
        preset="general",
        upscale_factor=2,
        created_at=completed_at - 10,
        created_seq=time.time_ns(),
    )


async def _seed(store: SqliteStore, job: JobRecord, key: str, completed_at: float) -> None:
    await store.init()
    await store.insert_job(job, time.time())
    await store.claim_next("r", time.time(), 30)
    await store.finish(job.id, "r", JobStatus.COMPLETED, completed_at, output_path=key)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_reaper_deletes_outputs_past_retention(backend: str, tmp_path: Path, request):
    settings = Settings(data_dir=tmp_path, retention_seconds=3600)
    storage: OutputStorage = (
        request.getfixturevalue("s3_storage")
        if backend == "s3"
        else LocalStorage(settings.outputs_dir, b"secret")
    )
    store = SqliteStore(settings.sqlite_path)
    old_key = storage.put("job_old", _output(tmp_path, b"old"))
    asyncio.run(_seed(store, _completed("job_old", old_key, 0), old_key, time.time() - 7200))
    new_key = storage.put("job_new", _output(tmp_path, b"new"))
    asyncio.run(_seed(store, _completed("job_new", new_key, 0), new_key, time.time() - 60))

    runner = JobRunner(store, settings, storage=storage)
    assert asyncio.run(runner.reap()) == 1
    assert not storage.exists(old_key) and storage.exists(new_key)
    old = asyncio.run(store.get_job("job_old"))
    assert (old.status, old.output_path) == (JobStatus.COMPLETED, None)  # record stays
    assert asyncio.run(runner.reap()) == 0


def test_stale_scratch_of_dead_runners_is_removed(tmp_path: Path):
    """Scratch of a queued (re-queued) or unknown job goes; a processing job's stays."""
    settings = Settings(data_dir=tmp_path)
    store = SqliteStore(settings.sqlite_path)

    async def seed() -> None:
        await store.init()
        await store.insert_job(_completed("job_running", "", 0), time.time())
        assert (await store.claim_next("other-runner", time.time(), 30)).id == "job_running"
        await store.insert_job(_completed("job_requeued", "", 0), time.time())

    asyncio.run(seed())
    for name in ("job_requeued", "job_running", "job_unknown"):
        (settings.scratch_dir / name).mkdir(parents=True)
        (settings.scratch_dir / name / "input").write_bytes(b"x")
    runner = JobRunner(store, settings, storage=LocalStorage(settings.outputs_dir, b"s"))
    asyncio.run(runner.remove_stale_scratch())
    assert sorted(p.name for p in settings.scratch_dir.iterdir()) == ["job_running"]


def test_replicas_starting_together_share_one_signing_secret(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    from serve_app.delivery.signing import load_signing_secret

    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_signing_secret(None, tmp_path), range(16)))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert oct((tmp_path / "signing.key").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]
