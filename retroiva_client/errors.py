"""Typed errors raised by the client, mirroring the API's ``error.type`` values.

    RetroivaError
    ├── APIConnectionError             no response: connection refused, reset, timed out
    ├── JobTimeoutError                ``Job.wait`` gave up before the job ended
    ├── WebhookVerificationError       a webhook's signature or timestamp did not verify
    └── APIError                       the API answered with an error body
        ├── InvalidRequestError        400  invalid_request_error (``param`` names the field)
        │   ├── PayloadTooLargeError   413  invalid_request_error
        │   └── RangeNotSatisfiableError 416 invalid_request_error
        ├── AuthenticationError        401  authentication_error
        ├── ForbiddenError             403  forbidden_error
        ├── NotFoundError              404  not_found_error
        ├── ConflictError              409  conflict_error
        ├── GoneError                  410  gone_error
        ├── RateLimitError             429  rate_limit_error   (``retry_after`` seconds)
        ├── QueueLimitError            429  queue_limit_error
        ├── InternalError              500  api_error
        └── ServiceUnavailableError    503  service_unavailable_error (``retry_after``)

Every :class:`APIError` carries the response's ``X-Request-Id`` as ``request_id``: quote
it when reporting a problem, it is the id the service logged.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "InternalError",
    "InvalidRequestError",
    "JobTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueueLimitError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "RetroivaError",
    "ServiceUnavailableError",
    "WebhookVerificationError",
    "error_from_response",
    "retry_after_seconds",
]


class RetroivaError(Exception):
    """Base of every error this client raises."""


class APIConnectionError(RetroivaError):
    """The request got no HTTP response (after the client's retries, where it retries)."""


class JobTimeoutError(RetroivaError, TimeoutError):
    """``Job.wait`` reached its timeout; the job itself keeps running."""

    def __init__(self, message: str, *, job: Any) -> None:
        super().__init__(message)
        self.job = job


class WebhookVerificationError(RetroivaError):
    """A webhook delivery is not signed with the secret, or its timestamp is stale."""


class APIError(RetroivaError):
    """The API answered ``{"error": {"type", "message", "param"?}}`` with a 4xx/5xx."""

    status: int | None = None
    type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.request_id = request_id
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        param = f" (param: {self.param})" if self.param else ""
        request = f" [request id {self.request_id}]" if self.request_id else ""
        return f"{self.status} {self.type}: {self.message}{param}{request}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, type={self.type!r}, "
            f"message={self.message!r}, param={self.param!r}, "
            f"request_id={self.request_id!r})"
        )


class InvalidRequestError(APIError):
    """The request is malformed or a parameter is invalid (``param`` names it)."""

    status = 400
    type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    """The body, or an upload, exceeds the service's limit."""

    status = 413


class RangeNotSatisfiableError(InvalidRequestError):
    """A download's Range starts past the end of the file."""

    status = 416


class AuthenticationError(APIError):
    """The API key is missing, malformed, unknown or revoked."""

    status = 401
    type = "authentication_error"


class ForbiddenError(APIError):
    """A signed download URL was tampered with or has expired."""

    status = 403
    type = "forbidden_error"


class NotFoundError(APIError):
    """No such resource for this key (other keys' jobs and uploads are not found either)."""

    status = 404
    type = "not_found_error"


class ConflictError(APIError):
    """The request conflicts with the resource's state (idempotency key reuse, a
    download before completion, an upload offset that is not the server's)."""

    status = 409
    type = "conflict_error"


class GoneError(APIError):
    """The job's output was deleted when its retention ended."""

    status = 410
    type = "gone_error"


class RateLimitError(APIError):
    """The key used up its requests in the current window; ``retry_after`` says how long."""

    status = 429
    type = "rate_limit_error"

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers)


class QueueLimitError(APIError):
    """The key already has its maximum of queued jobs (not retried: it lasts minutes)."""

    status = 429
    type = "queue_limit_error"


class InternalError(APIError):
    """The service failed unexpectedly; quote ``request_id`` when reporting it."""

    status = 500
    type = "api_error"


class ServiceUnavailableError(APIError):
    """The service's job store is unavailable; the request may be retried as it is."""

    status = 503
    type = "service_unavailable_error"

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers)


_BY_TYPE: dict[str, type[APIError]] = {
    cls.type: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        GoneError,
        RateLimitError,
        QueueLimitError,
        InternalError,
        ServiceUnavailableError,
    )
}
_BY_STATUS: dict[int, type[APIError]] = {
    cls.status: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        GoneError,
        RateLimitError,
        InternalError,
        ServiceUnavailableError,
    )
}
_BY_STATUS.update({413: PayloadTooLargeError, 416: RangeNotSatisfiableError})


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), else None."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    from time import time

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error response, whatever its body (JSON or not)."""
    detail: dict[str, Any] = {}
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
    error_type = detail.get("type") if isinstance(detail.get("type"), str) else None
    cls = _BY_STATUS.get(response.status_code, APIError)
    by_type = _BY_TYPE.get(error_type or "")
    # The type decides, refined by status where one type covers several (413, 416).
    if by_type is not None and not issubclass(cls, by_type):
        cls = by_type
    message = detail.get("message") if isinstance(detail.get("message"), str) else None
    if message is None:
        text = response.text.strip()[:200] if response.content else ""
        message = text or response.reason_phrase or f"HTTP {response.status_code}"
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    return cls(
        message,
        status=response.status_code,
        type=error_type,
        param=param,
        request_id=response.headers.get("x-request-id"),
        headers=response.headers,
    )
