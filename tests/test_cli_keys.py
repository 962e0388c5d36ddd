"""`retroiva keys|jobs …` and `retroiva sample` against a store in a temporary data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.probe import probe
from serve_app.access.keys import digest_key
from serve_app.cli import app
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.jobs.store import open_store
from serve_app.settings import Settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RETROIVA_DATA_DIR", str(tmp_path))
    return tmp_path


def _key_from(output: str) -> str:
    return next(w for w in output.split() if w.startswith("sk_live_"))


def test_keys_create_list_revoke_and_rotate(data_dir: Path):
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "ci", "--rate-limit", "30/min"])
    assert created.exit_code == 0, created.output
    key = _key_from(created.output)
    assert "whsec_" in created.output and "30 requests/min" in created.output
    store = open_store(Settings())  # webhook secrets are sealed: read them as the CLI does
    record = asyncio.run(store.key_by_digest(digest_key(key)))
    assert record is not None and record.rate_limit == 30
    listing = runner.invoke(app, ["keys", "list"])
    assert record.id in listing.output and "active" in listing.output
    assert key not in listing.output  # only the prefix is shown
    rotated = runner.invoke(app, ["keys", "rotate-webhook-secret", record.id])
    assert rotated.exit_code == 0 and "whsec_" in rotated.output
    new_secret = asyncio.run(store.key_by_digest(digest_key(key))).webhook_secret
    assert new_secret != record.webhook_secret and new_secret in rotated.output
    assert runner.invoke(app, ["keys", "revoke", record.prefix]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output
    again = runner.invoke(app, ["keys", "revoke", record.id])
    assert again.exit_code == 1 and "no active key" in again.output


def test_bad_rate_limit_is_a_usage_error(data_dir: Path):
    result = CliRunner().invoke(app, ["keys", "create", "--name", "x", "--rate-limit", "5/h"])
    assert result.exit_code == 2 and "N/min" in result.output


def test_sample_writes_a_playable_clip(tmp_path: Path):
    result = CliRunner().invoke(
        app,
        ["sample", str(tmp_path / "s.mp4"), "--seconds", "0.5", "--width", "64", "--height", "48"],
    )
    assert result.exit_code == 0, result.output
    info = probe(tmp_path / "s.mp4")
    assert (info.width, info.height, info.frame_count) == (64, 48, 12)
    assert info.audio


def test_jobs_list_show_and_cancel(data_dir: Path):
    import time

    from serve_app.access.keys import new_id
    from serve_app.jobs.records import JobRecord
    from vocabulary import JobStatus

    store = SqliteStore(data_dir / "retroiva.sqlite3")
    job = JobRecord(
        id=new_id("job"),
        key_id="key_ops",
        status=JobStatus.QUEUED,
        input_url="https://example.com/v.mp4",
        preset="archive",
        upscale_factor=3,
        created_at=time.time(),
        created_seq=time.time_ns(),
    )

    async def seed() -> None:
        await store.init()
        await store.insert_job(job, time.time())

    asyncio.run(seed())
    runner = CliRunner()
    listing = runner.invoke(app, ["jobs", "list"])
    assert job.id in listing.output and "queued" in listing.output
    assert "no jobs" in runner.invoke(app, ["jobs", "list", "--status", "failed"]).output
    assert runner.invoke(app, ["jobs", "list", "--status", "bogus"]).exit_code == 2
    shown = runner.invoke(app, ["jobs", "show", job.id])
    assert "upscale_factor: 3" in shown.output and "preset: archive" in shown.output
    canceled = runner.invoke(app, ["jobs", "cancel", job.id])
    assert canceled.exit_code == 0 and "canceled" in canceled.output
    assert asyncio.run(store.get_job(job.id)).status == JobStatus.CANCELED
    assert runner.invoke(app, ["jobs", "show", "job_missing"]).exit_code == 1


async def _keys_as_the_cli_reads_them() -> list:
    store = open_store(Settings())  # webhook secrets are sealed at rest
    await store.init()
    try:
        return await store.list_keys()
    finally:
        await store.close()


def test_revoke_and_rotate_refuse_an_ambiguous_prefix(data_dir: Path):
    """Issue 16 item 7: two keys share a 12-character display prefix (as happened after
    ~2000 keys); a revoke by that prefix lists both and changes neither."""
    import dataclasses

    from serve_app.access.keys import new_api_key

    store = SqliteStore(data_dir / "retroiva.sqlite3")
    _, first = new_api_key("tenant-1", 60)
    _, second = new_api_key("tenant-2", 60)
    second = dataclasses.replace(second, prefix=first.prefix)

    async def seed() -> None:
        await store.init()
        for record in (first, second):
            await store.add_key(record)

    asyncio.run(seed())
    runner = CliRunner()
    for command in (
        ["keys", "revoke", first.prefix],
        ["keys", "rotate-webhook-secret", first.prefix],
        ["keys", "set-limits", first.prefix, "--max-queued", "5"],
    ):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 1, refused.output
        assert "matches 2 keys" in refused.output and "nothing changed" in refused.output
        assert first.id in refused.output and second.id in refused.output
    keys = asyncio.run(_keys_as_the_cli_reads_them())
    assert all(k.revoked_at is None and k.max_queued is None for k in keys)
    assert {k.webhook_secret for k in keys} == {first.webhook_secret, second.webhook_secret}
    assert runner.invoke(app, ["keys", "revoke", second.id]).exit_code == 0
    assert asyncio.run(store.get_key(second.id)).revoked_at is not None
    assert asyncio.run(store.get_key(first.id)).revoked_at is None


def test_queue_limits_per_key(data_dir: Path):
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "batchy", "--max-queued", "20"])
    assert created.exit_code == 0 and "max queued 20, max running default" in created.output
    record = asyncio.run(
        SqliteStore(data_dir / "retroiva.sqlite3").key_by_digest(
            digest_key(_key_from(created.output))
        )
    )
    assert record is not None and record.max_queued == 20
    changed = runner.invoke(
        app, ["keys", "set-limits", record.id[:10], "--max-queued", "5", "--max-running", "2"]
    )
    assert changed.exit_code == 0 and "max queued 5, max running 2" in changed.output
    assert "max queued 5, max running 2" in runner.invoke(app, ["keys", "list"]).output
    cleared = runner.invoke(app, ["keys", "set-limits", record.id])
    assert "max queued default, max running default" in cleared.output
    assert runner.invoke(app, ["keys", "set-limits", "key_nope"]).exit_code == 1
