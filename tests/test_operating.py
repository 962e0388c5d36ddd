"""The operator's flow on a real `ray start` cluster: `serve deploy`, then `ray job submit`.

The cluster is separate from the session's Ray (own temp dir and ports) and is torn
down by killing its process session: `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.sqlite_store import SqliteStore
from tests.local_http import serve_directory
from tests.media import decode_frames
from tests.stored_keys import add_key, bearer

REPO = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]
    dashboard: str
    serve_port: int
    data_dir: Path
    api_key: str

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / args[0]), *args[1:]], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)


def _kill_session(sid: int) -> None:
    """Every process `ray start` spawned, workers included, shares its session."""
    def members() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in members():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        psutil.wait_procs(members(), timeout=10)


def _wait_for(url: str, timeout: float, headers: dict[str, str] | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                        timeout=3) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            # 404 and 5xx: Serve's proxy is up but the app isn't deployed yet.
            if exc.code not in (404, 500, 502, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_for_answer(url: str, timeout: float) -> None:
    """Until the server answers at all (the dashboard wants a token: 401 is an answer)."""
    with contextlib.suppress(urllib.error.HTTPError):
        _wait_for(url, timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Unix socket paths live under the temp dir and must stay short.
    temp_dir = tempfile.mkdtemp(prefix="rtv", dir="/tmp")
    data_dir = tmp_path_factory.mktemp("cluster-data")
    gcs, dashboard, agent, serve_port = (_free_port() for _ in range(4))
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RETROIVA_DATA_DIR": str(data_dir), "RETROIVA_ALLOW_PRIVATE_URLS": "true",
           "RETROIVA_SIGNING_SECRET": "cluster-test-secret",
           "RETROIVA_PUBLIC_URL": f"http://127.0.0.1:{serve_port}",
           "RETROIVA_POLL_SECONDS": "0.2"}
    key, _ = add_key(SqliteStore(data_dir / "retroiva.sqlite3"))
    log = (data_dir / "ray-start.log").open("w")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}",
         f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={agent}", "--include-dashboard=true",
         "--num-cpus=2", '--resources={"retroiva_head": 1}'],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_answer(f"http://127.0.0.1:{dashboard}/api/version", timeout=90)
        yield Cluster(env, f"http://127.0.0.1:{dashboard}", serve_port, data_dir, key)
    finally:
        _kill_session(head.pid)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny clip served on 127.0.0.1, as a client's public URL would be."""
    root = tmp_path_factory.mktemp("served")
    write_sample_video(root / "clip.mp4", SampleSpec(width=96, height=64, seconds=1.0))
    base, server = serve_directory(root)
    yield base
    server.shutdown()


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Cluster:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": cluster.serve_port}
    path = cluster.data_dir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cluster.cli("serve", "deploy", "--address", cluster.dashboard, str(path))
    assert result.returncode == 0, result.stderr
    _wait_for(f"http://127.0.0.1:{cluster.serve_port}/healthz", timeout=120)
    return cluster


def _status(cluster: Cluster) -> dict[str, object]:
    result = cluster.cli("serve", "status", "--address", cluster.dashboard)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def test_serve_deploy_places_api_and_runner_on_the_head_resource(deployed: Cluster,
                                                                  videos: str):
    app = _status(deployed)["applications"]["retroiva"]  # type: ignore[index]
    assert app["status"] == "RUNNING"
    replicas = {name: d["replica_states"] for name, d in app["deployments"].items()}
    assert replicas == {"api": {"RUNNING": 2}, "runner": {"RUNNING": 1}}

    base = f"http://127.0.0.1:{deployed.serve_port}"
    request = urllib.request.Request(
        f"{base}/v2/enhance", method="POST",
        data=json.dumps({"video_url": f"{videos}/clip.mp4"}).encode(),
        headers={**bearer(deployed.api_key), "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        job = json.load(response)
    deadline = time.monotonic() + 120
    while job["status"] not in ("completed", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = json.loads(_wait_for(f"{base}/v2/jobs/{job['id']}", 10,
                                   bearer(deployed.api_key)))
    assert job["status"] == "completed", job["error"]
    output = deployed.data_dir / "served-output.mp4"
    output.write_bytes(_wait_for(job["output_url"], 10))
    assert decode_frames(output).shape[1:3] == (128, 192)


def test_archive_batch_through_ray_job_submit(deployed: Cluster, videos: str,
                                              tmp_path: Path):
    manifest = tmp_path / "reels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_url", "preset", "catalog_id"])
        writer.writerow([f"{videos}/clip.mp4", "archive", "R1"])
        writer.writerow([f"{videos}/missing.mp4", "", "R2"])
    results = tmp_path / "results.csv"
    submitted = deployed.cli(
        "ray", "job", "submit", "--address", deployed.dashboard, "--working-dir", str(REPO),
        "--", "python", "-m", "pipelines.batch", str(manifest), "--api-key",
        deployed.api_key, "--results", str(results), "--poll-seconds", "0.5", timeout=240)
    assert submitted.returncode != 0  # one row failed, so the batch exits 1
    assert "1 of 2 completed" in submitted.stdout, submitted.stdout[-3000:]
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert [json.loads(r["metadata"]) for r in rows] == [{"catalog_id": "R1"},
                                                         {"catalog_id": "R2"}]
    assert rows[1]["error_type"] == "invalid_input"
    output = tmp_path / "batch-output.mp4"
    output.write_bytes(_wait_for(rows[0]["output_url"], 10))
    assert decode_frames(output).shape[1:3] == (128, 192)
    # The batch's jobs are ordinary jobs: the API lists them for the same key.
    listed = json.loads(_wait_for(f"http://127.0.0.1:{deployed.serve_port}/v2/jobs",
                                  10, bearer(deployed.api_key)))
    assert {r["id"] for r in rows} <= {j["id"] for j in listed["data"]}
