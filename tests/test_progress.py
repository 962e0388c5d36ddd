"""Progress in frames as they are processed, the job's phase, and an ETA that holds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.enhance import PipelineConfig, enhance_video
from pipelines.job_plan import EnhanceRequest
from pipelines.progress import Progress, ProgressMeter
from serve_app.api.schemas import job_from_record
from serve_app.jobs.records import JobRecord
from serve_app.jobs.sqlite_store import SqliteStore
from vocabulary import JobStatus


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_meter_prices_each_stage_by_its_measured_cost():
    clock, reports = _Clock(), []
    meter = ProgressMeter(100, reports.append, stages=3, clock=clock)
    # decode 0.1 s/frame, model 1 s/frame, encode 0.2 s/frame: 1.3 s of work per frame.
    clock.now = 10
    meter.update({0: (20, 2), 1: (8, 8)})
    assert reports[-1].eta_seconds is None  # encode's cost unknown: no ETA yet
    assert 0 < reports[-1].frames_done < 20
    clock.now = 20
    meter.update({0: (40, 4), 1: (20, 20), 2: (10, 2)})
    assert reports[-1].frames_done == int(26 / 130 * 100)
    clock.now = 30
    meter.update({0: (60, 6), 1: (40, 40), 2: (30, 6)})
    # 26 s of work in the last 10 s (chunks run in parallel): 20 % every 10 s.
    assert reports[-1].frames_done == int(52 / 130 * 100)
    assert reports[-1].eta_seconds == pytest.approx(30)  # from the last 15 s
    clock.now = 35  # nothing finished since: the estimate counts down
    meter.update({0: (60, 6), 1: (40, 40), 2: (30, 6)})
    assert reports[-1].eta_seconds == pytest.approx(25)
    assert reports[-1].frames_done == reports[-2].frames_done
    done = meter.phase("assembling")
    assert (done.phase, done.frames_done, done.fraction) == ("assembling", 100, 1.0)


def test_meter_never_goes_backwards():
    clock, reports = _Clock(), []
    meter = ProgressMeter(10, reports.append, stages=2, clock=clock)
    clock.now = 1
    meter.update({0: (10, 1)})  # the second stage priced like the first: 50 %
    clock.now = 2
    meter.update({0: (10, 1), 1: (1, 5)})  # it costs 5x more: 10/(6*10)+... < 50 %
    assert [r.frames_done for r in reports] == [5, 5]


@pytest.mark.usefixtures("ray_session")
def test_multi_chunk_job_reports_fine_progress_and_a_fair_eta(make_video, tmp_path: Path):
    source = make_video("progress.mp4", width=160, height=120, seconds=10)
    reports: list[tuple[float, Progress]] = []
    started = time.monotonic()
    # Interpolation adds a stage: clean input no longer gets an NL-means one.
    result = enhance_video(
        source,
        tmp_path / "out.mp4",
        EnhanceRequest(preset="general", upscale_factor=2, interpolate=2, engine="classical"),
        PipelineConfig(max_chunk_frames=8),
        on_progress=lambda p: reports.append((time.monotonic(), p)),
    )
    ended = time.monotonic()
    assert result.chunks >= 10
    fractions = [p.fraction for _, p in reports]
    assert fractions == sorted(fractions)
    assert len(set(fractions)) >= 10, fractions
    assert reports[-1][1].phase == "assembling" and reports[-1][1].frames_done == 240
    assert {p.phase for _, p in reports} == {"processing", "assembling"}
    checked = [
        (at, p)
        for at, p in reports
        if p.phase == "processing" and p.fraction >= 0.3 and p.eta_seconds is not None
    ]
    assert checked, f"no ETA after 30 % in {ended - started:.1f} s"
    for at, p in checked:
        actual = ended - at
        # 2x either way, with 2 s for the half-second polling and the final assembly.
        assert actual / 2 - 2 <= p.eta_seconds <= actual * 2 + 2, (
            p.fraction,
            p.eta_seconds,
            actual,
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_phase_is_stored_and_shown_only_while_processing(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.init()
    now = time.time()
    job, _ = await store.insert_job(
        JobRecord(
            id="job_p",
            key_id="key_a",
            status=JobStatus.QUEUED,
            input_url="https://e.com/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=now,
            created_seq=1,
        ),
        now,
    )
    assert job_from_record(job).phase is None
    claimed = await store.claim_next("runner", now, 30)
    assert claimed is not None
    renewed = await store.renew_lease("job_p", "runner", now, 30, 0.4, 9.0, phase="assembling")
    assert renewed is not None and renewed.phase == "assembling"
    shown = job_from_record(renewed).model_dump()
    assert (shown["phase"], shown["progress"], shown["eta_seconds"]) == ("assembling", 0.4, 9)
    assert await store.finish("job_p", "runner", JobStatus.COMPLETED, now)
    finished = await store.get_job("job_p")
    assert finished is not None and job_from_record(finished).phase is None
    await store.close()


def _phased_process(job, settings, on_progress, cancel) -> Path:
    on_progress(Progress(0, 0, 0.0, None, "fetching"))
    time.sleep(1.5)  # a heartbeat carries each step to the store
    on_progress(Progress(50, 100, 10.0, 5.0, "processing"))
    time.sleep(1.5)
    on_progress(Progress(100, 100, 10.0, None, "assembling"))
    time.sleep(1.5)
    output = settings.scratch_dir / job.id / "output.mp4"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"video")
    return output


class _SlowStorage:
    """Local storage that takes long enough to upload for a heartbeat to see it."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def put(self, job_id: str, path: Path) -> str:
        time.sleep(1.5)
        return self._inner.put(job_id, path)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@pytest.mark.anyio
async def test_runner_stores_each_phase_and_never_shows_1_before_completion(tmp_path: Path):
    import asyncio

    from serve_app.delivery.output_storage import open_storage
    from serve_app.jobs.runner import JobRunner
    from serve_app.settings import Settings

    settings = Settings(data_dir=tmp_path, lease_seconds=3, poll_seconds=0.05)
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.init()
    now = time.time()
    job, _ = await store.insert_job(
        JobRecord(
            id="job_ph",
            key_id="key_a",
            status=JobStatus.QUEUED,
            input_url="https://e.com/v.mp4",
            preset="general",
            upscale_factor=2,
            created_at=now,
            created_seq=1,
        ),
        now,
    )
    runner = JobRunner(
        store, settings, process=_phased_process, storage=_SlowStorage(open_storage(settings))
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    seen: list[tuple[str | None, float]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = await store.get_job(job.id)
        assert record is not None
        shown = job_from_record(record)
        if not seen or seen[-1] != (shown.phase, shown.progress):
            seen.append((shown.phase, shown.progress))
        if record.status.is_terminal:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    phases = [phase for phase, _ in seen if phase is not None]
    assert list(dict.fromkeys(phases)) == ["fetching", "processing", "assembling", "uploading"], (
        seen
    )
    assert (0.5 in [p for _, p in seen]) and seen[-1] == (None, 1.0)
    assert all(p < 1.0 for phase, p in seen if phase is not None)
    await store.close()
