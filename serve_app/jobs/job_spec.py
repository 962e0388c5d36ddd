"""What a job is asked to do, whoever asks: the API, a batch manifest or the dashboard.

A :class:`JobSpec` is a plain value that checks itself when made, raising the API's own
:class:`~serve_app.errors.InvalidRequestError` (same message, same ``param``) for the
first problem, so :func:`~serve_app.jobs.intake.submit_job` never sees an HTTP body.
The API's ``EnhanceBody`` (:mod:`serve_app.api.schemas`) describes the same fields on
the wire and calls this module's checks, so the rules are written once.

A new field of the job object is a field here, its line in :meth:`JobSpec.new_job`, the
record's field (:mod:`serve_app.jobs.records`) and the API's shapes; the intake, the
batch and the stores take it as it is.

The idempotency key is not part of a spec: it names a request, and a request's hash
(which a repeated key must match) is taken over the spec alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from pipelines.presets import PRESETS
from serve_app.errors import InvalidRequestError
from serve_app.jobs.records import JobRecord
from vocabulary import Engine, JobStatus, PresetName

__all__ = [
    "MAX_CANCEL_AFTER_SECONDS",
    "MAX_UPLOAD_ID",
    "MAX_URL_LENGTH",
    "UPSCALE_FACTORS",
    "JobSpec",
    "check_http_url",
    "input_problem",
]

# The longest cancel_after: a week, well past any job's run time.
MAX_CANCEL_AFTER_SECONDS = 7 * 24 * 3600
MAX_URL_LENGTH = 2048
MAX_UPLOAD_ID = 64
UPSCALE_FACTORS = range(1, 5)

# The fields of the first stored jobs: always in the request hash.  Every other field
# (those added since, and any added later) counts only when given, so a body without it
# hashes as it always did and idempotent replays of stored jobs still match.
_ALWAYS_HASHED = ("video_url", "preset", "upscale_factor", "engine", "webhook_url")


def check_http_url(value: str, field: str) -> str:
    """``value`` if it is an http(s) URL with a host; ``ValueError`` saying why not."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http or https URL with a host")
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"{field} must be at most {MAX_URL_LENGTH} characters")
    return value


def input_problem(video_url: str | None, upload_id: str | None) -> str | None:
    """Why the pair is not exactly one input (reported against ``video_url``), or None."""
    if video_url is None and upload_id is None:
        return "video_url is required (or upload_id, for an uploaded file)"
    if video_url is not None and upload_id is not None:
        return "give video_url or upload_id, not both"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class JobSpec:
    """One job's input and options, checked; ``preset`` and ``engine`` may be given as
    their names and are kept as the vocabulary's members."""

    video_url: str | None = None
    upload_id: str | None = None
    preset: PresetName = PresetName.GENERAL
    upscale_factor: int | None = None  # None: the preset's
    engine: Engine = Engine.NEURAL
    webhook_url: str | None = None
    cancel_after: int | None = None  # seconds from creation

    def __post_init__(self) -> None:
        def refuse(message: str, param: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        # No lower bound: an empty id is an unknown upload, which the intake answers 404.
        if self.upload_id is not None and (
            not isinstance(self.upload_id, str) or len(self.upload_id) > MAX_UPLOAD_ID
        ):
            raise refuse(f"upload_id must be at most {MAX_UPLOAD_ID} characters", "upload_id")
        if problem := input_problem(self.video_url, self.upload_id):
            raise refuse(problem, "video_url")
        for field in ("video_url", "webhook_url"):
            url = getattr(self, field)
            if url is None:
                continue
            try:
                check_http_url(url if isinstance(url, str) else "", field)
            except ValueError as exc:
                raise refuse(str(exc), field) from None
        try:
            object.__setattr__(self, "preset", PresetName(self.preset))
        except ValueError:
            names = ", ".join(PresetName)
            raise refuse(f"preset must be one of {names}", "preset") from None
        try:
            object.__setattr__(self, "engine", Engine(self.engine))
        except ValueError:
            names = " or ".join(Engine)
            raise refuse(f"engine must be {names}", "engine") from None
        factor = self.upscale_factor
        if factor is not None and (not _is_int(factor) or factor not in UPSCALE_FACTORS):
            raise refuse("upscale_factor must be an integer from 1 to 4", "upscale_factor")
        deadline = self.cancel_after
        if deadline is not None and (
            not _is_int(deadline) or not 1 <= deadline <= MAX_CANCEL_AFTER_SECONDS
        ):
            raise refuse(
                f"cancel_after must be an integer from 1 to {MAX_CANCEL_AFTER_SECONDS}",
                "cancel_after",
            )

    def request_hash(self) -> str:
        """What a repeated idempotency key must match: the same spec, the same hash."""
        fields = {
            name: value
            for name, value in asdict(self).items()
            if name in _ALWAYS_HASHED or value is not None
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def new_job(
        self,
        job_id: str,
        key_id: str,
        input_url: str,
        idempotency_key: str | None,
        now: float,
    ) -> JobRecord:
        """The queued job this spec makes for ``key_id``; ``input_url`` is the video's,
        or the upload's (``upload:<id>``)."""
        return JobRecord(
            id=job_id,
            key_id=key_id,
            status=JobStatus.QUEUED,
            input_url=input_url,
            preset=self.preset,
            upscale_factor=self.upscale_factor or PRESETS[self.preset].upscale_factor,
            created_at=now,
            created_seq=time.time_ns(),
            webhook_url=self.webhook_url,
            idempotency_key=idempotency_key,
            request_hash=self.request_hash(),
            engine=self.engine,
            upload_id=self.upload_id,
            deadline_at=None if self.cancel_after is None else now + self.cancel_after,
        )
