"""One place that sends requests: auth, the request id, retries with backoff.

Retried: 429 ``rate_limit_error`` and 5xx answers (honouring ``Retry-After``), and
connection failures of requests that are safe to repeat: every method but PATCH
(a POST is safe because the client sends an Idempotency-Key with every create;
upload PATCHes resume from the server's offset instead, see :mod:`.uploads`).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from retroiva_client.errors import (
    APIConnectionError,
    APIError,
    QueueLimitError,
    error_from_response,
    retry_after_seconds,
)

__all__ = ["RetryPolicy", "Transport", "new_idempotency_key"]


def new_idempotency_key() -> str:
    return f"retroiva-py-{uuid.uuid4()}"


class RetryPolicy:
    """How often and how long to retry: exponential backoff with jitter, or the
    server's ``Retry-After`` when it sends one (waited in full, up to ``max_wait``)."""

    def __init__(
        self,
        max_retries: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        max_wait: float = 60.0,
    ) -> None:
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_wait = max_wait

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_retries={self.max_retries}, base_delay={self.base_delay}, "
            f"max_delay={self.max_delay}, max_wait={self.max_wait})"
        )

    def backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (0-based): base × 2^attempt, jittered to 50–100 %."""
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.5, 1.0)

    @staticmethod
    def retryable(response: httpx.Response, error: APIError) -> bool:
        if response.status_code == 429:
            # A full queue drains in minutes, not seconds: retrying would only add load.
            return not isinstance(error, QueueLimitError)
        return response.status_code >= 500 and response.status_code != 501


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.scheme}://{parsed.host}:{port}"


class Transport:
    """An ``httpx.Client`` bound to the service, with the retry policy applied."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        timeout: float,
        retry: RetryPolicy,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from retroiva_client import __version__

        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.sleep = sleep
        self.http = http or httpx.Client(timeout=timeout)
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"retroiva-python/{__version__}",
        }

    def url(self, path_or_url: str) -> str:
        """``base_url`` + a path, or an absolute URL (an upload's ``Location``, a
        user's ``upload_url``) on the service's own origin.  Every request carries the
        API key, so an absolute URL elsewhere (another host, or http where base_url is
        https) is refused rather than handed the key."""
        if path_or_url.startswith(("http://", "https://")):
            if _origin(path_or_url) != _origin(self.base_url):
                raise APIConnectionError(
                    f"refusing to send the API key to {_origin(path_or_url)}: not the "
                    f"service's origin ({_origin(self.base_url)}); if the service sits "
                    "behind that address, use it as base_url (or fix the service's "
                    "RETROIVA_PUBLIC_URL)"
                )
            return path_or_url
        return self.base_url + path_or_url

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send, retrying as the module docstring says; an error answer raises APIError."""
        all_headers = {**self.headers, **(headers or {})}
        # A PATCH is never repeated here: its caller asks the server where to resume.
        retries = 0 if method.upper() == "PATCH" else self.retry.max_retries
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    method,
                    self.url(path),
                    json=json,
                    params=params,
                    headers=all_headers,
                    content=content,
                )
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise APIConnectionError(
                        f"{method} {path}: {type(exc).__name__}: {exc}"
                    ) from exc
                delay = self.retry.backoff(attempt)
            else:
                if response.status_code < 400:
                    return response
                error = error_from_response(response)
                if attempt >= retries or not self.retry.retryable(response, error):
                    raise error
                asked = retry_after_seconds(response.headers)
                if asked is not None and asked > self.retry.max_wait:
                    raise error  # longer than we are willing to block; the caller decides
                delay = asked if asked is not None else self.retry.backoff(attempt)
            attempt += 1
            self.sleep(delay)

    def close(self) -> None:
        self.http.close()
