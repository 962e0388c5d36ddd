"""The job specification between the doors (API, batch, dashboard) and the intake.

A :class:`JobSpec` checks itself with the API's errors; the intake takes one and no
HTTP body; the jobs room imports nothing of the HTTP room; a batch row the service
refuses is reported with the API's error type.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from serve_app.access.keys import new_api_key
from serve_app.api.schemas import job_spec
from serve_app.errors import ConflictError, InvalidRequestError
from serve_app.jobs.batch import run_batch
from serve_app.jobs.batch_manifest import ManifestRow
from serve_app.jobs.batch_queue import RowRejected, StoreJobQueue
from serve_app.jobs.intake import submit_job
from serve_app.jobs.job_spec import JobSpec
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings
from vocabulary import ApiErrorType, Engine, JobStatus, PresetName

REPO = Path(__file__).parents[1]
URL = "https://example.com/a.mp4"
LOCAL = "http://127.0.0.1:9/a.mp4"  # resolves without a network (private URLs allowed)


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({}, "video_url", "video_url is required (or upload_id, for an uploaded file)"),
        ({"video_url": URL, "upload_id": "upl_1"}, "video_url", "give video_url or upload_id"),
        ({"video_url": "ftp://e.com/a"}, "video_url", "must be an http or https URL with a host"),
        ({"video_url": URL, "webhook_url": "x"}, "webhook_url", "webhook_url must be an http"),
        ({"video_url": "https://e.com/" + "a" * 2048}, "video_url", "at most 2048 characters"),
        ({"video_url": URL, "preset": "vivid"}, "preset", "preset must be one of"),
        ({"video_url": URL, "engine": "gpu"}, "engine", "engine must be neural or classical"),
        ({"video_url": URL, "upscale_factor": 5}, "upscale_factor", "integer from 1 to 4"),
        ({"video_url": URL, "upscale_factor": True}, "upscale_factor", "integer from 1 to 4"),
        ({"video_url": URL, "cancel_after": 0}, "cancel_after", "cancel_after must be"),
    ],
)
def test_a_spec_refuses_with_the_apis_error_and_param(
    fields: dict[str, object], param: str, message: str
):
    with pytest.raises(InvalidRequestError, match=re.escape(message)) as caught:
        JobSpec(**fields)  # type: ignore[arg-type]  # wrong types on purpose
    assert caught.value.param == param
    assert caught.value.body()["error"]["type"] == ApiErrorType.INVALID_REQUEST


def test_a_spec_keeps_names_as_the_vocabularys_members():
    spec = JobSpec(video_url=URL, preset="archive", engine="classical")  # type: ignore[arg-type]
    assert spec.preset is PresetName.ARCHIVE and spec.engine is Engine.CLASSICAL
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.preset = PresetName.GENERAL  # type: ignore[misc]


def test_the_api_body_and_a_spec_hash_alike():
    """An idempotent replay through the API matches a job made from a spec (and the
    hash of a body without the later fields is what it always was)."""
    body = {"video_url": URL, "preset": "social", "upscale_factor": 3}
    assert job_spec(body) == JobSpec(video_url=URL, preset=PresetName.SOCIAL, upscale_factor=3)
    assert (
        job_spec(body).request_hash()
        == JobSpec(video_url=URL, preset=PresetName.SOCIAL, upscale_factor=3).request_hash()
    )
    # What jobs stored before the spec existed hold: the body's fields, those added
    # later (upload_id, cancel_after) only when given.
    before = {
        "video_url": URL,
        "preset": "general",
        "webhook_url": None,
        "upscale_factor": None,
        "engine": "neural",
    }
    stored = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert JobSpec(video_url=URL).request_hash() == stored


def test_intake_takes_a_spec_without_any_http_body(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, allow_private_urls=True, signing_secret="s")
    store = SqliteStore(settings.sqlite_path)
    _, key = new_api_key("spec", 1000)

    async def submit() -> None:
        await store.init()
        await store.add_key(key)
        spec = JobSpec(video_url=LOCAL, preset=PresetName.ARCHIVE, engine=Engine.CLASSICAL)
        job, created = await submit_job(store, key, spec, "k-1", settings.url_policy)
        assert created and job.status == JobStatus.QUEUED
        assert (job.input_url, job.preset, job.engine, job.upscale_factor) == (
            LOCAL,
            PresetName.ARCHIVE,
            Engine.CLASSICAL,
            2,  # the preset's
        )
        again, created = await submit_job(store, key, spec, "k-1", settings.url_policy)
        assert not created and again.id == job.id
        with pytest.raises(ConflictError):
            await submit_job(
                store, key, dataclasses.replace(spec, upscale_factor=4), "k-1", settings.url_policy
            )
        await store.close()

    asyncio.run(submit())


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["intake", "job_spec", "batch", "batch_manifest", "batch_queue"])
def test_intake_and_the_batch_import_nothing_of_the_http_room(module: str):
    """A job is created from a spec: no HTTP body (nor pydantic) on the way in.
    (The runner does import the API's job object: it is the webhook's body.)"""
    names = _imports(REPO / "serve_app" / "jobs" / f"{module}.py")
    http = {n for n in names if n.startswith(("serve_app.api", "serve_app.dashboard", "pydantic"))}
    assert not http, f"{module}.py imports {http}"


def test_the_batch_driver_lives_in_the_jobs_room():
    """pipelines/ knows no jobs: no batch driver there, and no entry point that
    leads back into serve_app."""
    assert not (REPO / "pipelines" / "batch.py").exists()
    assert "retroiva.job_queues" not in (REPO / "pyproject.toml").read_text()
    for path in sorted((REPO / "pipelines").glob("*.py")):
        assert not {n for n in _imports(path) if n.startswith("serve_app")}, path.name


def _queue_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        allow_private_urls=True,
        public_url="http://127.0.0.1:8000",
        signing_secret="s",
    )


def test_a_batch_row_the_api_would_refuse_is_rejected_as_invalid_request_error(tmp_path: Path):
    settings = _queue_settings(tmp_path)
    store = SqliteStore(settings.sqlite_path)
    token, key = new_api_key("batch", 1000)

    async def run() -> None:
        await store.init()
        await store.add_key(key)
        await store.close()
        queue = StoreJobQueue(token, settings)
        await queue.open()
        try:
            rows = [ManifestRow(line=2, video_url=LOCAL, webhook_url="ftp://hooks.example/x")]
            [result] = await run_batch(rows, queue, say=lambda _: None, poll_seconds=0.01)
        finally:
            await queue.close()
        assert result.state.status == "rejected" and result.state.id == ""
        assert result.state.error_type == "invalid_request_error"
        assert result.state.error_message == "webhook_url must be an http or https URL with a host"

    asyncio.run(run())


def test_a_batch_row_past_the_keys_queue_limit_says_queue_limit_error(tmp_path: Path):
    settings = _queue_settings(tmp_path)
    store = SqliteStore(settings.sqlite_path)
    token, key = new_api_key("batch", 1000)
    key = dataclasses.replace(key, max_queued=1)

    async def run() -> None:
        await store.init()
        await store.add_key(key)
        await store.close()
        queue = StoreJobQueue(token, settings)
        await queue.open()
        try:
            first = await queue.submit(ManifestRow(line=1, video_url=LOCAL))
            assert first.status == JobStatus.QUEUED
            with pytest.raises(RowRejected) as caught:
                await queue.submit(ManifestRow(line=2, video_url=LOCAL + "?2"))
        finally:
            await queue.close()
        assert caught.value.error_type == ApiErrorType.QUEUE_LIMIT == "queue_limit_error"

    asyncio.run(run())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"public_url": "https://restore.example"}, "https://restore.example"),
        ({"host": "10.0.0.5", "port": 9000}, "http://10.0.0.5:9000"),
        ({"host": "0.0.0.0"}, "http://127.0.0.1:8000"),
    ],
)
def test_links_made_without_a_request_have_one_base_url(
    tmp_path: Path, fields: dict[str, object], expected: str
):
    assert Settings(data_dir=tmp_path, **fields).public_base_url == expected  # type: ignore[arg-type]


def test_a_field_added_later_leaves_stored_hashes_alone():
    """The README's recipe for a new job field must not break idempotent replays of jobs
    stored before it: unset, the new field is not in the hash; set, it is."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithLabel(JobSpec):
        label: str | None = None

    assert WithLabel(video_url=URL).request_hash() == JobSpec(video_url=URL).request_hash()
    assert WithLabel(video_url=URL, label="reel 7").request_hash() != (
        JobSpec(video_url=URL).request_hash()
    )
