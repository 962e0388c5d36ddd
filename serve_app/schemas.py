"""The v2 API's request and response shapes: the single source of the OpenAPI document.

Timestamps are integer Unix seconds (UTC), as in the reference's job object.
"""

from __future__ import annotations

import math
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.records import JobRecord, JobStatus

__all__ = ["DeliveryAttempt", "Download", "EnhanceBody", "ErrorBody", "ErrorDetail",
           "EventList", "Job", "JobError", "JobList", "WebhookEvent", "job_from_record"]

Preset = Literal["cinematic", "social", "archive", "general"]
Engine = Literal["neural", "classical"]
Phase = Literal["fetching", "processing", "assembling", "uploading"]


# Documented in the schema only: the validator below gives the clearer error message.
_URL_SCHEMA: dict[str, object] = {"format": "uri", "pattern": "^https?://[^/?#]+",
                                  "maxLength": 2048}


def _http_url(value: str, field: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http or https URL with a host")
    if len(value) > 2048:
        raise ValueError(f"{field} must be at most 2048 characters")
    return value


class EnhanceBody(BaseModel):
    """Body of ``POST /v2/enhance``.

    Strict: no coercion, so ``upscale_factor`` must be a JSON integer (``true``,
    ``2.0`` and ``"2"`` are refused), as the OpenAPI document says.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    video_url: str = Field(description="Public http(s) URL of the source video.",
                           json_schema_extra=_URL_SCHEMA)
    preset: Preset = Field("general", description="Restoration preset.")
    webhook_url: str | None = Field(None, description="Receives job.* events.",
                                    json_schema_extra=_URL_SCHEMA)
    upscale_factor: int | None = Field(
        None, ge=1, le=4, description="1–4; default per preset (2 for every preset).")
    engine: Engine = Field("neural", description="neural: the preset's pretrained "
                           "models (classical where they are not installed); classical: "
                           "Lanczos, NL-means and optical flow only.")

    @field_validator("video_url")
    @classmethod
    def _video_url(cls, value: str) -> str:
        return _http_url(value, "video_url")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "webhook_url")


class JobError(BaseModel):
    type: str
    message: str


class Job(BaseModel):
    """The job object."""

    id: str
    status: JobStatus
    input_url: str
    output_url: str | None
    created_at: int
    started_at: int | None
    completed_at: int | None
    error: JobError | None
    progress: float = Field(ge=0, le=1)
    eta_seconds: int | None
    phase: Phase | None = Field(None, description="While processing: fetching, "
                                "processing, assembling or uploading; null otherwise.")
    preset: Preset
    upscale_factor: int
    engine: Engine
    attempts: int = Field(0, ge=0, description="Times a runner has taken the job: more "
                          "than 1 after a runner died mid-job; an operator's restart or "
                          "redeploy does not count.")


class JobList(BaseModel):
    data: list[Job]
    has_more: bool
    next_cursor: str | None


class Download(BaseModel):
    """A time-limited download link for a completed job's output."""

    url: str
    expires_at: int = Field(description="Unix seconds; never later than 24 h after "
                            "completion (the retention period).")


class DeliveryAttempt(BaseModel):
    number: int
    at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookEvent(BaseModel):
    """A job's webhook event and every attempt to deliver it."""

    id: str
    type: str
    created_at: int
    url: str
    status: Literal["pending", "delivered", "failed"]
    next_attempt_at: int | None
    attempts: list[DeliveryAttempt]


class EventList(BaseModel):
    data: list[WebhookEvent]


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _seconds(value: float | None) -> int | None:
    return None if value is None else math.floor(value)


def job_from_record(job: JobRecord, output_url: str | None = None) -> Job:
    error = None
    if job.error_type is not None:
        error = JobError(type=job.error_type, message=job.error_message or "")
    return Job(
        id=job.id,
        status=job.status,
        input_url=job.input_url,
        output_url=output_url,
        created_at=math.floor(job.created_at),
        started_at=_seconds(job.started_at),
        completed_at=_seconds(job.completed_at),
        error=error,
        progress=round(min(1.0, max(0.0, job.progress)), 4),
        eta_seconds=None if job.eta_seconds is None else math.ceil(job.eta_seconds),
        phase=job.phase if job.status == JobStatus.PROCESSING else None,  # type: ignore[arg-type]
        preset=job.preset,  # type: ignore[arg-type]
        upscale_factor=job.upscale_factor,
        engine=job.engine,  # type: ignore[arg-type]
        attempts=job.attempts,
    )
