"""The deployed service over real HTTP: Ray Serve with two API replicas and the runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_fixture import Service  # the fixture itself is registered in conftest.py

from pipelines.probe import probe

from media import audio_timing

pytestmark = pytest.mark.usefixtures("ray_session")


def _wait(
    client: httpx.Client,
    job_id: str,
    auth: dict[str, str],
    until: Callable[[dict], bool],
    timeout: float = 120,
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v2/jobs/{job_id}", headers=auth).json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"timed out waiting; last state {job}"
        time.sleep(0.25)


def test_happy_path_from_post_to_signed_download(service: Service, tmp_path: Path):
    auth = service.new_key()
    with httpx.Client(base_url=service.base, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        created = client.post(
            "/v2/enhance",
            headers=auth,
            json={
                "video_url": f"{service.media}/clip.mp4",
                "preset": "archive",
                "upscale_factor": 3,
            },
        )
        assert created.status_code == 200, created.text
        assert len(created.headers.get_list("x-request-id")) == 1
        job = _wait(
            client, created.json()["id"], auth, lambda j: j["status"] in ("completed", "failed")
        )
        assert job["status"] == "completed", job
        assert job["progress"] == 1.0 and job["started_at"] <= job["completed_at"]
        link = client.get(f"/v2/jobs/{job['id']}/download", headers=auth).json()
        assert link["url"] == job["output_url"]
        assert link["expires_at"] == job["completed_at"] + 24 * 3600
        video = httpx.get(link["url"], timeout=30)  # the signature is the only credential
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        head = httpx.get(link["url"], headers={"Range": "bytes=0-99"}, timeout=30)
        assert (head.status_code, head.content) == (206, video.content[:100])
    output = tmp_path / "downloaded.mp4"
    output.write_bytes(video.content)
    info = probe(output)
    assert (info.width, info.height, info.frame_count, info.fps) == (288, 192, 24, 24)
    assert audio_timing(output) is not None
    assert not (service.settings.scratch_dir / job["id"]).exists()


def _failed_job(service: Service, name: str) -> tuple[dict, dict[str, str]]:
    """Submit ``name`` from the media server and wait for the job to end."""
    auth = service.new_key()
    with httpx.Client(base_url=service.base, timeout=30) as client:
        job_id = client.post(
            "/v2/enhance", headers=auth, json={"video_url": f"{service.media}/{name}"}
        ).json()["id"]
        job = _wait(client, job_id, auth, lambda j: j["status"] in ("completed", "failed"))
    return job, auth


def test_unreachable_input_fails_with_a_clear_error(service: Service):
    job, _ = _failed_job(service, "missing.mp4")
    assert job["status"] == "failed"
    assert job["error"] == {
        "type": "invalid_input",
        "message": "fetching video_url returned HTTP 404",
    }


def test_corrupt_input_fails_as_invalid_input(service: Service):
    job, auth = _failed_job(service, "corrupt.mp4")
    assert job["status"] == "failed" and job["error"]["type"] == "invalid_input"
    assert "not a video" in job["error"]["message"]
    assert job["output_url"] is None
    download = httpx.get(f"{service.base}/v2/jobs/{job['id']}/download", headers=auth)
    assert download.status_code == 409
    assert not (service.settings.scratch_dir / job["id"]).exists()


def test_cancel_running_and_queued_jobs(service: Service):
    auth = service.new_key()
    long_video = {"video_url": f"{service.media}/long.mp4", "upscale_factor": 4}
    with httpx.Client(base_url=service.base, timeout=30) as client:
        running = client.post("/v2/enhance", headers=auth, json=long_video).json()["id"]
        queued = client.post("/v2/enhance", headers=auth, json=long_video).json()["id"]
        _wait(client, running, auth, lambda j: j["progress"] > 0)
        # The runner takes one job at a time, so the second is still waiting.
        canceled = client.post(f"/v2/jobs/{queued}/cancel", headers=auth).json()
        assert canceled["status"] == "canceled"
        client.post(f"/v2/jobs/{running}/cancel", headers=auth)
        started = time.monotonic()
        job = _wait(client, running, auth, lambda j: j["status"] != "processing", 30)
        stopped_after = time.monotonic() - started
        assert job["status"] == "canceled"
        assert stopped_after < 15, f"pipeline took {stopped_after:.1f}s to stop"
        assert client.get(f"/v2/jobs/{queued}", headers=auth).json()["started_at"] is None
    assert not (service.settings.outputs_dir / f"{running}.mp4").exists()
    assert not (service.settings.scratch_dir / running).exists()


def test_rate_limit_holds_across_replicas_under_concurrency(service: Service):
    limit = 10
    auth = service.new_key(rate_limit=limit)
    window = service.settings.rate_window_seconds
    if window - time.time() % window < 5:  # don't let the burst straddle two windows
        time.sleep(window - time.time() % window + 0.1)

    def burst(_: int) -> list[int]:
        with httpx.Client(base_url=service.base, timeout=30) as client:
            return [client.get("/v2/jobs", headers=auth).status_code for _ in range(2)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = [code for result in pool.map(burst, range(20)) for code in result]
    assert codes.count(200) == limit, codes
    assert codes.count(429) == 40 - limit


def test_a_resumed_upload_becomes_a_job_and_is_deleted_when_it_ends(
    service: Service, tmp_path: Path
):
    """Issue 17 item 1 through Serve (two API replicas): tuspy uploads in chunks, a PATCH
    is cut off midway, tuspy resumes, the job runs on the upload, the upload goes."""
    import socket as sockets
    from urllib.parse import urlsplit

    from tusclient.client import TusClient

    auth = service.new_key()
    source = tmp_path / "clip.mp4"
    source.write_bytes(httpx.get(f"{service.media}/clip.mp4", timeout=30).content)
    data = source.read_bytes()
    chunk = len(data) // 3 + 1
    tus = TusClient(f"{service.base}/v2/uploads", headers=auth)
    uploader = tus.uploader(file_path=str(source), chunk_size=chunk)
    uploader.upload_chunk()
    url = urlsplit(uploader.url)
    with sockets.create_connection((url.hostname, url.port)) as cut:
        cut.sendall(
            (
                f"PATCH {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: {auth['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
                "Content-Type: application/offset+octet-stream\r\n"
                f"Upload-Offset: {chunk}\r\nContent-Length: {chunk}\r\n\r\n"
            ).encode()
            + data[chunk : chunk + chunk // 2]
        )
        time.sleep(0.5)
    # The cut request's handler keeps what arrived in a flush that outlives its cancel;
    # on a loaded machine that flush (and the proxy noticing the drop) can finish after
    # the client has reconnected, so ask HEAD until it shows, as a client would retry.
    deadline = time.monotonic() + 20
    resumed = tus.uploader(file_path=str(source), url=uploader.url, chunk_size=chunk)
    while resumed.offset <= chunk and time.monotonic() < deadline:
        time.sleep(0.5)
        resumed = tus.uploader(file_path=str(source), url=uploader.url, chunk_size=chunk)
    assert chunk < resumed.offset <= chunk + chunk // 2  # what arrived was kept
    resumed.upload()
    upload_id = url.path.rsplit("/", 1)[-1]
    stored = service.settings.uploads_dir / upload_id
    assert stored.read_bytes() == data
    with httpx.Client(base_url=service.base, timeout=30) as client:
        created = client.post("/v2/enhance", headers=auth, json={"upload_id": upload_id})
        assert created.status_code == 200, created.text
        job = _wait(
            client, created.json()["id"], auth, lambda j: j["status"] in ("completed", "failed")
        )
        assert job["status"] == "completed", job
        assert job["input_url"] == f"upload:{upload_id}"
        assert client.get(url.path, headers=auth).status_code == 404
    assert not stored.exists()
