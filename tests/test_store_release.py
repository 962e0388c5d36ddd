# ruff: noqa: F811  (the contract fixtures are imported, then taken as parameters)
"""The store calls an operator's restart relies on, on both backends (MongoDB when
RETROIVA_MONGODB_URI is set): handing a job back, and the oldest queued job's age."""

from __future__ import annotations

import time

import pytest

from serve_app.jobs.store import JobStore
from tests.test_store_contract import _job, anyio_backend, store  # noqa: F401 (fixtures)
from vocabulary import JobStatus

pytestmark = pytest.mark.anyio


async def test_release_lease_requeues_without_counting_the_attempt(store: JobStore):
    job = _job()
    await store.insert_job(job, time.time())
    claimed = await store.claim_next("runner-a", time.time(), 30)
    assert claimed is not None and claimed.attempts == 1
    assert not await store.release_lease(job.id, "runner-b")  # only the lease's owner
    assert await store.release_lease(job.id, "runner-a")
    back = await store.get_job(job.id)
    assert back.status == JobStatus.QUEUED and back.attempts == 0
    assert back.lease_owner is None and back.progress == 0
    assert not await store.release_lease(job.id, "runner-a")  # not processing any more
    again = await store.claim_next("runner-c", time.time(), 30)
    assert again is not None and again.id == job.id and again.attempts == 1


async def test_release_lease_leaves_a_cancel_to_the_lease(store: JobStore):
    job = _job()
    await store.insert_job(job, time.time())
    await store.claim_next("runner-a", time.time(), 30)
    await store.request_cancel(job.id, time.time())
    assert not await store.release_lease(job.id, "runner-a")
    assert (await store.get_job(job.id)).status == JobStatus.PROCESSING


async def test_oldest_queued_at(store: JobStore):
    assert await store.oldest_queued_at() is None
    old, new = _job(seq=1), _job(seq=2)
    old = type(old)(**{**old.__dict__, "created_at": 1000.0})
    new = type(new)(**{**new.__dict__, "created_at": 2000.0})
    for job in (new, old):
        await store.insert_job(job, time.time())
    assert await store.oldest_queued_at() == 1000.0
    await store.claim_next("r", time.time(), 30)  # takes the oldest
    assert await store.oldest_queued_at() == 2000.0
