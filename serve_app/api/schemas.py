"""The v2 API's request and response shapes: the single source of the OpenAPI document.

Timestamps are integer Unix seconds (UTC), as in the reference's job object; the
webhook additions of issue 17 (``deliveries``, secret rotation) use ISO 8601 (UTC, ``Z``)
as the contract between this session's clients fixes them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.json_schema import JsonDict

from serve_app.errors import InvalidRequestError
from serve_app.jobs.job_spec import (
    MAX_CANCEL_AFTER_SECONDS,
    MAX_UPLOAD_ID,
    MAX_URL_LENGTH,
    JobSpec,
    check_http_url,
    input_problem,
)
from serve_app.jobs.records import JobRecord, UploadRecord, WebhookAttempt
from vocabulary import (
    ApiErrorType,
    DeliveryStatus,
    Engine,
    JobErrorType,
    JobStatus,
    Phase,
    PresetName,
    UploadStatus,
)

__all__ = [
    "MAX_CANCEL_AFTER_SECONDS",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryPage",
    "Download",
    "EnhanceBody",
    "ErrorBody",
    "ErrorDetail",
    "EventList",
    "Job",
    "JobError",
    "JobList",
    "RotatedSecret",
    "Upload",
    "UploadBody",
    "WebhookEvent",
    "event_from_record",
    "iso_time",
    "job_from_record",
    "job_spec",
    "upload_from_record",
]

# Documented in the schema only: the validator below gives the clearer error message.
_URL_SCHEMA: JsonDict = {
    "format": "uri",
    "pattern": "^https?://[^/?#]+",
    "maxLength": MAX_URL_LENGTH,
}


class EnhanceBody(BaseModel):
    """Body of ``POST /v2/enhance``.

    Strict: no coercion, so ``upscale_factor`` must be a JSON integer (``true``,
    ``2.0`` and ``"2"`` are refused), as the OpenAPI document says.  The wire shape of
    a :class:`~serve_app.jobs.job_spec.JobSpec` (:meth:`to_spec`), whose checks the
    validators below call.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"oneOf": [{"required": ["video_url"]}, {"required": ["upload_id"]}]},
    )

    # Before video_url: its validator reads this one to require exactly one of the two.
    upload_id: str | None = Field(
        None,
        max_length=MAX_UPLOAD_ID,
        description="A complete upload "
        "(POST /v2/uploads) of this key, instead of video_url; "
        "its bytes are deleted when the job ends.",
    )
    video_url: str | None = Field(
        None,
        validate_default=True,
        description="Public http(s) URL of the source video; "
        "exactly one of video_url and upload_id.",
        json_schema_extra=_URL_SCHEMA,
    )
    # Enums take their JSON string (strict mode would want the Python member).
    preset: PresetName = Field(PresetName.GENERAL, strict=False, description="Restoration preset.")
    webhook_url: str | None = Field(
        None, description="Receives job.* events.", json_schema_extra=_URL_SCHEMA
    )
    upscale_factor: int | None = Field(
        None, ge=1, le=4, description="1–4; default per preset (2 for every preset)."
    )
    engine: Engine = Field(
        Engine.NEURAL,
        strict=False,
        description="neural: the preset's pretrained "
        "models (classical where they are not installed); classical: "
        "Lanczos, NL-means and optical flow only.",
    )

    cancel_after: int | None = Field(
        None,
        ge=1,
        le=MAX_CANCEL_AFTER_SECONDS,
        description="Seconds from creation "
        "after which the job is canceled (status canceled, error.type "
        "deadline_exceeded) if it has not ended.",
    )

    @field_validator("video_url")
    @classmethod
    def _video_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # upload_id missing from info.data: it failed its own check, which is reported.
        if "upload_id" in info.data and (problem := input_problem(value, info.data["upload_id"])):
            raise ValueError(problem)
        return None if value is None else check_http_url(value, "video_url")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, "webhook_url")

    def to_spec(self) -> JobSpec:
        # Field for field: a body field the spec lacks fails here (and in the tests).
        return JobSpec(**self.model_dump())


def job_spec(data: Any) -> JobSpec:
    """A JSON body of ``POST /v2/enhance`` as the job it asks for; the API's
    :class:`InvalidRequestError` naming the first problem otherwise."""
    try:
        body = EnhanceBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(first["msg"].removeprefix("Value error, "), param=param) from None
    return body.to_spec()


class JobError(BaseModel):
    # A string, so a job stored by an older version with another type still reads; the
    # document lists the vocabulary's types.
    type: str = Field(json_schema_extra={"enum": [t.value for t in JobErrorType]})
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
    phase: Phase | None = Field(
        None,
        description="While processing: fetching, "
        "processing, assembling or uploading; null otherwise.",
    )
    preset: PresetName
    upscale_factor: int
    engine: Engine
    upload_id: str | None = Field(
        None, description="The upload the input came from (input_url is then upload:<id>)."
    )
    attempts: int = Field(
        0,
        ge=0,
        description="Times a runner has taken the job: more "
        "than 1 after a runner died mid-job; an operator's restart or "
        "redeploy does not count.",
    )


class JobList(BaseModel):
    data: list[Job]
    has_more: bool
    next_cursor: str | None


class Download(BaseModel):
    """A time-limited download link for a completed job's output."""

    url: str
    expires_at: int = Field(
        description="Unix seconds; never later than 24 h after completion (the retention period)."
    )


class DeliveryAttempt(BaseModel):
    number: int
    at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class Delivery(BaseModel):
    """One attempt to deliver an event (``deliveries``; the same facts as ``attempts``)."""

    attempt: int = Field(description="1-based, counting every attempt of the event.")
    attempted_at: str = Field(description="ISO 8601, UTC.")
    status_code: int | None = Field(
        description="The receiver's status; null when no "
        "response came (refused address, timeout, error)."
    )
    duration_ms: int
    error: str | None
    redelivery: bool = Field(description="Made for a redelivery asked through the API.")


class WebhookEvent(BaseModel):
    """A job's webhook event and every attempt to deliver it."""

    id: str
    type: str
    created_at: int
    url: str
    status: DeliveryStatus
    next_attempt_at: int | None
    attempts: list[DeliveryAttempt]
    job_id: str
    delivery_status: DeliveryStatus = Field(description="The same value as status.")
    deliveries: list[Delivery]


class EventList(BaseModel):
    data: list[WebhookEvent]


class UploadBody(BaseModel):
    """JSON body of ``POST /v2/uploads`` (tus clients send headers instead)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    size: int = Field(ge=1, description="Total bytes; at most MAX_INPUT_BYTES.")
    filename: str | None = Field(None, max_length=255)


class Upload(BaseModel):
    """The upload object: a resumable (tus 1.0) upload of a source video."""

    id: str
    object: Literal["upload"] = "upload"
    status: UploadStatus
    size: int
    offset: int = Field(description="Bytes received so far.")
    filename: str | None
    upload_url: str = Field(
        description="Where the bytes go (tus PATCH) and where HEAD tells the offset to resume from."
    )
    created_at: str = Field(
        description="ISO 8601, UTC (as CONTRACTS.md and the delivery history's attempted_at)."
    )
    expires_at: str = Field(
        description="ISO 8601, UTC; an upload no job has taken is "
        "refused and deleted then (Upload-Expires says the same)."
    )
    job_id: str | None = Field(None, description="The job that took the upload.")


class DeliveryPage(BaseModel):
    """``GET /v2/webhook_deliveries``: the envelope of ``GET /v2/jobs``."""

    data: list[WebhookEvent]
    has_more: bool
    next_cursor: str | None = Field(
        description="Give it as starting_after for the next page (an event id)."
    )


class RotatedSecret(BaseModel):
    """``POST /v2/webhook_secret/rotate``: the new secret, shown once."""

    webhook_secret: str = Field(description="whsec_ + standard base64 of 32 random bytes.")
    previous_valid_until: str = Field(
        description="ISO 8601, UTC: until then deliveries "
        "also carry a webhook-signature entry under the "
        "previous secret."
    )


class ErrorDetail(BaseModel):
    type: ApiErrorType
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
        phase=Phase(job.phase) if job.phase and job.status == JobStatus.PROCESSING else None,
        preset=PresetName(job.preset),
        upscale_factor=job.upscale_factor,
        engine=Engine(job.engine),
        upload_id=job.upload_id,
        attempts=job.attempts,
    )


def iso_time(value: float) -> str:
    """``value`` (Unix seconds) as ISO 8601 in UTC with milliseconds and ``Z``."""
    text = datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def event_from_record(job: JobRecord, attempts: list[WebhookAttempt]) -> WebhookEvent:
    """The event of ``job`` (which has one: ended, with a webhook_url)."""
    assert job.webhook_url is not None and job.event_type is not None
    status = DeliveryStatus(job.webhook_status or DeliveryStatus.PENDING)
    return WebhookEvent(
        id=job.event_id,
        type=job.event_type,
        created_at=math.floor(job.completed_at or job.created_at),
        url=job.webhook_url,
        status=status.value,
        next_attempt_at=None
        if job.webhook_next_at is None or status != "pending"
        else math.ceil(job.webhook_next_at),
        attempts=[
            DeliveryAttempt(
                number=a.number,
                at=math.floor(a.at),
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in attempts
        ],
        job_id=job.id,
        delivery_status=status,
        deliveries=[
            Delivery(
                attempt=a.number,
                attempted_at=iso_time(a.at),
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
                redelivery=a.redelivery,
            )
            for a in attempts
        ],
    )


def upload_from_record(upload: UploadRecord, upload_url: str) -> Upload:
    return Upload(
        id=upload.id,
        status=upload.status,
        size=upload.size,
        offset=upload.offset,
        filename=upload.filename,
        upload_url=upload_url,
        created_at=iso_time(upload.created_at),
        expires_at=iso_time(upload.expires_at),
        job_id=upload.job_id,
    )
