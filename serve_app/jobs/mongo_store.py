"""The MongoDB job store, on PyMongo's native async API (``AsyncMongoClient``).

Atomicity comes from single-document operations: ``find_one_and_update`` claims and
renews, ``$inc`` with upsert counts requests, a unique partial index guards
idempotency keys, and every multi-way transition (cancel, lease expiry) is one
pipeline update.  The queries themselves live in :mod:`serve_app.jobs.mongo_queries`.

Every operation has a client-side deadline (``timeoutMS`` and server selection both
``timeout``), reads and writes go to the primary, and a server that does not answer in
time raises :class:`~serve_app.jobs.store.StoreUnavailable` instead of hanging for the
driver's default 30 s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, ParamSpec, TypeVar

import pymongo
from pymongo import AsyncMongoClient, ReadPreference, ReturnDocument
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

from serve_app.jobs import mongo_queries as q
from serve_app.jobs import transitions as rules
from serve_app.jobs.records import (
    ApiKeyRecord,
    JobRecord,
    UploadRecord,
    WebhookAttempt,
    from_stored,
    stored_values,
)
from serve_app.jobs.store import AmbiguousKey, QueueFull, StoreUnavailable
from vocabulary import JobStatus

__all__ = ["MongoStore", "from_document", "to_document"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

# Index builds on a big collection may take longer than one request's deadline.
_INIT_TIMEOUT_SECONDS = 120.0


def _unavailable(exc: PyMongoError) -> StoreUnavailable:
    # The driver's own message names hosts and errno, never the URI's credentials, but
    # it is long; the type says enough for the log, the hint says what to check.
    return StoreUnavailable(
        f"MongoDB is unavailable ({type(exc).__name__}): no answer "
        "in time; check RETROIVA_MONGODB_URI and that the server "
        "(or the replica set's primary) is up"
    )


def _translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn the driver's "no answer in time / no server" errors into StoreUnavailable."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
            raise _unavailable(exc) from exc
        except PyMongoError as exc:
            if exc.timeout:  # a client-side (timeoutMS) deadline
                raise _unavailable(exc) from exc
            raise

    return call


def to_document(record: Any) -> dict[str, Any]:
    """A record as its document: a key per field, under the field's name, ``_id`` for
    ``id`` (a record without an id, a webhook attempt, gets its own ``_id``)."""
    values = stored_values(record)
    if "id" in values:
        values["_id"] = values.pop("id")
    return values


def from_document(cls: type[R], doc: dict[str, Any]) -> R:
    """The record ``cls`` from its document (:func:`to_document`'s inverse; fields a
    document written before they existed lacks take their defaults)."""
    return from_stored(cls, {**doc, "id": doc["_id"]})


def _job(doc: dict[str, Any] | None) -> JobRecord | None:
    return None if doc is None else from_document(JobRecord, doc)


def _key(doc: dict[str, Any] | None) -> ApiKeyRecord | None:
    return None if doc is None else from_document(ApiKeyRecord, doc)


def _upload(doc: dict[str, Any] | None) -> UploadRecord | None:
    return None if doc is None else from_document(UploadRecord, doc)


class MongoStore:
    """:class:`~serve_app.jobs.store.JobStore` on MongoDB."""

    def __init__(
        self, uri: str, database: str, timeout: float = 1.5, *, server_clock: bool = True
    ) -> None:
        millis = round(timeout * 1000)
        # Leases on the server's clock (see mongo_queries.SERVER_NOW); False makes the
        # store honour the callers' ``now``, for tests that replay time.
        self._server_clock = server_clock
        # connect=False: the client connects on first use, so building the store (in
        # every Serve replica) never waits on, or fails for, an unreachable server.
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            tz_aware=True,
            connect=False,
            timeoutMS=millis,
            serverSelectionTimeoutMS=millis,
            connectTimeoutMS=millis,
            readPreference="primary",
        )
        # Pinned to the primary whatever the URI says: the store reads its own writes
        # (the idempotent insert reads the job a concurrent insert just wrote).
        self._db = self._client.get_database(database, read_preference=ReadPreference.PRIMARY)
        self._jobs = self._db["jobs"]
        self._keys = self._db["api_keys"]
        self._counters = self._db["rate_counters"]
        self._attempts = self._db["webhook_attempts"]
        self._turns = self._db["key_turns"]
        self._uploads = self._db["uploads"]

    def __repr__(self) -> str:
        return f"MongoStore(database={self._db.name!r})"

    def _lease_now(self, now: float) -> float | None:
        """The time leases are written and compared with: None means the server's."""
        return None if self._server_clock else now

    @_translated
    async def init(self) -> None:
        await self._db.command("ping")  # fails fast (timeout) when there is no server
        with pymongo.timeout(_INIT_TIMEOUT_SECONDS):
            for collection, keys, options in q.INDEXES:
                await self._db[collection].create_index(keys, **options)

    async def close(self) -> None:
        await self._client.close()

    @_translated
    async def ping(self) -> None:
        await self._db.command("ping")
        # A write too: a primary must be there (during a failover reads may still work).
        await self._db["readiness"].update_one(
            {"_id": "ping"}, {"$set": {"at": time.time()}}, upsert=True
        )

    async def drop(self) -> None:
        """Drop the whole database (tests)."""
        await self._client.drop_database(self._db.name)

    @_translated
    async def add_key(self, key: ApiKeyRecord) -> None:
        await self._keys.insert_one(to_document(key))

    @_translated
    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return _key(await self._keys.find_one({"digest": digest}))

    @_translated
    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return _key(await self._keys.find_one({"_id": key_id}))

    @_translated
    async def list_keys(self) -> list[ApiKeyRecord]:
        return [k for k in [_key(d) async for d in self._keys.find().sort("created_at")] if k]

    @_translated
    async def find_keys(self, reference: str) -> list[ApiKeyRecord]:
        exact = _key(await self._keys.find_one({"_id": reference}))
        if exact is not None:
            return [exact]
        docs = self._keys.find(q.key_reference_filter(reference)).sort("created_at")
        return [k for k in [_key(d) async for d in docs] if k]

    async def _resolve(self, reference: str) -> ApiKeyRecord | None:
        matches = await self.find_keys(reference)
        if len(matches) > 1:
            raise AmbiguousKey(reference, matches)
        return matches[0] if matches else None

    @_translated
    async def revoke_key(self, key_id: str, now: float) -> bool:
        key = await self._resolve(key_id)
        if key is None:
            return False
        result = await self._keys.update_one(
            {"_id": key.id, "revoked_at": None}, {"$set": {"revoked_at": now}}
        )
        return result.modified_count > 0

    @_translated
    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        key = await self._resolve(key_id)
        if key is None:
            return False
        result = await self._keys.update_one({"_id": key.id}, {"$set": {"webhook_secret": secret}})
        return result.matched_count > 0

    @_translated
    async def rotate_webhook_secret(
        self, key_id: str, secret: str, previous_valid_until: float, now: float | None = None
    ) -> bool:
        key = await self._resolve(key_id)
        if key is None:
            return False
        result = await self._keys.update_one(
            {"_id": key.id}, q.rotate_secret_update(secret, previous_valid_until, now)
        )
        return result.matched_count > 0

    @_translated
    async def set_key_limits(
        self, key_id: str, max_queued: int | None, max_running: int | None
    ) -> bool:
        result = await self._keys.update_one(
            {"_id": key_id}, {"$set": {"max_queued": max_queued, "max_running": max_running}}
        )
        return result.matched_count > 0

    @_translated
    async def count_request(self, key_id: str, window: int, window_seconds: int = 60) -> int:
        for attempt in range(2):
            try:
                doc = await self._counters.find_one_and_update(
                    {"_id": f"{key_id}:{window}"},
                    {
                        **q.rate_counter_update(),
                        "$setOnInsert": {"expires_at": q.counter_expiry(window, window_seconds)},
                    },
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                assert doc is not None  # an upsert returning the document after it
                return int(doc["count"])
            except DuplicateKeyError:
                # Two first requests of a window upserted at once and one lost the
                # insert; the counter exists now, so the retry increments it.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @_translated
    async def insert_job(
        self, job: JobRecord, now: float, max_queued: int | None = None
    ) -> tuple[JobRecord, bool]:
        if job.idempotency_key is not None:
            existing = _job(
                await self._jobs.find_one(q.idempotency_filter(job.key_id, job.idempotency_key))
            )
            if existing is not None:
                if rules.idempotency_key_live(existing.created_at, now):
                    return existing, False
                await self._jobs.update_one(
                    {"_id": existing.id}, {"$set": {"idempotency_key": None}}
                )
        # Checked, then inserted: concurrent submissions of one key may overshoot the
        # limit by a few (SQLite checks inside its write transaction).
        if (
            max_queued is not None
            and await self._jobs.count_documents(
                q.queued_of_key_filter(job.key_id), limit=max_queued
            )
            >= max_queued
        ):
            raise QueueFull(max_queued)
        try:
            await self._jobs.insert_one(to_document(job))
        except DuplicateKeyError:
            if job.idempotency_key is None:
                raise  # a duplicate job id: not a race this method resolves
            # A concurrent request with the same idempotency key won the race; its job
            # is on the primary, where this store reads.
            winner = _job(
                await self._jobs.find_one(q.idempotency_filter(job.key_id, job.idempotency_key))
            )
            if winner is None:  # released in between (window expiry): insert again
                await self._jobs.insert_one(to_document(job))
                return job, True
            return winner, False
        return job, True

    @_translated
    async def get_job(self, job_id: str) -> JobRecord | None:
        return _job(await self._jobs.find_one({"_id": job_id}))

    @_translated
    async def count_jobs_by_status(self) -> dict[str, int]:
        # One indexed count per status (a $group would scan the whole collection).
        return {
            str(status): await self._jobs.count_documents(q.count_by_status_filter(str(status)))
            for status in JobStatus
        }

    @_translated
    async def oldest_queued_at(self) -> float | None:
        doc = await self._jobs.find_one(
            q.count_by_status_filter(JobStatus.QUEUED),
            projection={"created_at": 1},
            sort=[("created_at", 1)],
        )
        return None if doc is None else float(doc["created_at"])

    @_translated
    async def recent_jobs(
        self, limit: int, key_id: str | None = None, status: str | None = None
    ) -> list[JobRecord]:
        query = {k: v for k, v in (("key_id", key_id), ("status", status)) if v is not None}
        docs = self._jobs.find(query).sort(q.PAGE_SORT).limit(limit)
        return [j for j in [_job(d) async for d in docs] if j is not None]

    async def _jobs_page(
        self,
        key_id: str,
        limit: int,
        starting_after: str | None,
        page_filter: Callable[[tuple[int, str] | None], dict[str, Any]],
    ) -> tuple[list[JobRecord], bool]:
        """One page of this key's jobs that ``page_filter`` selects, after the job
        ``starting_after`` (an unknown or other key's cursor is an empty page)."""
        cursor = None
        if starting_after is not None:
            anchor = await self._jobs.find_one({"_id": starting_after, "key_id": key_id})
            if anchor is None:
                return [], False
            cursor = (anchor["created_seq"], anchor["_id"])
        docs = self._jobs.find(page_filter(cursor)).sort(q.PAGE_SORT).limit(limit + 1)
        jobs = [j for j in [_job(d) async for d in docs] if j is not None]
        return jobs[:limit], len(jobs) > limit

    @_translated
    async def list_jobs(
        self, key_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        return await self._jobs_page(
            key_id, limit, starting_after, lambda cursor: q.jobs_page_filter(key_id, cursor)
        )

    @_translated
    async def claim_next(
        self, owner: str, now: float, lease_seconds: float, max_running: int | None = None
    ) -> JobRecord | None:
        queued = {
            d["_id"]: d["oldest"]
            async for d in await self._jobs.aggregate(q.queued_keys_pipeline())
        }
        if not queued:
            return None
        keys = list(queued)
        turns = {d["_id"]: d["turn"] async for d in self._turns.find({"_id": {"$in": keys}})}
        limits = {
            d["_id"]: d.get("max_running")
            async for d in self._keys.find({"_id": {"$in": keys}}, {"max_running": 1})
        }
        running = {
            d["_id"]: d["n"]
            async for d in await self._jobs.aggregate(q.running_counts_pipeline(keys))
        }
        order = sorted(keys, key=lambda k: (k in turns, turns.get(k, 0), queued[k]))
        for key_id in order:
            limit = limits.get(key_id) or max_running
            if limit is not None and running.get(key_id, 0) >= limit:
                continue
            doc = await self._jobs.find_one_and_update(
                q.queued_of_key_filter(key_id),
                q.claim_update(owner, self._lease_now(now), lease_seconds),
                sort=q.CLAIM_SORT,
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:  # another runner took that key's last queued job
                continue
            await self._turns.update_one(
                {"_id": key_id}, {"$max": {"turn": time.time_ns()}}, upsert=True
            )
            return _job(doc)
        return None

    @_translated
    async def renew_lease(
        self,
        job_id: str,
        owner: str,
        now: float,
        lease_seconds: float,
        progress: float,
        eta_seconds: float | None,
        phase: str | None = None,
    ) -> JobRecord | None:
        return _job(
            await self._jobs.find_one_and_update(
                q.lease_filter(job_id, owner),
                q.renew_update(self._lease_now(now), lease_seconds, progress, eta_seconds, phase),
                return_document=ReturnDocument.AFTER,
            )
        )

    @_translated
    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        now: float,
        *,
        output_path: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        result = await self._jobs.update_one(
            q.finish_filter(job_id, owner),
            q.finish_update(str(status), now, output_path, error_type, error_message),
        )
        return result.modified_count > 0

    @_translated
    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        doc = await self._jobs.find_one_and_update(
            q.cancel_filter(job_id), q.cancel_update(now), return_document=ReturnDocument.AFTER
        )
        return _job(doc) if doc is not None else await self.get_job(job_id)

    @_translated
    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        result = await self._jobs.update_many(
            q.expired_filter(self._lease_now(now)), q.requeue_update(now, max_attempts)
        )
        return result.modified_count

    @_translated
    async def release_lease(self, job_id: str, owner: str) -> bool:
        result = await self._jobs.update_one(q.release_filter(job_id, owner), q.release_update())
        return result.modified_count > 0

    @_translated
    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        docs = (
            self._jobs.find(q.expired_outputs_filter(completed_before))
            .sort(q.OUTPUTS_SORT)
            .limit(limit)
        )
        return [j for j in [_job(d) async for d in docs] if j is not None]

    @_translated
    async def clear_output(self, job_id: str) -> None:
        await self._jobs.update_one({"_id": job_id}, {"$set": {"output_path": None}})

    @_translated
    async def claim_due_webhooks(
        self, now: float, lease_seconds: float, limit: int, exclude_keys: Collection[str] = ()
    ) -> list[JobRecord]:
        claimed = []
        due = q.due_webhooks_filter(now)
        if exclude_keys:
            due["key_id"] = {"$nin": list(exclude_keys)}
        for _ in range(limit):
            doc = await self._jobs.find_one_and_update(
                due,
                {"$set": {"webhook_next_at": now + lease_seconds}},
                sort=[("webhook_next_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_job(doc))
        return [j for j in claimed if j is not None]

    @_translated
    async def freeze_webhook_body(self, job_id: str, body: str) -> str:
        doc = await self._jobs.find_one_and_update(
            {"_id": job_id},
            q.freeze_body_update(body),
            projection={"webhook_body": 1},
            return_document=ReturnDocument.AFTER,
        )
        return body if doc is None else str(doc["webhook_body"])

    @_translated
    async def record_webhook_attempt(
        self, attempt: WebhookAttempt, *, status: str, next_at: float | None, body: str
    ) -> None:
        # The event first, conditionally: a lapsed dispatcher records nothing.  A crash
        # between the two writes loses one attempt's log line, never the event's state.
        result = await self._jobs.update_one(
            q.webhook_attempt_filter(attempt.job_id, attempt.number),
            q.webhook_attempt_update(status, attempt.number, next_at, body),
        )
        if result.matched_count:
            await self._attempts.replace_one(
                {"_id": f"{attempt.job_id}:{attempt.number}"},
                to_document(attempt),
                upsert=True,
            )

    @_translated
    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        docs = self._attempts.find({"job_id": job_id}).sort("number", 1)
        return [from_stored(WebhookAttempt, d) async for d in docs]

    @_translated
    async def redeliver_webhook(self, job_id: str, now: float) -> JobRecord | None:
        return _job(
            await self._jobs.find_one_and_update(
                q.redeliver_filter(job_id),
                q.redeliver_update(now),
                return_document=ReturnDocument.AFTER,
            )
        )

    @_translated
    async def list_webhook_events(
        self, key_id: str, status: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        return await self._jobs_page(
            key_id,
            limit,
            starting_after,
            lambda cursor: q.events_page_filter(key_id, status, cursor),
        )

    # Deadlines
    @_translated
    async def cancel_overdue(self, now: float) -> int:
        result = await self._jobs.update_many(q.overdue_filter(now), q.overdue_update(now))
        return result.modified_count

    # Uploads
    @_translated
    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._uploads.insert_one(to_document(upload))

    @_translated
    async def open_uploads(self, key_id: str, now: float) -> int:
        return await self._uploads.count_documents(q.open_uploads_filter(key_id, now))

    @_translated
    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        return _upload(await self._uploads.find_one({"_id": upload_id}))

    @_translated
    async def advance_upload(
        self, upload_id: str, expected_offset: int, new_offset: int
    ) -> UploadRecord | None:
        if new_offset < expected_offset:
            return None
        return _upload(
            await self._uploads.find_one_and_update(
                q.advance_upload_filter(upload_id, expected_offset, new_offset),
                {"$set": {"offset": new_offset}},
                return_document=ReturnDocument.AFTER,
            )
        )

    @_translated
    async def claim_upload(self, upload_id: str, job_id: str, now: float) -> bool:
        result = await self._uploads.update_one(
            q.claim_upload_filter(upload_id, now), {"$set": {"job_id": job_id}}
        )
        return result.modified_count > 0

    @_translated
    async def release_upload(self, upload_id: str, job_id: str) -> None:
        await self._uploads.update_one(
            {"_id": upload_id, "job_id": job_id}, {"$set": {"job_id": None}}
        )

    @_translated
    async def delete_upload(self, upload_id: str) -> None:
        await self._uploads.delete_one({"_id": upload_id})

    @_translated
    async def expired_uploads(self, now: float, limit: int) -> list[UploadRecord]:
        docs = (
            self._uploads.find({"job_id": None, "expires_at": {"$lte": now}})
            .sort("expires_at", 1)
            .limit(limit)
        )
        return [u for u in [_upload(d) async for d in docs] if u is not None]

    @_translated
    async def uploads_of_ended_jobs(self, now: float, limit: int) -> list[UploadRecord]:
        docs = await self._uploads.aggregate(q.ended_job_uploads_pipeline(now, limit))
        return [u for u in [_upload(d) async for d in docs] if u is not None]
