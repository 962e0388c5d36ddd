"""The MongoDB backend's queries as pure functions: filter and update documents only.

Kept apart from I/O so each query can be read, reviewed and unit-tested on its own.
Documents use the :class:`~serve_app.records.JobRecord` field names, with ``_id`` = id.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]

__all__ = [
    "cancel_processing",
    "cancel_queued",
    "claim_update",
    "due_webhooks_filter",
    "ended_update",
    "expired_filter",
    "expired_outputs_filter",
    "finish_filter",
    "finish_update",
    "idempotency_filter",
    "jobs_page_filter",
    "lease_filter",
    "outbox",
    "queued_filter",
    "rate_counter_update",
    "revoke_filter",
]


def queued_filter() -> Doc:
    return {"status": "queued"}


def claim_update(owner: str, now: float, lease_seconds: float) -> list[Doc]:
    """Pipeline update, so ``started_at`` is set only on the first claim."""
    return [{"$set": {
        "status": "processing",
        "lease_owner": owner,
        "lease_expires_at": now + lease_seconds,
        "attempts": {"$add": ["$attempts", 1]},
        "started_at": {"$ifNull": ["$started_at", now]},
    }}]


def lease_filter(job_id: str, owner: str) -> Doc:
    return {"_id": job_id, "lease_owner": owner, "status": "processing"}


def finish_filter(job_id: str, owner: str) -> Doc:
    return lease_filter(job_id, owner)


def _literal(values: Doc) -> Doc:
    """Values for a pipeline ``$set``: literal, so a "$…" string is never a field path."""
    return {k: {"$literal": v} for k, v in values.items()}


def outbox(now: float) -> Doc:
    """Fields that make a job's webhook event pending, when the job has a webhook_url.

    Set in the same update that ends the job, so the event cannot be lost.
    """
    has_webhook = {"$ne": [{"$ifNull": ["$webhook_url", None]}, None]}
    return {"webhook_status": {"$cond": [has_webhook, "pending", None]},
            "webhook_next_at": {"$cond": [has_webhook, now, None]}}


def finish_update(status: str, now: float, output_path: str | None, error_type: str | None,
                  error_message: str | None) -> list[Doc]:
    update: Doc = {"status": status, "completed_at": now, "output_path": output_path,
                   "error_type": error_type, "error_message": error_message,
                   "lease_owner": None, "lease_expires_at": None, "eta_seconds": None}
    if status == "completed":
        update["progress"] = 1.0
    return [{"$set": {**_literal(update), **outbox(now)}}]


def cancel_queued(job_id: str, now: float) -> tuple[Doc, list[Doc]]:
    return {"_id": job_id, "status": "queued"}, [{"$set": {
        **_literal({"status": "canceled", "completed_at": now}), **outbox(now)}}]


def ended_update(fields: Doc, now: float) -> list[Doc]:
    """A lease-expiry ending (failed or canceled), with its outbox entry."""
    return [{"$set": {**_literal(fields), **outbox(now)}}]


def due_webhooks_filter(now: float) -> Doc:
    return {"webhook_status": "pending", "webhook_next_at": {"$lte": now}}


def cancel_processing(job_id: str) -> tuple[Doc, Doc]:
    return {"_id": job_id, "status": "processing"}, {"$set": {"cancel_requested": True}}


def expired_filter(now: float) -> Doc:
    return {"status": "processing", "lease_expires_at": {"$lt": now}}


def idempotency_filter(key_id: str, idempotency_key: str) -> Doc:
    return {"key_id": key_id, "idempotency_key": idempotency_key}


def jobs_page_filter(key_id: str, cursor: tuple[int, str] | None) -> Doc:
    """The key's jobs strictly older than the cursor (created_seq, id), if any."""
    if cursor is None:
        return {"key_id": key_id}
    seq, job_id = cursor
    return {"key_id": key_id, "$or": [{"created_seq": {"$lt": seq}},
                                      {"created_seq": seq, "_id": {"$lt": job_id}}]}


def rate_counter_update() -> Doc:
    return {"$inc": {"count": 1}}


def revoke_filter(key_id: str) -> Doc:
    return {"$or": [{"_id": key_id}, {"prefix": key_id}], "revoked_at": None}


def expired_outputs_filter(completed_before: float) -> Doc:
    return {"status": "completed", "output_path": {"$ne": None},
            "completed_at": {"$lt": completed_before}}
