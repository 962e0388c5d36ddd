"""The job's transition rules as pure functions, and both stores following them."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from pathlib import Path

import pytest

from serve_app.jobs import mongo_queries, mongo_store, sqlite_store
from serve_app.jobs import transitions as rules
from serve_app.jobs.sqlite_store import SqliteStore
from tests.test_mongo_queries import _apply
from tests.test_mongo_queries import _job as _doc
from tests.test_store_contract import _job
from vocabulary import DeliveryStatus, JobErrorType, JobStatus


def test_lease_expiry_cancels_then_fails_then_requeues():
    assert rules.after_lease_expiry(False, 1, 3) == JobStatus.QUEUED
    assert rules.after_lease_expiry(False, 3, 3) == JobStatus.FAILED
    assert rules.after_lease_expiry(False, 4, 3) == JobStatus.FAILED
    # A cancel wins even on the last attempt.
    assert rules.after_lease_expiry(True, 3, 3) == JobStatus.CANCELED
    assert rules.after_lease_expiry(True, 1, 3) == JobStatus.CANCELED
    assert rules.LEASE_EXPIRY_ORDER == (JobStatus.CANCELED, JobStatus.FAILED, JobStatus.QUEUED)


def test_what_an_expired_lease_sets_for_each_outcome():
    queued = rules.lease_expired(JobStatus.QUEUED, 5.0, 2)
    assert queued == {
        "status": JobStatus.QUEUED,
        "lease_owner": None,
        "lease_expires_at": None,
        "progress": 0.0,
        "eta_seconds": None,
    }
    failed = rules.lease_expired(JobStatus.FAILED, 5.0, 2)
    assert (failed["status"], failed["completed_at"], failed["error_type"]) == (
        JobStatus.FAILED,
        5.0,
        JobErrorType.RUNNER_LOST,
    )
    assert failed["error_message"] == "the job's runner stopped responding 2 times; giving up"
    canceled = rules.lease_expired(JobStatus.CANCELED, 5.0, 2)
    assert canceled == {
        "status": JobStatus.CANCELED,
        "lease_owner": None,
        "lease_expires_at": None,
        "completed_at": 5.0,
    }
    with pytest.raises(ValueError):
        rules.lease_expired(JobStatus.COMPLETED, 5.0, 2)


def test_release_requeues_and_forgets_the_phase():
    assert rules.released() == {
        **rules.lease_expired(JobStatus.QUEUED, 0.0, 0),
        "phase": None,
    }


def test_idempotency_window_is_24_hours_exclusive():
    day = rules.IDEMPOTENCY_WINDOW_SECONDS
    assert day == 24 * 3600
    assert rules.idempotency_key_live(created_at=1000.0, now=1000.0 + day - 1)
    assert not rules.idempotency_key_live(created_at=1000.0, now=1000.0 + day)


def test_finish_cancel_deadline_and_outbox():
    done = rules.finished(JobStatus.COMPLETED, 3.0, output_path="/o")
    assert (done["progress"], done["output_path"], done["lease_owner"]) == (1.0, "/o", None)
    failed = rules.finished(JobStatus.FAILED, 3.0, error_type="x", error_message="y")
    assert "progress" not in failed  # a failed job keeps the progress it reached
    assert rules.cancel_queued(4.0) == {"status": JobStatus.CANCELED, "completed_at": 4.0}
    overdue = rules.deadline_passed(4.0)
    assert (overdue["status"], overdue["error_type"]) == (
        JobStatus.CANCELED,
        JobErrorType.DEADLINE_EXCEEDED,
    )
    assert rules.outbox(True, 4.0) == {
        "webhook_status": DeliveryStatus.PENDING,
        "webhook_next_at": 4.0,
    }
    assert rules.outbox(False, 4.0) == {"webhook_status": None, "webhook_next_at": None}
    assert set(rules.outbox(True, 0.0)) == set(rules.OUTBOX_FIELDS)
    assert set(rules.ENDED) == {s for s in JobStatus if s.is_terminal}
    assert set(rules.REDELIVERABLE) == {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED}


# Both backends follow after_lease_expiry: every combination, through each one.
CASES = list(itertools.product([False, True], [1, 2, 3]))  # (cancel asked, attempts)
MAX_ATTEMPTS = 2


@pytest.mark.parametrize("cancel_requested, attempts", CASES)
def test_mongo_requeue_follows_the_rule(cancel_requested: bool, attempts: int):
    expired = _doc(
        status="processing",
        lease_owner="r",
        lease_expires_at=1.0,
        attempts=attempts,
        cancel_requested=cancel_requested,
        progress=0.4,
    )
    after = _apply(mongo_queries.requeue_update(2.0, MAX_ATTEMPTS), expired)
    outcome = rules.after_lease_expiry(cancel_requested, attempts, MAX_ATTEMPTS)
    assert after["status"] == outcome
    for name, value in rules.lease_expired(outcome, 2.0, MAX_ATTEMPTS).items():
        assert after[name] == value, name
    assert after["webhook_status"] == (DeliveryStatus.PENDING if outcome.is_terminal else None)


@pytest.mark.parametrize("cancel_requested, attempts", CASES)
def test_sqlite_requeue_follows_the_rule(tmp_path: Path, cancel_requested: bool, attempts: int):
    async def run() -> tuple[object, float]:
        store = SqliteStore(tmp_path / "rules.sqlite3")
        await store.init()
        try:
            job = _job(webhook_url="https://hooks.example.com/x")
            await store.insert_job(job, time.time())
            now = time.time()
            for claim in range(attempts):  # each claim whose lease expires is an attempt
                claimed = await store.claim_next("r", now, 1)
                assert claimed is not None and claimed.attempts == claim + 1
                if claim < attempts - 1:
                    assert await store.requeue_expired(now + 2, max_attempts=99) == 1
                    now += 3
            if cancel_requested:
                await store.request_cancel(job.id, now)
            assert await store.requeue_expired(now + 2, MAX_ATTEMPTS) == 1
            return await store.get_job(job.id), now + 2
        finally:
            await store.close()

    after, expired_at = asyncio.run(run())
    outcome = rules.after_lease_expiry(cancel_requested, attempts, MAX_ATTEMPTS)
    assert after.status == outcome
    for name, value in rules.lease_expired(outcome, expired_at, MAX_ATTEMPTS).items():
        assert getattr(after, name) == value, name
    assert after.webhook_status == (DeliveryStatus.PENDING if outcome.is_terminal else None)


def test_the_rules_messages_live_in_one_place():
    """The backends build their updates from the rules: no copy of a message or of an
    error type is left in them to drift apart (the old code had one in each)."""
    for module in (sqlite_store, mongo_store, mongo_queries):
        source = inspect.getsource(module)
        for copy in ("stopped responding", "cancel_after deadline passed", "'runner_lost'"):
            assert copy not in source, (module.__name__, copy)
        assert "IDEMPOTENCY_WINDOW_SECONDS" not in source, module.__name__
