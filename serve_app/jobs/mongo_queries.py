"""The MongoDB backend's queries as pure functions: filter and update documents only.

Kept apart from I/O so each query can be read, reviewed and unit-tested on its own.
Documents use the :class:`~serve_app.jobs.records.JobRecord` field names, with ``_id`` = id.

Every state transition is one update document (a pipeline update where the new value
depends on the old), so it is atomic on its own like the SQLite backend's single
statements; what each transition sets comes from :mod:`serve_app.jobs.transitions`,
which the SQLite backend reads too.  :data:`INDEXES` lists the indexes, and
``tests/test_mongo_queries.py`` checks each query against them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from serve_app.jobs import transitions as rules
from vocabulary import DeliveryStatus, JobStatus

Doc = dict[str, Any]
Sort = list[tuple[str, int]]

# The server's clock in epoch seconds.  Leases are written and compared by the server,
# not by each runner's clock: runners on different hosts drift apart, and a runner
# whose clock runs ahead would see every other runner's lease as expired (issue 21
# item 9).  A query given ``now=None`` uses it; an explicit ``now`` is for tests that
# replay time, and for the SQLite backend's single host.
SERVER_NOW: Doc = {"$divide": [{"$toLong": "$$NOW"}, 1000]}


def _at(now: float | None) -> Any:
    return SERVER_NOW if now is None else now


__all__ = [
    "CLAIM_SORT",
    "INDEXES",
    "OUTPUTS_SORT",
    "PAGE_SORT",
    "cancel_filter",
    "cancel_update",
    "claim_update",
    "count_by_status_filter",
    "counter_expiry",
    "due_webhooks_filter",
    "events_page_filter",
    "expired_filter",
    "expired_outputs_filter",
    "finish_filter",
    "finish_update",
    "freeze_body_update",
    "idempotency_filter",
    "jobs_page_filter",
    "key_reference_filter",
    "lease_filter",
    "outbox",
    "queued_keys_pipeline",
    "queued_of_key_filter",
    "rate_counter_update",
    "redeliver_filter",
    "redeliver_update",
    "release_filter",
    "release_update",
    "renew_update",
    "requeue_update",
    "rotate_secret_update",
    "running_counts_pipeline",
    "webhook_attempt_filter",
    "webhook_attempt_update",
]


# (collection, keys, options): what init() creates, and what every query below uses.
INDEXES: list[tuple[str, Sort, Doc]] = [
    # list_jobs / recent_jobs by key: newest first, ties by id.
    ("jobs", [("key_id", 1), ("created_seq", -1), ("_id", -1)], {}),
    # Claims (queued jobs of one key, oldest first), running counts per key, counts by
    # status, the queued keys' $group.
    ("jobs", [("status", 1), ("key_id", 1), ("created_seq", 1), ("_id", 1)], {}),
    # Expired leases; expired outputs (status completed, oldest first).
    ("jobs", [("status", 1), ("lease_expires_at", 1)], {}),
    ("jobs", [("status", 1), ("completed_at", 1)], {}),
    (
        "jobs",
        [("key_id", 1), ("idempotency_key", 1)],
        {"unique": True, "partialFilterExpression": {"idempotency_key": {"$type": "string"}}},
    ),
    ("jobs", [("webhook_status", 1), ("webhook_next_at", 1)], {}),
    ("api_keys", [("digest", 1)], {"unique": True}),
    ("api_keys", [("prefix", 1)], {}),
    ("rate_counters", [("expires_at", 1)], {"expireAfterSeconds": 0}),
    ("webhook_attempts", [("job_id", 1), ("number", 1)], {}),
    ("jobs", [("status", 1), ("deadline_at", 1)], {}),
    ("uploads", [("job_id", 1), ("expires_at", 1)], {}),
    ("uploads", [("key_id", 1), ("job_id", 1), ("expires_at", 1)], {}),
    # A key's events by delivery status (GET /v2/webhook_deliveries), newest first.
    ("jobs", [("key_id", 1), ("webhook_status", 1), ("created_seq", -1), ("_id", -1)], {}),
]

CLAIM_SORT: Sort = [("created_seq", 1), ("_id", 1)]
PAGE_SORT: Sort = [("created_seq", -1), ("_id", -1)]
OUTPUTS_SORT: Sort = [("completed_at", 1)]


def queued_keys_pipeline() -> list[Doc]:
    """Each key with queued jobs, and its oldest queued job's ``created_seq``."""
    return [
        {"$match": {"status": JobStatus.QUEUED}},
        {"$group": {"_id": "$key_id", "oldest": {"$min": "$created_seq"}}},
    ]


def running_counts_pipeline(key_ids: list[str]) -> list[Doc]:
    return [
        {"$match": {"status": JobStatus.PROCESSING, "key_id": {"$in": key_ids}}},
        {"$group": {"_id": "$key_id", "n": {"$sum": 1}}},
    ]


def queued_of_key_filter(key_id: str) -> Doc:
    """The claim's filter, sorted by :data:`CLAIM_SORT`."""
    return {"status": JobStatus.QUEUED, "key_id": key_id}


def count_by_status_filter(status: str) -> Doc:
    return {"status": status}


def _lease_end(now: float | None, lease_seconds: float) -> Any:
    return {"$add": [SERVER_NOW, lease_seconds]} if now is None else now + lease_seconds


def claim_update(owner: str, now: float | None, lease_seconds: float) -> list[Doc]:
    """Pipeline update, so ``started_at`` is set only on the first claim."""
    return [
        {
            "$set": {
                **rules.claimed(owner, _lease_end(now, lease_seconds)),
                "attempts": {"$add": ["$attempts", 1]},
                "started_at": {"$ifNull": ["$started_at", _at(now)]},
            }
        }
    ]


def renew_update(
    now: float | None,
    lease_seconds: float,
    progress: float,
    eta_seconds: float | None,
    phase: str | None,
) -> list[Doc]:
    """Pipeline update, so the new lease end can be the server's clock plus the lease."""
    return [
        {
            "$set": {
                "lease_expires_at": _lease_end(now, lease_seconds),
                **_literal({"progress": progress, "eta_seconds": eta_seconds, "phase": phase}),
            }
        }
    ]


def lease_filter(job_id: str, owner: str) -> Doc:
    return {"_id": job_id, "lease_owner": owner, "status": JobStatus.PROCESSING}


def finish_filter(job_id: str, owner: str) -> Doc:
    return lease_filter(job_id, owner)


def _literal(values: Doc) -> Doc:
    """Values for a pipeline ``$set``: literal, so a "$…" string is never a field path."""
    return {k: {"$literal": v} for k, v in values.items()}


def outbox(now: float) -> Doc:
    """Fields that make a job's webhook event pending, when the job has a webhook_url
    (:func:`~serve_app.jobs.transitions.outbox`, decided by the server per document).

    Set in the same update that ends the job, so the event cannot be lost.
    """
    has_webhook = {"$ne": [{"$ifNull": ["$webhook_url", None]}, None]}
    with_hook, without = rules.outbox(True, now), rules.outbox(False, now)
    return {name: {"$cond": [has_webhook, with_hook[name], without[name]]} for name in with_hook}


def finish_update(
    status: str,
    now: float,
    output_path: str | None,
    error_type: str | None,
    error_message: str | None,
) -> list[Doc]:
    update = rules.finished(JobStatus(status), now, output_path, error_type, error_message)
    return [{"$set": {**_literal(update), **outbox(now)}}]


def due_webhooks_filter(now: float) -> Doc:
    return {"webhook_status": DeliveryStatus.PENDING, "webhook_next_at": {"$lte": now}}


def cancel_filter(job_id: str) -> Doc:
    return {"_id": job_id, "status": {"$in": list(rules.CANCELABLE)}}


def cancel_update(now: float) -> list[Doc]:
    """Queued → canceled (with its outbox entry); processing → flagged; in one update.

    A single ``$set`` stage sees the document as it was, so both branches test the
    status before the change, and no re-queue can slip between them.
    """
    queued = {"$eq": ["$status", JobStatus.QUEUED]}
    processing = {"$eq": ["$status", JobStatus.PROCESSING]}
    ended = {**_literal(rules.cancel_queued(now)), **outbox(now)}
    return [
        {
            "$set": {
                **{name: {"$cond": [queued, value, f"${name}"]} for name, value in ended.items()},
                "cancel_requested": {"$cond": [processing, True, "$cancel_requested"]},
            }
        }
    ]


def requeue_update(now: float, max_attempts: int) -> list[Doc]:
    """For :func:`expired_filter` matches, one update: canceled if a cancel was asked,
    else failed (``runner_lost``) after ``max_attempts`` claims, else queued again
    (:func:`~serve_app.jobs.transitions.after_lease_expiry`, each field a ``$switch``
    over its outcomes in the rules' order).
    """
    conditions = {
        JobStatus.CANCELED: {"$eq": ["$cancel_requested", True]},
        JobStatus.FAILED: {"$gte": ["$attempts", max_attempts]},
    }
    # What each outcome sets: the rules' fields, and the outbox for an ending one.
    sets = {
        outcome: {
            **_literal(rules.lease_expired(outcome, now, max_attempts)),
            **(outbox(now) if outcome.is_terminal else {}),
        }
        for outcome in rules.LEASE_EXPIRY_ORDER
    }
    default = next(o for o in rules.LEASE_EXPIRY_ORDER if o not in conditions)
    names = list(dict.fromkeys(name for changes in sets.values() for name in changes))

    def switch(name: str) -> Doc:
        return {
            "$switch": {
                "branches": [
                    {"case": conditions[o], "then": sets[o].get(name, f"${name}")}
                    for o in rules.LEASE_EXPIRY_ORDER
                    if o in conditions
                ],
                "default": sets[default].get(name, f"${name}"),
            }
        }

    return [{"$set": {name: switch(name) for name in names}}]


def webhook_attempt_filter(job_id: str, number: int) -> Doc:
    """Only the attempt after the recorded ones, on a pending event: a dispatcher whose
    lease lapsed (another went on) can't overwrite ``delivered`` with ``pending``."""
    return {
        "_id": job_id,
        "webhook_status": DeliveryStatus.PENDING,
        "webhook_attempts": number - 1,
    }


def webhook_attempt_update(status: str, number: int, next_at: float | None, body: str) -> list[Doc]:
    """The event's new state; the body is frozen by the first attempt that records it."""
    return [
        {
            "$set": {
                "webhook_status": {"$literal": status},
                "webhook_attempts": {"$literal": number},
                "webhook_next_at": {"$literal": next_at},
                "webhook_body": {"$ifNull": ["$webhook_body", {"$literal": body}]},
            }
        }
    ]


def freeze_body_update(body: str) -> list[Doc]:
    """Keep ``body`` unless the event has one already (the first send's)."""
    return [{"$set": {"webhook_body": {"$ifNull": ["$webhook_body", {"$literal": body}]}}}]


def counter_expiry(window: int, window_seconds: int) -> datetime:
    """When a rate counter may go: two windows after its own starts, whatever their length."""
    return datetime.fromtimestamp((window + 2) * window_seconds, UTC) + timedelta(seconds=1)


def key_reference_filter(reference: str) -> Doc:
    """Keys whose id or display prefix starts with ``reference`` (case-sensitive)."""
    starts = {"$regex": "^" + re.escape(reference)}
    return {"$or": [{"_id": starts}, {"prefix": starts}]}


def expired_filter(now: float | None) -> Doc:
    if now is not None:
        return {"status": JobStatus.PROCESSING, "lease_expires_at": {"$lt": now}}
    # $expr compares with the server's clock; the $type range keeps the index scan on
    # (status, lease_expires_at) and excludes null, which $lt in $expr would count as less.
    return {
        "status": JobStatus.PROCESSING,
        "lease_expires_at": {"$type": "number"},
        "$expr": {"$lt": ["$lease_expires_at", SERVER_NOW]},
    }


def idempotency_filter(key_id: str, idempotency_key: str) -> Doc:
    return {"key_id": key_id, "idempotency_key": idempotency_key}


def jobs_page_filter(key_id: str, cursor: tuple[int, str] | None) -> Doc:
    """The key's jobs strictly older than the cursor (created_seq, id), if any."""
    if cursor is None:
        return {"key_id": key_id}
    seq, job_id = cursor
    return {
        "key_id": key_id,
        "$or": [{"created_seq": {"$lt": seq}}, {"created_seq": seq, "_id": {"$lt": job_id}}],
    }


def events_page_filter(key_id: str, status: str, cursor: tuple[int, str] | None) -> Doc:
    """The key's jobs whose event has ``status``, strictly older than the cursor."""
    return {**jobs_page_filter(key_id, cursor), "webhook_status": status}


def rotate_secret_update(
    secret: str, previous_valid_until: float, now: float | None = None
) -> list[Doc]:
    """The current secret becomes the previous one, unless a previous one is still
    valid at ``now`` (kept with its expiry); one ``$set`` stage reads the document as
    it was, so ``$webhook_secret`` is the old value.  (null > x is false in $gt.)"""
    keep = False if now is None else {"$gt": ["$previous_secret_expires_at", now]}
    return [
        {
            "$set": {
                "previous_webhook_secret": {
                    "$cond": [keep, "$previous_webhook_secret", "$webhook_secret"]
                },
                "previous_secret_expires_at": {
                    "$cond": [
                        keep,
                        "$previous_secret_expires_at",
                        {"$literal": previous_valid_until},
                    ]
                },
                "webhook_secret": {"$literal": secret},
            }
        }
    ]


def redeliver_filter(job_id: str) -> Doc:
    return {"_id": job_id, "webhook_status": {"$in": list(rules.REDELIVERABLE)}}


def redeliver_update(now: float) -> list[Doc]:
    """Pending again, due now, retries counted from the attempts made so far."""
    return [
        {
            "$set": {
                "webhook_status": {"$literal": DeliveryStatus.PENDING},
                "webhook_next_at": {"$literal": now},
                "webhook_round_start": "$webhook_attempts",
            }
        }
    ]


def rate_counter_update() -> Doc:
    return {"$inc": {"count": 1}}


def expired_outputs_filter(completed_before: float) -> Doc:
    return {
        "status": JobStatus.COMPLETED,
        "output_path": {"$ne": None},
        "completed_at": {"$lt": completed_before},
    }


def overdue_filter(now: float) -> Doc:
    return {"status": JobStatus.QUEUED, "deadline_at": {"$ne": None, "$lte": now}}


def overdue_update(now: float) -> list[Doc]:
    """Queued past its cancel_after deadline → canceled (deadline_exceeded), with its
    webhook event."""
    return [{"$set": {**_literal(rules.deadline_passed(now)), **outbox(now)}}]


def release_filter(job_id: str, owner: str) -> Doc:
    """The owner's processing job, unless a cancel was asked (the lease's expiry
    settles that one)."""
    return {**lease_filter(job_id, owner), "cancel_requested": {"$ne": True}}


def release_update() -> Doc:
    """Queued again (:func:`~serve_app.jobs.transitions.released`), the claim uncounted."""
    return {"$set": rules.released(), "$inc": {"attempts": -1}}


def open_uploads_filter(key_id: str, now: float) -> Doc:
    return {"key_id": key_id, "job_id": None, "expires_at": {"$gt": now}}


def advance_upload_filter(upload_id: str, expected_offset: int, new_offset: int) -> Doc:
    """The upload at ``expected_offset``, untaken, with room for ``new_offset``."""
    return {
        "_id": upload_id,
        "offset": expected_offset,
        "job_id": None,
        "size": {"$gte": new_offset},
    }


def claim_upload_filter(upload_id: str, now: float) -> Doc:
    """A complete, unexpired upload no job has taken."""
    return {
        "_id": upload_id,
        "job_id": None,
        "expires_at": {"$gt": now},
        "$expr": {"$eq": ["$offset", "$size"]},
    }


def ended_job_uploads_pipeline(now: float, limit: int) -> list[Doc]:
    """Uploads whose job has ended, or is missing past the upload's expiry (a claim
    comes just before its job's insert)."""
    return [
        {"$match": {"job_id": {"$ne": None}}},
        {"$lookup": {"from": "jobs", "localField": "job_id", "foreignField": "_id", "as": "job"}},
        {
            "$match": {
                "$or": [
                    {"job": {"$size": 0}, "expires_at": {"$lt": now}},
                    {"job.status": {"$in": list(rules.ENDED)}},
                ]
            }
        },
        {"$project": {"job": 0}},
        {"$limit": limit},
    ]
