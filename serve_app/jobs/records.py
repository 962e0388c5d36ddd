"""What the job store keeps: API keys, jobs and their status machine."""

from __future__ import annotations

from dataclasses import dataclass, field

from vocabulary import JobStatus, UploadStatus

__all__ = [
    "EVENT_TYPES",
    "ApiKeyRecord",
    "JobRecord",
    "UploadRecord",
    "WebhookAttempt",
    "event_id_for",
    "job_id_for_event",
]


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str  # first characters of the key, for display; the key itself is not kept
    digest: str = field(repr=False)  # SHA-256 hex of the whole key
    webhook_secret: str = field(repr=False)
    rate_limit: int  # requests per window
    created_at: float
    revoked_at: float | None = None
    max_queued: int | None = None  # overrides Settings.max_queued_per_key
    max_running: int | None = None  # overrides Settings.max_running_per_key
    # After a rotation the replaced secret still signs deliveries (Standard Webhooks
    # signatures only) until previous_secret_expires_at, so receivers can switch over.
    previous_webhook_secret: str | None = field(default=None, repr=False)
    previous_secret_expires_at: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    key_id: str
    status: JobStatus
    input_url: str
    preset: str
    upscale_factor: int
    created_at: float
    created_seq: int  # nanosecond creation time: the newest-first order, ties by id
    webhook_url: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    progress: float = 0.0
    eta_seconds: float | None = None
    output_path: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    idempotency_key: str | None = None
    request_hash: str | None = None
    # The job's webhook event (one per job: its terminal transition) is its own outbox
    # entry, set pending by the same update that ends the job, so a crash can't lose it.
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_attempts: int = 0
    webhook_next_at: float | None = None
    webhook_body: str | None = None  # frozen at the first attempt: retries send the same
    # Attempts made before the latest redelivery: its retries count from here.
    webhook_round_start: int = 0
    engine: str = "neural"  # "neural" or "classical": which preset chain runs
    phase: str | None = None  # while processing: fetching, processing, assembling, uploading
    upload_id: str | None = None  # the input is this upload's bytes, not input_url's
    deadline_at: float | None = None  # cancel_after: canceled (deadline_exceeded) past it

    @property
    def event_id(self) -> str:
        return event_id_for(self.id)

    @property
    def event_type(self) -> str | None:
        return EVENT_TYPES.get(self.status)


EVENT_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}


def event_id_for(job_id: str) -> str:
    """A job's event id: stable, so receivers can drop redeliveries."""
    return "evt_" + job_id.removeprefix("job_")


def job_id_for_event(event_id: str) -> str:
    """The job whose event ``event_id`` is (the inverse of :func:`event_id_for`)."""
    return "job_" + event_id.removeprefix("evt_")


@dataclass(frozen=True)
class WebhookAttempt:
    job_id: str
    number: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: int
    redelivery: bool = False  # made for a redelivery asked through the API


@dataclass(frozen=True)
class UploadRecord:
    """A resumable upload (tus): its metadata; the bytes are in upload storage.

    ``offset`` only ever moves forward, by a compare-and-set in the store, so every
    replica agrees on it.  ``job_id`` is set once, by the job that consumes the upload;
    the upload (bytes and record) is deleted when that job ends, or at ``expires_at``
    if no job took it.
    """

    id: str
    key_id: str
    size: int
    offset: int
    created_at: float
    expires_at: float
    filename: str | None = None
    job_id: str | None = None

    @property
    def status(self) -> UploadStatus:
        return UploadStatus.COMPLETE if self.offset >= self.size else UploadStatus.PENDING
