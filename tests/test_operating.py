"""The operator's flow on a real `ray start` cluster: `serve deploy`, then `ray job submit`.

The cluster is separate from the session's Ray (own temp dir and ports) and is torn
down by killing its process session: `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.jobs.sqlite_store import SqliteStore
from tests.local_http import serve_directory
from tests.media import decode_frames
from tests.ray_cluster import free_port, kill_session
from tests.stored_keys import add_key, bearer

# A cluster, a deploy, a batch run twice and a redeploy on a shared 2-core machine:
# each test (with the module's teardown on the last) can take more than the default.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]
    dashboard: str
    serve_port: int
    data_dir: Path
    api_key: str
    home: Path

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shell(
        self, script: str, cwd: Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``script`` in an operator's login shell on the head node."""
        return subprocess.run(
            ["bash", "-c", script],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _wait_for(url: str, timeout: float, headers: dict[str, str] | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers or {}), timeout=3
            ) as response:
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


def _head_start_command(home: Path, gcs: int, dashboard: int, agent: int, temp_dir: str) -> str:
    """cluster.yaml's own head start command; only ports and local paths changed."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    [stop, start] = config["head_start_ray_commands"]
    assert stop.endswith("ray stop")  # never run here: it would stop every Ray on the machine
    start = start.replace("--port=6379", f"--port={gcs}")
    start = start.replace(
        "--dashboard-host=0.0.0.0", f"--dashboard-host=127.0.0.1 --dashboard-port={dashboard}"
    )
    start = start.replace("--autoscaling-config=~/ray_bootstrap_config.yaml", "")
    # What the launcher's own head has, plus what a shared test machine needs: a short
    # temp dir of ours, free ports, and --block so the test owns every process.
    return (
        f"{start} --block --temp-dir={temp_dir} --dashboard-agent-listen-port={agent} "
        "--include-dashboard=true --num-cpus=2 --resources='{\"retroiva_head\": 1}'"
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head node as cluster.yaml starts one: the project at ~/retroiva with its venv,
    settings in ~/retroiva.env, Ray's token auth, and a PATH without the venv."""
    # Unix socket paths live under the temp dir and must stay short.
    temp_dir = tempfile.mkdtemp(prefix="rtv", dir="/tmp")
    home = tmp_path_factory.mktemp("home")
    (home / "retroiva").symlink_to(REPO)
    data_dir = home / "retroiva-data"
    gcs, dashboard, agent, serve_port = (free_port() for _ in range(4))
    model_cache = Path(
        os.environ.get("RETROIVA_MODEL_CACHE") or Path.home() / ".cache" / "retroiva" / "models"
    )
    (home / "retroiva.env").write_text(
        "RAY_AUTH_MODE=token\n"
        f"RETROIVA_DATA_DIR={data_dir}\n"
        f"RETROIVA_PUBLIC_URL=http://127.0.0.1:{serve_port}\n"
        "RETROIVA_SIGNING_SECRET=cluster-test-secret\n"
        "RETROIVA_ALLOW_PRIVATE_URLS=true\n"
        "RETROIVA_POLL_SECONDS=0.2\n"
        f"RETROIVA_MODEL_CACHE={model_cache}\n"
    )
    (home / "retroiva.env").chmod(0o600)
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != VENV_BIN.resolve()
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETROIVA_", "RAY_", "VIRTUAL_ENV"))
    }
    env.update(
        HOME=str(home),
        PATH=path,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ADDRESS=f"http://127.0.0.1:{dashboard}",
        # The venv's console scripts import this checkout rather than the one
        # the venv was installed from.
        PYTHONPATH=str(REPO),
    )
    key, _ = add_key(SqliteStore(data_dir / "retroiva.sqlite3"))
    (home / "batch.key").write_text(key + "\n")
    (home / "batch.key").chmod(0o600)
    # The README's one-time step: a token for Ray's token auth, in ~/.ray/auth_token.
    subprocess.run(
        ["bash", "-c", "~/retroiva/.venv/bin/ray get-auth-token --generate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = (home / "ray-start.log").open("w")
    head = subprocess.Popen(
        ["bash", "-c", _head_start_command(home, gcs, dashboard, agent, temp_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=home,
    )
    # Every operator command below runs with the env file's settings, as the README says.
    env.update(RAY_AUTH_MODE="token")
    try:
        _wait_for_answer(f"http://127.0.0.1:{dashboard}/api/version", timeout=120)
        yield Cluster(env, f"http://127.0.0.1:{dashboard}", serve_port, data_dir, key, home)
    finally:
        kill_session(head.pid)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny clip served on 127.0.0.1, as a client's public URL would be."""
    root = tmp_path_factory.mktemp("served")
    write_sample_video(root / "clip.mp4", SampleSpec(width=96, height=64, seconds=1.0))
    # Long enough to still be processing when Serve is redeployed: on 2 cores the
    # redeploy reaches the job ~17 s into it, and its one 240-frame chunk takes ~40 s
    # (30 s of video took 130 s more after the redeploy, for nothing this test checks).
    write_sample_video(root / "long.mp4", SampleSpec(width=96, height=64, seconds=10.0))
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


def test_serve_deploy_places_api_and_runner_on_the_head_resource(deployed: Cluster, videos: str):
    app = _status(deployed)["applications"]["retroiva"]  # type: ignore[index]
    assert app["status"] == "RUNNING"
    replicas = {name: d["replica_states"] for name, d in app["deployments"].items()}
    assert replicas == {"api": {"RUNNING": 2}, "runner": {"RUNNING": 1}}

    base = f"http://127.0.0.1:{deployed.serve_port}"
    request = urllib.request.Request(
        f"{base}/v2/enhance",
        method="POST",
        data=json.dumps({"video_url": f"{videos}/clip.mp4"}).encode(),
        headers={**bearer(deployed.api_key), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        job = json.load(response)
    deadline = time.monotonic() + 120
    while job["status"] not in ("completed", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = json.loads(_wait_for(f"{base}/v2/jobs/{job['id']}", 10, bearer(deployed.api_key)))
    assert job["status"] == "completed", job["error"]
    output = deployed.data_dir / "served-output.mp4"
    output.write_bytes(_wait_for(job["output_url"], 10))
    assert decode_frames(output).shape[1:3] == (128, 192)


def _readme_batch_command() -> str:
    """The README's batch command, exactly as the "Archive batches" section shows it."""
    section = (REPO / "README.md").read_text().split("### Archive batches", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def _store_jobs(cluster: Cluster) -> list[str]:
    import asyncio

    async def ids() -> list[str]:
        store = SqliteStore(cluster.data_dir / "retroiva.sqlite3")
        await store.init()
        try:
            return [j.id for j in await store.recent_jobs(100, None, None)]
        finally:
            await store.close()

    return asyncio.run(ids())


def test_readme_batch_command_verbatim(deployed: Cluster, videos: str, tmp_path: Path):
    """The README's command, on a head started as cluster.yaml starts it: a good row,
    a 404 and an ftp:// row give a results file and exit status 1, and a re-run makes
    no duplicates."""
    command = _readme_batch_command()
    assert "ray job submit" in command and "--api-key " not in command
    (tmp_path / "reels.csv").write_text(
        "video_url,catalog_id\n"
        f"{videos}/clip.mp4,R1\n{videos}/missing.mp4,R2\nftp://127.0.0.1/reel.mp4,R3\n"
    )
    before = set(_store_jobs(deployed))
    first = deployed.shell(command, cwd=tmp_path, timeout=300)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "partial: 1 of 3 completed" in first.stdout, first.stdout[-3000:]
    assert deployed.api_key not in first.stdout + first.stderr
    results = deployed.home / "reels.results.csv"
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "failed", "rejected"]
    assert [json.loads(r["metadata"]) for r in rows] == [{"catalog_id": f"R{i}"} for i in (1, 2, 3)]
    assert rows[1]["error_type"] == "invalid_input"
    assert "http or https" in rows[2]["error_message"]
    assert rows[0]["output_url"].startswith(f"http://127.0.0.1:{deployed.serve_port}/")
    output = tmp_path / "batch-output.mp4"
    output.write_bytes(_wait_for(rows[0]["output_url"], 10))
    assert decode_frames(output).shape[1:3] == (128, 192)
    created = set(_store_jobs(deployed)) - before
    assert created == {rows[0]["id"], rows[1]["id"]}

    # The batch's id is the Ray job's: Ray's status message ends with our summary,
    # and `retroiva batches` lists and shows its jobs.
    found = re.search(r"^batch (raysubmit_\w+): 3 rows$", first.stdout, re.MULTILINE)
    assert found, first.stdout[-3000:]
    batch = found.group(1)
    status = deployed.shell(
        f"~/retroiva/.venv/bin/ray job status {batch}", cwd=tmp_path, timeout=60
    )
    assert "exit code 1" in status.stdout and "partial: 1 of 3 completed" in status.stdout, (
        status.stdout
    )
    shown = deployed.shell(
        f"set -a && . ~/retroiva.env && set +a && "
        f"~/retroiva/.venv/bin/retroiva batches show {batch}",
        cwd=tmp_path,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert rows[0]["id"] in shown.stdout and rows[1]["id"] in shown.stdout
    # Where Ray's job list says FAILED, ours tells a partial success apart.
    listed = deployed.shell(
        "set -a && . ~/retroiva.env && set +a && ~/retroiva/.venv/bin/retroiva batches list",
        cwd=tmp_path,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{batch}\s+\S+\s+partial\s+3\s", listed.stdout, re.MULTILINE), listed.stdout

    again = deployed.shell(command, cwd=tmp_path, timeout=300)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    with results.open(newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == [r["id"] for r in rows]
    assert set(_store_jobs(deployed)) - before == created


def _dashboard_json(cluster: Cluster, path: str) -> object:
    token = (cluster.home / ".ray" / "auth_token").read_text().strip()
    return json.loads(
        _wait_for(f"{cluster.dashboard}{path}", 30, {"Authorization": f"Bearer {token}"})
    )


def test_enhancement_datasets_are_named_by_job_id(deployed: Cluster, videos: str):
    """The dashboard's Ray Data view leads from a job id to its pipeline."""
    job = _enhance(deployed, f"{videos}/clip.mp4")
    job = _until_ended(deployed, job["id"], 180)
    assert job["status"] == "completed", job
    # Ray Data files a dataset under the Ray job of the process that runs it: the
    # runner replica's.
    actors = _dashboard_json(deployed, "/api/v0/actors?limit=1000&detail=true")
    listed = actors["data"]["result"]["result"]  # type: ignore[index]
    ray_jobs = {a["job_id"] for a in listed if "runner" in (a.get("class_name") or "")}
    names: list[str] = []
    for ray_job in ray_jobs:
        found = _dashboard_json(deployed, f"/api/data/datasets/{ray_job}")
        names += [d["dataset"] for d in found["datasets"]]  # type: ignore[index]
    assert any(name.startswith(f"{job['id']}_") for name in names), (ray_jobs, names)


def _enhance(cluster: Cluster, url: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.serve_port}/v2/enhance",
        method="POST",
        data=json.dumps({"video_url": url}).encode(),
        headers={**bearer(cluster.api_key), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def _until_ended(
    cluster: Cluster,
    job_id: str,
    timeout: float,
    until: tuple[str, ...] = ("completed", "failed", "canceled"),
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = json.loads(
            _wait_for(
                f"http://127.0.0.1:{cluster.serve_port}/v2/jobs/{job_id}",
                10,
                bearer(cluster.api_key),
            )
        )
        if job["status"] in until:
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def test_serve_redeploy_mid_job_costs_no_attempt(deployed: Cluster, videos: str):
    """A redeploy replaces the runner gracefully: the job goes back to the queue at
    once and finishes on the new runner, with one attempt counted."""
    job = _enhance(deployed, f"{videos}/long.mp4")
    _until_ended(deployed, str(job["id"]), 120, until=("processing",))
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": deployed.serve_port}
    # A changed runtime_env replaces every replica of the application.
    config["applications"][0]["runtime_env"]["env_vars"]["RETROIVA_RUNNER_CONCURRENCY"] = "1"
    path = deployed.data_dir / "serve_config_redeploy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = deployed.cli("serve", "deploy", "--address", deployed.dashboard, str(path))
    assert result.returncode == 0, result.stderr
    # Handed back: queued again, without waiting out the old runner's 30 s lease.
    requeued = _until_ended(deployed, str(job["id"]), 120, until=("queued", "completed"))
    assert requeued["status"] == "queued", "the job ended before the redeploy reached it"
    ended = _until_ended(deployed, str(job["id"]), 300)
    assert ended["status"] == "completed", ended

    import asyncio

    async def stored() -> object:
        store = SqliteStore(deployed.data_dir / "retroiva.sqlite3")
        await store.init()
        try:
            return await store.get_job(str(job["id"]))
        finally:
            await store.close()

    assert asyncio.run(stored()).attempts == 1  # type: ignore[attr-defined]
