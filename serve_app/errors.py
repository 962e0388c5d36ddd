"""Typed API errors, mapped to HTTP in one place (:mod:`serve_app.api.app`).

ApiError                       status  error.type
├── InvalidRequestError         400    invalid_request_error  (``param`` names the field)
├── AuthenticationError         401    authentication_error
├── NotFoundError               404    not_found_error
├── ConflictError               409    conflict_error
├── GoneError                   410    gone_error             (output past retention)
├── ForbiddenError              403    forbidden_error        (bad or expired signature)
├── PayloadTooLargeError        413    invalid_request_error
├── RangeNotSatisfiableError    416    invalid_request_error  (``size`` of the file)
├── RateLimitError              429    rate_limit_error       (``retry_after`` seconds)
├── QueueLimitError             429    queue_limit_error      (the key's queued-job limit)
├── InternalError               500    api_error              (never carries details)
└── ServiceUnavailableError     503    service_unavailable_error  (store down; ``retry_after``)
"""

from __future__ import annotations

from vocabulary import ApiErrorType

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueueLimitError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "ServiceUnavailableError",
]


class ApiError(Exception):
    """Base of every error the API answers with; carries its status and error type."""

    status = 500
    type = ApiErrorType.API_ERROR

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, dict[str, str]]:
        error = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


class InvalidRequestError(ApiError):
    """The request is malformed or a parameter is invalid."""

    status = 400
    type = ApiErrorType.INVALID_REQUEST


class AuthenticationError(ApiError):
    """The API key is missing, malformed, unknown or revoked."""

    status = 401
    type = ApiErrorType.AUTHENTICATION


class NotFoundError(ApiError):
    """No such resource for this key (other keys' jobs are not found either)."""

    status = 404
    type = ApiErrorType.NOT_FOUND


class ConflictError(ApiError):
    """The request conflicts with the resource's state (idempotency key reuse, …)."""

    status = 409
    type = ApiErrorType.CONFLICT


class PayloadTooLargeError(ApiError):
    """The request body exceeds the configured limit."""

    status = 413
    type = ApiErrorType.INVALID_REQUEST


class RangeNotSatisfiableError(ApiError):
    """A download's Range starts past the end of the file."""

    status = 416
    type = ApiErrorType.INVALID_REQUEST

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message, param="Range")
        self.size = size


class RateLimitError(ApiError):
    """The key has used up its requests in the current window."""

    status = 429
    type = ApiErrorType.RATE_LIMIT

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueLimitError(ApiError):
    """The key already has its maximum of queued jobs (``max_queued_per_key`` or its own)."""

    status = 429
    type = ApiErrorType.QUEUE_LIMIT

    def __init__(self, message: str, *, limit: int, param: str = "max_queued_per_key") -> None:
        super().__init__(message, param=param)
        self.limit = limit


class ServiceUnavailableError(ApiError):
    """The job store is unreachable or too slow; the request may be retried as it is."""

    status = 503
    type = ApiErrorType.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(ApiError):
    """Anything unexpected; details are logged with the request id, never returned."""

    status = 500
    type = ApiErrorType.API_ERROR


class ForbiddenError(ApiError):
    """A signed download URL was tampered with or has expired."""

    status = 403
    type = ApiErrorType.FORBIDDEN


class GoneError(ApiError):
    """The job's output was deleted when its retention ended."""

    status = 410
    type = ApiErrorType.GONE
