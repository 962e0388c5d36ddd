"""A Python client for the Retroiva v2 API: jobs, resumable uploads, webhook checks.

It imports nothing from the service (only httpx), so it installs and runs anywhere::

    from retroiva_client import Client

    client = Client(api_key, "http://127.0.0.1:8000")
    job = client.enhance("https://example.com/raw.mp4", preset="archive")
    job.wait(on_progress=lambda j: print(j.status, j.progress))
    job.download("enhanced.mp4")
"""

from __future__ import annotations

__version__ = "0.1.0"

from retroiva_client._http import RetryPolicy
from retroiva_client.client import DEFAULT_BASE_URL, Client
from retroiva_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InternalError,
    InvalidRequestError,
    JobTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    QueueLimitError,
    RangeNotSatisfiableError,
    RateLimitError,
    RetroivaError,
    ServiceUnavailableError,
    WebhookVerificationError,
)
from retroiva_client.jobs import Job, JobError, Jobs
from retroiva_client.uploads import Upload
from retroiva_client.webhooks import verify_webhook

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "InternalError",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobTimeoutError",
    "Jobs",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueueLimitError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "RetroivaError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Upload",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
