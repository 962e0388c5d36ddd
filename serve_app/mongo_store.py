"""The MongoDB job store, on PyMongo's native async API (``AsyncMongoClient``).

Atomicity comes from single-document operations: ``find_one_and_update`` claims and
renews, ``$inc`` with upsert counts requests, a unique partial index guards
idempotency keys.  The queries themselves live in :mod:`serve_app.mongo_queries`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from serve_app import mongo_queries as q
from serve_app.records import ApiKeyRecord, JobRecord, JobStatus, WebhookAttempt
from serve_app.store import IDEMPOTENCY_WINDOW_SECONDS

__all__ = ["MongoStore"]


def _job(doc: dict[str, Any] | None) -> JobRecord | None:
    if doc is None:
        return None
    values = {k: v for k, v in doc.items() if k != "_id"}
    values["id"] = doc["_id"]
    values["status"] = JobStatus(values["status"])
    return JobRecord(**values)


def _key(doc: dict[str, Any] | None) -> ApiKeyRecord | None:
    if doc is None:
        return None
    values = {k: v for k, v in doc.items() if k != "_id"}
    return ApiKeyRecord(id=doc["_id"], **values)


def _doc(record: JobRecord | ApiKeyRecord) -> dict[str, Any]:
    values = dataclasses.asdict(record)
    values["_id"] = values.pop("id")
    if isinstance(record, JobRecord):
        values["status"] = str(record.status)
    return values


class MongoStore:
    """:class:`~serve_app.store.JobStore` on MongoDB."""

    def __init__(self, uri: str, database: str) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
        self._db = self._client[database]
        self._jobs = self._db["jobs"]
        self._keys = self._db["api_keys"]
        self._counters = self._db["rate_counters"]
        self._attempts = self._db["webhook_attempts"]

    def __repr__(self) -> str:
        return f"MongoStore(database={self._db.name!r})"

    async def init(self) -> None:
        await self._jobs.create_index([("key_id", ASCENDING), ("created_seq", DESCENDING),
                                       ("_id", DESCENDING)])
        await self._jobs.create_index([("status", ASCENDING), ("created_seq", ASCENDING)])
        await self._jobs.create_index(
            [("key_id", ASCENDING), ("idempotency_key", ASCENDING)], unique=True,
            partialFilterExpression={"idempotency_key": {"$type": "string"}})
        await self._keys.create_index("digest", unique=True)
        await self._counters.create_index("expires_at", expireAfterSeconds=0)
        await self._jobs.create_index([("webhook_status", ASCENDING),
                                       ("webhook_next_at", ASCENDING)])
        await self._attempts.create_index([("job_id", ASCENDING), ("number", ASCENDING)])

    async def close(self) -> None:
        await self._client.close()

    async def add_key(self, key: ApiKeyRecord) -> None:
        await self._keys.insert_one(_doc(key))

    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return _key(await self._keys.find_one({"digest": digest}))

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return _key(await self._keys.find_one({"_id": key_id}))

    async def list_keys(self) -> list[ApiKeyRecord]:
        return [k for k in [_key(d) async for d in self._keys.find().sort("created_at")] if k]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        result = await self._keys.update_one(q.revoke_filter(key_id),
                                             {"$set": {"revoked_at": now}})
        return result.modified_count > 0

    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        result = await self._keys.update_one({"$or": [{"_id": key_id}, {"prefix": key_id}]},
                                             {"$set": {"webhook_secret": secret}})
        return result.matched_count > 0

    async def count_request(self, key_id: str, window: int) -> int:
        from datetime import UTC, datetime, timedelta

        doc = await self._counters.find_one_and_update(
            {"_id": f"{key_id}:{window}"},
            {**q.rate_counter_update(),
             "$setOnInsert": {"expires_at": datetime.now(UTC) + timedelta(hours=1)}},
            upsert=True, return_document=ReturnDocument.AFTER)
        return int(doc["count"])

    async def insert_job(self, job: JobRecord, now: float) -> tuple[JobRecord, bool]:
        if job.idempotency_key is not None:
            existing = _job(await self._jobs.find_one(
                q.idempotency_filter(job.key_id, job.idempotency_key)))
            if existing is not None:
                if existing.created_at > now - IDEMPOTENCY_WINDOW_SECONDS:
                    return existing, False
                await self._jobs.update_one({"_id": existing.id},
                                            {"$set": {"idempotency_key": None}})
        try:
            await self._jobs.insert_one(_doc(job))
        except DuplicateKeyError:
            # A concurrent request with the same idempotency key won the race.
            assert job.idempotency_key is not None
            winner = _job(await self._jobs.find_one(
                q.idempotency_filter(job.key_id, job.idempotency_key)))
            assert winner is not None
            return winner, False
        return job, True

    async def get_job(self, job_id: str) -> JobRecord | None:
        return _job(await self._jobs.find_one({"_id": job_id}))

    async def count_jobs_by_status(self) -> dict[str, int]:
        cursor = await self._jobs.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        counts = {str(status): 0 for status in JobStatus}
        async for row in cursor:
            counts[row["_id"]] = row["n"]
        return counts

    async def recent_jobs(self, limit: int, key_id: str | None = None,
                          status: str | None = None) -> list[JobRecord]:
        query = {k: v for k, v in (("key_id", key_id), ("status", status)) if v is not None}
        docs = self._jobs.find(query).sort([("created_seq", DESCENDING),
                                            ("_id", DESCENDING)]).limit(limit)
        return [j for j in [_job(d) async for d in docs] if j is not None]

    async def list_jobs(self, key_id: str, limit: int, starting_after: str | None
                        ) -> tuple[list[JobRecord], bool]:
        cursor = None
        if starting_after is not None:
            anchor = await self._jobs.find_one({"_id": starting_after, "key_id": key_id})
            if anchor is None:
                return [], False
            cursor = (anchor["created_seq"], anchor["_id"])
        docs = self._jobs.find(q.jobs_page_filter(key_id, cursor)).sort(
            [("created_seq", DESCENDING), ("_id", DESCENDING)]).limit(limit + 1)
        jobs = [j for j in [_job(d) async for d in docs] if j is not None]
        return jobs[:limit], len(jobs) > limit

    async def claim_next(self, owner: str, now: float, lease_seconds: float
                         ) -> JobRecord | None:
        return _job(await self._jobs.find_one_and_update(
            q.queued_filter(), q.claim_update(owner, now, lease_seconds),
            sort=[("created_seq", ASCENDING), ("_id", ASCENDING)],
            return_document=ReturnDocument.AFTER))

    async def renew_lease(self, job_id: str, owner: str, now: float, lease_seconds: float,
                          progress: float, eta_seconds: float | None) -> JobRecord | None:
        return _job(await self._jobs.find_one_and_update(
            q.lease_filter(job_id, owner),
            {"$set": {"lease_expires_at": now + lease_seconds, "progress": progress,
                      "eta_seconds": eta_seconds}},
            return_document=ReturnDocument.AFTER))

    async def finish(self, job_id: str, owner: str, status: JobStatus, now: float, *,
                     output_path: str | None = None, error_type: str | None = None,
                     error_message: str | None = None) -> bool:
        result = await self._jobs.update_one(
            q.finish_filter(job_id, owner),
            q.finish_update(str(status), now, output_path, error_type, error_message))
        return result.modified_count > 0

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        await self._jobs.update_one(*q.cancel_queued(job_id, now))
        await self._jobs.update_one(*q.cancel_processing(job_id))
        return await self.get_job(job_id)

    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        expired = q.expired_filter(now)
        release = {"lease_owner": None, "lease_expires_at": None}
        canceled = await self._jobs.update_many(
            {**expired, "cancel_requested": True},
            q.ended_update({"status": "canceled", "completed_at": now, **release}, now))
        failed = await self._jobs.update_many(
            {**expired, "attempts": {"$gte": max_attempts}},
            q.ended_update({"status": "failed", "completed_at": now,
                            "error_type": "runner_lost",
                            "error_message": f"the job's runner stopped responding "
                                             f"{max_attempts} times; giving up", **release},
                           now))
        queued = await self._jobs.update_many(
            expired, {"$set": {"status": "queued", "progress": 0.0, "eta_seconds": None,
                               **release}})
        return canceled.modified_count + failed.modified_count + queued.modified_count

    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        docs = self._jobs.find(q.expired_outputs_filter(completed_before)).sort(
            "completed_at", ASCENDING).limit(limit)
        return [j for j in [_job(d) async for d in docs] if j is not None]

    async def clear_output(self, job_id: str) -> None:
        await self._jobs.update_one({"_id": job_id}, {"$set": {"output_path": None}})

    async def claim_due_webhooks(self, now: float, lease_seconds: float, limit: int,
                                 exclude_keys: Collection[str] = ()) -> list[JobRecord]:
        claimed = []
        due = q.due_webhooks_filter(now)
        if exclude_keys:
            due["key_id"] = {"$nin": list(exclude_keys)}
        for _ in range(limit):
            doc = await self._jobs.find_one_and_update(
                due, {"$set": {"webhook_next_at": now + lease_seconds}},
                sort=[("webhook_next_at", ASCENDING)], return_document=ReturnDocument.AFTER)
            if doc is None:
                break
            claimed.append(_job(doc))
        return [j for j in claimed if j is not None]

    async def record_webhook_attempt(self, attempt: WebhookAttempt, *, status: str,
                                     next_at: float | None, body: str) -> None:
        await self._attempts.replace_one(
            {"_id": f"{attempt.job_id}:{attempt.number}"},
            dataclasses.asdict(attempt), upsert=True)
        await self._jobs.update_one({"_id": attempt.job_id}, {"$set": {
            "webhook_status": status, "webhook_attempts": attempt.number,
            "webhook_next_at": next_at, "webhook_body": body}})

    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        docs = self._attempts.find({"job_id": job_id}).sort("number", ASCENDING)
        return [WebhookAttempt(**{k: v for k, v in d.items() if k != "_id"})
                async for d in docs]
