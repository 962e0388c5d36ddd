"""A real two-node Ray cluster on this machine: stages run where the design puts them.

The head (``ray start --head``) holds the input and has the encode resource
``retroiva_encode``; a second node (``ray start --address``) has ``model_node``, which
stands in for a GPU (``PipelineConfig.accelerator_resource``).  A job driven from its
own process (tests/two_node_job.py; this pytest process has its own Ray session) must
decode on the head, run its operator stage on the model node and encode on the encode
node.  Then the model node is killed mid-job: the job must complete or fail with a
typed error within a bound, never hang.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.sample_video import SampleSpec, write_sample_video
from tests.media import decode_frames
from tests.ray_cluster import free_port, kill_session

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class TwoNodes:
    address: str
    env: dict[str, str]
    model_node: subprocess.Popen[bytes]


def _node_command(*args: str, temp_dir: str) -> list[str]:
    return [
        RAY,
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        *args,
    ]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    temp_dir = tempfile.mkdtemp(prefix="rtv2n", dir="/tmp")  # socket paths stay short
    logs = tmp_path_factory.mktemp("two-node-logs")
    gcs = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RETROIVA_"))}
    env.update(
        # A home of its own: no token from ~/.ray/auth_token switches Ray's token auth on.
        HOME=str(tmp_path_factory.mktemp("two-node-home")),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        # Every worker on both nodes imports this checkout.
        PYTHONPATH=str(REPO),
        # Notice a dead node in seconds, not the default ~30 s.
        RAY_health_check_period_ms="1000",
        RAY_health_check_failure_threshold="3",
        RAY_agent_register_timeout_ms="300000",
    )
    head = subprocess.Popen(
        _node_command(
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=false",
            "--num-cpus=2",
            '--resources={"retroiva_encode": 1000}',
            temp_dir=temp_dir,
        ),
        env=env,
        stdout=(logs / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    model = subprocess.Popen(
        _node_command(
            f"--address=127.0.0.1:{gcs}",
            "--num-cpus=1",
            '--resources={"model_node": 1}',
            temp_dir=temp_dir,
        ),
        env=env,
        stdout=(logs / "model.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield TwoNodes(f"127.0.0.1:{gcs}", env, model)
    finally:
        kill_session(model.pid)
        kill_session(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job(cluster: TwoNodes, source: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.two_node_job",
            cluster.address,
            str(source),
            str(output),
            *extra,
        ],
        cwd=REPO,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(stdout: str) -> dict[str, object]:
    report: dict[str, object] = json.loads(stdout.strip().splitlines()[-1])
    return report


def _node_with(report: dict[str, object], resource: str) -> str:
    nodes = report["nodes"]
    assert isinstance(nodes, dict)
    [node] = [node for node, resources in nodes.items() if resource in resources]
    return str(node)


def test_stages_run_on_the_nodes_the_design_says(two_nodes: TwoNodes, tmp_path: Path) -> None:
    spec = SampleSpec(width=64, height=48, seconds=1.25, audio=False)  # 30 frames
    source = write_sample_video(tmp_path / "in.mp4", spec)
    output = tmp_path / "out.mp4"
    job = _job(two_nodes, source, output, "--wait-nodes", "2")
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    report = _report(stdout)
    print("placement:", json.dumps(report, indent=1))
    assert report["error"] is None, report
    head, model = _node_with(report, "retroiva_encode"), _node_with(report, "model_node")
    assert head != model
    assert report["placement"] == {
        "decode": [head],  # the node holding the input (the driver's)
        "upscale/classical": [model],  # the stand-in accelerator's node
        "encode": [head],  # the encode-resource node, not the model node
    }
    frames = decode_frames(output)
    assert len(frames) == spec.frame_count == report["frames"]
    assert frames.shape[1:3] == (96, 128)
    # The driver's log says where each stage ran, once.
    assert stderr.count("placement: decode on node") == 1, stderr[-3000:]


def _read_until_progress(job: subprocess.Popen[str], timeout: float) -> list[str]:
    assert job.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([job.stdout], [], [], 1.0)
        if not ready:
            continue
        line = job.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("progress ") and int(line.split()[1]) > 0:
            return lines
    raise AssertionError(f"no progress within {timeout} s: {lines}")


def test_killing_the_model_node_mid_job_never_hangs(two_nodes: TwoNodes, tmp_path: Path) -> None:
    spec = SampleSpec(width=64, height=48, seconds=10, audio=False)  # 240 frames
    source = write_sample_video(tmp_path / "in.mp4", spec)
    output = tmp_path / "out.mp4"
    job = _job(
        two_nodes, source, output, "--wait-nodes", "2", "--chunk-frames", "4", "--grace", "5"
    )
    _read_until_progress(job, timeout=240)
    killed = time.monotonic()
    kill_session(two_nodes.model_node.pid)
    stdout, stderr = job.communicate(timeout=180)
    after_kill = time.monotonic() - killed
    report = _report(stdout)
    print(f"after the kill: {after_kill:.1f} s:", json.dumps(report, indent=1))
    print(stderr[-8000:])
    assert job.returncode == 0, stderr[-3000:]
    if report["error"] is None:  # Ray finished it elsewhere (or it was done already)
        assert len(decode_frames(output)) == spec.frame_count
    else:
        assert report["error"]["type"] == "ProcessingError", report  # type: ignore[index]
        assert "model_node" in report["error"]["message"], report  # type: ignore[index]
        assert not output.exists()
    assert after_kill < 120


def test_the_settings_reach_the_pipeline_config(tmp_path: Path) -> None:
    from serve_app.jobs.runner import pipeline_config
    from serve_app.settings import Settings

    default = pipeline_config(Settings(data_dir=tmp_path), tmp_path)
    assert (default.accelerator_resource, default.encode_resource) == ("GPU", "retroiva_encode")
    custom = pipeline_config(
        Settings(data_dir=tmp_path, accelerator_resource="model_node", encode_resource=""),
        tmp_path,
    )
    assert (custom.accelerator_resource, custom.encode_resource) == ("model_node", None)


def test_the_watchdog_fails_only_a_stalled_job_missing_a_resource() -> None:
    from pipelines.enhance import Watchdog

    watchdog = Watchdog((("upscale/neural", "GPU"),), grace=0.2)
    tally = {0: (4.0, 1.0)}
    watchdog.check(tally, {"CPU": 2.0, "GPU": 1.0})
    time.sleep(0.3)
    watchdog.check(tally, {"CPU": 2.0, "GPU": 1.0})
    assert watchdog.failure is None  # stalled, but the resource is there
    watchdog.check({0: (8.0, 2.0)}, {"CPU": 2.0})
    assert watchdog.failure is None  # the resource is gone, but work still moves
    time.sleep(0.3)
    watchdog.check({0: (8.0, 2.0)}, {"CPU": 2.0})
    assert watchdog.failure is not None
    assert "'GPU'" in str(watchdog.failure) and "upscale/neural" in str(watchdog.failure)
