"""The job store's async interface, shared by the SQLite and MongoDB backends.

Callers see it as the few protocols they use: :class:`KeyStore` (keys, rate counters),
:class:`JobQueue` (jobs, claims, leases), :class:`WebhookOutbox` (webhook events) and
:class:`UploadStore` (uploads); :class:`JobStore` is all of them, which both backends
implement.  The rules of each transition are in :mod:`serve_app.jobs.transitions`.

Every method that changes state is atomic on its own, across processes and Serve
replicas: claiming a job, renewing a lease, counting a request against a rate limit.
The contract is pinned by ``tests/test_store_contract.py``, which both backends pass.

Errors every backend raises in the same way::

    StoreError
    ├── StoreUnavailable   the store did not answer within ``store_timeout_seconds``
    │                      (locked, unreachable, failing over); transient: retry later
    ├── AmbiguousKey       a key reference matches more than one key
    └── QueueFull          the key already has its maximum of queued jobs
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from serve_app.jobs.records import ApiKeyRecord, JobRecord, UploadRecord, WebhookAttempt
from serve_app.jobs.transitions import IDEMPOTENCY_WINDOW_SECONDS
from serve_app.settings import Settings
from vocabulary import JobStatus

__all__ = [
    "IDEMPOTENCY_WINDOW_SECONDS",
    "AmbiguousKey",
    "JobQueue",
    "JobStore",
    "KeyStore",
    "QueueFull",
    "StoreError",
    "StoreUnavailable",
    "UploadStore",
    "WebhookOutbox",
    "open_store",
]


class StoreError(Exception):
    """Base of the errors the store raises on purpose (anything else is a bug)."""


class StoreUnavailable(StoreError):
    """The store did not answer in time or cannot be reached; the call may be retried.

    Nothing is known about whether a write went through, so only idempotent or
    conditional operations (all of this interface's) are safe to retry.
    """


class AmbiguousKey(StoreError):
    """A key reference (id or prefix) matched several keys; none was changed."""

    def __init__(self, reference: str, candidates: list[ApiKeyRecord]) -> None:
        listed = ", ".join(f"{k.id} ({k.prefix}…, {k.name})" for k in candidates)
        super().__init__(f"{reference!r} matches {len(candidates)} keys: {listed}; give the key id")
        self.reference = reference
        self.candidates = candidates


class QueueFull(StoreError):
    """The key already has ``limit`` queued jobs; the new one was not inserted."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this key already has {limit} queued jobs, its limit "
            "(max_queued_per_key); submit more when some have started"
        )
        self.limit = limit


class KeyStore(Protocol):
    """API keys and their rate counters (authentication, the CLI's key commands)."""

    async def add_key(self, key: ApiKeyRecord) -> None: ...

    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None: ...

    async def get_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_keys(self) -> list[ApiKeyRecord]: ...

    async def find_keys(self, reference: str) -> list[ApiKeyRecord]:
        """Keys whose id or display prefix is ``reference`` or starts with it.

        An exact id match is returned alone: an id is never ambiguous.
        """

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Revoke by id or unambiguous prefix; False if no such active key.

        Raises :class:`AmbiguousKey` (changing nothing) when the prefix matches several.
        """

    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        """Like :meth:`revoke_key`: by id or unambiguous prefix, else AmbiguousKey."""

    async def rotate_webhook_secret(
        self, key_id: str, secret: str, previous_valid_until: float, now: float | None = None
    ) -> bool:
        """In one update: the current secret becomes the previous one (valid until
        ``previous_valid_until``) and ``secret`` the current.  By id or unambiguous
        prefix like :meth:`revoke_key`; False if no such key.

        A previous secret still valid at ``now`` is kept, with its own expiry: a second
        rotation within an overlap (a form sent twice, two admins) replaces only the
        secret the first one issued, so receivers still on the original keep verifying.
        """

    async def set_key_limits(
        self, key_id: str, max_queued: int | None, max_running: int | None
    ) -> bool:
        """Per-key overrides of the queued/running limits (None: the setting's)."""

    async def count_request(self, key_id: str, window: int, window_seconds: int = 60) -> int:
        """Add one request to ``key_id``'s counter for ``window``; return the new count.

        ``window`` is ``floor(now / window_seconds)``; a counter lives at least two windows.
        """


class JobQueue(Protocol):
    """Jobs: submission, the fair queue, leases and their ends (the API and the runner)."""

    async def insert_job(
        self, job: JobRecord, now: float, max_queued: int | None = None
    ) -> tuple[JobRecord, bool]:
        """Insert ``job``, or return the key's live job with the same idempotency key.

        Returns ``(job, created)``.  An idempotency key older than
        :data:`IDEMPOTENCY_WINDOW_SECONDS` is released first.  Raises
        :class:`QueueFull` when the key already has ``max_queued`` queued jobs.
        """

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def count_jobs_by_status(self) -> dict[str, int]:
        """Every status with its number of jobs (0 for statuses with none)."""

    async def oldest_queued_at(self) -> float | None:
        """``created_at`` of the oldest queued job; None when none is queued."""

    async def recent_jobs(
        self, limit: int, key_id: str | None = None, status: str | None = None
    ) -> list[JobRecord]:
        """Newest first across all keys (operators), optionally filtered."""

    async def list_jobs(
        self, key_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        """Newest first, after the cursor job; returns ``(page, has_more)``."""

    async def claim_next(
        self, owner: str, now: float, lease_seconds: float, max_running: int | None = None
    ) -> JobRecord | None:
        """Atomically move a queued job to processing under ``owner``'s lease.

        Fair across keys: the job is the oldest queued one of the key served least
        recently (keys never served first, then by their oldest queued job), so one
        key's backlog never holds another key's job back by more than one turn.  Keys
        already running their limit (their own ``max_running``, else this argument;
        None: unlimited) are skipped.
        """

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
        """Extend the lease and record progress (and the job's phase); None if
        ``owner`` no longer holds it."""

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
        """Record the end of a job this owner holds; False if the lease was lost."""

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        """Queued → canceled at once; processing → flagged for its runner; else unchanged."""

    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        """Jobs whose lease expired go back to queued, or fail after ``max_attempts``."""

    async def release_lease(self, job_id: str, owner: str) -> bool:
        """A runner stopping on purpose hands the job back: queued again at once, its
        claim not counted as an attempt; False if ``owner`` no longer holds it (or a
        cancel was asked, which the lease's expiry settles)."""

    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        """Completed jobs that still have an output and finished before the cutoff."""

    async def clear_output(self, job_id: str) -> None:
        """Forget a job's output (after it was deleted); the job record stays."""

    async def cancel_overdue(self, now: float) -> int:
        """Queued jobs whose ``deadline_at`` has passed end ``canceled`` with error type
        ``deadline_exceeded`` (and their webhook event); returns how many."""


class WebhookOutbox(Protocol):
    """The webhook outbox (the dispatcher, the events API).

    Every status change that ends a job with a ``webhook_url`` sets ``webhook_status =
    pending`` and ``webhook_next_at = now`` in the same update
    (:func:`serve_app.jobs.transitions.outbox`).
    """

    async def claim_due_webhooks(
        self, now: float, lease_seconds: float, limit: int, exclude_keys: Collection[str] = ()
    ) -> list[JobRecord]:
        """Pending events due now, oldest first, none of ``exclude_keys``' jobs; each is
        hidden from other dispatchers for the lease."""

    async def freeze_webhook_body(self, job_id: str, body: str) -> str:
        """Keep ``body`` as the event's body unless one is kept already; return the kept one.

        Called before the first send, so a dispatcher that dies between sending and
        recording leaves the next one the very body it sent (same signature input).
        """

    async def record_webhook_attempt(
        self, attempt: WebhookAttempt, *, status: str, next_at: float | None, body: str
    ) -> None:
        """Log an attempt and set the event's status, retry time and frozen body."""

    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]: ...

    async def redeliver_webhook(self, job_id: str, now: float) -> JobRecord | None:
        """A delivered or failed event becomes pending again, due ``now``, its retries
        counted afresh (``webhook_round_start`` = attempts so far); the updated job, or
        None (changing nothing) if the event is not delivered or failed."""

    async def list_webhook_events(
        self, key_id: str, status: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        """The key's jobs whose event has ``status``, newest first after the cursor job
        (like :meth:`list_jobs`); returns ``(page, has_more)``."""


class UploadStore(Protocol):
    """Resumable uploads' records; their bytes are in upload storage
    (:mod:`serve_app.delivery.upload_storage`)."""

    async def insert_upload(self, upload: UploadRecord) -> None: ...

    async def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    async def open_uploads(self, key_id: str, now: float) -> int:
        """How many of the key's uploads are unexpired and not yet taken by a job."""

    async def advance_upload(
        self, upload_id: str, expected_offset: int, new_offset: int
    ) -> UploadRecord | None:
        """Move the offset from ``expected_offset`` to ``new_offset`` (never backwards)
        of an upload no job has taken; None (nothing changed) if it is not there now."""

    async def claim_upload(self, upload_id: str, job_id: str, now: float) -> bool:
        """Give a complete, unexpired, untaken upload to ``job_id``; False if it isn't."""

    async def release_upload(self, upload_id: str, job_id: str) -> None:
        """Undo :meth:`claim_upload` (the job was not created after all)."""

    async def delete_upload(self, upload_id: str) -> None:
        """Forget the upload (after its bytes were deleted); no error if it is gone."""

    async def expired_uploads(self, now: float, limit: int) -> list[UploadRecord]:
        """Uploads no job took whose ``expires_at`` has passed."""

    async def uploads_of_ended_jobs(self, now: float, limit: int) -> list[UploadRecord]:
        """Uploads taken by a job that has ended, or by a job that does not exist once
        the upload's ``expires_at`` has passed: a claim is made just before its job is
        inserted, so a missing job may be one about to appear."""


class JobStore(KeyStore, JobQueue, WebhookOutbox, UploadStore, Protocol):
    """The whole store, as :func:`open_store` returns it: every protocol above, and
    its own life (both backends implement it all)."""

    async def init(self) -> None:
        """Create tables/indexes if missing; safe to call from every process."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return once the store answers a read and a write; :class:`StoreUnavailable` if not."""


def open_store(settings: Settings) -> JobStore:
    """The configured backend: MongoDB when ``mongodb_uri`` is set, else SQLite; either
    with its webhook secrets sealed (:mod:`serve_app.access.secret_box`)."""
    from serve_app.access.secret_box import load_secret_box, sealed

    box = load_secret_box(settings.secrets_key, settings.data_dir)
    if settings.mongodb_uri:
        from serve_app.jobs.mongo_store import MongoStore

        return sealed(
            MongoStore(
                settings.mongodb_uri,
                settings.mongodb_database,
                timeout=settings.store_timeout_seconds,
            ),
            box,
        )
    from serve_app.jobs.sqlite_store import SqliteStore

    return sealed(SqliteStore(settings.sqlite_path, timeout=settings.store_timeout_seconds), box)
