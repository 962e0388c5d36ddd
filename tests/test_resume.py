"""Resume from finished chunks: a process killed (SIGKILL) mid-job loses only the chunks
it had not finished.

The pipeline test runs one job in a child process (a driver of this session's Ray, as
a runner is), kills it once at least half the chunks are saved, runs the job again and
counts what the second run processed: exactly the missing chunks.  The encode is
lossless (CRF 0), so the resumed output's frames must equal an uninterrupted run's,
bit for bit.  The service test does the same to a real runner process
(``python -m serve_app.jobs.runner``), and checks that the saved segments are gone when the
job ends (zero retention).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import ray

from pipelines.job_plan import EnhanceRequest
from pipelines.resume import LocalSegments, plan_digest, saved_segments
from serve_app.jobs.sqlite_store import SqliteStore
from tests.local_http import serve_directory
from tests.stored_keys import add_key

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parent.parent
CHUNK_FRAMES = 4

# One job through enhance_video with its segments saved in argv[3]; prints one line per
# chunk it encoded (the pipeline's own log line) and, at the end, how many it reused.
JOB = """
import logging, sys
from pathlib import Path
from pipelines.enhance import PipelineConfig, enhance_video
from pipelines.job_plan import EnhanceRequest
from pipelines.resume import LocalSegments
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
logging.getLogger("pipelines.enhance").setLevel(logging.INFO)
result = enhance_video(sys.argv[1], sys.argv[2],
                       EnhanceRequest(engine="classical", crf=0),
                       PipelineConfig(max_chunk_frames=int(sys.argv[4]),
                                      segments=LocalSegments(Path(sys.argv[3]))))
print("resumed", result.resumed_chunks, "of", result.chunks, flush=True)
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        **extra,
    }


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _kill_when(
    proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "never got far enough to kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _encoded(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"^chunk (\d+) encoded$", output, re.MULTILINE)]


def _queued_job(tmp_path: Path, make_video: Callable[..., Path], job_id: str) -> tuple:
    """A data dir whose store holds one queued job (12 chunks of the runner tests' clip,
    served from a local HTTP site): ``(data dir, store, job, site)``."""
    import asyncio

    from serve_app.jobs.records import JobRecord
    from vocabulary import JobStatus

    source = make_video("runner_resume.mp4", width=192, height=128, seconds=2.0, gop=4, grain=6.0)
    data = tmp_path / "data"
    data.mkdir()
    store = SqliteStore(data / "retroiva.sqlite3")
    _, key = add_key(store)
    base, site = serve_directory(source.parent)
    job = JobRecord(
        id=job_id,
        key_id=key.id,
        status=JobStatus.QUEUED,
        input_url=f"{base}/{source.name}",
        preset="general",
        upscale_factor=2,
        engine="classical",
        created_at=time.time(),
        created_seq=time.time_ns(),
    )
    asyncio.run(store.insert_job(job, time.time()))
    return data, store, job, site


# Three runs of one job (whole, killed, resumed): ~1 min on 2 idle cores, several on a
# loaded machine.
@pytest.mark.timeout(600)
def test_killed_job_resumes_with_only_the_missing_chunks(tmp_path: Path, make_video) -> None:
    source = make_video("resume.mp4", width=160, height=96, seconds=2.0, gop=4, grain=6.0)
    saved_dir = tmp_path / "segments"
    store = LocalSegments(saved_dir)

    def run(output: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                JOB,
                str(source),
                str(output),
                str(saved_dir),
                str(CHUNK_FRAMES),
            ],
            env=_env(),
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # The uninterrupted run, for reference (its segments cleared as the service would).
    whole = run(tmp_path / "whole.mp4")
    out, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, out
    chunks = len(_encoded(out))
    assert chunks >= 8, out
    store.clear()

    first = run(tmp_path / "resumed.mp4")
    _kill_when(first, lambda: len(store.names()) >= chunks // 2)
    kept = store.names()
    assert chunks // 2 <= len(kept) < chunks, kept
    assert not (tmp_path / "resumed.mp4").exists()

    second = run(tmp_path / "resumed.mp4")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    processed = _encoded(out)
    saved_indices = {int(Path(name).stem.split("_")[0]) for name in kept}
    assert f"resumed {len(kept)} of {chunks}" in out, out
    assert len(processed) == chunks - len(kept), out
    assert sorted(processed) == sorted(set(range(chunks)) - saved_indices), out
    print(
        f"resume: {chunks} chunks, killed with {len(kept)} saved, "
        f"second run processed {len(processed)}"
    )

    whole_frames, resumed_frames = (
        _frames(tmp_path / "whole.mp4"),
        _frames(tmp_path / "resumed.mp4"),
    )
    assert whole_frames.shape == resumed_frames.shape
    assert np.array_equal(whole_frames, resumed_frames)


def test_another_plan_never_reuses_segments(tmp_path: Path, make_video) -> None:
    from pipelines.job_plan import plan_job
    from pipelines.noise_probe import measure_noise
    from pipelines.probe import probe

    info = probe(make_video("plan.mp4", seconds=1.0, gop=4))
    noise = measure_noise(info)
    budget = 96 * 2**20
    plans = [
        plan_job(
            info,
            EnhanceRequest(engine="classical", crf=crf),
            max_frames=4,
            chunk_budget_bytes=budget,
            noise=noise,
        )
        for crf in (0, 20)
    ]
    digests = [plan_digest(plan) for plan in plans]
    assert digests[0] != digests[1]
    # The digest names values, not Python spellings: the same chain with its kinds and
    # backends as plain strings (as an older version held them) is the same plan.
    import dataclasses

    spelled = tuple(
        dataclasses.replace(spec, kind=str(spec.kind.value), backend=str(spec.backend.value))
        for spec in plans[0].chain
    )
    assert spelled and plan_digest(dataclasses.replace(plans[0], chain=spelled)) == digests[0]
    assert (
        plan_digest(
            plan_job(
                info,
                EnhanceRequest(engine="classical", crf=0),
                max_frames=4,
                chunk_budget_bytes=budget,
                noise=noise,
            )
        )
        == digests[0]
    )
    store = LocalSegments(tmp_path / "job")
    store.put(f"{digests[1]}/00000_0.mp4", b"other plan")
    store.put(f"{digests[0]}/00001_4.mp4", b"this plan")
    saved = saved_segments(store, digests[0])
    assert list(saved) == [1] and saved[1].out_start == 4
    assert store.names() == [f"{digests[0]}/00001_4.mp4"]  # the other plan's is gone


def _runner(data: Path, **extra: str) -> subprocess.Popen[str]:
    env = _env(
        RETROIVA_DATA_DIR=str(data),
        RETROIVA_LEASE_SECONDS="3",
        RETROIVA_POLL_SECONDS="0.2",
        RETROIVA_SIGNING_SECRET="resume",
        RETROIVA_CHUNK_FRAMES=str(CHUNK_FRAMES),
        RETROIVA_ALLOW_PRIVATE_URLS="true",
        **extra,
    )
    code = (
        "import logging, sys, asyncio; "
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout, "
        "format='%(message)s'); "
        "logging.getLogger('pipelines.enhance').setLevel(logging.INFO); "
        "from serve_app.jobs import runner; asyncio.run(runner._main())"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.timeout(600)
def test_killed_runner_hands_its_finished_chunks_to_the_next(tmp_path: Path, make_video) -> None:
    from vocabulary import JobStatus

    data, _, job, site = _queued_job(tmp_path, make_video, "job_resume")
    segments = data / "segments" / job.id

    def saved() -> list[Path]:
        return sorted(segments.glob("*/*.mp4")) if segments.is_dir() else []

    first = _runner(data)
    try:
        # 12 chunks of 4 frames: kill once half are saved.
        _kill_when(first, lambda: len(saved()) >= 6)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    kept = len(saved())
    second = _runner(data)
    try:
        deadline = time.monotonic() + 240
        while True:
            with sqlite3.connect(data / "retroiva.sqlite3") as db:
                (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()
            if JobStatus(status).is_terminal:
                break
            assert time.monotonic() < deadline, "the job never ended"
            time.sleep(0.3)
        # The runner clears the segments right after recording the end.
        deadline = time.monotonic() + 10
        while segments.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        out = second.communicate()[0]
        site.shutdown()
    assert status == "completed", out
    resumed = re.search(r"resuming: (\d+) of (\d+) chunks", out)
    assert resumed is not None, out
    assert int(resumed[1]) == kept and int(resumed[2]) == 12, out
    assert len(_encoded(out)) == 12 - kept, out
    print(
        f"runner resume: 12 chunks, killed with {kept} saved, the next runner "
        f"processed {len(_encoded(out))}"
    )
    assert not segments.exists()  # zero retention
    outputs = list((data / "outputs").glob("*.mp4"))
    assert len(outputs) == 1 and len(_frames(outputs[0])) == 48
    # The killed attempt's pipeline no longer shows as running in Ray's Data view.
    from ray.data._internal.stats import get_or_create_stats_actor

    datasets = ray.get(get_or_create_stats_actor().get_datasets.remote())
    states = sorted(v["state"] for k, v in datasets.items() if k.startswith(f"{job.id}_"))
    assert states == ["FAILED", "FINISHED"], states


def test_a_killed_last_attempt_leaves_no_pipeline_running(tmp_path: Path, make_video) -> None:
    """Out of attempts, nobody resumes the job: the runner's sweep marks the killed
    attempt's pipeline failed in Ray's Data view (no dataset stays RUNNING forever)."""
    import asyncio

    from ray.data._internal.stats import get_or_create_stats_actor

    from vocabulary import JobErrorType, JobStatus

    data, store, job, site = _queued_job(tmp_path, make_video, "job_lastattempt")
    segments = data / "segments" / job.id
    once = {"RETROIVA_MAX_ATTEMPTS": "1", "RETROIVA_REAP_INTERVAL_SECONDS": "1"}

    def states() -> list[str]:
        datasets = ray.get(get_or_create_stats_actor().get_datasets.remote())
        return [v["state"] for k, v in datasets.items() if k.startswith(f"{job.id}_")]

    first = _runner(data, **once)
    try:
        _kill_when(first, lambda: len(list(segments.glob("*/*.mp4"))) >= 2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert states() == ["RUNNING"]  # what the issue saw: forever, until now
    second = _runner(data, **once)
    try:
        deadline = time.monotonic() + 60
        while states() != ["FAILED"] and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        out = second.communicate()[0]
        site.shutdown()
    assert states() == ["FAILED"], out
    ended = asyncio.run(store.get_job(job.id))
    assert ended is not None and ended.status == JobStatus.FAILED, out
    assert ended.error_type == JobErrorType.RUNNER_LOST, out


def test_progress_of_a_resumed_job_starts_where_it_was() -> None:
    from pipelines.progress import ProgressMeter

    reports = []
    meter = ProgressMeter(100, reports.append, stages=2, resumed=60)
    assert meter.phase("processing").frames_done == 60  # before any new work
    # Half of the 40 remaining frames through both stages: 60 + 20.
    report = meter.update({0: (20, 1.0), 1: (20, 2.0)})
    assert report.frames_done == 80 and report.fraction == 0.8
    assert meter.update({0: (40, 2.0), 1: (40, 4.0)}).frames_done == 100
    assert all(r.frames_done >= 60 for r in reports)
