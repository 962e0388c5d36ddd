"""The project's one vocabulary: every status, name and error type, defined once.

Imported by the API schemas (and so the OpenAPI document), both job stores, the runner,
the webhook dispatcher, the pipelines and the model registry; it imports nothing of
theirs, so every room may depend on it without an arrow pointing back.  A value here is
what travels on the wire and what the stores keep: add a member here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ApiErrorType",
    "Backend",
    "BatchOutcome",
    "BatchRowState",
    "DeliveryStatus",
    "Engine",
    "FrameLayout",
    "JobErrorType",
    "JobStatus",
    "OperatorKind",
    "Phase",
    "PresetName",
    "UploadStatus",
]


class JobStatus(StrEnum):
    """A job's place in its life: queued → processing → one of the three ends."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class DeliveryStatus(StrEnum):
    """A webhook event's delivery state."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class UploadStatus(StrEnum):
    """A resumable upload's state."""

    PENDING = "pending"  # bytes still missing
    COMPLETE = "complete"  # every byte received; ready for one job


class BatchRowState(StrEnum):
    """A batch row's state before, or instead of, a job (then the job's status shows)."""

    PENDING = "pending"  # not submitted yet
    REJECTED = "rejected"  # refused by the service: no job at all


class BatchOutcome(StrEnum):
    """A batch as a whole, from its rows' states (``retroiva batches``, the Dashboard)."""

    RUNNING = "running"  # a row is still pending or its job has not ended
    COMPLETED = "completed"  # every row's job completed
    PARTIAL = "partial"  # some completed; other rows rejected, failed or canceled
    FAILED = "failed"  # none completed
    CANCELED = "canceled"  # none completed, and every row's job was canceled


class Phase(StrEnum):
    """What a processing job is doing now (the job object's ``phase``)."""

    FETCHING = "fetching"
    PROCESSING = "processing"
    ASSEMBLING = "assembling"
    UPLOADING = "uploading"


class PresetName(StrEnum):
    """The presets a request may name (:mod:`pipelines.presets` defines each)."""

    CINEMATIC = "cinematic"
    SOCIAL = "social"
    ARCHIVE = "archive"
    GENERAL = "general"


class Engine(StrEnum):
    """Which of a preset's two chains a job runs: pretrained models or classical operators."""

    NEURAL = "neural"
    CLASSICAL = "classical"


class OperatorKind(StrEnum):
    """What a frame operator does."""

    DENOISE = "denoise"
    UPSCALE = "upscale"
    INTERPOLATE = "interpolate"


class Backend(StrEnum):
    """What implements an operator of a given kind (the registry's second key).

    Not to be confused with :class:`Engine`: a neural chain uses the ``rife`` and
    ``ncnn`` backends, a classical chain the ``classical`` one.
    """

    CLASSICAL = "classical"  # NL-means, DIS flow, Lanczos: CPU
    RIFE = "rife"  # RIFE interpolation in torch
    NCNN = "ncnn"  # a published ncnn model (SPAN, waifu2x, ...) in torch or ncnn


class FrameLayout(StrEnum):
    """How a job's frames travel between pipeline stages (:mod:`models.operator`)."""

    RGB = "rgb"  # (N, H, W, 3): what every operator takes
    # (N, H * 3 / 2, W): the Y, Cb and Cr planes one after another, as FFmpeg lays out
    # yuv420p; when every operator can work on planes, the input's own pixels travel
    # and no colour conversion happens at all.
    YUV420 = "yuv420"


class ApiErrorType(StrEnum):
    """``error.type`` of an HTTP error body."""

    API_ERROR = "api_error"
    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    FORBIDDEN = "forbidden_error"
    NOT_FOUND = "not_found_error"
    CONFLICT = "conflict_error"
    GONE = "gone_error"
    RATE_LIMIT = "rate_limit_error"
    QUEUE_LIMIT = "queue_limit_error"
    SERVICE_UNAVAILABLE = "service_unavailable_error"


class JobErrorType(StrEnum):
    """``error.type`` of a failed or canceled job."""

    INVALID_INPUT = "invalid_input"
    INVALID_OPTIONS = "invalid_options"
    PROCESSING_ERROR = "processing_error"
    CANCELED = "canceled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    KEY_REVOKED = "key_revoked"
    RUNNER_LOST = "runner_lost"  # the lease expired max_attempts times
