"""The job's state-transition rules, written once: what each transition sets, and when.

Pure functions and constants, no I/O.  Both job stores build their atomic updates from
them (the SQLite backend as ``UPDATE … SET`` statements, the MongoDB backend as
pipeline updates in :mod:`serve_app.jobs.mongo_queries`), so a rule or a message
changed here changes in both.  A transition is a mapping of :class:`JobRecord` field
names to their new values; the fields it leaves out keep theirs.

The rules::

    queued ──claim──▶ processing ──finish──▶ completed | failed | canceled
      ▲                  │
      └──lease expiry────┤ (or release): queued again, unless a cancel was asked
                         │ (canceled) or the job has had max_attempts (failed: runner_lost)
    queued ──cancel / deadline passed──▶ canceled

Every transition that ends a job also makes its webhook event pending (the outbox,
:data:`OUTBOX_FIELDS`) in the same update, when the job has a ``webhook_url``.
"""

from __future__ import annotations

from typing import Any

from vocabulary import DeliveryStatus, JobErrorType, JobStatus

__all__ = [
    "CANCELABLE",
    "ENDED",
    "IDEMPOTENCY_WINDOW_SECONDS",
    "LEASE_EXPIRY_ORDER",
    "OUTBOX_FIELDS",
    "REDELIVERABLE",
    "Changes",
    "after_lease_expiry",
    "cancel_queued",
    "claimed",
    "deadline_passed",
    "finished",
    "idempotency_key_live",
    "lease_expired",
    "outbox",
    "released",
    "runner_lost_message",
]

Changes = dict[str, Any]

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600

ENDED: tuple[JobStatus, ...] = tuple(s for s in JobStatus if s.is_terminal)
# A cancel request changes these (queued ends at once, processing is flagged).
CANCELABLE = (JobStatus.QUEUED, JobStatus.PROCESSING)
# Only an event whose delivery has ended may be delivered again.
REDELIVERABLE = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)
# The fields of a job's webhook outbox entry (set by every ending transition).
OUTBOX_FIELDS = ("webhook_status", "webhook_next_at")

DEADLINE_MESSAGE = "the job's cancel_after deadline passed before it started"


def runner_lost_message(max_attempts: int) -> str:
    return f"the job's runner stopped responding {max_attempts} times; giving up"


def idempotency_key_live(created_at: float, now: float) -> bool:
    """Whether a job created at ``created_at`` still owns its idempotency key at ``now``
    (a resubmission gets that job back); past the window the key is released."""
    return created_at > now - IDEMPOTENCY_WINDOW_SECONDS


def outbox(has_webhook: bool, now: float) -> Changes:
    """The outbox entry an ending transition writes: pending, due now, if there is a
    webhook to call; else none.  (The stores evaluate ``has_webhook`` in the update.)"""
    return {
        "webhook_status": DeliveryStatus.PENDING if has_webhook else None,
        "webhook_next_at": now if has_webhook else None,
    }


def claimed(owner: str, lease_end: float) -> Changes:
    """Queued → processing under ``owner``'s lease (``attempts`` and ``started_at`` are
    the stores' own expressions: one more, and the first claim's time)."""
    return {
        "status": JobStatus.PROCESSING,
        "lease_owner": owner,
        "lease_expires_at": lease_end,
    }


def finished(
    status: JobStatus,
    now: float,
    output_path: str | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> Changes:
    """Processing → ``status`` by its runner; a completed job's progress is 1."""
    changes: Changes = {
        "status": status,
        "completed_at": now,
        "output_path": output_path,
        "error_type": error_type,
        "error_message": error_message,
        "lease_owner": None,
        "lease_expires_at": None,
        "eta_seconds": None,
    }
    if status == JobStatus.COMPLETED:
        changes["progress"] = 1.0
    return changes


def cancel_queued(now: float) -> Changes:
    """A cancel request on a queued job ends it at once (a processing job is only
    flagged: ``cancel_requested``, which its runner or the lease's expiry settles)."""
    return {"status": JobStatus.CANCELED, "completed_at": now}


def deadline_passed(now: float) -> Changes:
    """A queued job past its ``cancel_after`` deadline."""
    return {
        "status": JobStatus.CANCELED,
        "completed_at": now,
        "error_type": JobErrorType.DEADLINE_EXCEEDED,
        "error_message": DEADLINE_MESSAGE,
    }


def released() -> Changes:
    """A runner stopping on purpose hands its job back (its claim is not counted)."""
    return {**lease_expired(JobStatus.QUEUED, 0.0, 0), "phase": None}


# The order the stores test an expired lease's job in: the first that applies wins.
LEASE_EXPIRY_ORDER = (JobStatus.CANCELED, JobStatus.FAILED, JobStatus.QUEUED)


def after_lease_expiry(cancel_requested: bool, attempts: int, max_attempts: int) -> JobStatus:
    """Where a processing job whose lease expired goes: canceled if a cancel was asked
    (even on its last attempt), failed once it has been claimed ``max_attempts`` times,
    else queued again."""
    if cancel_requested:
        return JobStatus.CANCELED
    if attempts >= max_attempts:
        return JobStatus.FAILED
    return JobStatus.QUEUED


def lease_expired(outcome: JobStatus, now: float, max_attempts: int) -> Changes:
    """What an expired lease sets for each :func:`after_lease_expiry` outcome (an
    ending one also writes the outbox entry)."""
    lease = {"status": outcome, "lease_owner": None, "lease_expires_at": None}
    if outcome == JobStatus.QUEUED:
        return {**lease, "progress": 0.0, "eta_seconds": None}
    if outcome == JobStatus.FAILED:
        return {
            **lease,
            "completed_at": now,
            "error_type": JobErrorType.RUNNER_LOST,
            "error_message": runner_lost_message(max_attempts),
        }
    if outcome == JobStatus.CANCELED:
        return {**lease, "completed_at": now}
    raise ValueError(f"an expired lease never leads to {outcome!r}")
