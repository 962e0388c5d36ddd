"""What the job store keeps: API keys, jobs, webhook attempts and uploads, as plain data.

Both backends store a record field by field, under the field's own name (a SQLite
column, a MongoDB document key), and read it back with :func:`from_stored`: adding an
optional field with a default to a record here is all the store needs (the SQLite
backend adds the column to an existing file when it opens it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from vocabulary import DeliveryStatus, Engine, JobStatus, UploadStatus

__all__ = [
    "EVENT_TYPES",
    "ApiKeyRecord",
    "FieldType",
    "JobRecord",
    "UploadRecord",
    "WebhookAttempt",
    "event_id_for",
    "field_types",
    "from_stored",
    "job_id_for_event",
    "stored_values",
]

R = TypeVar("R")


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
    webhook_status: DeliveryStatus | None = None
    webhook_attempts: int = 0
    webhook_next_at: float | None = None
    webhook_body: str | None = None  # frozen at the first attempt: retries send the same
    # Attempts made before the latest redelivery: its retries count from here.
    webhook_round_start: int = 0
    engine: str = Engine.NEURAL  # which preset chain runs
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


@dataclass(frozen=True)
class FieldType:
    """What a record field holds, as the stores need to know it."""

    base: type  # int, float, bool, str or a StrEnum
    optional: bool  # None allowed


_FIELD_TYPES: dict[type, dict[str, FieldType]] = {}


def field_types(cls: type) -> dict[str, FieldType]:
    """Each field of the record class ``cls``, in declaration order, with its type."""
    if cls not in _FIELD_TYPES:
        _FIELD_TYPES[cls] = _resolve_field_types(cls)
    return _FIELD_TYPES[cls]


def _resolve_field_types(cls: type) -> dict[str, FieldType]:
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else hint
        kinds[f.name] = FieldType(base, optional)
    return kinds


def stored_values(record: Any) -> dict[str, Any]:
    """A record's fields as the stores keep them: plain values (an enum as its value)."""
    return {
        name: value.value if isinstance(value, Enum) else value
        for name, value in ((f.name, getattr(record, f.name)) for f in dataclasses.fields(record))
    }


def from_stored(cls: type[R], values: Mapping[str, Any]) -> R:
    """The record ``cls`` from stored values: enum and bool fields converted back,
    names that are no field ignored, missing fields left to their defaults (a document
    written before the field existed)."""
    kinds = field_types(cls)
    args = {}
    for name, kind in kinds.items():
        if name not in values:
            continue
        value = values[name]
        if value is not None and (kind.base is bool or issubclass(kind.base, Enum)):
            value = kind.base(value)
        args[name] = value
    return cls(**args)
