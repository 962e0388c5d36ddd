"""One contract, two backends: SQLite always, MongoDB when RETROIVA_MONGODB_URI is set."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from serve_app.access.keys import new_api_key, new_id
from serve_app.jobs.records import JobRecord, UploadRecord, WebhookAttempt
from serve_app.jobs.store import IDEMPOTENCY_WINDOW_SECONDS, AmbiguousKey, JobStore, QueueFull
from vocabulary import JobStatus, UploadStatus

MONGODB_URI = os.environ.get("RETROIVA_MONGODB_URI")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        from serve_app.jobs.sqlite_store import SqliteStore

        backend: JobStore = SqliteStore(tmp_path / "store.sqlite3")
    else:
        if not MONGODB_URI:
            pytest.skip(
                "MongoDB contract run skipped: set RETROIVA_MONGODB_URI "
                "(e.g. mongodb://127.0.0.1:27017) to run it against a server"
            )
        from serve_app.jobs.mongo_store import MongoStore

        # The suite replays time with explicit ``now``s; the server's clock has its own test.
        backend = MongoStore(
            MONGODB_URI, f"retroiva_test_{uuid.uuid4().hex[:8]}", server_clock=False
        )
    await backend.init()
    try:
        yield backend
    finally:
        if request.param == "mongo":
            await backend.drop()  # type: ignore[attr-defined]  # no test database left
        await backend.close()


def _job(key_id: str = "key_a", seq: int | None = None, **fields: object) -> JobRecord:
    now = time.time()
    values: dict[str, object] = {
        "id": new_id("job"),
        "key_id": key_id,
        "status": JobStatus.QUEUED,
        "input_url": "https://example.com/v.mp4",
        "preset": "general",
        "upscale_factor": 2,
        "created_at": now,
        "created_seq": seq if seq is not None else time.time_ns(),
    }
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


async def test_keys_roundtrip_and_revoke(store: JobStore):
    key, record = new_api_key("ci", rate_limit=10)
    await store.add_key(record)
    assert await store.key_by_digest(record.digest) == record
    assert [k.id for k in await store.list_keys()] == [record.id]
    assert await store.revoke_key(record.prefix, time.time())
    assert (await store.key_by_digest(record.digest)).revoked_at is not None
    assert not await store.revoke_key(record.id, time.time())  # already revoked
    assert key not in repr(await store.list_keys())  # only the digest is kept


async def test_rotate_webhook_secret(store: JobStore):
    _, record = new_api_key("ci", rate_limit=10)
    await store.add_key(record)
    assert await store.set_webhook_secret(record.id, "whsec_new")
    assert (await store.key_by_digest(record.digest)).webhook_secret == "whsec_new"


async def test_rate_counter_is_atomic(store: JobStore):
    counts = await asyncio.gather(*(store.count_request("key_a", 100) for _ in range(25)))
    assert sorted(counts) == list(range(1, 26))
    assert await store.count_request("key_a", 101) == 1


async def test_insert_get_and_idempotency(store: JobStore):
    job = _job(idempotency_key="abc", request_hash="h1")
    assert await store.insert_job(job, time.time()) == (job, True)
    assert await store.get_job(job.id) == job
    again, created = await store.insert_job(_job(idempotency_key="abc"), time.time())
    assert (again.id, created) == (job.id, False)
    other_key, created = await store.insert_job(_job("key_b", idempotency_key="abc"), time.time())
    assert created and other_key.id != job.id
    later = time.time() + IDEMPOTENCY_WINDOW_SECONDS + 1
    fresh, created = await store.insert_job(_job(idempotency_key="abc"), later)
    assert created and fresh.id != job.id
    assert await store.get_job("job_missing") is None
    classical = _job(engine="classical")
    await store.insert_job(classical, time.time())
    assert (await store.get_job(classical.id)) == classical


async def test_pagination_newest_first_without_gaps(store: JobStore):
    jobs = [_job(seq=1000 + i // 2) for i in range(7)]  # equal seqs: ties broken by id
    for job in jobs:
        await store.insert_job(job, time.time())
    await store.insert_job(_job("key_b"), time.time())
    seen, cursor, has_more = [], None, True
    while has_more:
        page, has_more = await store.list_jobs("key_a", 3, cursor)
        seen += [j.id for j in page]
        cursor = page[-1].id if page else None
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_seq, j.id), reverse=True)]
    assert seen == expected
    assert await store.list_jobs("key_b", 3, jobs[0].id) == ([], False)  # foreign cursor


async def test_recent_jobs_across_keys_with_filters(store: JobStore):
    a1, b1, a2 = _job("key_a", seq=1), _job("key_b", seq=2), _job("key_a", seq=3)
    for job in (a1, b1, a2):
        await store.insert_job(job, time.time())
    await store.request_cancel(a1.id, time.time())
    assert [j.id for j in await store.recent_jobs(10)] == [a2.id, b1.id, a1.id]
    assert [j.id for j in await store.recent_jobs(10, key_id="key_a")] == [a2.id, a1.id]
    assert [j.id for j in await store.recent_jobs(10, status="canceled")] == [a1.id]
    assert [j.id for j in await store.recent_jobs(1)] == [a2.id]
    assert await store.count_jobs_by_status() == {
        "queued": 2,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "canceled": 1,
    }


async def test_claim_is_exclusive_and_fifo(store: JobStore):
    first, second = _job(seq=1), _job(seq=2)
    for job in (second, first):
        await store.insert_job(job, time.time())
    claims = await asyncio.gather(*(store.claim_next(f"r{i}", time.time(), 30) for i in range(4)))
    claimed = [c for c in claims if c is not None]
    assert sorted(c.id for c in claimed) == sorted([first.id, second.id])
    assert all(c.status == JobStatus.PROCESSING and c.attempts == 1 for c in claimed)
    assert len({c.lease_owner for c in claimed}) == 2


async def test_lease_renewal_progress_and_finish(store: JobStore):
    await store.insert_job(_job(), time.time())
    job = await store.claim_next("runner", time.time(), 30)
    renewed = await store.renew_lease(job.id, "runner", time.time(), 30, 0.5, 12.0)
    assert (renewed.progress, renewed.eta_seconds) == (0.5, 12.0)
    assert await store.renew_lease(job.id, "intruder", time.time(), 30, 0.9, 1.0) is None
    assert not await store.finish(job.id, "intruder", JobStatus.COMPLETED, time.time())
    assert await store.finish(
        job.id, "runner", JobStatus.COMPLETED, time.time(), output_path="/out.mp4"
    )
    done = await store.get_job(job.id)
    assert (done.status, done.progress, done.output_path, done.lease_owner) == (
        JobStatus.COMPLETED,
        1.0,
        "/out.mp4",
        None,
    )


async def test_cancel_queued_processing_and_terminal(store: JobStore):
    queued, running = _job(seq=2), _job(seq=1)
    for job in (queued, running):
        await store.insert_job(job, time.time())
    claimed = await store.claim_next("runner", time.time(), 30)
    assert claimed.id == running.id
    assert (await store.request_cancel(queued.id, time.time())).status == JobStatus.CANCELED
    flagged = await store.request_cancel(running.id, time.time())
    assert (flagged.status, flagged.cancel_requested) == (JobStatus.PROCESSING, True)
    assert await store.claim_next("runner", time.time(), 30) is None  # canceled never starts
    await store.finish(running.id, "runner", JobStatus.CANCELED, time.time())
    assert (await store.request_cancel(running.id, time.time())).status == JobStatus.CANCELED
    assert await store.request_cancel("job_missing", time.time()) is None


async def test_expired_leases_requeue_then_fail(store: JobStore):
    await store.insert_job(_job(), time.time())
    now = time.time()
    for attempt in (1, 2):
        job = await store.claim_next("dead-runner", now, 1)
        assert job.attempts == attempt
        assert await store.requeue_expired(now + 0.5, max_attempts=2) == 0  # still leased
        assert await store.requeue_expired(now + 2, max_attempts=2) == 1
        now += 3
    failed = await store.get_job(job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error_type == "runner_lost" and "2 times" in failed.error_message


async def test_expired_lease_of_a_canceled_job_ends_canceled(store: JobStore):
    await store.insert_job(_job(), time.time())
    job = await store.claim_next("dead-runner", time.time(), 1)
    await store.request_cancel(job.id, time.time())
    assert await store.requeue_expired(time.time() + 2, max_attempts=5) == 1
    assert (await store.get_job(job.id)).status == JobStatus.CANCELED


async def test_expired_outputs_and_clearing(store: JobStore):
    old, recent, failed = _job(seq=1), _job(seq=2), _job(seq=3)
    for job in (old, recent, failed):
        await store.insert_job(job, time.time())
    for job, status, when in (
        (old, JobStatus.COMPLETED, 100.0),
        (recent, JobStatus.COMPLETED, 10_000.0),
        (failed, JobStatus.FAILED, 100.0),
    ):
        claimed = await store.claim_next("r", time.time(), 30)
        assert claimed.id == job.id
        await store.finish(job.id, "r", status, when, output_path=f"{job.id}.mp4")
    assert [j.id for j in await store.expired_outputs(5_000.0, 10)] == [old.id]
    await store.clear_output(old.id)
    assert await store.expired_outputs(5_000.0, 10) == []
    cleared = await store.get_job(old.id)
    assert (cleared.status, cleared.output_path) == (JobStatus.COMPLETED, None)


async def test_ping_answers_when_the_store_is_up(store: JobStore):
    await store.ping()


async def test_claims_are_fair_across_keys(store: JobStore):
    """Issue 16 item 5: key A queues 50, then key B 1; B's job starts before A's 3rd."""
    a_jobs = [_job("key_a", seq=i) for i in range(50)]
    b_job = _job("key_b", seq=100)
    for job in [*a_jobs, b_job]:
        await store.insert_job(job, time.time())
    order = []
    while (claimed := await store.claim_next("r", time.time(), 30)) is not None:
        order.append(claimed.id)
        await store.finish(claimed.id, "r", JobStatus.COMPLETED, time.time())
    assert order.index(b_job.id) < order.index(a_jobs[2].id)
    assert order.index(b_job.id) == 1  # right after A's first
    assert [i for i in order if i != b_job.id] == [j.id for j in a_jobs]  # A's stay FIFO


async def test_running_limit_skips_a_key_at_its_limit(store: JobStore):
    _, record = new_api_key("capped", rate_limit=10)
    await store.add_key(record)
    assert await store.set_key_limits(record.id, None, 1)
    capped = [_job(record.id, seq=i) for i in range(3)]
    other = _job("key_free", seq=10)
    for job in [*capped, other]:
        await store.insert_job(job, time.time())
    first = await store.claim_next("r", time.time(), 30, max_running=5)
    second = await store.claim_next("r", time.time(), 30, max_running=5)
    assert (first.id, second.id) == (capped[0].id, other.id)
    assert await store.claim_next("r", time.time(), 30, max_running=5) is None  # at limit
    await store.finish(first.id, "r", JobStatus.COMPLETED, time.time())
    assert (await store.claim_next("r", time.time(), 30, max_running=5)).id == capped[1].id
    # The setting applies to keys without their own limit.
    for job in (_job("key_free", seq=20), _job("key_free", seq=21)):
        await store.insert_job(job, time.time())
    assert await store.claim_next("r", time.time(), 30, max_running=1) is None


async def test_queue_limit_refuses_the_job_past_it(store: JobStore):
    for i in range(3):
        await store.insert_job(_job(seq=i, idempotency_key=f"k{i}"), time.time(), 3)
    with pytest.raises(QueueFull) as refused:
        await store.insert_job(_job(seq=9), time.time(), 3)
    assert refused.value.limit == 3 and "3 queued jobs" in str(refused.value)
    _, created = await store.insert_job(_job(idempotency_key="k0"), time.time(), 3)
    assert not created  # a replay is not a new job: never refused
    await store.insert_job(_job("key_b"), time.time(), 3)  # per key
    assert (await store.count_jobs_by_status())["queued"] == 4


async def test_key_references_must_be_unambiguous(store: JobStore):
    """Issue 16 item 7 / 21 item 8: a shared display prefix never revokes two keys."""
    _, first = new_api_key("tenant-1", rate_limit=10)
    _, second = new_api_key("tenant-2", rate_limit=10)
    second = dataclasses.replace(second, prefix=first.prefix)  # a 12-character collision
    for record in (first, second):
        await store.add_key(record)
    with pytest.raises(AmbiguousKey) as ambiguous:
        await store.revoke_key(first.prefix, time.time())
    assert {k.id for k in ambiguous.value.candidates} == {first.id, second.id}
    assert first.id in str(ambiguous.value) and second.id in str(ambiguous.value)
    with pytest.raises(AmbiguousKey):
        await store.set_webhook_secret(first.prefix, "whsec_x")
    assert all(k.revoked_at is None for k in await store.list_keys())  # nothing changed
    assert {k.webhook_secret for k in await store.list_keys()} == {
        first.webhook_secret,
        second.webhook_secret,
    }
    assert await store.revoke_key(second.id, time.time())  # the id always works
    assert await store.set_webhook_secret(first.id[:12], "whsec_y")  # unambiguous id prefix
    assert (await store.get_key(first.id)).webhook_secret == "whsec_y"
    assert await store.find_keys(first.id) == [await store.get_key(first.id)]
    assert not await store.revoke_key("key_missing", time.time())


async def test_a_lapsed_webhook_dispatcher_changes_nothing(store: JobStore):
    """Issue 21 item 7: attempt 1 recorded late can't turn 'delivered' back to 'pending'."""
    await store.insert_job(_job(webhook_url="https://hooks.example.com/x"), time.time())
    job = await store.claim_next("r", time.time(), 30)
    await store.finish(job.id, "r", JobStatus.COMPLETED, time.time())
    assert len(await store.claim_due_webhooks(time.time(), 1, 10)) == 1
    now = time.time()
    # A second dispatcher, after the first one's lease lapsed, delivers attempt 1.
    await store.record_webhook_attempt(
        WebhookAttempt(job.id, 1, now, 200, None, 5),
        status="delivered",
        next_at=None,
        body='{"a":1}',
    )
    # The first dispatcher finally records its own attempt 1, a failure.
    await store.record_webhook_attempt(
        WebhookAttempt(job.id, 1, now, 503, "HTTP 503", 9),
        status="pending",
        next_at=now + 30,
        body='{"a":2}',
    )
    after = await store.get_job(job.id)
    assert (after.webhook_status, after.webhook_attempts, after.webhook_body) == (
        "delivered",
        1,
        '{"a":1}',
    )
    [attempt] = await store.webhook_attempts(job.id)
    assert attempt.status_code == 200


async def test_an_event_body_is_frozen_before_its_first_send(store: JobStore):
    """Issue 21 item 7: a dispatcher that dies between sending and recording leaves the
    next one the body it sent, not a rebuilt one (whose download link would differ)."""
    await store.insert_job(_job(webhook_url="https://hooks.example.com/x"), time.time())
    job = await store.claim_next("r", time.time(), 30)
    await store.finish(job.id, "r", JobStatus.COMPLETED, time.time())
    assert await store.freeze_webhook_body(job.id, '{"sent":1}') == '{"sent":1}'
    assert await store.freeze_webhook_body(job.id, '{"rebuilt":2}') == '{"sent":1}'
    assert (await store.get_job(job.id)).webhook_body == '{"sent":1}'


def test_records_are_plain_data():
    job = _job()
    assert dataclasses.replace(job, progress=0.5).progress == 0.5
    assert JobStatus.CANCELED.is_terminal and not JobStatus.QUEUED.is_terminal


async def test_sqlite_store_from_an_earlier_version_gains_new_columns(tmp_path: Path):
    """A jobs table without the engine column (first release) is migrated on init."""
    import sqlite3

    from serve_app.jobs.sqlite_store import SqliteStore

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, status TEXT "
        "NOT NULL, input_url TEXT NOT NULL, preset TEXT NOT NULL, upscale_factor "
        "INTEGER NOT NULL, created_at REAL NOT NULL, created_seq INTEGER NOT NULL, "
        "webhook_url TEXT, started_at REAL, completed_at REAL, progress REAL NOT "
        "NULL, eta_seconds REAL, output_path TEXT, error_type TEXT, error_message "
        "TEXT, attempts INTEGER NOT NULL, lease_owner TEXT, lease_expires_at REAL, "
        "cancel_requested INTEGER NOT NULL, idempotency_key TEXT, request_hash TEXT, "
        "webhook_status TEXT, webhook_attempts INTEGER NOT NULL DEFAULT 0, "
        "webhook_next_at REAL, webhook_body TEXT)"
    )
    old.execute(
        "INSERT INTO jobs (id, key_id, status, input_url, preset, upscale_factor, "
        "created_at, created_seq, progress, attempts, cancel_requested) VALUES "
        "('job_old', 'key_a', 'completed', 'https://e.com/v.mp4', 'general', 2, "
        "1.0, 1, 1.0, 1, 0)"
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    await store.init()
    job = await store.get_job("job_old")
    assert job is not None and job.engine == "neural"
    assert (job.upload_id, job.deadline_at) == (None, None)
    await store.insert_job(_job(engine="classical"), time.time())
    await store.close()


def _upload(
    key_id: str = "key_a", size: int = 10, expires_in: float = 600, **fields: object
) -> UploadRecord:
    now = time.time()
    values: dict[str, object] = {
        "id": new_id("upl"),
        "key_id": key_id,
        "size": size,
        "offset": 0,
        "created_at": now,
        "expires_at": now + expires_in,
        "filename": "a.mp4",
    }
    values.update(fields)
    return UploadRecord(**values)  # type: ignore[arg-type]


async def test_upload_offsets_move_forward_by_compare_and_set(store: JobStore):
    upload = _upload()
    await store.insert_upload(upload)
    assert await store.get_upload(upload.id) == upload
    assert upload.status == UploadStatus.PENDING
    racing = await asyncio.gather(*(store.advance_upload(upload.id, 0, 4) for _ in range(5)))
    assert [r.offset for r in racing if r is not None] == [4]  # one writer counts
    assert await store.advance_upload(upload.id, 0, 8) is None  # stale offset
    assert await store.advance_upload(upload.id, 4, 11) is None  # past the size
    assert await store.advance_upload(upload.id, 4, 3) is None  # backwards
    done = await store.advance_upload(upload.id, 4, 10)
    assert done is not None and done.status == UploadStatus.COMPLETE
    assert await store.get_upload("upl_missing") is None


async def test_an_upload_feeds_one_job_and_is_found_when_that_job_ends(store: JobStore):
    now = time.time()
    unfinished, complete = _upload(), _upload(offset=10)
    for upload in (unfinished, complete):
        await store.insert_upload(upload)
    assert not await store.claim_upload(unfinished.id, "job_1", now)
    claims = await asyncio.gather(
        *(store.claim_upload(complete.id, f"job_{n}", now) for n in range(4))
    )
    assert sorted(claims) == [False, False, False, True]
    winner = (await store.get_upload(complete.id)).job_id
    assert await store.advance_upload(complete.id, 10, 10) is None  # taken: frozen
    await store.release_upload(complete.id, "job_other")  # not its job: no change
    assert (await store.get_upload(complete.id)).job_id == winner
    await store.release_upload(complete.id, winner)
    assert (await store.get_upload(complete.id)).job_id is None

    job = _job()
    await store.insert_job(dataclasses.replace(job, upload_id=complete.id), now)
    assert await store.claim_upload(complete.id, job.id, now)
    assert await store.uploads_of_ended_jobs(now, 10) == []
    await store.request_cancel(job.id, time.time())
    assert [u.id for u in await store.uploads_of_ended_jobs(now, 10)] == [complete.id]
    assert (await store.get_job(job.id)).upload_id == complete.id
    await store.delete_upload(complete.id)
    await store.delete_upload(complete.id)  # gone already: no error
    assert await store.get_upload(complete.id) is None


async def test_expired_uploads_are_those_no_job_took(store: JobStore):
    now = time.time()
    old, taken, fresh = _upload(expires_in=-1, offset=10), _upload(offset=10), _upload()
    for upload in (old, taken, fresh):
        await store.insert_upload(upload)
    assert await store.claim_upload(taken.id, "job_t", now)
    assert not await store.claim_upload(old.id, "job_x", now)  # expired: refused
    later = now + 3600
    assert [u.id for u in await store.expired_uploads(now, 10)] == [old.id]
    assert {u.id for u in await store.expired_uploads(later, 10)} == {old.id, fresh.id}
    # Open = unexpired and untaken, per key: what MAX_OPEN_UPLOADS bounds.
    await store.insert_upload(_upload(key_id="key_b"))
    assert await store.open_uploads("key_a", now) == 1  # fresh only
    assert await store.open_uploads("key_b", now) == 1
    assert await store.open_uploads("key_a", later) == 0
    # Claimed, but its job not inserted yet (intake claims first): not swept as "its
    # job ended" while the upload is live; only once it has expired.
    pending = _upload(offset=10)
    await store.insert_upload(pending)
    assert await store.claim_upload(pending.id, "job_about_to_be_inserted", now)
    assert await store.uploads_of_ended_jobs(now, 10) == []
    # (taken's job_t never existed either: both go once expired)
    assert {u.id for u in await store.uploads_of_ended_jobs(later, 10)} == {pending.id, taken.id}


async def test_queued_jobs_past_their_deadline_are_canceled(store: JobStore):
    now = time.time()
    overdue = _job(deadline_at=now - 1, webhook_url="https://example.com/hook")
    later, plain = _job(deadline_at=now + 60), _job()
    for job in (overdue, later, plain):
        await store.insert_job(job, now)
    assert await store.cancel_overdue(now) == 1
    ended = await store.get_job(overdue.id)
    assert (ended.status, ended.error_type) == (JobStatus.CANCELED, "deadline_exceeded")
    assert ended.webhook_status == "pending" and ended.completed_at == now
    assert (await store.get_job(later.id)).status == JobStatus.QUEUED
    assert (await store.get_job(plain.id)).status == JobStatus.QUEUED
    assert (await store.get_job(later.id)).deadline_at == now + 60
    assert await store.cancel_overdue(now) == 0


async def test_rotation_keeps_the_previous_secret_for_the_overlap(store: JobStore):
    """Issue 17 item 2: one update moves the current secret to previous."""
    _, first = new_api_key("tenant-1", rate_limit=10)
    _, second = new_api_key("tenant-2", rate_limit=10)
    second = dataclasses.replace(second, prefix=first.prefix)
    for record in (first, second):
        await store.add_key(record)
    with pytest.raises(AmbiguousKey):
        await store.rotate_webhook_secret(first.prefix, "whsec_x", 5.0)
    assert await store.rotate_webhook_secret(first.id, "whsec_new", 1234.5)
    rotated = await store.get_key(first.id)
    assert (
        rotated.webhook_secret,
        rotated.previous_webhook_secret,
        rotated.previous_secret_expires_at,
    ) == ("whsec_new", first.webhook_secret, 1234.5)
    assert (await store.get_key(second.id)).previous_webhook_secret is None
    assert not await store.rotate_webhook_secret("key_missing", "whsec_y", 1.0)
    # Again within the overlap (at 1000 < 1234.5): the original stays previous, with
    # its own end; only the secret the first rotation issued is replaced.
    assert await store.rotate_webhook_secret(first.id, "whsec_newer", 2000.0, now=1000.0)
    again = await store.get_key(first.id)
    assert (
        again.webhook_secret,
        again.previous_webhook_secret,
        again.previous_secret_expires_at,
    ) == ("whsec_newer", first.webhook_secret, 1234.5)
    # After the overlap, the current secret becomes previous as usual.
    assert await store.rotate_webhook_secret(first.id, "whsec_last", 3000.0, now=1500.0)
    last = await store.get_key(first.id)
    assert (last.webhook_secret, last.previous_webhook_secret, last.previous_secret_expires_at) == (
        "whsec_last",
        "whsec_newer",
        3000.0,
    )


async def _delivered(
    store: JobStore, key_id: str = "key_a", status: str = "delivered"
) -> JobRecord:
    await store.insert_job(_job(key_id, webhook_url="https://hooks.example.com/x"), time.time())
    job = await store.claim_next("r", time.time(), 30)
    await store.finish(job.id, "r", JobStatus.COMPLETED, time.time())
    await store.claim_due_webhooks(time.time(), 1, 10)
    await store.record_webhook_attempt(
        WebhookAttempt(
            job.id,
            1,
            time.time(),
            500 if status == "failed" else 200,
            "HTTP 500" if status == "failed" else None,
            5,
        ),
        status=status,
        next_at=None,
        body='{"a":1}',
    )
    return await store.get_job(job.id)


async def test_redelivery_only_of_ended_deliveries_with_a_new_round(store: JobStore):
    """Issue 17 item 3: delivered or failed events become pending again, due now."""
    await store.insert_job(_job(webhook_url="https://hooks.example.com/x"), time.time())
    pending = await store.claim_next("r", time.time(), 30)
    await store.finish(pending.id, "r", JobStatus.COMPLETED, time.time())
    assert await store.redeliver_webhook(pending.id, time.time()) is None  # still pending
    job = await _delivered(store)
    now = time.time()
    again = await store.redeliver_webhook(job.id, now)
    assert (
        again.webhook_status,
        again.webhook_next_at,
        again.webhook_round_start,
        again.webhook_attempts,
        again.webhook_body,
    ) == ("pending", now, 1, 1, '{"a":1}')
    assert job.id in [j.id for j in await store.claim_due_webhooks(now + 1, 1, 10)]
    await store.record_webhook_attempt(
        WebhookAttempt(job.id, 2, now, 200, None, 3, redelivery=True),
        status="delivered",
        next_at=None,
        body='{"a":1}',
    )
    assert [a.redelivery for a in await store.webhook_attempts(job.id)] == [False, True]
    assert await store.redeliver_webhook("job_missing", now) is None


async def test_webhook_events_listed_by_status_per_key(store: JobStore):
    """Issue 17 item 3: a key's failed deliveries, newest first, paginated."""
    failed = [await _delivered(store, "key_a", "failed") for _ in range(3)]
    await _delivered(store, "key_a", "delivered")
    foreign = await _delivered(store, "key_b", "failed")
    page, more = await store.list_webhook_events("key_a", "failed", 2, None)
    assert more and [j.id for j in page] == [failed[2].id, failed[1].id]
    rest, more = await store.list_webhook_events("key_a", "failed", 2, page[-1].id)
    assert not more and [j.id for j in rest] == [failed[0].id]
    assert [j.id for j in (await store.list_webhook_events("key_b", "failed", 10, None))[0]] == [
        foreign.id
    ]
    assert await store.list_webhook_events("key_a", "failed", 10, foreign.id) == ([], False)
    assert len((await store.list_webhook_events("key_a", "delivered", 10, None))[0]) == 1


# Issue 21 item 9: MongoDB leases are written and compared on the server's clock.
@pytest.mark.skipif(not MONGODB_URI, reason="needs a MongoDB server: set RETROIVA_MONGODB_URI")
async def test_mongo_leases_follow_the_servers_clock_not_the_callers():
    from serve_app.jobs.mongo_store import MongoStore

    store = MongoStore(MONGODB_URI or "", f"retroiva_test_{uuid.uuid4().hex[:8]}")
    await store.init()
    try:
        await store.insert_job(_job(), time.time())
        skewed_ahead = time.time() + 3600.0  # a runner whose clock runs an hour fast
        job = await store.claim_next("runner", skewed_ahead, 1.0)
        assert job is not None and abs(job.lease_expires_at - (time.time() + 1.0)) < 30
        # The fast clock would see the lease as long expired; the server does not.
        assert await store.requeue_expired(skewed_ahead, max_attempts=3) == 0
        await asyncio.sleep(1.5)
        # A clock an hour slow sees it as live; the server knows it has lapsed.
        assert await store.requeue_expired(time.time() - 3600.0, max_attempts=3) == 1
    finally:
        await store.drop()
        await store.close()


# Issue 14: a record's fields are the store's columns and document keys, so adding an
# optional field with a default to a record needs no edit in either backend.
def _every_field(cls: type, **fields: object) -> object:
    """A ``cls`` record with every field set, none to its default."""
    from enum import Enum

    from serve_app.jobs.records import field_types

    def value(name: str, base: type) -> object:
        if base is bool:
            return True
        if issubclass(base, Enum):
            return list(base)[-1]
        return {int: 7, float: 1.5, str: f"{name}-value"}[base]

    values = {name: value(name, kind.base) for name, kind in field_types(cls).items()}
    return cls(**{**values, **fields})


def _full_records() -> list[object]:
    from serve_app.jobs.records import ApiKeyRecord

    return [
        _every_field(JobRecord, status=JobStatus.QUEUED),
        _every_field(ApiKeyRecord),
        _every_field(UploadRecord),
        _every_field(WebhookAttempt),
    ]


def test_every_field_has_a_value_other_than_its_default():
    for record in _full_records():
        for field in dataclasses.fields(record):  # type: ignore[arg-type]
            assert getattr(record, field.name) != field.default, field.name


async def test_every_record_field_round_trips_through_sqlite(tmp_path: Path):
    from serve_app.jobs.sqlite_store import SqliteStore

    store = SqliteStore(tmp_path / "full.sqlite3")
    await store.init()
    try:
        job, key, upload, attempt = _full_records()
        job = dataclasses.replace(job, webhook_status="pending", webhook_attempts=0)
        assert await store.insert_job(job, job.created_at) == (job, True)
        assert await store.get_job(job.id) == job
        await store.add_key(key)
        assert await store.get_key(key.id) == key
        await store.insert_upload(upload)
        assert await store.get_upload(upload.id) == upload
        attempt = dataclasses.replace(attempt, job_id=job.id, number=1)
        await store.record_webhook_attempt(attempt, status="delivered", next_at=None, body="{}")
        assert await store.webhook_attempts(job.id) == [attempt]
    finally:
        await store.close()


def test_every_record_field_round_trips_through_mongo_documents():
    """The document mapping, through BSON and back, without a server."""
    import bson

    from serve_app.jobs.mongo_store import from_document, to_document
    from serve_app.jobs.records import from_stored

    for record in _full_records():
        doc = bson.decode(bson.encode(to_document(record)))
        names = {f.name for f in dataclasses.fields(record)}  # type: ignore[arg-type]
        assert set(doc) == (names - {"id"} | {"_id"} if "id" in names else names)
        cls = type(record)
        back = from_document(cls, doc) if hasattr(record, "id") else from_stored(cls, doc)
        assert back == record
        assert all(type(getattr(back, n)) is type(getattr(record, n)) for n in doc if n != "_id")


def _job_record_with_new_fields() -> type:
    """JobRecord as it would be with two fields added (one optional, one with a default)."""
    return dataclasses.make_dataclass(
        "JobRecord",
        [
            ("note", "str | None", dataclasses.field(default=None)),
            ("retries_left", "int", dataclasses.field(default=3)),
        ],
        bases=(JobRecord,),
        frozen=True,
    )


async def test_a_new_job_field_needs_no_store_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store file made before the fields existed gains their columns when opened, and
    a job carrying them round-trips through both backends' mappings."""
    from serve_app.jobs import records, sqlite_store
    from serve_app.jobs.mongo_store import from_document, to_document

    path = tmp_path / "before.sqlite3"
    before = sqlite_store.SqliteStore(path)
    await before.init()
    old_job = _job()
    await before.insert_job(old_job, time.time())
    await before.close()

    extended = _job_record_with_new_fields()
    monkeypatch.setattr(records, "JobRecord", extended)  # what editing records.py does
    monkeypatch.setattr(sqlite_store, "JobRecord", extended)
    monkeypatch.setattr(
        sqlite_store,
        "_TABLES",
        tuple(
            dataclasses.replace(t, record=extended) if t.name == "jobs" else t
            for t in sqlite_store._TABLES
        ),
    )
    store = sqlite_store.SqliteStore(path)
    await store.init()
    try:
        read = await store.get_job(old_job.id)
        assert (read.note, read.retries_left) == (None, 3)  # the defaults, for old rows
        new = extended(**{**dataclasses.asdict(_job()), "note": "hi", "retries_left": 1})
        await store.insert_job(new, time.time())
        assert await store.get_job(new.id) == new
    finally:
        await store.close()
    assert from_document(extended, to_document(new)) == new
    old_doc = to_document(old_job)  # a document written before the fields existed
    assert from_document(extended, old_doc).retries_left == 3


def test_a_field_added_without_a_default_is_refused_with_a_message(tmp_path: Path):
    import sqlite3

    from serve_app.jobs import sqlite_store

    # A record whose table predates its required (no default) field ``must``.
    required = dataclasses.make_dataclass("Later", [("id", "str"), ("must", "int")])
    db = sqlite3.connect(tmp_path / "x.sqlite3")
    db.row_factory = sqlite3.Row
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    table = sqlite_store._Table("jobs", required)
    with pytest.raises(TypeError, match="needs a default"):
        sqlite_store._missing_columns(db, table)
    db.close()


# Issue 14: the store is a few protocols; both backends implement every one.
def test_the_protocols_split_the_store_and_both_backends_implement_them():
    import inspect

    from serve_app.jobs import store as store_module
    from serve_app.jobs.mongo_store import MongoStore
    from serve_app.jobs.sqlite_store import SqliteStore

    def methods(protocol: type) -> set[str]:
        return {
            name
            for name, member in vars(protocol).items()
            if inspect.iscoroutinefunction(member) and not name.startswith("_")
        }

    narrow = [
        store_module.KeyStore,
        store_module.JobQueue,
        store_module.WebhookOutbox,
        store_module.UploadStore,
    ]
    parts = [methods(p) for p in narrow]
    assert sum(map(len, parts)) == len(set().union(*parts))  # no method in two
    whole = set().union(*parts) | methods(JobStore)
    assert {"claim_next", "count_request", "claim_due_webhooks", "advance_upload"} <= whole
    for protocol in [*narrow, JobStore]:
        assert protocol in JobStore.__mro__
        for name in methods(protocol):
            expected = inspect.signature(getattr(protocol, name))
            for backend in (SqliteStore, MongoStore):
                actual = inspect.signature(getattr(backend, name))
                assert list(actual.parameters) == list(expected.parameters), (backend, name)
