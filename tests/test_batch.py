"""Archive batches: manifests, one store job per row, follow-up, results, re-runs.

The service's runner is played here by a task that claims and finishes jobs in the
same SQLite store; ``tests/test_operating.py`` runs the real thing under ``ray job submit``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.jobs.batch import main
from serve_app.jobs.batch_manifest import ManifestError, ManifestRow, read_manifest
from serve_app.jobs.batch_queue import StoreJobQueue
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from tests.stored_keys import add_key
from vocabulary import JobStatus

REPO = Path(__file__).parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_manifest_rows_and_metadata(tmp_path: Path):
    rows = read_manifest(
        _write(
            tmp_path / "m.csv",
            (
                "video_url,preset,upscale_factor,catalog_id,metadata\n"
                'https://example.com/a.mp4,archive,2,A-1,"{""reel"": 3}"\n'
                "https://example.com/b.mp4,,,B-2,\n"
            ),
        )
    )
    assert rows[0] == ManifestRow(
        line=2,
        video_url="https://example.com/a.mp4",
        preset="archive",
        upscale_factor=2,
        metadata={"catalog_id": "A-1", "reel": 3},
    )
    assert rows[1].preset is None and rows[1].upscale_factor is None
    assert rows[1].metadata == {"catalog_id": "B-2"}


def test_jsonl_manifest_skips_blank_lines(tmp_path: Path):
    rows = read_manifest(
        _write(
            tmp_path / "m.jsonl",
            (
                '{"video_url": "https://example.com/a.mp4", "metadata": {"k": "ü"}}\n\n'
                '{"video_url": "https://example.com/b.mp4", "upscale_factor": 3}\n'
            ),
        )
    )
    assert [r.line for r in rows] == [1, 3]
    assert rows[0].metadata == {"k": "ü"} and rows[1].upscale_factor == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "url\nhttps://example.com/a.mp4\n", "must name a video_url column"),
        ("m.csv", "video_url,preset\nhttps://e.com/a.mp4,vivid\n", "line 2: preset must be"),
        ("m.csv", "video_url,upscale_factor\nhttps://e.com/a.mp4,9\n", "line 2: upscale_factor"),
        ("m.csv", "video_url,upscale_factor\nhttps://e.com/a.mp4,x\n", "must be an integer"),
        ("m.csv", "video_url,engine\nhttps://e.com/a.mp4,gpu\n", "engine must be neural or"),
        ("m.jsonl", '{"video_url": "https://e.com/a.mp4"}\n[1]\n', "line 2: each line must"),
        ("m.jsonl", '{"preset": "archive"}\n', "line 1: video_url is required"),
        ("m.jsonl", '{"video_url": "u", "metadata": [1]}\n', "metadata must be a JSON object"),
        ("m.csv", "video_url\n", "has no rows"),
        ("m.txt", "https://e.com/a.mp4\n", "is .csv or .jsonl"),
    ],
)
def test_bad_manifests_are_refused_with_the_line(
    tmp_path: Path, name: str, text: str, message: str
):
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write(tmp_path / name, text))


def test_idempotency_key_follows_row_content_not_position():
    row = ManifestRow(line=2, video_url="https://e.com/a.mp4", metadata={"id": 1})
    moved = ManifestRow(line=9, video_url="https://e.com/a.mp4", metadata={"id": 1})
    other = ManifestRow(line=2, video_url="https://e.com/a.mp4", metadata={"id": 2})
    assert row.idempotency_key == moved.idempotency_key != other.idempotency_key


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        allow_private_urls=True,
        public_url="http://127.0.0.1:8000",
        signing_secret="test-secret",
    )


async def _play_runner(store: SqliteStore, outputs: Path, stop: asyncio.Event) -> None:
    """Stands in for the service: completes jobs whose URL ends in ok.mp4, fails others."""
    while not stop.is_set():
        job = await store.claim_next("fake-runner", time.time(), 30)
        if job is None:
            await asyncio.sleep(0.05)
            continue
        if job.input_url.endswith("ok.mp4"):
            outputs.mkdir(parents=True, exist_ok=True)
            (outputs / f"{job.id}.mp4").write_bytes(b"video")
            await store.finish(
                job.id, "fake-runner", JobStatus.COMPLETED, time.time(), output_path=f"{job.id}.mp4"
            )
        else:
            await store.finish(
                job.id,
                "fake-runner",
                JobStatus.FAILED,
                time.time(),
                error_type="invalid_input",
                error_message="not a video",
            )


def _run_main(settings: Settings, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        if not isinstance(value, list):
            monkeypatch.setenv(f"RETROIVA_{name.upper()}", str(value))
    store = SqliteStore(settings.sqlite_path)
    stop = asyncio.Event()

    async def run() -> int:
        await store.init()
        runner = asyncio.create_task(_play_runner(store, settings.outputs_dir, stop))
        try:
            return await asyncio.to_thread(main, argv)
        finally:
            stop.set()
            await runner

    return asyncio.run(run())


def _results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_batch_creates_follows_and_reports_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    settings = _settings(tmp_path)
    key, record = add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(
        tmp_path / "reels.csv",
        (
            "video_url,preset,catalog_id,engine\n"
            "http://127.0.0.1:9/one-ok.mp4,archive,R1,classical\n"
            "http://127.0.0.1:9/two-ok.mp4,,R2,\n"
            "http://127.0.0.1:9/broken.mp4,,R3,\n"
            "ftp://127.0.0.1/three.mp4,,R4,\n"
        ),
    )
    monkeypatch.setenv("RETROIVA_API_KEY", key)
    argv = [str(manifest), "--preset", "cinematic", "--poll-seconds", "0.05"]

    assert _run_main(settings, argv, monkeypatch) == 1  # one failed, one rejected
    first = _results(tmp_path / "reels.results.csv")
    assert [r["status"] for r in first] == ["completed", "completed", "failed", "rejected"]
    assert [json.loads(r["metadata"]) for r in first] == [
        {"catalog_id": f"R{i}"} for i in range(1, 5)
    ]
    assert first[0]["output_url"].startswith("http://127.0.0.1:8000/v2/files/")
    assert "signature=" in first[0]["output_url"]
    assert first[2]["error_type"] == "invalid_input" and first[2]["output_url"] == ""
    assert "http or https" in first[3]["error_message"]
    printed = capsys.readouterr().out
    assert "2 of 4 completed" in printed

    async def jobs() -> list[tuple[str, str, str, str]]:
        store = SqliteStore(settings.sqlite_path)
        await store.init()
        page, _ = await store.list_jobs(record.id, 100, None)
        await store.close()
        return sorted((j.id, j.preset, j.engine, j.key_id) for j in page)

    created = asyncio.run(jobs())
    assert len(created) == 3
    assert sorted((p, e) for _, p, e, _ in created) == [  # the row's, else --preset
        ("archive", "classical"),
        ("cinematic", "neural"),
        ("cinematic", "neural"),
    ]

    # The same manifest again: same jobs, nothing new, same results.
    assert _run_main(settings, argv, monkeypatch) == 1
    again = _results(tmp_path / "reels.results.csv")
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert asyncio.run(jobs()) == created


def test_all_completed_exits_zero_and_writes_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = _settings(tmp_path)
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(
        tmp_path / "m.jsonl", '{"video_url": "http://127.0.0.1:9/ok.mp4", "metadata": {"n": 1}}\n'
    )
    out = tmp_path / "out.jsonl"
    key_file = _write(tmp_path / "batch.key", key + "\n")
    assert (
        _run_main(
            settings,
            [
                str(manifest),
                "--api-key-file",
                str(key_file),
                "--results",
                str(out),
                "--poll-seconds",
                "0.05",
            ],
            monkeypatch,
        )
        == 0
    )
    [result] = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["status"] == "completed" and result["metadata"] == {"n": 1}


def test_bad_key_and_missing_key_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    settings = _settings(tmp_path)
    add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(tmp_path / "m.csv", "video_url\nhttp://127.0.0.1:9/ok.mp4\n")
    monkeypatch.delenv("RETROIVA_API_KEY", raising=False)
    assert _run_main(settings, [str(manifest)], monkeypatch) == 2
    assert "an API key is required" in capsys.readouterr().err
    # The key on the command line is refused: Ray shows a job's command to everyone.
    assert _run_main(settings, [str(manifest), "--api-key", "sk_live_x"], monkeypatch) == 2
    assert "--api-key-file" in capsys.readouterr().err
    monkeypatch.setenv("RETROIVA_API_KEY", "sk_live_nope")
    assert _run_main(settings, [str(manifest)], monkeypatch) == 2
    assert "invalid API key" in capsys.readouterr().err
    assert not (tmp_path / "m.results.csv").exists()


def test_store_queue_rejects_unknown_job(tmp_path: Path):
    settings = _settings(tmp_path)
    key, _ = add_key(SqliteStore(settings.sqlite_path))

    async def look() -> None:
        queue = StoreJobQueue(key, settings)
        await queue.open()
        try:
            with pytest.raises(LookupError):
                await queue.state("job_missing")
        finally:
            await queue.close()

    asyncio.run(look())


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETROIVA_")}
    env.update(
        {
            f"RETROIVA_{name.upper()}": str(value)
            for name, value in settings.model_dump(mode="json", exclude_none=True).items()
            if not isinstance(value, list)
        }
    )
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_python_m_keeps_going_past_rows_the_queue_rejects(tmp_path: Path):
    """Under ``python -m`` the module is imported twice; a row the service refuses
    (a private address here) is still one rejected row, not a crashed batch."""
    settings = Settings(data_dir=tmp_path / "data", signing_secret="s")  # private URLs refused
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(
        tmp_path / "m.csv",
        "video_url,n\nhttp://127.0.0.1:9/private.mp4,1\nftp://example.com/a.mp4,2\n",
    )
    results = tmp_path / "out.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serve_app.jobs.batch",
            str(manifest),
            "--results",
            str(results),
            "--poll-seconds",
            "0.05",
        ],
        env=_env(settings, RETROIVA_API_KEY=key),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    rows = _results(results)
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    assert "non-public" in rows[0]["error_message"] and "http or https" in rows[1]["error_message"]
    assert "partial: 0 of 2 completed" in done.stdout


def test_unwritable_results_refused_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    settings = _settings(tmp_path)
    key, record = add_key(SqliteStore(settings.sqlite_path))
    monkeypatch.setenv("RETROIVA_API_KEY", key)
    manifest = _write(tmp_path / "m.csv", "video_url\nhttp://127.0.0.1:9/ok.mp4\n")
    assert (
        _run_main(
            settings, [str(manifest), "--results", str(tmp_path / "no/such/r.csv")], monkeypatch
        )
        == 2
    )
    assert "no directory" in capsys.readouterr().err

    async def count() -> int:
        store = SqliteStore(settings.sqlite_path)
        await store.init()
        page, _ = await store.list_jobs(record.id, 10, None)
        await store.close()
        return len(page)

    assert asyncio.run(count()) == 0


def test_rerun_with_another_preset_makes_new_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = _settings(tmp_path)
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    monkeypatch.setenv("RETROIVA_API_KEY", key)
    manifest = _write(tmp_path / "m.csv", "video_url\nhttp://127.0.0.1:9/ok.mp4\n")
    base = [str(manifest), "--poll-seconds", "0.05"]
    assert _run_main(settings, [*base, "--preset", "archive"], monkeypatch) == 0
    first = _results(tmp_path / "m.results.csv")[0]["id"]
    assert _run_main(settings, [*base, "--preset", "cinematic"], monkeypatch) == 0
    second = _results(tmp_path / "m.results.csv")[0]["id"]
    assert _run_main(settings, [*base, "--preset", "archive"], monkeypatch) == 0
    assert second != first == _results(tmp_path / "m.results.csv")[0]["id"]
    # A row naming its preset is the same job whatever --preset says.
    row = ManifestRow(line=2, video_url="https://e.com/a.mp4", preset="archive")
    assert (
        row.with_defaults("cinematic", None).idempotency_key
        == row.with_defaults("general", None).idempotency_key
    )


def test_no_store_where_expected_is_refused_saying_where(tmp_path: Path):
    settings = _settings(tmp_path)
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(tmp_path / "m.csv", "video_url\nhttp://127.0.0.1:9/ok.mp4\n")
    elsewhere = tmp_path / "ray-working-dir"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.jobs.batch", str(manifest)],
        env=_env(settings, RETROIVA_API_KEY=key, RETROIVA_DATA_DIR="data"),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"no job store at {elsewhere / 'data' / 'retroiva.sqlite3'}" in done.stderr
    assert "relative" in done.stderr
    assert not (elsewhere / "data").exists()  # no new, empty store was made


def test_batches_are_listed_shown_and_canceled_by_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    settings = _settings(tmp_path)
    key, _ = add_key(SqliteStore(settings.sqlite_path))
    manifest = _write(
        tmp_path / "m.csv",
        "video_url\nhttp://127.0.0.1:9/a.mp4\nhttp://127.0.0.1:9/b.mp4\nftp://e.com/c.mp4\n",
    )
    env = _env(
        settings,
        RETROIVA_API_KEY=key,
        RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(
            {"metadata": {"job_submission_id": "raysubmit_test123"}}
        ),
    )
    # No runner: the jobs stay queued, so the batch waits until they are canceled.
    batch = subprocess.Popen(
        [sys.executable, "-m", "serve_app.jobs.batch", str(manifest), "--poll-seconds", "0.1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ledger = settings.data_dir / "batches" / "raysubmit_test123.json"
        deadline = time.monotonic() + 60
        while not ledger.exists():
            assert time.monotonic() < deadline and batch.poll() is None
            time.sleep(0.1)
        cli = [str(Path(sys.executable).parent / "retroiva"), "batches"]
        listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=60)
        assert "raysubmit_test123" in listed.stdout and "running" in listed.stdout
        shown = subprocess.run(
            [*cli, "show", "raysubmit_test123"], env=env, capture_output=True, text=True, timeout=60
        )
        assert shown.stdout.count("queued") == 2 and "rejected (no job)" in shown.stdout
        canceled = subprocess.run(
            [*cli, "cancel", "raysubmit_test123"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert canceled.returncode == 0 and canceled.stdout.count(": canceled") == 2
        out, err = batch.communicate(timeout=60)
    finally:
        batch.kill()
    assert batch.returncode == 1, err
    assert "batch raysubmit_test123: 3 rows" in out
    assert "partial: 0 of 3 completed (2 canceled, 1 rejected)" in out
    assert json.loads(ledger.read_text())["finished_at"] is not None
